"""Generated bad input: the shipped configs, each mutated one way at a time (wrong types, out-of-range numbers,
unknown keys, missing/truncated/mismatched checkpoints and data), go through the runners' ``-dry_run`` (the YAML,
the files it names, the models and the optimizer groups are checked; nothing is trained) inside the same guard as
the command line. Every mutation must end with exit status 1, exactly one error line naming the YAML key or the
file, and no traceback.

Families: Fashion-MNIST KD / PESF-KD / Z-score / DKD on a 128-image budget, CIFAR-100 KD on tiny random data
(its data folder pointed at an empty temporary one for the data mutation), GLUE RTE KD (offline config) with a tiny
BERT and tiny GLUE files.
"""
import contextlib
import copy
import io
import math
import os
import shutil

import pytest
import torch

import pesf_ext  # noqa: F401
from conftest import set_anchor
from glue_fixtures import write_tiny_bert, write_tiny_glue
from pesf_ext.engine.cli import main_guard
from pesf_ext.engine.config import load_config
from pesf_ext.engine.models import build_model
from pesf_ext.engine.runner import get_args, run
from pesf_ext.engine.synthetic import synthetic_data
from pesf_ext.engine.values import walk

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FASHION_MNIST = ['kd', 'pesfkd', 'zscore', 'dkd']
# out-of-range and wrong-type values by key name; base i takes value (i + k) % len for its k-th key, so the
# families share the work and every value is tried somewhere
VALUES = {
    'num_epochs': [-1, 2.5, None, 'ten'],
    'batch_size': [0, 'abc', -3],
    'lr': [math.nan, -0.1, '2e-5', math.inf],
    'temperature': [0.0, math.nan, -4.0],
    'momentum': [1.5, -0.1],
    'weight_decay': [-1.0, math.nan],
    'num_workers': [-1, 0.5],
    'milestones': [[15, -1], [2.5]],
    'beta': [-0.5],
}
CPU = torch.device('cpu')


def value_mutations(config, base_index):
    """(description, edit, yaml key the line must name) for the first occurrence of each key of VALUES."""
    seen, mutations = set(), []
    for key, name, _ in walk({k: v for k, v in config.items() if k not in ('datasets', 'dependencies')}, ''):
        if name in VALUES and name not in seen:
            seen.add(name)
            values = VALUES[name]
            value = values[(base_index + len(seen)) % len(values)]
            mutations.append((f'{key}: {value!r}', setter(key, value), key))
    return mutations


def node_at(config, dotted):
    """The mapping holding the last component of ``dotted`` (walk's key: a.b[2].c) and that component."""
    parts = dotted.replace('[', '.[').split('.')
    node = config
    for part in parts[:-1]:
        node = node[int(part[1:-1])] if part.startswith('[') else node[part]
    last = parts[-1]
    return node, int(last[1:-1]) if last.startswith('[') else last


def setter(dotted, value):
    def edit(config):
        node, last = node_at(config, dotted)
        node[last] = value
    return edit


def first_term_kwargs(config):
    criterion = config['train']['criterion']
    name, term = next(iter(criterion['kwargs']['sub_terms'].items()))
    return f'train.criterion.kwargs.sub_terms.{name}.criterion.kwargs', term['criterion'].setdefault('kwargs', {})


def unknown_key_mutations(config):
    term_key, _ = first_term_kwargs(config)

    def misspelt_loss_argument(c):
        first_term_kwargs(c)[1]['temprature'] = 4.0
    return [
        ('top-level `trian:`', setter('trian', {'num_epochs': 1}), 'trian: unknown top-level section'),
        ('`train.num_epoch`', setter('train.num_epoch', 3), 'train.num_epoch: unknown key'),
        ('loss argument `temprature`', misspelt_loss_argument, f'{term_key}.temprature: not an argument of'),
        ('optimizer argument `momentun`', setter('train.optimizer.kwargs.momentun', 0.9),
         'train.optimizer.kwargs.momentun: not an argument of'),
        ('student model argument `num_clases`', setter('models.student_model.kwargs.num_clases', 10),
         'models.student_model.kwargs'),
        ('`train.optimizer.kwargs` a list', setter('train.optimizer.kwargs', [0.1]), 'train.optimizer.kwargs: must be'),
        ('student model key `resnet2O`', setter('models.student_model.key', 'resnet2O'),
         'models.student_model.key: unknown model'),
    ]


def one_line(status, stderr, needles):
    errors = [line for line in stderr.splitlines() if line.startswith(('Config error:', 'Error:', 'Training stopped'))]
    assert 'Traceback' not in stderr, stderr[-2000:]
    assert status == 1, (status, stderr[-2000:])
    assert len(errors) == 1, errors
    assert errors[0].startswith('Config error: '), errors[0]
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def guarded(call, args):
    stderr, status = io.StringIO(), 0
    with contextlib.redirect_stderr(stderr):
        try:
            main_guard(call, args)
        except SystemExit as done:
            status = done.code
    return status, stderr.getvalue()


def dry_run_image(path, config=None, argv=()):
    args = get_args(['--config', path, '--device', 'cpu', '--seed', '0', '-dry_run', *argv])
    return guarded(lambda: run(args, build_model, config=config), args)


# ---------------------------------------------------------------- image families

@pytest.fixture(scope='module')
def image_world(tmp_path_factory):
    """Fashion-MNIST budget configs and one CIFAR-100 config in a temporary folder, with a random teacher
    checkpoint where they look for one."""
    if not os.path.isfile('/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz'):
        pytest.skip('Fashion-MNIST not installed')
    tmp = tmp_path_factory.mktemp('generated_bad_input')
    paths = {}
    for method in FASHION_MNIST:
        with open(os.path.join(ROOT, 'configs', 'fashion_mnist', f'resnet56_resnet20_{method}.yaml')) as f:
            text = f.read()
        for anchor, value in {'num_train_samples': 128, 'num_val_samples': 64, 'num_test_samples': 64,
                              'num_epochs': 1, 'num_workers': 0, 'ckpt_root': str(tmp / 'ckpt'),
                              'root_dir': str(tmp / 'fashion_mnist')}.items():
            text = set_anchor(text, anchor, value)
        paths[method] = str(tmp / f'{method}.yaml')
        with open(paths[method], 'w') as f:
            f.write(text)
    with open(os.path.join(ROOT, 'configs', 'cifar100', 'resnet56_resnet20_kd.yaml')) as f:
        text = f.read()
    for anchor, value in {'ckpt_root': str(tmp / 'ckpt100'), 'root_dir': str(tmp / 'cifar100'), 'num_workers': 0}.items():
        text = set_anchor(text, anchor, value)
    paths['cifar100'] = str(tmp / 'cifar100_kd.yaml')
    with open(paths['cifar100'], 'w') as f:
        f.write(text.replace('download: True', 'download: False'))  # never a 160 MB download from a test
    torch.manual_seed(0)
    for name in ('kd', 'cifar100'):
        with synthetic_data(num_samples=8) if name == 'cifar100' else contextlib.nullcontext():
            teacher_config = load_config(paths[name])['models']['teacher_model']
        teacher = build_model({**teacher_config, 'src_ckpt': None}, CPU, False, 'models.teacher_model')
        os.makedirs(os.path.dirname(teacher_config['src_ckpt']), exist_ok=True)
        torch.save({'model': teacher.state_dict()}, teacher_config['src_ckpt'])
    return tmp, paths


def image_cases():
    cases = []
    for index, name in enumerate(FASHION_MNIST + ['cifar100']):
        cases.append((name, index))
    return cases


@pytest.mark.parametrize('name, index', image_cases())
def test_mutated_image_configs_end_in_one_line(name, index, image_world):
    tmp, paths = image_world
    data = synthetic_data(num_samples=8) if name == 'cifar100' else contextlib.nullcontext()
    with data:
        base = load_config(paths[name])
        status, stderr = dry_run_image(paths[name], copy.deepcopy(base))
        assert status == 0, stderr[-2000:]  # the unmutated config passes
        mutations = value_mutations(base, index) + unknown_key_mutations(base)
        assert len(mutations) >= 12
        for what, edit, needle in mutations:
            config = load_config(paths[name])
            edit(config)
            status, stderr = dry_run_image(paths[name], config)
            one_line(status, stderr, [needle])


def cut(path, out, size):
    with open(path, 'rb') as f:
        data = f.read()
    with open(out, 'wb') as f:
        f.write(data[:size if size >= 0 else len(data) // 2])
    return out


@pytest.mark.parametrize('name', ['kd', 'pesfkd'])
def test_bad_checkpoints_end_in_one_line_and_overwrite_nothing(name, image_world):
    """Missing, truncated, garbage and other-model checkpoints, as the teacher's src_ckpt, as the -resume state and
    as the dst_ckpt a -test_only run reads; the files on disk are left as they were."""
    tmp, paths = image_world
    path = paths[name]
    base = load_config(path)
    teacher_ckpt = base['models']['teacher_model']['src_ckpt']
    dst_ckpt = base['models']['student_model']['dst_ckpt']
    stem = os.path.splitext(dst_ckpt)[0]
    bad = tmp / f'bad_{name}'
    bad.mkdir(exist_ok=True)
    garbage = str(bad / 'garbage.pt')
    with open(garbage, 'w') as f:
        f.write('not a checkpoint')
    student_state = str(bad / 'resnet20.pt')
    torch.save({'model': build_model(base['models']['student_model'], CPU, False, 's').state_dict()}, student_state)
    teacher_cases = [
        (str(bad / 'missing.pt'), 'checkpoint file not found'),
        (cut(teacher_ckpt, str(bad / 'half.pt'), -1), 'truncated or corrupt'),
        (cut(teacher_ckpt, str(bad / 'empty.pt'), 0), 'truncated or corrupt'),
        (garbage, 'truncated or corrupt'),
        (student_state, 'does not fit'),
    ]
    for ckpt, why in teacher_cases:
        config = load_config(path)
        config['models']['teacher_model']['src_ckpt'] = ckpt
        one_line(*dry_run_image(path, config), ['models.teacher_model.src_ckpt', ckpt, why])
    os.makedirs(os.path.dirname(dst_ckpt), exist_ok=True)
    for source, why in ((cut(teacher_ckpt, str(bad / 'last.pt'), 4096), 'truncated or corrupt'),
                        (student_state, "lacks 'epoch'")):  # a best-student file where the full state belongs
        shutil.copy(source, f'{stem}_last.pt')
        before = open(f'{stem}_last.pt', 'rb').read()
        args = get_args(['--config', path, '--device', 'cpu', '--seed', '0', '-resume', '--max_steps_per_epoch', '1'])
        line = one_line(*guarded(lambda: run(args, build_model), args), ['-resume', f'{stem}_last.pt', why])
        assert open(f'{stem}_last.pt', 'rb').read() == before, line
        assert not os.path.exists(dst_ckpt), 'a failed resume wrote a checkpoint'
        os.remove(f'{stem}_last.pt')
    for source, why in ((garbage, 'truncated or corrupt'), (teacher_ckpt, 'does not fit')):
        shutil.copy(source, dst_ckpt)
        one_line(*dry_run_image(path, argv=['-test_only']), ['models.student_model.dst_ckpt', dst_ckpt, why])
        os.remove(dst_ckpt)


def test_cifar100_without_its_data_names_the_data_folder(image_world):
    tmp, paths = image_world
    status, stderr = dry_run_image(paths['cifar100'])  # no synthetic data: the (empty) root_dir is read
    one_line(status, stderr, [paths['cifar100'], '(datasets)', str(tmp / 'cifar100')])


# ---------------------------------------------------------------- GLUE (offline config)

@pytest.fixture(scope='module')
def glue_world(tmp_path_factory):
    pytest.importorskip('transformers')
    tmp = tmp_path_factory.mktemp('generated_bad_input_glue')
    bert = write_tiny_bert(str(tmp / 'bert'))
    data = write_tiny_glue(str(tmp / 'glue'))
    return tmp, bert, data


def dry_run_text(tmp, bert, data_dir, config=None, argv=()):
    from pesf_ext.nlp.runner import get_text_args, run_text
    path = os.path.join(ROOT, 'configs', 'glue_offline', 'rte', 'minilm_l6_minilm_l3_kd.yaml')
    args = get_text_args(['--config', path, '--device', 'cpu', '--seed', '0', '-dry_run', '--data_dir', data_dir,
                          '--teacher_model', bert, '--student_model', bert,
                          '--set', 'datasets.glue.num_val_samples=4', *argv])  # tiny files: 24 train examples
    return guarded(lambda: run_text(args, config=config), args)


def test_mutated_glue_config_ends_in_one_line(glue_world, monkeypatch):
    tmp, bert, data = glue_world
    monkeypatch.chdir(tmp)  # the config's checkpoints are under ./resource
    from pesf_ext.nlp.models import build_text_model
    from pesf_ext.nlp.runner import apply_command_line, get_text_args
    path = os.path.join(ROOT, 'configs', 'glue_offline', 'rte', 'minilm_l6_minilm_l3_kd.yaml')
    base = load_config(path)
    apply_command_line(base, get_text_args(['--config', path, '--teacher_model', bert, '--student_model', bert]))
    teacher_config = base['models']['teacher_model']
    teacher = build_text_model({**teacher_config, 'src_ckpt': None}, CPU, False, 'models.teacher_model')
    os.makedirs(os.path.dirname(teacher_config['src_ckpt']), exist_ok=True)
    torch.save({'model': teacher.state_dict()}, teacher_config['src_ckpt'])
    status, stderr = dry_run_text(tmp, bert, data)
    assert status == 0, stderr[-2000:]

    mutations = value_mutations(load_config(path), 5)[:4]
    for what, edit, needle in mutations:
        config = load_config(path)
        edit(config)
        one_line(*dry_run_text(tmp, bert, data, config), [needle])

    one_line(*dry_run_text(tmp, bert, str(tmp / 'no_glue')), ['datasets.glue.raw_data_kwargs.data_dir'])
    one_line(*dry_run_text(tmp, bert, data, argv=['--set', 'datasets.glue.num_val_samples=250']),
             ['datasets.glue.num_val_samples', 'below the 24 examples'])
    one_line(*dry_run_text(tmp, bert, data, argv=['--student_model', str(tmp / 'no_model')]),
             ['models.student_model', str(tmp / 'no_model')])
    broken = str(tmp / 'glue_broken')
    for name, rewrite, needles in (
            ('missing column', lambda lines: [line.split('\t', 1)[1] for line in lines], ["columns ['sentence1']"]),
            ('empty file', lambda lines: [], ['could not be read as TSV']),
            ('unknown label', lambda lines: lines[:1] + [line.replace('not_entailment', 'maybe') for line in lines[1:]],
             ["unknown label 'maybe'"])):
        shutil.rmtree(broken, ignore_errors=True)
        shutil.copytree(data, broken)
        train = os.path.join(broken, 'RTE', 'train.tsv')
        with open(train) as f:
            lines = f.read().splitlines()
        with open(train, 'w') as f:
            f.write('\n'.join(rewrite(lines)) + ('\n' if rewrite(lines) else ''))
        one_line(*dry_run_text(tmp, bert, broken), [train, *needles])
    truncated = cut(teacher_config['src_ckpt'], str(tmp / 'teacher_half.pt'), -1)
    config = load_config(path)
    config['models']['teacher_model']['src_ckpt'] = truncated
    one_line(*dry_run_text(tmp, bert, data, config), ['models.teacher_model.src_ckpt', truncated])


# ---------------------------------------------------------------- causal LMs (offline configs, one GPU config)

try:  # tiny Qwen2 / GPT-2 folders and an offline tokenizer (module-scoped fixture), as test_lm_configs builds them
    from test_lm_configs import shrink, tiny_dirs  # noqa: F401
except pytest.skip.Exception:  # transformers, datasets or peft missing: the causal-LM cases skip
    shrink = tiny_dirs = None
LM_CONFIGS = sorted(os.path.join('configs', 'causal_lm_offline', name)
                    for name in os.listdir(os.path.join(ROOT, 'configs', 'causal_lm_offline'))) + \
    [os.path.join('configs', 'causal_lm', 'qwen2.5_1.5b_0.5b_dolly_pesfkd.yaml')]


def lm_entry(config):
    return config['datasets']['lm']


def lm_data_file(tmp, name, text):
    path = tmp / name
    path.write_text(text)
    return str(path)


def lm_mutations(config, tmp):
    """(description, edit, needles) of the causal-LM entry, the LoRA teacher and the token-level loss."""
    entry = lm_entry(config)
    length = 'max_length' if entry['kind'] == 'instruction' else 'block_size'
    cut = lm_data_file(tmp, 'cut.jsonl', '{"instruction": "a", "context": "", "response": "b"}\n{"instruction": "a')
    no_response = lm_data_file(tmp, 'no_response.jsonl', '{"instruction": "a", "context": ""}\n')
    empty = lm_data_file(tmp, 'empty.txt', '')
    mutations = [
        (f'`datasets.lm.{length}x`', lambda c: lm_entry(c).update({f'{length}x': 8}),
         [f'datasets.lm.{length}x: unknown key', f'Closest: {length}']),
        (f'{length} past the context', lambda c: lm_entry(c).update({length: 100_000}),
         [f'datasets.lm.{length}: 100000 tokens exceed the context of models.']),
        (f'{length}: 0', lambda c: lm_entry(c).update({length: 0}), [f'datasets.lm.{length}: must be an integer']),
        ('empty train file', lambda c: lm_entry(c)['data_files'].update(train=[empty]),
         ['datasets.lm.data_files.train:', empty]),
        ('max_samples not a mapping', lambda c: lm_entry(c).update(max_samples=10), ['datasets.lm.max_samples']),
    ]
    if entry['kind'] == 'instruction':
        mutations += [
            ('cut JSON line', lambda c: lm_entry(c)['data_files'].update(train=[cut]), [cut, 'line 2', 'not valid JSON']),
            ('record without response', lambda c: lm_entry(c)['data_files'].update(train=[no_response]),
             [no_response, 'line 1', '`response`']),
        ]
    else:
        mutations.append(('prompt_template on text data', lambda c: lm_entry(c).update(prompt_template='{x}'),
                          ["datasets.lm.prompt_template: applies to kind 'instruction' only"]))
    wrapper = ((config['train'].get('teacher') or {}).get('auxiliary_model_wrapper') or {})
    if wrapper.get('key') == 'LoRATeacher':
        key = 'train.teacher.auxiliary_model_wrapper'
        mutations += [
            ('LoRA `lora_alpah`', lambda c: c['train']['teacher']['auxiliary_model_wrapper']['kwargs'].update(
                lora_alpah=8), [f'{key}.kwargs.lora_alpah: not an argument of LoRATeacher', 'Closest: lora_alpha']),
            ('LoRA target matching nothing', lambda c: c['train']['teacher']['auxiliary_model_wrapper'][
                'kwargs'].update(target_modules=['qkv']), [f'{key}.kwargs.target_modules', 'linear layers are named']),
            ("LoRA teacher with teacher_update 'frozen'", lambda c: first_term_kwargs(c)[1].update(
                teacher_update='frozen'), [f"{key}: teacher_update 'frozen'"]),
        ]
    return mutations


def lm_dry_run(config, tmp, argv=()):
    """``-dry_run`` of the causal-LM runner (command line parsed inside the guard, as its options exit there)."""
    from pesf_ext.lm.runner import get_lm_args, run_lm

    def call():
        args = get_lm_args(['--config', 'unused.yaml', '--device', 'cpu', '--seed', '0', '-dry_run',
                            '--cache_dir', str(tmp / 'cache'), *argv])
        return run_lm(args, config=config)
    return guarded(call, None)


@pytest.mark.parametrize('index, path', list(enumerate(LM_CONFIGS)))
def test_mutated_lm_configs_end_in_one_line(index, path, request, tmp_path):
    if shrink is None:
        pytest.skip('transformers, datasets or peft not installed')
    dirs = request.getfixturevalue('tiny_dirs')

    def base():
        return shrink(load_config(os.path.join(ROOT, path)), dirs, tmp_path)
    status, stderr = lm_dry_run(base(), tmp_path)
    assert status == 0, stderr[-2000:]  # the unmutated config passes
    config = base()
    values = value_mutations(config, index)
    mutations = [(what, edit, [needle]) for what, edit, needle in values[index % 2::2]]  # every other key
    mutations += [(what, edit, [needle]) for what, edit, needle in unknown_key_mutations(config)[:3]]
    mutations += lm_mutations(config, tmp_path)
    for what, edit, needles in mutations:
        config = base()
        edit(config)
        one_line(*lm_dry_run(config, tmp_path), needles)
    for option, value in (('--rouge_samples', '-1'), ('--max_new_tokens', '0')):
        one_line(*lm_dry_run(base(), tmp_path, [option, value]), [f'{option}: must be an integer >='])
