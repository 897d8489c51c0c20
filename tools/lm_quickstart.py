"""Causal-LM quickstart on a CPU, offline: trains a 4-layer GPT-2-style teacher on the Python standard library's
source, then a 2-layer student alone, with KD, with PESF-KD (LoRA on the frozen teacher) and with FT-KD, on a
smaller transfer set, and prints one comparison table (held-out perplexity, teacher-student agreement, KL, sharpness
gap, seconds per step, trainable teacher parameters)::

    python tools/lm_quickstart.py                          # the configs' schedule: 11.6 minutes on 2 AMD EPYC cores
    python tools/lm_quickstart.py --transfer_blocks 512    # any size on the command line replaces the config's

The schedule is the one of configs/causal_lm_offline/ (teacher: 8,000 blocks of 128 tokens, one epoch; students:
256 blocks, ten epochs; 400 validation and 400 test blocks from files of the standard library held out by name).
One seed, so a first look, not a ranking: ``tools/lm_compare.py`` runs the paired-seed study.
"""
import argparse
import copy
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pesf_ext  # noqa: E402,F401
import pesf_ext.lm  # noqa: E402,F401
from pesf_ext.engine.cli import main_guard  # noqa: E402
from pesf_ext.engine.config import load_config  # noqa: E402
from pesf_ext.lm.runner import get_lm_args, run_lm  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, 'configs', 'causal_lm_offline')
RUNS = [('teacher CE', 'gpt2_4l_stdlib_teacher_ce.yaml'), ('student alone', 'gpt2_2l_stdlib_student_ce.yaml'),
        ('KD', 'gpt2_4l_gpt2_2l_stdlib_kd.yaml'), ('PESF-KD', 'gpt2_4l_gpt2_2l_stdlib_pesfkd.yaml'),
        ('FT-KD', 'gpt2_4l_gpt2_2l_stdlib_ftkd.yaml')]


def get_args(argv=None):
    parser = argparse.ArgumentParser(description='Causal-LM distillation quickstart (CPU, offline)')
    parser.add_argument('--out_dir', default='./resource/lm_quickstart', help='checkpoints and logs go here')
    parser.add_argument('--teacher_blocks', type=int, help="teacher training blocks (default: the config's)")
    parser.add_argument('--transfer_blocks', type=int, help="student training blocks (default: the config's)")
    parser.add_argument('--epochs', type=int, help="student epochs (default: the config's)")
    parser.add_argument('--eval_blocks', type=int, nargs=2, metavar=('VAL', 'TEST'),
                        help="validation and test blocks (default: the config's)")
    parser.add_argument('--max_steps', type=int, help='cap on training steps per epoch (smoke runs)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--device', default=None)
    parser.add_argument('--cache_dir', help='cache folder of the datasets library')
    return parser.parse_args(argv)


def prepare(name, args, teacher_ckpt):
    config = load_config(os.path.join(CONFIGS, name))
    models = config['models']
    student = models.get('student_model') or models['model']
    is_teacher_run = 'teacher_model' not in models and 'teacher' in student['dst_ckpt']
    student['dst_ckpt'] = teacher_ckpt if is_teacher_run else os.path.join(
        args.out_dir, os.path.splitext(name)[0], os.path.basename(student['dst_ckpt']))
    if 'teacher_model' in models:
        models['teacher_model']['src_ckpt'] = teacher_ckpt
    samples = config['datasets']['lm']['max_samples']
    blocks = args.teacher_blocks if is_teacher_run else args.transfer_blocks
    if blocks is not None:
        samples['train'] = blocks
    if args.eval_blocks is not None:
        samples['validation'], samples['test'] = args.eval_blocks
    if args.epochs is not None and not is_teacher_run:
        config['train']['num_epochs'] = args.epochs
    return config


def run_one(name, args, teacher_ckpt):
    config = prepare(name, args, teacher_ckpt)
    argv = ['--config', os.path.join(CONFIGS, name), '--seed', str(args.seed),
            '--run_log', os.path.join(args.out_dir, 'logs', name.replace('.yaml', '.log'))]
    for option, value in (('--device', args.device), ('--cache_dir', args.cache_dir),
                          ('--max_steps_per_epoch', args.max_steps)):
        if value is not None:
            argv += [option, str(value)]
    return run_lm(get_lm_args(argv), config=copy.deepcopy(config))


def format_table(rows):
    lines = ['', f'{"method":<14}{"student ppl":>12}{"teacher ppl":>12}{"agree %":>9}{"KL":>8}{"gap":>8}'
                 f'{"s/step":>8}{"teacher trainable":>19}']
    for label, results in rows:
        test = results['test']
        student = test['student']['perplexity']
        teacher = test['teacher']['perplexity'] if 'teacher' in test else float('nan')
        trainable = results['counts'].get('teacher', (0, 0))[0]
        pair = [test.get(k, float('nan')) for k in ('agreement', 'kl', 'sharpness_gap')]
        lines.append(f'{label:<14}{student:>12.2f}{teacher:>12.2f}{pair[0]:>9.2f}{pair[1]:>8.3f}{pair[2]:>8.3f}'
                     f'{results["seconds_per_step"] or float("nan"):>8.3f}{trainable:>19,}')
    lines.append('(teacher CE: its own run, so "student ppl" is the teacher being trained)')
    return '\n'.join(lines)


def main(argv=None):
    args = get_args(argv)
    teacher_ckpt = os.path.join(args.out_dir, 'teacher', 'gpt2-4l-stdlib.pt')

    def run_all():
        start = time.time()
        rows = [(label, run_one(name, args, teacher_ckpt)) for label, name in RUNS]
        table = format_table(rows)
        print(table + f'\n{len(rows)} runs in {(time.time() - start) / 60:.1f} min', flush=True)
        return rows
    return main_guard(run_all, args)


if __name__ == '__main__':
    main()
