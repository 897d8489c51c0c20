"""GLUE experiment driver (offline configs): one fine-tuned MiniLM-L6 teacher per task, then methods x seeds on the
3-layer student, and a Markdown table with the paired difference to a reference method (95% t-interval over seeds),
the teacher's metric (adapted / fine-tuned when that side trains), sharpness gap, cost and trainable parameters
(``pesf-glue-compare``; in a clone also ``python tools/glue_compare.py``).

    python tools/glue_compare.py --task sst2 --seeds 3                 # docs/glue.md's SST-2 table
    python tools/glue_compare.py --task rte --seeds 3 --methods ce kd pesfkd ftkd dml --jobs 2

Every run is a process of tools/text_classification.py on a shipped config of configs/glue_offline/<task>/ with
its checkpoints under --out_dir (``--set`` overrides), the same teacher for every method and seed, and paired seeds
(same student batches per seed). Resumable like tools/compare.py: runs whose summary JSON exists are skipped, an
interrupted one continues from its last epoch; ``-table_only`` builds the table from finished runs; ``--jobs 2``
runs two at a time with ``OMP_NUM_THREADS`` split between them.
"""
import argparse
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor

from .compare import LABELS, SPEED_NOTE, alone, copy_records, last_record, publish_table, summarize, table
from .paths import configs_dir
from .quickstart import EPOCH_METRICS_OVERRIDES, ROOT, RunFailed, records_path, run, summary_path

METHODS = ('ce', 'kd', 'pesfkd', 'pesfkd_head', 'ftkd', 'dml', 'zscore', 'pkd', 'pkd_pesfkd')
LABELS = {**LABELS, 'ce': 'Student (CE)'}
SCRIPT = 'text_classification.py'


def config_path(task, method):
    name = {'teacher': 'minilm_l6_teacher_ce', 'ce': 'minilm_l3_student_ce'}.get(method,
                                                                                  f'minilm_l6_minilm_l3_{method}')
    return os.path.join(configs_dir(), 'glue_offline', task, f'{name}.yaml')


EPILOG = '''examples:
  pesf-glue-compare --task sst2 --seeds 3
  pesf-glue-compare --task rte --seeds 3 --methods ce kd pesfkd ftkd dml --jobs 2
  pesf-glue-compare --task sst2 --seeds 3 -table_only
(in a clone, `python tools/glue_compare.py` takes the same options)'''


def get_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--task', default='sst2', choices=('sst2', 'rte'))
    parser.add_argument('--methods', nargs='+', default=list(METHODS), choices=METHODS)
    parser.add_argument('--seeds', type=int, default=3, help='seeds 0..N-1 per method')
    parser.add_argument('--reference', default='kd')
    parser.add_argument('--metric', default='accuracy', help="test metric compared ('accuracy', 'f1', 'score')")
    parser.add_argument('--set', nargs='+', action='extend', default=[], dest='overrides', metavar='KEY=VALUE',
                        help='YAML overrides for every run')
    parser.add_argument('--jobs', type=int, default=1)
    parser.add_argument('--out_dir', default=os.path.join(ROOT, 'runs', 'glue_compare'))
    parser.add_argument('--records_dir', default=None,
                        help='a folder that keeps the finished runs across machines (e.g. committed, '
                             'docs/results/glue_<task>): its summaries and per-epoch records are copied into '
                             '--out_dir before and back after; the teacher is fine-tuned again when its checkpoint is '
                             'missing, and must reproduce its recorded metric')
    parser.add_argument('-table_only', action='store_true')
    return parser.parse_args(argv)



def teacher_metric_of(out_dir, metric):
    with open(summary_path(out_dir, 'teacher')) as f:
        return json.load(f)['test']['student'][metric]


def main(argv=None):
    args = get_args(argv)
    out_dir = os.path.join(os.path.abspath(args.out_dir), args.task)
    teacher_ckpt = os.path.join(out_dir, 'ckpt', 'teacher', 'teacher.pt')
    threads = max(1, (os.cpu_count() or 1) // max(args.jobs, 1))
    user_threads = os.environ.get('OMP_NUM_THREADS')
    os.environ.setdefault('OMP_NUM_THREADS', str(threads))

    def plan(method, seed):
        label = f'{method}_seed{seed}'
        model = 'models.model' if method == 'ce' else 'models.student_model'
        overrides = [f'{model}.dst_ckpt={os.path.join(out_dir, "ckpt", label, "student.pt")}',
                     f'{model}.builder.kwargs.teacher_ckpt={teacher_ckpt}', *EPOCH_METRICS_OVERRIDES, *args.overrides]
        if method != 'ce':
            overrides.append(f'models.teacher_model.src_ckpt={teacher_ckpt}')
        return method, label, config_path(args.task, method), seed, overrides

    teacher = ('teacher', 'teacher', config_path(args.task, 'teacher'), 0,
               [f'models.model.dst_ckpt={teacher_ckpt}', *EPOCH_METRICS_OVERRIDES, *args.overrides])
    runs = [plan(method, seed) for seed in range(args.seeds) for method in args.methods]
    if args.records_dir:
        copy_records(os.path.abspath(args.records_dir), out_dir)
    pending = [] if args.table_only else [r for r in [teacher, *runs] if not os.path.isfile(summary_path(out_dir, r[1]))]
    recorded_teacher = None
    if pending and teacher not in pending and not os.path.isfile(teacher_ckpt):  # records without the checkpoint
        recorded_teacher = teacher_metric_of(out_dir, args.metric)
        pending.insert(0, teacher)

    def execute(item):
        _, label, config, seed, overrides = item
        result = run(config, out_dir, label, seed, overrides, resume=True, script=SCRIPT)
        if args.records_dir:  # after every run, so an interrupted comparison keeps what finished
            copy_records(out_dir, os.path.abspath(args.records_dir))
        return result

    failures = {}
    try:
        if teacher in pending:
            with alone(user_threads):
                execute(teacher)
            if recorded_teacher is not None and teacher_metric_of(out_dir, args.metric) != recorded_teacher:
                sys.exit(f'the teacher fine-tuned again scores {teacher_metric_of(out_dir, args.metric)} where the '
                         f'records say {recorded_teacher}: the finished runs learnt from another teacher; start a new '
                         '--out_dir / --records_dir')
        with ThreadPoolExecutor(max_workers=max(args.jobs, 1)) as pool:
            futures = [(item, pool.submit(execute, item)) for item in pending if item is not teacher]
            for item, future in futures:
                try:
                    future.result()
                except RunFailed as error:
                    failures.setdefault(item[0], []).append(item[1])
                    print(str(error).splitlines()[0], file=sys.stderr)
    except RunFailed as error:
        sys.exit(str(error))
    rows = {}
    for method, label, _, seed, _ in runs:
        if os.path.isfile(summary_path(out_dir, label)):
            with open(summary_path(out_dir, label)) as f:
                rows.setdefault(method, {})[seed] = (json.load(f), last_record(records_path(out_dir, label)))
    rows = {method: summarize(seed_runs, args.metric) for method, seed_runs in rows.items()}
    teacher_metric = teacher_metric_of(out_dir, args.metric)
    text = table(rows, args.reference, failures, metric=args.metric, labels=LABELS)
    text += (f'\n\nGLUE {args.task.upper()} dev ({args.metric}), configs/glue_offline/{args.task}/: MiniLM-L6 teacher '
             f'fine-tuned once ({args.metric} {teacher_metric:.2f}), 3-layer student cut from it; seeds '
             f'0..{args.seeds - 1} paired. Δ: mean over seeds of (method - {LABELS.get(args.reference)}) with the 95% '
             't-interval. Teacher column: the teacher as used at test time (adapted for PESF-KD, fine-tuned online '
             'for FT-KD and DML). ' + SPEED_NOTE)
    publish_table(text, out_dir, args.records_dir)
    return rows


if __name__ == '__main__':
    main()
