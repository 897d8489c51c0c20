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
import contextlib
import copy
import logging
import math
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pesf_ext  # noqa: E402,F401
import pesf_ext.lm  # noqa: E402,F401
from pesf_ext.engine.cli import main_guard  # noqa: E402
from pesf_ext.engine.config import load_config  # noqa: E402
from pesf_ext.lm.runner import get_lm_args, run_lm  # noqa: E402
from tqdm import tqdm  # noqa: E402

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


def cell(value, width, digits):
    """``value`` right-aligned with ``digits`` decimals; '-' where it does not apply (None, NaN)."""
    missing = value is None or isinstance(value, float) and math.isnan(value)
    return f'{"-":>{width}}' if missing else f'{value:>{width}.{digits}f}'


def format_table(rows):
    lines = ['', f'{"method":<14}{"student ppl":>12}{"teacher ppl":>12}{"agree %":>9}{"KL":>8}{"gap":>8}'
                 f'{"s/step":>8}{"teacher trainable":>19}']
    for label, results in rows:
        test = results['test']
        teacher = test['teacher']['perplexity'] if 'teacher' in test else None
        counts = results['counts']
        trainable = f'{counts["teacher"][0]:,}' if 'teacher' in counts else '-'
        lines.append(f'{label:<14}{cell(test["student"]["perplexity"], 12, 2)}{cell(teacher, 12, 2)}'
                     f'{cell(test.get("agreement"), 9, 2)}{cell(test.get("kl"), 8, 3)}'
                     f'{cell(test.get("sharpness_gap"), 8, 3)}{cell(results.get("seconds_per_step"), 8, 3)}'
                     f'{trainable:>19}')
    lines.append('(teacher CE: its own run, so "student ppl" is the teacher being trained)')
    return '\n'.join(lines)


def planned_steps(config, max_steps):
    """Training steps of one run: epochs x batches of its training blocks (capped by ``--max_steps``)."""
    train = config['train']
    loader = train['train_data_loader']['kwargs']
    blocks = config['datasets']['lm']['max_samples']['train']
    per_epoch = blocks // loader['batch_size'] if loader.get('drop_last') else math.ceil(blocks / loader['batch_size'])
    return train['num_epochs'] * (min(per_epoch, max_steps) if max_steps else per_epoch)


class StepProgress(logging.Handler):
    """Moves ``bar`` (training steps of every run) from the runner's log: torchdistill's ``Epoch: [e]  [ i/n]``
    lines within an epoch, the runner's ``Epoch e: ... over n steps`` at its end."""
    STEP = re.compile(r'^Epoch: \[\d+\]\s+\[\s*(\d+)/\d+\]')
    END = re.compile(r'^Epoch \d+: [\d.]+ s/step over (\d+) steps')

    def __init__(self, bar):
        super().__init__(logging.INFO)
        self.bar, self.done = bar, 0

    def emit(self, record):
        message = record.getMessage()
        end, step = self.END.match(message), self.STEP.match(message)
        if end:
            self.done += int(end.group(1))
            self.move(self.done)
        elif step:
            self.move(self.done + int(step.group(1)))

    def move(self, position):
        self.bar.total = max(self.bar.total, position)
        self.bar.update(position - self.bar.n)


@contextlib.contextmanager
def quiet_runs(log_path, total_steps):
    """One progress bar with ETA on the terminal; the runs' log lines, warnings and their own bars go to
    ``log_path`` (as the image quickstart keeps its runs' output in log files)."""
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    terminal = sys.stderr
    root = logging.getLogger()
    saved_level = root.level
    with open(log_path, 'a') as log, tqdm(total=total_steps, unit='step', desc='lm quickstart', file=terminal,
                                         dynamic_ncols=True) as bar:
        to_file = logging.StreamHandler(log)
        to_file.setFormatter(logging.Formatter('%(asctime)s %(levelname)s %(name)s %(message)s'))
        handlers = [to_file, StepProgress(bar)]
        root.setLevel(logging.INFO)
        for handler in handlers:
            root.addHandler(handler)   # the runner's basic log set-up then adds no console handler
        try:
            with contextlib.redirect_stderr(log):   # warnings and the runner's epoch bar (off: not a terminal)
                yield bar
        finally:
            for handler in handlers:
                root.removeHandler(handler)
            root.setLevel(saved_level)


def main(argv=None):
    args = get_args(argv)
    teacher_ckpt = os.path.join(args.out_dir, 'teacher', 'gpt2-4l-stdlib.pt')

    def run_all():
        start = time.time()
        log_path = os.path.join(args.out_dir, 'logs', 'lm_quickstart.log')
        print(f'{len(RUNS)} runs (teacher, student alone, KD, PESF-KD, FT-KD); their logs: {log_path}', flush=True)
        total = sum(planned_steps(prepare(name, args, teacher_ckpt), args.max_steps) for _, name in RUNS)
        rows = []
        with quiet_runs(log_path, total) as bar:
            for label, name in RUNS:
                bar.set_description(f'lm quickstart: {label}')
                rows.append((label, run_one(name, args, teacher_ckpt)))
        table = format_table(rows)
        print(table + f'\n{len(rows)} runs in {(time.time() - start) / 60:.1f} min', flush=True)
        return rows
    return main_guard(run_all, args)


if __name__ == '__main__':
    main()
