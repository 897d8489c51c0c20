"""Experiment driver: configs x a grid of YAML overrides x seeds on Fashion-MNIST, one Markdown table with
mean ± std, the paired difference to a reference method with a 95% t-interval over seeds, cost, trainable
parameters, sharpness gap, KL and top-1 agreement (``pesf-compare``; in a clone also ``python tools/compare.py``).

    python tools/compare.py --methods kd pesfkd ftkd zscore --seeds 5          # the docs' table (docs/analysis.md)
    python tools/compare.py --methods kd zscore --seeds 5 \\
        --grid 'zscore:train.criterion.kwargs.sub_terms.zscore.criterion.kwargs.temperature=2,3' --jobs 2
    # a sweep that includes the config's own value: 'default' is the plain run (no override, same records)
    python tools/compare.py --methods kd pesfkd --seeds 5 \\
        --grid 'pesfkd:train.optimizer.module_wise_configs.6.kwargs.lr=default,2e-4,2e-3'

Every run is a separate process of tools/image_classification.py on a shipped config of configs/fashion_mnist/ with
the budget of tools/quickstart.py (``budget_config``; ``--num_*`` change it), the same teacher (trained once by
``resnet56_teacher_ce.yaml`` on the same budget), its own checkpoint directory and the per-epoch metrics on.
Paired seeds (``pesf_ext.engine.rng``): with the same seed every method starts from the same student and sees the
same batches, so differences to the reference are taken seed by seed.

TAKD runs each seed's assistant first and learns from it; RCO learns from this comparison's own teacher, whose run
always saves the route's anchors (``rco_route``: after 1/6, 1/3 and 2/3 of its epochs, as the configs' 5, 10, 20
of 30), each for an equal share of the student's epochs.

Resumable: a run whose summary JSON exists in ``--out_dir`` is skipped (``-rerun`` redoes everything), and an
interrupted run continues from its last epoch (``-resume``). Runs go in seed-major order, so an interrupted
comparison still has complete pairs. ``--jobs N`` runs N at a time (``--devices cuda:0 cuda:1`` gives each slot a
GPU). ``--commands_only`` prints the command of every missing run instead, one per line, for a cluster launcher
(a Slurm job array, submitit); ``-table_only`` then builds the table from their JSON files without running anything.
"""
import argparse
import contextlib
import glob
import itertools
import json
import math
import os
import queue
import re
import shutil
import shlex
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor

from tqdm import tqdm

from pesf_ext.engine.runner import cpu_model

from .quickstart import (BUDGET, EPOCH_METRICS_OVERRIDES, ROOT, TEACHER, RunFailed, budget_config, records_path,
                         run, run_command, set_anchor, summary_path)

STUDENT_CE = 'student_ce'
LABELS = {
    STUDENT_CE: 'Student (CE)', 'kd': 'KD', 'pesfkd': 'PESF-KD', 'ftkd': 'FT-KD', 'zscore': 'Z-score KD',
    'pesfkd_zscore': 'PESF-KD + Z-score', 'ftkd_zscore': 'FT-KD + Z-score', 'dml': 'DML', 'kdcl': 'KDCL',
    'kdcl_naive': 'KDCL (naive)', 'pkt': 'PKT', 'crd': 'CRD', 'rkd': 'RKD', 'pesfkd_pkt': 'PKT + PESF-KD',
    'pesfkd_crd': 'CRD + PESF-KD', 'pesfkd_rkd': 'RKD + PESF-KD', 'dkd': 'DKD', 'dkd_zscore': 'DKD + Z-score',
    'pesfkd_head': 'PESF-KD (head adapter)', 'pkd': 'PKD', 'pkd_pesfkd': 'PKD + PESF-KD',
    'pesfkd_released': 'PESF-KD (released code)', 'ctkd': 'CTKD', 'ctkd_zscore': 'CTKD + Z-score',
    'mlkd': 'MLKD', 'mlkd_zscore': 'MLKD + Z-score', 'dist': 'DIST', 'dist_zscore': 'DIST + Z-score',
    'takd': 'TAKD', 'takd_assistant': 'TAKD assistant (ResNet-32)', 'rco': 'RCO', 'at': 'AT', 'sp': 'SP', 'fitnet': 'FitNet', 'vid': 'VID',
    'cc': 'CC', 'ab': 'AB', 'ft': 'FT', 'fsp': 'FSP',
    'ttm': 'TTM', 'wttm': 'WTTM', 'ttm_zscore': 'TTM + Z-score', 'wttm_zscore': 'WTTM + Z-score',
    'luminet': 'LumiNet', 'rkl': 'Reverse KL', 'jsd': 'Generalized JSD', 'skew_kl': 'Skew KL',
    'skew_rkl': 'Skew reverse KL', 'tv': 'Total variation', 'taid': 'TAID',
}
LABELS.update({f'{name}_zscore': f'{LABELS[name]} + Z-score' for name in ('rkl', 'jsd', 'skew_kl', 'skew_rkl', 'tv', 'taid')})
DEFAULT_METHODS = (STUDENT_CE, 'kd', 'pesfkd', 'ftkd', 'zscore', 'pesfkd_zscore', 'dml', 'kdcl', 'pkt', 'crd', 'rkd',
                   'pesfkd_pkt', 'pesfkd_crd', 'pesfkd_rkd', 'dkd', 'dkd_zscore')
SPEED_NOTE = ('s/step: mean training step time of each run as it ran (with --jobs N, N runs shared the CPU), '
              'indicative only: tools/benchmark.py measures cost ratios side by side.')
FULL_TRAIN_SIZE = 55000  # Fashion-MNIST train split
INIT_SHARE = 30 / 240    # RepDistiller's init stage (AB, FT, FSP) against its main stage


def method_names(methods):
    """``--methods`` as method names: a Fashion-MNIST config path is read as its method; another family's config (or
    a name that says it) stops with one line, since this driver builds its budget from configs/fashion_mnist/."""
    names = []
    for method in methods:
        stem = os.path.splitext(os.path.basename(method))[0]
        family = next((f for f in ('cifar100', 'imagenet', 'glue', 'causal_lm') if f in method.lower()), None)
        if family is not None:
            other = {'glue': 'tools/glue_compare.py', 'causal_lm': 'tools/lm_compare.py'}.get(family) or \
                f'tools/image_classification.py --config configs/{family}/<config>.yaml --seed <seed>'
            sys.exit(f'--methods {method}: tools/compare.py runs the Fashion-MNIST configs only '
                     f'(configs/fashion_mnist/resnet56_resnet20_<method>.yaml); for {family} use {other}')
        if method.endswith('.yaml'):
            stem = 'student_ce' if stem == 'resnet20_student_ce' else stem.replace('resnet56_resnet20_', '', 1)
        names.append(stem if method.endswith('.yaml') else method)
    return names


def config_name(method):
    return 'resnet20_student_ce.yaml' if method == STUDENT_CE else f'resnet56_resnet20_{method}.yaml'


def write_config(name, out_dir, epochs, sizes, crd_negatives, milestones=None):
    """quickstart's budget config, then this comparison's data sizes; CRD's memory follows the train size."""
    path = budget_config(name, out_dir, epochs, milestones)
    with open(path) as f:
        text = f.read()
    for anchor, value in sizes.items():
        text = set_anchor(text, anchor, value)
    if '&init_epochs ' in text:  # AB, FT, FSP: the init stage keeps its share of the main one (30 : 240)
        text = set_anchor(text, 'init_epochs', max(1, round(epochs * INIT_SHARE)))
    if '&crd_num_samples ' in text:
        text = set_anchor(text, 'crd_num_samples', min(sizes['num_train_samples'], FULL_TRAIN_SIZE))
        text = set_anchor(text, 'crd_num_negative_samples', crd_negatives)
    with open(path, 'w') as f:
        f.write(text)
    return path


RCO_ROUTE = (5 / 30, 10 / 30, 20 / 30)  # the configs' anchors: after epochs 5, 10, 20 of the teacher's 30


def rco_route(teacher_epochs, student_epochs, teacher_ckpt):
    """RCO on this comparison's budget: the teacher's anchor epochs at the configs' fractions of its run, and the
    student's overrides that learn from them (plus the converged teacher) for equal shares of its epochs; with
    fewer student epochs than anchors, the earliest anchors are dropped. (teacher overrides, student overrides)."""
    from pesf_ext.rco import anchor_path
    anchors = sorted({min(teacher_epochs - 1, max(1, round(teacher_epochs * f))) for f in RCO_ROUTE}) \
        if teacher_epochs > 1 else []
    route = [anchor_path(teacher_ckpt, epoch) for epoch in anchors] + [teacher_ckpt]
    route = route[-student_epochs:]
    switch = [round(i * student_epochs / len(route)) for i in range(len(route))]
    compact = lambda value: json.dumps(value, separators=(',', ':'))  # noqa: E731  (one shell word)
    return ([f'+train.anchor_epochs={compact(anchors)}'],
            [f'models.teacher_model.src_ckpt={teacher_ckpt}', f'train.rco.anchors={compact(route)}',
             f'train.rco.switch_epochs={compact(switch)}'])


def label_value(value):
    """A grid value as a run label writes it, safe in a file name and in a glob pattern: brackets, quotes and spaces
    dropped, ``*`` read as ``all`` and ``?`` as ``any`` (``[layer3.*]`` -> ``layer3.all``); ``_`` is the label's
    separator and goes too."""
    return re.sub(r'[^A-Za-z0-9.+-]', '', value.replace('*', 'all').replace('?', 'any'))


def parse_grid(specs, methods):
    """``['[method:]KEY=v1,v2', ...]`` -> {method: [(label, [overrides]), ...]}: the Cartesian product of the
    values of every key that applies to the method (all methods without a ``method:`` prefix). The value
    ``default`` keeps the config's own value (no override): a point of defaults only is the method's plain run."""
    axes = {method: [] for method in methods}
    for spec in specs:
        scope, _, body = spec.rpartition(':') if ':' in spec.split('=', 1)[0] else ('', '', spec)
        if '=' not in body:
            raise SystemExit(f'--grid {spec}: expected [method:]KEY=v1,v2,...')
        key, values = body.split('=', 1)
        values = values.split(',')
        labels = [label_value(v) for v in values]
        if len(set(labels)) < len(labels) or '' in labels:
            raise SystemExit(f'--grid {spec}: values {values} give the run labels {labels}; make them distinct')
        for method in ([scope] if scope else methods):
            if method not in axes:
                raise SystemExit(f'--grid {spec}: method `{method}` is not in --methods')
            axes[method].append([(None, None) if v == 'default' else (f'{key.rsplit(".", 1)[-1]}={label}', f'{key}={v}')
                                 for v, label in zip(values, labels)])

    def point_of(values):  # ((label, override) per key) -> (point label, overrides), defaults left out
        return '_'.join(label for label, _ in values if label), [override for _, override in values if override]
    return {method: [point_of(values) for values in itertools.product(*axes[method])] for method in methods}


def publish_table(text, out_dir, records_dir=None, write=True, summary=None):
    """Print a study's table; with ``write``, save it as <out_dir>/results/table.md (and ``summary`` as
    summary.json beside it); then copy the records to ``records_dir``. Table-only calls pass ``write=False``: they
    read committed records and write nothing."""
    print(text)
    if write:
        os.makedirs(os.path.join(out_dir, 'results'), exist_ok=True)
        with open(os.path.join(out_dir, 'results', 'table.md'), 'w') as f:
            f.write(text + '\n')
        if summary is not None:
            with open(os.path.join(out_dir, 'results', 'summary.json'), 'w') as f:
                json.dump(summary, f, indent=2)
    if records_dir:
        copy_records(out_dir, os.path.abspath(records_dir))


def copy_records(source, target):
    """Copies the summaries and per-epoch records of the runs finished in ``source`` (their summary JSON exists) to
    ``target`` (each a run folder), where missing. An unfinished run's records stay behind: elsewhere it starts again."""
    for summary in glob.glob(os.path.join(source, 'results', '*.json')):
        label = os.path.basename(summary)[:-len('.json')]
        if label == 'summary':  # the table's own dump, not a run
            continue
        for path in (summary, records_path(source, label)):
            destination = os.path.join(target, os.path.relpath(path, source))
            if os.path.isfile(path) and not os.path.isfile(destination):
                os.makedirs(os.path.dirname(destination), exist_ok=True)
                shutil.copy2(path, destination)


def machine_name(summary):
    """The machine a run's summary JSON says it ran on: its GPU, else its CPU (older records: 'an unrecorded
    machine')."""
    machine = summary.get('machine') or {}
    return machine.get('gpu') or machine.get('cpu') or 'an unrecorded machine'


def recorded_machine(out_dir):
    """The machine the teacher's summary says it ran on."""
    with open(summary_path(out_dir, 'teacher_ce')) as f:
        return machine_name(json.load(f))


def machines_note(rows):
    """The footnote sentence naming the machine(s) the rows' runs ran on; several get a warning, since same-seed
    runs are bit-identical on one machine only."""
    machines = sorted({name for row in rows.values() for name in row.get('machines', [])})
    if len(machines) == 1:
        return f'Run on: {machines[0]}.'
    return (f'Run on several machines ({"; ".join(machines)}): same-seed runs are bit-identical on one machine only, '
            'so pairs across machines share the initialisation and batches but not the arithmetic.')


def teacher_top1(out_dir):
    with open(summary_path(out_dir, 'teacher_ce')) as f:
        return json.load(f)['test']['student']['top1']


def mean(values):
    return sum(values) / len(values) if values else float('nan')


def last_record(path):
    """The last per-epoch metrics record of a run (None without one)."""
    try:
        with open(path) as f:
            lines = [line for line in f if line.strip()]
    except OSError:
        return None
    return json.loads(lines[-1]) if lines else None


def summarize(runs, metric='top1'):
    """Aggregates one row (method + grid point) over seeds; ``runs`` maps seed -> (summary JSON, last record);
    ``metric``: the test metric compared ('top1'; GLUE: 'accuracy', 'score', ...)."""
    test = {seed: result['test'] for seed, (result, _) in runs.items()}
    records = {seed: record for seed, (_, record) in runs.items() if record}
    first = next(iter(runs.values()))[0]
    return {
        'n': len(runs),
        'student': {seed: t['student'][metric] for seed, t in test.items()},
        'teacher': [t['teacher'][metric] for t in test.values() if 'teacher' in t],
        'gap': [t['sharpness_gap'] for t in test.values() if 'sharpness_gap' in t],
        'kl': [r['kl'] for r in records.values() if 'kl' in r],
        'agreement': [r['agreement'] for r in records.values() if 'agreement' in r],
        'teacher_std': [r['teacher_logit_std'] for r in records.values() if 'teacher_logit_std' in r],
        'seconds_per_step': mean([result['seconds_per_step'] for result, _ in runs.values()]),
        'counts': first['counts'],
        'machines': sorted({machine_name(result) for result, _ in runs.values()}),
    }


def paired_interval(row, reference, confidence=0.95):
    """Mean and half-width of the ``confidence`` t-interval of the per-seed differences ``row - reference``
    over the seeds both have: :math:`\\bar d \\pm t_{1-(1-c)/2, n-1} \\, s_d / \\sqrt n`. (mean, half, n)."""
    from scipy.stats import t
    seeds = sorted(set(row['student']) & set(reference['student']))
    diffs = [row['student'][s] - reference['student'][s] for s in seeds]
    if len(diffs) < 2:
        return (mean(diffs) if diffs else float('nan')), float('nan'), len(diffs)
    half = t.ppf(1 - (1 - confidence) / 2, len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return mean(diffs), half, len(diffs)


def point_pairs(point, sep='='):
    """``lr=2e-3_teacher_warmup_epochs=5`` -> ``[('lr', '2e-3'), ('teacher_warmup_epochs', '5')]``; ``sep='-'``
    reads a run label's form. Values may not hold ``_``."""
    return re.findall(rf'([A-Za-z][A-Za-z0-9_]*?){sep}([^_]*)(?:_|$)', point)


def point_text(point, sep='='):
    """A grid point as a table shows it: ``lr=2e-3_teacher_warmup_epochs=5`` -> ``lr=2e-3, teacher_warmup_epochs=5``;
    ``sep='-'`` reads a run label's form (``lr-2e-3_teacher_warmup_epochs-5``). Values may not hold ``_``."""
    pairs = point_pairs(point, sep)
    return ', '.join(f'{key}={value}' for key, value in pairs) or point


def with_point(name, point):
    """A method's table name with its grid point: ``PESF-KD`` + ``lr=2e-3`` -> ``PESF-KD (lr=2e-3)``; a name that
    already ends in brackets takes the point inside them: ``PESF-KD (head adapter, lr=2e-3)``."""
    if not point:
        return name
    return f'{name[:-1]}, {point})' if name.endswith(')') else f'{name} ({point})'


def table(rows, reference=None, failures=None, metric='top-1', labels=None):
    """Markdown table: ``rows`` maps a row label (method or method@grid point) to :func:`summarize` output;
    ``metric`` names the compared metric in the header."""
    ref = rows.get(reference)
    ref_speed = ref['seconds_per_step'] if ref else None
    labels = LABELS if labels is None else labels
    ref_name = labels.get(reference, reference)
    lines = [f'| method | student {metric} (mean ± std) | Δ {metric} vs {ref_name}, paired, 95% CI | teacher {metric} | '
             'teacher logit std (val) | sharpness gap (test) | KL (val) | agreement (val) | s/step | '
             f'ratio to {ref_name} | '
             'trainable student / teacher |', '|' + '---|' * 11]
    for label, res in rows.items():
        students = list(res['student'].values())
        std = f'{statistics.stdev(students):.2f}' if len(students) > 1 else 'n/a'
        if ref is None or label == reference:
            delta = '-'
        else:
            diff, half, n = paired_interval(res, ref)
            delta = f'{diff:+.2f} ± {half:.2f} (n={n})' if not math.isnan(half) else f'{diff:+.2f} (n={n})'
        teacher = f'{mean(res["teacher"]):.2f}' if res['teacher'] else '-'
        gap = f'{mean(res["gap"]):.3f}' if res['gap'] else '-'
        teacher_std = f'{mean(res["teacher_std"]):.2f}' if res.get('teacher_std') else '-'
        kl = f'{mean(res["kl"]):.3f}' if res['kl'] else '-'
        agreement = f'{mean(res["agreement"]):.3f}' if res['agreement'] else '-'
        ratio = f'{res["seconds_per_step"] / ref_speed:.2f}' if ref_speed else '-'
        params = f'{res["counts"]["student"][0]:,} / ' + (
            f'{res["counts"]["teacher"][0]:,}' if 'teacher' in res['counts'] else '-')
        method, _, point = label.partition('@')
        name = with_point(labels.get(method, method), point_text(point) if point else '')
        lines.append(f'| {name} | {mean(students):.2f} ± {std} (n={res["n"]}) | {delta} | {teacher} | {teacher_std} | {gap} | '
                     f'{kl} | {agreement} | {res["seconds_per_step"]:.4f} | {ratio} | {params} |')
    for label, run_labels in (failures or {}).items():
        lines.append(f'| {label} | failed: {", ".join(run_labels)} (see logs/) |' + ' |' * 9)
    return '\n'.join(lines)


EPILOG = '''examples:
  pesf-compare --methods kd pesfkd zscore --seeds 5 --jobs 2
  pesf-compare --methods kd zscore --seeds 5 \\
      --grid 'zscore:train.criterion.kwargs.sub_terms.zscore.criterion.kwargs.temperature=2,3'
  pesf-compare --methods kd pesfkd zscore --seeds 5 -table_only --out_dir runs/compare
(in a clone, `python tools/compare.py` takes the same options)'''


def get_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--methods', nargs='+', default=list(DEFAULT_METHODS),
                        help=f'method names (configs/fashion_mnist/resnet56_resnet20_<name>.yaml, or {STUDENT_CE})')
    parser.add_argument('--seeds', type=int, default=5, help='number of seeds (0, 1, ...) per method')
    parser.add_argument('--reference', default='kd', help='method the paired differences are taken to')
    parser.add_argument('--grid', nargs='+', action='extend', default=[], metavar='[METHOD:]KEY=V1,V2',
                        help='override values to sweep (Cartesian product), for every method or one')
    parser.add_argument('--set', nargs='+', action='extend', default=[], dest='overrides', metavar='KEY=VALUE',
                        help='YAML overrides for every run (see tools/image_classification.py --help)')
    parser.add_argument('--num_train_samples', type=int, default=BUDGET['num_train_samples'])
    parser.add_argument('--num_val_samples', type=int, default=BUDGET['num_val_samples'])
    parser.add_argument('--num_test_samples', type=int, default=BUDGET['num_test_samples'])
    parser.add_argument('--num_epochs', type=int, default=BUDGET['num_epochs'], help='epochs of every method')
    parser.add_argument('--teacher_epochs', type=int, default=4, help='epochs of the teacher CE run')
    parser.add_argument('--teacher_train_samples', type=int, default=None,
                        help="the teacher's training images (default: the students'); more gives a teacher that "
                             "knows more than the students' labels can teach, the classic KD regime (the students' "
                             'images are always a subset of the teacher\'s)')
    parser.add_argument('--milestones', type=int, nargs='+', default=None,
                        help="the students' lr decays x0.1 at these epochs (default: once, at the last epoch)")
    parser.add_argument('--teacher_milestones', type=int, nargs='+', default=None,
                        help="the teacher's, likewise")
    parser.add_argument('--crd_negatives', type=int, default=4096,
                        help="CRD's negatives per sample (configs and paper: 16384, ~7 s/step on 2 CPU cores; "
                             '4096 keeps the CPU budget affordable)')
    parser.add_argument('--jobs', type=int, default=1, help='runs at a time (default 1: sequential)')
    parser.add_argument('--devices', nargs='+', default=['cpu'], help='devices, one per parallel slot in turn')
    parser.add_argument('--out_dir', default=os.path.join(ROOT, 'runs', 'compare'))
    parser.add_argument('--records_dir', default=None,
                        help='a folder that keeps the finished runs across machines (e.g. committed, '
                             'docs/results/converged): its summaries and per-epoch records are copied into --out_dir '
                             'before and back after each run; the teacher is trained again when its checkpoint is '
                             'missing, and must reproduce its recorded test top-1 (runs are deterministic on one '
                             'machine, not across CPUs)')
    parser.add_argument('-rerun', action='store_true', help='redo runs whose summary JSON exists')
    parser.add_argument('-reuse', action='store_true', help='(default now; kept for old command lines)')
    parser.add_argument('--commands_only', action='store_true',
                        help='print the commands of the missing runs (for a cluster launcher) and exit')
    parser.add_argument('-table_only', action='store_true',
                        help='run nothing: build the table from the runs already finished in --out_dir')
    return parser.parse_args(argv)


@contextlib.contextmanager
def alone(user_threads=None):
    """Within the block, child runs get every core (``OMP_NUM_THREADS`` = the CPU count, or the user's own setting
    ``user_threads``): the teacher runs before the parallel phase, alone."""
    saved = os.environ.get('OMP_NUM_THREADS')
    os.environ['OMP_NUM_THREADS'] = user_threads or str(os.cpu_count() or 1)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop('OMP_NUM_THREADS')
        else:
            os.environ['OMP_NUM_THREADS'] = saved


def main(argv=None):
    args = get_args(argv)
    args.methods = method_names(args.methods)
    # parallel CPU runs split the cores instead of each starting one thread per core
    user_threads = os.environ.get('OMP_NUM_THREADS')
    os.environ.setdefault('OMP_NUM_THREADS', str(max(1, (os.cpu_count() or 1) // max(args.jobs, 1))))
    if 'takd' in args.methods and 'takd_assistant' not in args.methods:   # TAKD's first link, run per seed first
        args.methods.insert(args.methods.index('takd'), 'takd_assistant')
    unknown = [m for m in args.methods if m not in LABELS]
    if unknown:
        sys.exit(f'--methods: unknown {unknown}; known: {", ".join(LABELS)}')
    out_dir = os.path.abspath(args.out_dir)
    sizes = {'num_train_samples': args.num_train_samples, 'num_val_samples': args.num_val_samples,
             'num_test_samples': args.num_test_samples}
    grid = parse_grid(args.grid, args.methods)
    teacher_train_samples = args.teacher_train_samples or args.num_train_samples
    for flag, epochs, milestones in (('--milestones', args.num_epochs, args.milestones),
                                     ('--teacher_milestones', args.teacher_epochs, args.teacher_milestones)):
        if milestones is not None and not all(0 < m < epochs for m in milestones):
            sys.exit(f'{flag} {milestones}: every milestone must be an epoch between 1 and {epochs - 1}')
    if args.table_only:  # nothing runs: no configs written (the results may be a committed copy, e.g. results/)
        configs, teacher_config = {m: None for m in args.methods}, None
    else:
        configs = {m: write_config(config_name(m), out_dir, args.num_epochs, sizes, args.crd_negatives,
                                   args.milestones) for m in args.methods}
        teacher_config = write_config(TEACHER, out_dir, args.teacher_epochs,
                                      {**sizes, 'num_train_samples': teacher_train_samples}, args.crd_negatives,
                                      args.teacher_milestones)

    teacher_ckpt = os.path.join(out_dir, 'ckpt', 'ce', 'fashion_mnist-resnet56.pt')  # the budget teacher's dst_ckpt
    rco_teacher, rco_student = rco_route(args.teacher_epochs, args.num_epochs, teacher_ckpt)

    def plan(method, point, overrides, seed):
        label = f'{method}' + (f'@{point}' if point else '')
        run_label = f'{label}_seed{seed}'.replace('=', '-').replace('@', '__')
        ckpt_key = 'models.model.dst_ckpt' if method == STUDENT_CE else 'models.student_model.dst_ckpt'
        ckpt = os.path.join(out_dir, 'ckpt', run_label, 'student.pt')
        run_overrides = [*EPOCH_METRICS_OVERRIDES, f'{ckpt_key}={ckpt}', *overrides, *args.overrides]
        if method == 'takd':  # the teacher is this seed's assistant (same grid point)
            assistant = plan('takd_assistant', point, overrides, seed)[1]
            run_overrides.append(f'models.teacher_model.src_ckpt={os.path.join(out_dir, "ckpt", assistant, "student.pt")}')
        if method == 'rco':  # the route of this comparison's teacher, not the configs' ce_rco run
            run_overrides.extend(rco_student)
        return label, run_label, configs[method], seed, run_overrides

    runs = [plan(m, point, overrides, seed) for seed in range(args.seeds) for m in args.methods
            for point, overrides in grid[m]]
    # the teacher always saves RCO's anchors (a few checkpoints; training is unchanged), so rco can join later
    teacher_run = ('teacher', 'teacher_ce', teacher_config, 0,
                   [*EPOCH_METRICS_OVERRIDES, *rco_teacher, *args.overrides])
    records_dir = os.path.abspath(args.records_dir) if args.records_dir else None
    if records_dir:
        copy_records(records_dir, out_dir)
    pending = [r for r in [teacher_run, *runs] if args.rerun or not os.path.isfile(summary_path(out_dir, r[1]))]
    if args.table_only:
        pending = []
    recorded_teacher = recorded_where = None
    if pending and teacher_run not in pending and not os.path.isfile(teacher_ckpt):  # records, no checkpoint
        recorded_teacher, recorded_where = teacher_top1(out_dir), recorded_machine(out_dir)
        os.remove(records_path(out_dir, 'teacher_ce'))  # the run writes its per-epoch records again
        pending.insert(0, teacher_run)
    if args.commands_only:
        for _, run_label, config, seed, overrides in pending:
            print(shlex.join(run_command(config, out_dir, run_label, seed, overrides, 'cpu', resume=True)))
        return None
    epochs = {r[1]: (args.teacher_epochs if r is teacher_run else args.num_epochs) for r in pending}
    progress = tqdm(total=sum(epochs.values()), unit='epoch', desc=f'compare ({len(pending)} runs)',
                    dynamic_ncols=True)
    slots = queue.Queue()
    for i in range(max(args.jobs, 1)):
        slots.put(args.devices[i % len(args.devices)])

    def execute(item):
        _, run_label, config, seed, overrides = item
        device = slots.get()
        try:
            result = run(config, out_dir, run_label, seed, overrides, progress, device=device, resume=True)
            if records_dir:  # after every run, so an interrupted comparison keeps what finished
                copy_records(out_dir, records_dir)
            return result
        finally:
            slots.put(device)

    failures = {}
    try:
        if teacher_run in pending:
            with alone(user_threads):
                execute(teacher_run)
            if recorded_teacher is not None and teacher_top1(out_dir) != recorded_teacher:
                sys.exit(f'the teacher trained again scores {teacher_top1(out_dir)} where the records say '
                         f'{recorded_teacher}: the finished runs learnt from another teacher; start a new --out_dir / '
                         '--records_dir (same-seed runs are bit-identical on one machine only: the records were made on '
                         f'{recorded_where}, this one is {cpu_model()})')
        first = [item for item in pending if item[0].startswith('takd_assistant')]  # before the TAKD students
        then = [item for item in pending if item is not teacher_run and item not in first]
        for phase in (first, then):
            with ThreadPoolExecutor(max_workers=max(args.jobs, 1)) as pool:
                futures = {run_label: (label, pool.submit(execute, item))
                           for item in phase for label, run_label in [item[:2]]}
                for run_label, (label, future) in futures.items():
                    try:
                        future.result()
                    except RunFailed as error:
                        failures.setdefault(label, []).append(run_label)
                        progress.write(str(error).splitlines()[0])
    except RunFailed as error:  # the teacher
        sys.exit(str(error))
    finally:
        progress.close()
    rows = {}
    for label, run_label, _, seed, _ in runs:
        if os.path.isfile(summary_path(out_dir, run_label)):
            with open(summary_path(out_dir, run_label)) as f:
                result = json.load(f)
            rows.setdefault(label, {})[seed] = (result, last_record(records_path(out_dir, run_label)))
    rows = {label: summarize(seed_runs) for label, seed_runs in rows.items()}
    text = table(rows, args.reference, failures)
    teacher_budget = f'teacher: {args.teacher_epochs}' + (
        f' epochs on {teacher_train_samples} train images, a superset of the students\''
        if teacher_train_samples != args.num_train_samples else '')
    text += (f'\n\nFashion-MNIST, ResNet-56 -> ResNet-20; {args.num_train_samples} train / {args.num_val_samples} '
             f'val / {args.num_test_samples} test images, {args.num_epochs} epochs ({teacher_budget}), '
             f'seeds 0..{args.seeds - 1} paired (same student initialisation and batches per seed). Δ: mean over '
             f'seeds of (method - {LABELS.get(args.reference, args.reference)}) student top-1 with the 95% '
             "t-interval. Teacher logit std: per-sample std of the (adapted / fine-tuned) teacher's logits over "
             'classes, validation set after the last epoch. Sharpness gap: mean over test images of '
             'logsumexp(z_t) - logsumexp(z_s); KL (at the '
             "loss's temperature, without tau^2) and top-1 agreement: validation set after the last epoch. "
             + SPEED_NOTE + (' ' + machines_note(rows) if rows else ''))
    publish_table(text, out_dir, records_dir, write=not args.table_only,
                  summary={'args': vars(args), 'rows': rows, 'failures': failures})
    return rows


if __name__ == '__main__':
    main()
