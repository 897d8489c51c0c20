"""Writes docs/bad_input.md: bad inputs a new user might give the runner, and the exact line each one gets.

    python tools/bad_input_table.py                 # prints the table
    python tools/bad_input_table.py --write docs/bad_input.md

Every case starts from the shipped PESF-KD Fashion-MNIST config (configs/fashion_mnist/resnet56_resnet20_pesfkd.yaml
on a 128-image budget, with a randomly initialised teacher checkpoint where the config expects one), changes one
thing, and runs it through the same ``main_guard(run)`` as ``tools/image_classification.py``; the table gives the
exit status and the last line on stderr (temporary paths shown as ``<tmp>``). tests/test_bad_input.py runs the
same cases and checks that docs/bad_input.md is what they print today.
"""
import argparse
import contextlib
import io
import json
import math
import os
import sys
import tempfile
from dataclasses import dataclass, field

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import pesf_ext  # noqa: E402,F401
from pesf_ext.engine.cli import main_guard  # noqa: E402
from pesf_ext.engine.config import load_config  # noqa: E402
from pesf_ext.engine.models import build_model  # noqa: E402
from pesf_ext.engine.runner import get_args, run  # noqa: E402
from quickstart import set_anchor  # noqa: E402

BASE = os.path.join(ROOT, 'configs', 'fashion_mnist', 'resnet56_resnet20_pesfkd.yaml')
BUDGET = {'num_train_samples': 128, 'num_val_samples': 64, 'num_test_samples': 64, 'num_epochs': 1, 'num_workers': 0}


def pesf_kwargs(config):
    return config['train']['criterion']['kwargs']['sub_terms']['pesfkd']['criterion']['kwargs']


def setter(*path, value):
    """An edit that sets config[path[0]][path[1]]... to ``value`` (ints in ``path`` index lists)."""
    def edit(config):
        node = config
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value
    return edit


def loss_setter(name, value):
    def edit(config):
        pesf_kwargs(config)[name] = value
    return edit


def student_lr_1e30(config):
    for group in config['train']['optimizer']['module_wise_configs']:
        if not group.get('is_teacher'):
            group['kwargs']['lr'] = 1.0e30


def alpha_alone(config):
    pesf_kwargs(config)['alpha'] = 1.5
    del pesf_kwargs(config)['beta']


def teacher_path(config):
    return config['models']['teacher_model']['src_ckpt']


def truncated_teacher(config):
    """The teacher checkpoint cut in half, as an interrupted copy leaves it."""
    path = os.path.join(os.path.dirname(teacher_path(config)), 'truncated.pt')
    with open(teacher_path(config), 'rb') as f:
        data = f.read()
    with open(path, 'wb') as f:
        f.write(data[:len(data) // 2])
    config['models']['teacher_model']['src_ckpt'] = path


def other_model_teacher(config):
    """A ResNet-20's checkpoint where the ResNet-56 teacher's belongs."""
    path = os.path.join(os.path.dirname(teacher_path(config)), 'resnet20.pt')
    torch.save({'model': build_model(config['models']['student_model'], torch.device('cpu'), False,
                                     'models.student_model').state_dict()}, path)
    config['models']['teacher_model']['src_ckpt'] = path


def truncated_last(config):
    """A ``<dst_ckpt stem>_last.pt`` cut short (the disk filled up while another tool copied it)."""
    stem = os.path.splitext(config['models']['student_model']['dst_ckpt'])[0]
    os.makedirs(os.path.dirname(stem), exist_ok=True)
    with open(teacher_path(config), 'rb') as f:
        data = f.read()
    with open(f'{stem}_last.pt', 'wb') as f:
        f.write(data[:4096])


def adapters_only(config):
    optimizer = config['train']['optimizer']
    optimizer['module_wise_configs'] = [e for e in optimizer['module_wise_configs'] if e.get('is_teacher')]


@dataclass
class Case:
    what: str                    # what the user wrote
    edit: object = None          # function changing the loaded YAML dict
    argv: list = field(default_factory=list)
    text: object = None          # function changing the YAML text (the file the runner reads)
    missing_config: bool = False


TRAIN_LOADER = ('train', 'train_data_loader', 'kwargs')
ADAPTER = ('train', 'teacher', 'auxiliary_model_wrapper', 'kwargs', 'adapters', 0)
CASES = [
    Case('`temperature: .nan` (PESF-KD loss)', loss_setter('temperature', math.nan)),
    Case('`temperature: .inf`', loss_setter('temperature', math.inf)),
    Case('`temperature: 0`', loss_setter('temperature', 0.0)),
    Case('`beta: -0.5`', loss_setter('beta', -0.5)),
    Case('`alpha: 1.5` without `beta` (beta = 1 - alpha < 0)', alpha_alone),
    Case('`train.num_epochs: -2`', setter('train', 'num_epochs', value=-2)),
    Case('`train.num_epochs: 2.5`', setter('train', 'num_epochs', value=2.5)),
    Case('`train_data_loader.kwargs.batch_size: 0`', setter(*TRAIN_LOADER, 'batch_size', value=0)),
    Case('`train_data_loader.kwargs.num_workers: -1`', setter(*TRAIN_LOADER, 'num_workers', value=-1)),
    Case('adapter `bottleneck: 0`', setter(*ADAPTER, 'bottleneck', value=0)),
    Case('optimizer `momentum: 1.5`', setter('train', 'optimizer', 'kwargs', 'momentum', value=1.5)),
    Case('optimizer `lr: -0.1`', setter('train', 'optimizer', 'kwargs', 'lr', value=-0.1)),
    Case("adapters' `lr: 2e-5` (YAML 1.1 reads it as a string)",
         setter('train', 'optimizer', 'module_wise_configs', 6, 'kwargs', 'lr', value='2e-5')),
    Case('sub-term `weight: .nan`', setter('train', 'criterion', 'kwargs', 'sub_terms', 'pesfkd', 'weight',
                                           value=math.nan)),
    Case('scheduler `milestones: [15, -1]`', setter('train', 'scheduler', 'kwargs', 'milestones', value=[15, -1])),
    Case('`speed: {amp: fp8}`', setter('speed', value={'amp': 'fp8'})),
    Case('`--max_steps_per_epoch -1`', argv=['--max_steps_per_epoch', '-1']),
    Case('`--config` file that does not exist', missing_config=True),
    Case('YAML syntax error (a tab indents a line)', text=lambda text: 'train:\n\tnum_epochs: 1\n' + text),
    Case('teacher checkpoint missing', setter('models', 'teacher_model', 'src_ckpt', value='/missing/teacher.pt')),
    Case('teacher checkpoint truncated (half the file)', truncated_teacher),
    Case("teacher checkpoint of another model (a ResNet-20's)", other_model_teacher),
    Case('`-resume` with a truncated `<dst_ckpt stem>_last.pt`', truncated_last, argv=['-resume']),
    Case('`optimizer.module_wise_configs` lists only the adapters (the student would never train)', adapters_only),
    Case("student's `lr: 1.0e+30` (in range, but the run diverges: the NaN stop)", student_lr_1e30),
]


def small_config(tmp_dir):
    """The base config on the test budget in ``tmp_dir``, and a random teacher checkpoint where it looks for one."""
    with open(BASE) as f:
        text = f.read()
    for anchor, value in {**BUDGET, 'ckpt_root': os.path.join(tmp_dir, 'ckpt'),
                          'root_dir': os.path.join(tmp_dir, 'data')}.items():
        text = set_anchor(text, anchor, value)
    path = os.path.join(tmp_dir, 'pesfkd.yaml')
    with open(path, 'w') as f:
        f.write(text)
    teacher = load_config(path)['models']['teacher_model']
    torch.manual_seed(0)
    model = build_model({**teacher, 'src_ckpt': None}, torch.device('cpu'), False, 'models.teacher_model')
    os.makedirs(os.path.dirname(teacher['src_ckpt']), exist_ok=True)
    torch.save({'model': model.state_dict()}, teacher['src_ckpt'])
    return path


def run_case(case, base_path, tmp_dir):
    """Runs one case as the runner's command line would; returns (exit status, last stderr line). An error that
    escapes the guard (a traceback) propagates."""
    path = base_path
    if case.missing_config:
        path = os.path.join(tmp_dir, 'no_such_config.yaml')
    elif case.text is not None:
        with open(base_path) as f:
            text = case.text(f.read())
        path = os.path.join(tmp_dir, 'edited.yaml')
        with open(path, 'w') as f:
            f.write(text)
    args = get_args(['--config', path, '--device', 'cpu', '--seed', '0', *case.argv])
    config = None
    if case.edit is not None:
        config = load_config(path)
        case.edit(config)
    stderr, status = io.StringIO(), 0
    with contextlib.redirect_stderr(stderr):
        try:
            main_guard(lambda: run(args, build_model, config=config), args)
        except SystemExit as exit_:
            status = exit_.code
    lines = stderr.getvalue().strip().splitlines()
    last = lines[-1] if lines else ''
    return status, last.replace(tmp_dir, '<tmp>')


def run_all(cases=CASES):
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp_dir = os.path.realpath(tmp_dir)
        base_path = small_config(tmp_dir)
        return [(case, *run_case(case, base_path, tmp_dir)) for case in cases]


LM_BASE = os.path.join(ROOT, 'configs', 'causal_lm_offline', 'gpt2_4l_gpt2_2l_stdlib_pesfkd.yaml')
LM_RECORD = {'instruction': 'Name a colour.', 'response': 'Red.'}


def lm_write(tmp_dir, name, text):
    path = os.path.join(tmp_dir, name)
    with open(path, 'w') as f:
        f.write(text)
    return path


def lm_instructions(text):
    """An edit that turns the base config's text entry into an instruction entry reading ``text`` as its file."""
    def edit(config, tmp_dir):
        entry = config['datasets']['lm']
        path = lm_write(tmp_dir, 'data.jsonl', text)
        config['datasets']['lm'] = {'kind': 'instruction', 'data_files': {'train': [path]},
                                    'prompt_template': '{instruction}\n', 'response_field': 'response',
                                    'max_length': 64, 'held_out': {'validation': 2, 'test': 2},
                                    'dataset_id_map': entry['dataset_id_map']}
    return edit


def lm_set(getter, **values):
    def edit(config, tmp_dir):
        getter(config).update(values)
    return edit


def lm_loss(config):
    return config['train']['criterion']['kwargs']['sub_terms']['pesfkd']['criterion']['kwargs']


def lm_lora(config):
    return config['train']['teacher']['auxiliary_model_wrapper']['kwargs']


def lm_weights_only(config, tmp_dir):
    """A student folder with config.json and weights but no tokenizer (--student_model points at it)."""
    from transformers import AutoModelForCausalLM, GPT2Config
    folder = os.path.join(tmp_dir, 'gpt2-2l-weights-only')
    AutoModelForCausalLM.from_config(GPT2Config(n_layer=2, n_embd=128, n_head=2, n_positions=128,
                                                vocab_size=1024)).save_pretrained(folder)
    return ['--student_model', folder]


LM_LINES = json.dumps(LM_RECORD) + '\n'
LM_CASES = [
    Case('a JSON-lines record without its `response`', lm_instructions(
        LM_LINES * 3 + json.dumps({'instruction': 'Name a fruit.'}) + '\n')),
    Case('a JSON-lines file cut in the middle of a line', lm_instructions(LM_LINES * 2 + '{"instruction": "Na')),
    Case('an empty JSON-lines file', lm_instructions('')),
    Case('`datasets.lm.block_sise: 64` (misspelt)', lm_set(lambda c: c['datasets']['lm'], block_sise=64)),
    Case('`block_size: 512` past the models\' context (n_positions 128)',
         lm_set(lambda c: c['datasets']['lm'], block_size=512)),
    Case("`teacher_update: 'frozen'` with the `LoRATeacher` kept", lm_set(lm_loss, teacher_update='frozen')),
    Case('LoRA `target_modules: [q_proj]` on GPT-2', lm_set(lm_lora, target_modules=['q_proj'])),
    Case('LoRA `lora_alpah: 8` (misspelt)', lm_set(lm_lora, lora_alpah=8)),
    Case('`TokenKDLoss` `temprature: 2.0` (misspelt)', lm_set(lm_loss, temprature=2.0)),
    Case('`--rouge_samples -1`', argv=['--rouge_samples', '-1']),
    Case('`--max_new_tokens 0`', argv=['--max_new_tokens', '0']),
    Case('`--student_model` folder with weights but no tokenizer', text=lm_weights_only),
]


def run_lm_case(case, tmp_dir):
    """One causal-LM case through the command line and guard of ``tools/causal_lm.py``; (status, last line)."""
    from pesf_ext.lm.runner import get_lm_args, run_lm
    config = load_config(LM_BASE)
    config['models']['teacher_model']['src_ckpt'] = None  # a random teacher: every row stops before training
    config['models']['student_model']['dst_ckpt'] = os.path.join(tmp_dir, 'ckpt', 'student.pt')
    if case.edit is not None:
        case.edit(config, tmp_dir)
    argv = case.argv + (case.text(config, tmp_dir) if case.text is not None else [])
    stderr, status = io.StringIO(), 0
    with contextlib.redirect_stderr(stderr):
        try:
            main_guard(lambda: run_lm(get_lm_args(['--config', LM_BASE, '--device', 'cpu', '--seed', '0',
                                                    '--cache_dir', os.path.join(tmp_dir, 'cache'), *argv]),
                                      config=config), None)
        except SystemExit as exit_:
            status = exit_.code
    lines = stderr.getvalue().strip().splitlines()
    return status, (lines[-1] if lines else '').replace(tmp_dir, '<tmp>')


def run_lm_all(cases=LM_CASES):
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp_dir = os.path.realpath(tmp_dir)
        return [(case, *run_lm_case(case, tmp_dir)) for case in cases]


def lm_markdown(rows):
    """The causal-LM section: one row per case (what, the line); every case exits with status 1."""
    lines = ['## Causal language models', '',
             'Each row starts from `configs/causal_lm_offline/gpt2_4l_gpt2_2l_stdlib_pesfkd.yaml` (a random teacher),',
             'changes one thing and runs it through the guard of `tools/causal_lm.py`. Every row exits with status 1',
             'before any weights are trained: the data entry, its local files and the models\' `config.json` are',
             'checked before a model is loaded, the tokenizers before any text is tokenized.', '',
             '| what the user gave | the one line on stderr |', '|---|---|']
    for case, status, line in rows:
        lines.append(f'| {case.what} | {line.replace("|", "&#124;")} |')
    return lines + ['']


def markdown(rows, lm_rows=()):
    lines = ['# Bad input: what the user gets', '',
             'Written by `python tools/bad_input_table.py --write docs/bad_input.md`; tests/test_bad_input.py checks',
             'that this file matches what the runner prints today. Each row starts from',
             '`configs/fashion_mnist/resnet56_resnet20_pesfkd.yaml` on a 128-image budget, changes one thing and runs',
             'it through the guard of `tools/image_classification.py`. The line shown is all the console gets (the',
             'last line on stderr); the traceback goes to the `--run_log` file, or to the console with `--debug`.',
             'Nothing is trained and no checkpoint is written in any row but the last, which stops before the',
             'optimizer step that would use the non-finite loss (checkpoints of finished epochs stay as they were).',
             '', '| what the user gave | exit status | the one line on stderr |', '|---|---|---|']
    for case, status, line in rows:
        lines.append(f'| {case.what} | {status} | {line.replace("|", "&#124;")} |')
    return '\n'.join(lines + [''] + (lm_markdown(lm_rows) if lm_rows else []) + NOTES) + '\n'


EPILOG = '''examples:
  python tools/bad_input_table.py                                # print the table
  python tools/bad_input_table.py --write docs/bad_input.md      # rewrite the document'''
NOTES = [
    '## Checking a config without running it',
    '',
    '`-dry_run` reads and checks everything a run would read (the YAML, its checkpoints and data, the models and the',
    'optimizer groups) and exits without training or testing: `python tools/image_classification.py --config',
    'my.yaml -dry_run` (the text runner takes it too). tests/test_generated_bad_input.py runs it on mutated copies of',
    'the shipped configs (wrong types, out-of-range values, unknown keys, missing, truncated and mismatched files).',
    '',
    "## Which parameters train: `module: '*'`",
    '',
    'A non-empty `train.optimizer.module_wise_configs` trains only the modules it lists (torchdistill). Before',
    'training the runner checks that every parameter that requires a gradient is in an optimizer group, and stops',
    'with the row above otherwise. To give some modules their own settings without listing every other one, add an',
    "entry `module: '*'`: every trainable parameter of that side (`is_teacher`) that no other entry lists, with its",
    "own `kwargs` or, without them, the optimizer's `kwargs`:",
    '',
    '```yaml',
    'optimizer:',
    "  key: 'SGD'",
    '  kwargs: {lr: 0.05, momentum: 0.9, weight_decay: 0.0005}   # the student\'s settings',
    '  module_wise_configs:',
    "    - module: 'adapters'                                     # the teacher's adapters: their own lr",
    '      is_teacher: True',
    '      kwargs: {lr: 0.001, momentum: 0.9, weight_decay: 0.0005}',
    "    - module: '*'                                            # every student module not listed above",
    '      is_teacher: False',
    '```',
]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--write', help='write the Markdown table to this file')
    args = parser.parse_args(argv)
    text = markdown(run_all(), run_lm_all())
    if args.write:
        with open(args.write, 'w') as f:
            f.write(text)
    print(text)


if __name__ == '__main__':
    main()
