"""Causal-LM experiment driver (offline configs): one GPT-2-style teacher trained on the Python standard library's
source, then methods x seeds on the 2-layer student with a smaller transfer set, and a Markdown table of held-out
perplexity with paired differences (95% t-interval over seeds) to the student trained alone and to forward KL
(``pesf-lm-compare``; in a clone also ``python tools/lm_compare.py``).

    python tools/lm_compare.py --seeds 5                                  # docs/RESULTS.md's causal-LM table
    python tools/lm_compare.py --seeds 5 --methods ce kd pesfkd \\
        --grid 'pesfkd:train.optimizer.module_wise_configs.1.kwargs.lr=3e-4,1e-3,3e-3'

Every run is a process of tools/causal_lm.py on a shipped config of configs/causal_lm_offline/ with its checkpoint
under --out_dir (``--set`` overrides every run, ``--grid`` sweeps a key of one method), the same teacher for every
method and seed, and paired seeds (same student initialisation and batches per seed). Resumable like
tools/compare.py: runs whose summary JSON exists are skipped, an interrupted one continues from its last epoch;
``-table_only`` builds the table from finished runs; ``--records_dir`` keeps the finished runs across machines.
"""
import argparse
import json
import math
import os
import shutil
import statistics
import sys

from .compare import copy_records, machine_name, paired_interval, parse_grid, point_text, publish_table, with_point
from .paths import configs_dir
from .quickstart import ROOT, RunFailed, run, summary_path

METHODS = ('ce', 'kd', 'rkl', 'jsd', 'skew_kl', 'skew_rkl', 'taid', 'zscore', 'pesfkd', 'ftkd')
STUDY_METHODS = ('ce', 'kd', 'rkl', 'jsd', 'taid', 'zscore', 'pesfkd')
LABELS = {'ce': 'Student alone (CE)', 'kd': 'Forward KL (KD)', 'rkl': 'Reverse KL', 'jsd': 'Generalized JSD',
          'skew_kl': 'Skew forward KL', 'skew_rkl': 'Skew reverse KL', 'taid': 'TAID',
          'zscore': 'Z-score KD', 'pesfkd': 'PESF-KD (LoRA)', 'ftkd': 'FT-KD'}
SCRIPT = 'causal_lm.py'
PAIR = 'gpt2_4l_gpt2_2l_stdlib'


def config_path(method):
    name = {'teacher': 'gpt2_4l_stdlib_teacher_ce', 'ce': 'gpt2_2l_stdlib_student_ce'}.get(method, f'{PAIR}_{method}')
    return os.path.join(configs_dir(), 'causal_lm_offline', f'{name}.yaml')


EPILOG = '''examples:
  pesf-lm-compare --seeds 5
  pesf-lm-compare --seeds 5 --methods ce kd pesfkd \\
      --grid 'pesfkd:train.optimizer.module_wise_configs.1.kwargs.lr=3e-4,1e-3,3e-3'
  pesf-lm-compare --seeds 5 -table_only
(in a clone, `python tools/lm_compare.py` takes the same options)'''


def get_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--methods', nargs='+', default=list(STUDY_METHODS), choices=METHODS)
    parser.add_argument('--seeds', type=int, default=5, help='seeds 0..N-1 per method')
    parser.add_argument('--reference', default='kd', choices=METHODS, help='the Δ column compares with this method')
    parser.add_argument('--grid', nargs='+', action='extend', default=[], metavar='[METHOD:]KEY=V1,V2',
                        help='sweep a YAML key (one run per value and seed), as in pesf-compare')
    parser.add_argument('--set', nargs='+', action='extend', default=[], dest='overrides', metavar='KEY=VALUE',
                        help='YAML overrides for every student run (the teacher is trained by its own config)')
    parser.add_argument('--teacher_dir', help="another --out_dir whose trained teacher to use (its checkpoint and "
                                              "summary are copied here), e.g. the main study's for a variant of it")
    parser.add_argument('--out_dir', default=os.path.join(ROOT, 'runs', 'lm_compare'))
    parser.add_argument('--records_dir', default=None,
                        help='a folder that keeps the finished runs across machines (e.g. committed, '
                             'docs/results/causal_lm_epyc): its summaries are copied into --out_dir before and back '
                             'after; the teacher is trained again when its checkpoint is missing, and must '
                             'reproduce its recorded perplexity')
    parser.add_argument('-table_only', action='store_true')
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f'--seeds must be at least 1, got {args.seeds}')
    return args


def teacher_perplexity(out_dir):
    with open(summary_path(out_dir, 'teacher')) as f:
        return json.load(f)['test']['student']['perplexity']


def summarize(seed_runs):
    """One row over seeds: ``seed_runs`` maps seed -> summary JSON of a causal_lm.py run."""
    def mean_of(values):
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else None
    tests = {seed: result['test'] for seed, result in seed_runs.items()}
    first = next(iter(seed_runs.values()))
    return {'n': len(seed_runs), 'student': {seed: t['student']['perplexity'] for seed, t in tests.items()},
            'top1': mean_of([t['student']['top1'] for t in tests.values()]),
            'teacher': mean_of([t.get('teacher', {}).get('perplexity') for t in tests.values()]),
            'agreement': mean_of([t.get('agreement') for t in tests.values()]),
            'kl': mean_of([t.get('kl') for t in tests.values()]),
            'gap': mean_of([t.get('sharpness_gap') for t in tests.values()]),
            'counts': first['counts'], 'machines': sorted({machine_name(r) for r in seed_runs.values()})}


def delta_text(row, other):
    if other is None or row is other:
        return '-'
    diff, half, n = paired_interval(row, other)
    return f'{diff:+.2f} ± {half:.2f} (n={n})' if not math.isnan(half) else f'{diff:+.2f} (n={n})'


def lm_table(rows, reference='kd', baseline='ce'):
    """Markdown table; ``rows`` maps a row label (method or method@grid point) to :func:`summarize` output. No step
    times: runs of a study share the machine with whatever else runs, so cost is measured side by side in one
    process by tools/lm_benchmark.py instead."""
    ref, base = rows.get(reference), rows.get(baseline)
    ref_name = LABELS.get(reference, reference)
    fmt = lambda value, spec: '-' if value is None else format(value, spec)  # noqa: E731
    lines = ['| method | student test perplexity (mean ± std) | Δ vs student alone, paired 95% CI | '
             f'Δ vs {ref_name}, paired 95% CI | student top-1 % | teacher perplexity | agreement % | KL(p_t‖p_s) | '
             'sharpness gap | trainable teacher params |', '|' + '---|' * 10]
    for label, row in rows.items():
        values = list(row['student'].values())
        std = f'{statistics.stdev(values):.2f}' if len(values) > 1 else 'n/a'
        method, _, point = label.partition('@')
        name = with_point(LABELS.get(method, method), point_text(point) if point else '')
        trainable = f'{row["counts"]["teacher"][0]:,}' if 'teacher' in row['counts'] else '-'
        lines.append(f'| {name} | {sum(values) / len(values):.2f} ± {std} (n={row["n"]}) | {delta_text(row, base)} | '
                     f'{delta_text(row, ref)} | {fmt(row["top1"], ".2f")} | {fmt(row["teacher"], ".2f")} | '
                     f'{fmt(row["agreement"], ".2f")} | {fmt(row["kl"], ".3f")} | {fmt(row["gap"], ".3f")} | '
                     f'{trainable} |')
    return '\n'.join(lines)


def borrow_teacher(source, out_dir):
    """Copies the teacher of the study in ``source`` (checkpoint and summary) into ``out_dir``, where missing."""
    paths = [(os.path.join(source, 'ckpt', 'teacher', 'teacher.pt'), os.path.join(out_dir, 'ckpt', 'teacher',
                                                                                   'teacher.pt')),
             (summary_path(source, 'teacher'), summary_path(out_dir, 'teacher'))]
    for src, dst in paths:
        if not os.path.isfile(src):
            sys.exit(f'--teacher_dir: {src} does not exist (run that study first)')
        if not os.path.isfile(dst):
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copy2(src, dst)


def main(argv=None):
    args = get_args(argv)
    out_dir = os.path.abspath(args.out_dir)
    teacher_ckpt = os.path.join(out_dir, 'ckpt', 'teacher', 'teacher.pt')
    grid = parse_grid(args.grid, args.methods)

    def plan(method, point, grid_overrides, seed):
        label = method + (f'@{point}' if point else '')
        run_label = f'{label}_seed{seed}'.replace('=', '-').replace('@', '__')
        model = 'models.model' if method == 'ce' else 'models.student_model'
        overrides = [f'{model}.dst_ckpt={os.path.join(out_dir, "ckpt", run_label, "student.pt")}', *args.overrides,
                     *grid_overrides]
        if method != 'ce':
            overrides.append(f'models.teacher_model.src_ckpt={teacher_ckpt}')
        return label, run_label, config_path(method), seed, overrides

    teacher = ('teacher', 'teacher', config_path('teacher'), 0, [f'models.model.dst_ckpt={teacher_ckpt}'])
    if args.teacher_dir and not args.table_only:
        borrow_teacher(os.path.abspath(args.teacher_dir), out_dir)
    runs = [plan(method, point, overrides, seed) for seed in range(args.seeds) for method in args.methods
            for point, overrides in grid[method]]
    if args.records_dir:
        copy_records(os.path.abspath(args.records_dir), out_dir)
    pending = [] if args.table_only else [r for r in [teacher, *runs]
                                          if not os.path.isfile(summary_path(out_dir, r[1]))]
    recorded = None
    if pending and teacher not in pending and not os.path.isfile(teacher_ckpt):  # records without the checkpoint
        recorded = teacher_perplexity(out_dir)
        pending.insert(0, teacher)
    if pending:
        print(f'{len(pending)} runs to go ({len(runs) + 1 - len(pending)} finished) in {out_dir}')
    failures = {}
    for item in pending:
        label, run_label, config, seed, overrides = item
        try:
            run(config, out_dir, run_label, seed, overrides, resume=True, script=SCRIPT)
        except RunFailed as error:
            if item is teacher:
                sys.exit(str(error))
            failures.setdefault(label, []).append(run_label)
            print(str(error).splitlines()[0], file=sys.stderr)
            continue
        if item is teacher and recorded is not None and teacher_perplexity(out_dir) != recorded:
            sys.exit(f'the teacher trained again has test perplexity {teacher_perplexity(out_dir)} where the records '
                     f'say {recorded}: the finished runs learnt from another teacher; start a new --out_dir / '
                     '--records_dir')
        if args.records_dir:  # after every run, so an interrupted comparison keeps what finished
            copy_records(out_dir, os.path.abspath(args.records_dir))
    rows = {}
    for label, run_label, _, seed, _ in runs:
        if os.path.isfile(summary_path(out_dir, run_label)):
            with open(summary_path(out_dir, run_label)) as f:
                rows.setdefault(label, {})[seed] = json.load(f)
    rows = {label: summarize(seed_runs) for label, seed_runs in rows.items()}
    text = lm_table(rows, args.reference)
    for label, run_labels in failures.items():
        text += f'\n| {label} | failed: {", ".join(run_labels)} (see logs/) |' + ' |' * 8
    if os.path.isfile(summary_path(out_dir, 'teacher')):
        machines = sorted({m for row in rows.values() for m in row['machines']})
        text += (f'\n\nHeld-out perplexity on files of the Python standard library that no run trains on (lower is '
                 f'better), configs/causal_lm_offline/: a 4-layer GPT-2-style teacher trained once (test perplexity '
                 f'{teacher_perplexity(out_dir):.2f}), a 2-layer student on a smaller transfer set; seeds '
                 f'0..{args.seeds - 1} paired. Δ: mean over seeds of (method - other) with the 95% t-interval; '
                 'negative is better. Teacher perplexity: the teacher as used at test time (adapted for PESF-KD, '
                 f'fine-tuned online for FT-KD). Machine: {", ".join(machines) or "-"}.')
    publish_table(text, out_dir, args.records_dir, write=not args.table_only)
    return rows


if __name__ == '__main__':
    main()
