"""Compare methods on Fashion-MNIST with several seeds: one Markdown table in the shape of the PESF-KD paper's
Tables I/II/IV (student accuracy, adapted teacher accuracy, sharpness gap, cost, trainable parameters).

    python tools/compare.py                                   # 16 configs x 3 seeds on the CPU budget of quickstart
    python tools/compare.py --methods kd pesfkd dkd --seeds 5 --num_train_samples 12000 --num_epochs 5

Every run uses the shipped configs in configs/fashion_mnist/ with the budget anchors of tools/quickstart.py
(``budget_config``), the same teacher (trained once by ``resnet56_teacher_ce.yaml`` on the same budget), the same
student architecture and the same train subset; seeds change initialisation and data order only. Each run is a
separate process of tools/image_classification.py (``quickstart.run``); its summary JSON, log and the table are
written under ``--out_dir``. A run that fails is reported in the table and does not stop the others.
"""
import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from quickstart import BUDGET, ROOT, TEACHER, RunFailed, budget_config, run, set_anchor, summary_path  # noqa: E402

STUDENT_CE = 'student_ce'
LABELS = {
    STUDENT_CE: 'Student (CE)', 'kd': 'KD', 'pesfkd': 'PESF-KD', 'ftkd': 'FT-KD', 'zscore': 'Z-score KD',
    'pesfkd_zscore': 'PESF-KD + Z-score', 'ftkd_zscore': 'FT-KD + Z-score', 'dml': 'DML', 'kdcl': 'KDCL',
    'kdcl_naive': 'KDCL (naive)', 'pkt': 'PKT', 'crd': 'CRD', 'rkd': 'RKD', 'pesfkd_pkt': 'PKT + PESF-KD',
    'pesfkd_crd': 'CRD + PESF-KD', 'pesfkd_rkd': 'RKD + PESF-KD', 'dkd': 'DKD', 'dkd_zscore': 'DKD + Z-score',
}
DEFAULT_METHODS = (STUDENT_CE, 'kd', 'pesfkd', 'ftkd', 'zscore', 'pesfkd_zscore', 'dml', 'kdcl', 'pkt', 'crd', 'rkd',
                   'pesfkd_pkt', 'pesfkd_crd', 'pesfkd_rkd', 'dkd', 'dkd_zscore')
FULL_TRAIN_SIZE = 55000  # Fashion-MNIST train split


def config_name(method):
    return 'resnet20_student_ce.yaml' if method == STUDENT_CE else f'resnet56_resnet20_{method}.yaml'


def write_config(name, out_dir, epochs, sizes, crd_negatives):
    """quickstart's budget config, then this comparison's data sizes; CRD's memory follows the train size."""
    path = budget_config(name, out_dir, epochs)
    with open(path) as f:
        text = f.read()
    for anchor, value in sizes.items():
        text = set_anchor(text, anchor, value)
    if '&crd_num_samples ' in text:
        text = set_anchor(text, 'crd_num_samples', min(sizes['num_train_samples'], FULL_TRAIN_SIZE))
        text = set_anchor(text, 'crd_num_negative_samples', crd_negatives)
    with open(path, 'w') as f:
        f.write(text)
    return path


def mean(values):
    return sum(values) / len(values) if values else float('nan')


def summarize(runs):
    """Aggregates the JSON results of one method over seeds."""
    test = [r['test'] for r in runs]
    return {
        'n': len(runs),
        'student': [t['student']['top1'] for t in test],
        'teacher': [t['teacher']['top1'] for t in test if 'teacher' in t],
        'gap': [t['sharpness_gap'] for t in test if 'sharpness_gap' in t],
        'seconds_per_step': mean([r['seconds_per_step'] for r in runs]),
        'counts': runs[0]['counts'],
    }


def table(rows, failures=None):
    """Markdown table: ``rows`` maps a method to :func:`summarize` output."""
    kd_speed = rows['kd']['seconds_per_step'] if 'kd' in rows else None
    lines = ['| method | student top-1 (mean ± std) | adapted/used teacher top-1 | sharpness gap | s/step | '
             'ratio to KD | trainable student / teacher params |', '|' + '---|' * 7]
    for method, res in rows.items():
        std = f'{statistics.stdev(res["student"]):.2f}' if res['n'] > 1 else 'n/a'
        teacher = f'{mean(res["teacher"]):.2f}' if res['teacher'] else '-'
        gap = f'{mean(res["gap"]):.3f}' if res['gap'] else '-'
        ratio = f'{res["seconds_per_step"] / kd_speed:.2f}' if kd_speed else '-'
        params = f'{res["counts"]["student"][0]:,} / ' + (
            f'{res["counts"]["teacher"][0]:,}' if 'teacher' in res['counts'] else '-')
        lines.append(f'| {LABELS.get(method, method)} | {mean(res["student"]):.2f} ± {std} (n={res["n"]}) | '
                     f'{teacher} | {gap} | {res["seconds_per_step"]:.4f} | {ratio} | {params} |')
    for method, labels in (failures or {}).items():
        lines.append(f'| {LABELS.get(method, method)} | failed: {", ".join(labels)} (see logs/) | | | | | |')
    return '\n'.join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--methods', nargs='+', default=list(DEFAULT_METHODS),
                        help=f'method names (configs/fashion_mnist/resnet56_resnet20_<name>.yaml, or {STUDENT_CE})')
    parser.add_argument('--seeds', type=int, default=3, help='number of seeds (0, 1, ...) per method')
    parser.add_argument('--num_train_samples', type=int, default=BUDGET['num_train_samples'])
    parser.add_argument('--num_val_samples', type=int, default=BUDGET['num_val_samples'])
    parser.add_argument('--num_test_samples', type=int, default=BUDGET['num_test_samples'])
    parser.add_argument('--num_epochs', type=int, default=BUDGET['num_epochs'], help='epochs of every method')
    parser.add_argument('--teacher_epochs', type=int, default=4, help='epochs of the teacher CE run')
    parser.add_argument('--crd_negatives', type=int, default=4096,
                        help="CRD's negatives per sample (configs and paper: 16384, ~7 s/step on 2 CPU cores; "
                             '4096 keeps the CPU budget affordable)')
    parser.add_argument('--out_dir', default=os.path.join(ROOT, 'runs', 'compare'))
    parser.add_argument('-reuse', action='store_true',
                        help='keep the results already in --out_dir (teacher and method/seed runs whose summary JSON '
                             'exists) and run only the missing ones; delete a JSON to redo that run')
    args = parser.parse_args(argv)
    unknown = [m for m in args.methods if m != STUDENT_CE and m not in LABELS]
    if unknown:
        parser.error(f'unknown methods {unknown}; known: {", ".join(LABELS)}')
    out_dir = os.path.abspath(args.out_dir)
    sizes = {'num_train_samples': args.num_train_samples, 'num_val_samples': args.num_val_samples,
             'num_test_samples': args.num_test_samples}

    def run_or_reuse(config, label, seed):
        summary = summary_path(out_dir, label)
        if args.reuse and os.path.isfile(summary):
            print(f'[{label}] reusing {summary}', flush=True)
            with open(summary) as f:
                return json.load(f)
        return run(config, out_dir, label, seed)

    # one teacher for every method and seed
    run_or_reuse(write_config(TEACHER, out_dir, args.teacher_epochs, sizes, args.crd_negatives), 'teacher_ce', 0)
    rows, failures = {}, {}
    for method in args.methods:
        config = write_config(config_name(method), out_dir, args.num_epochs, sizes, args.crd_negatives)
        runs = []
        for seed in range(args.seeds):
            label = f'{method}_seed{seed}'
            try:
                runs.append(run_or_reuse(config, label, seed))
            except RunFailed:
                failures.setdefault(method, []).append(label)
                print(f'[{label}] failed; see {os.path.join(out_dir, "logs", label + ".log")}', flush=True)
        if runs:
            rows[method] = summarize(runs)
    text = table(rows, failures)
    text += (f'\n\nFashion-MNIST, ResNet-56 -> ResNet-20; {args.num_train_samples} train / {args.num_test_samples} '
             f'test images, {args.num_epochs} epochs (teacher: {args.teacher_epochs}), seeds 0..{args.seeds - 1}; '
             f'CRD with {args.crd_negatives} negatives. Sharpness gap = mean over test images of '
             'logsumexp(z_t) - logsumexp(z_s); s/step = mean training step time (ratio: to KD, same machine).')
    print(text)
    with open(os.path.join(out_dir, 'results', 'table.md'), 'w') as f:
        f.write(text + '\n')
    with open(os.path.join(out_dir, 'results', 'summary.json'), 'w') as f:
        json.dump({'args': vars(args), 'rows': rows, 'failures': failures}, f, indent=2)
    return rows


if __name__ == '__main__':
    main()
