"""Bad YAML input stops before training with one message that names the YAML key (or file) at fault."""
import importlib
import os
import subprocess
import sys

import pytest

from pesf_ext.engine import runner
from pesf_ext.engine.config import load_config, validate_config
from pesf_ext.engine.errors import ConfigError
from pesf_ext.engine.models import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PESF = 'resnet56_resnet20_pesfkd.yaml'
PESF_TERM = 'train.criterion.kwargs.sub_terms.pesfkd'
# the package exports a function of the same name, so reach the module itself through importlib
fashion_mnist_module = importlib.import_module('pesf_ext.data.fashion_mnist')


@pytest.fixture
def pesf_config(small_config):
    path = small_config(PESF)
    config = load_config(path)
    config['models']['teacher_model']['src_ckpt'] = None  # no trained teacher needed to check a config
    return path, config


def run_checks(path, config):
    """Everything the runner checks before the first step: static checks, then paths against the built models."""
    args = runner.get_args(['--config', path, '--device', 'cpu', '--max_steps_per_epoch', '0'])
    runner.run(args, build_model, config=config)


def expect(path, config, *fragments):
    with pytest.raises(ConfigError) as error:
        run_checks(path, config)
    for fragment in fragments:
        assert fragment in str(error.value), str(error.value)
    return str(error.value)


def adapter_kwargs(config):
    return config['train']['teacher']['auxiliary_model_wrapper']['kwargs']


def pesf_kwargs(config):
    return config['train']['criterion']['kwargs']['sub_terms']['pesfkd']['criterion']['kwargs']


def test_unknown_loss_key_suggests_close_match(pesf_config):
    path, config = pesf_config
    config['train']['criterion']['kwargs']['sub_terms']['pesfkd']['criterion']['key'] = 'PESFKDLos'
    expect(path, config, f'{PESF_TERM}.criterion.key', 'unknown loss `PESFKDLos`', 'Closest: PESFKDLoss')


def test_unknown_wrapper_key(pesf_config):
    path, config = pesf_config
    config['train']['teacher']['auxiliary_model_wrapper']['key'] = 'AdapterTeachr'
    expect(path, config, 'train.teacher.auxiliary_model_wrapper.key', 'AdapterTeacher')


def test_unknown_model_key(pesf_config):
    path, config = pesf_config
    config['models']['student_model']['key'] = 'resnet2O'
    expect(path, config, 'models.student_model.key', 'unknown model `resnet2O`', 'resnet20')


def test_unknown_adapter_kind(pesf_config):
    path, config = pesf_config
    adapter_kwargs(config)['adapters'][0]['kind'] = 'botleneck'
    expect(path, config, 'train.teacher.auxiliary_model_wrapper.kwargs.adapters', 'bottleneck')


def test_adapter_path_not_in_model_lists_nearest(pesf_config):
    path, config = pesf_config
    adapter_kwargs(config)['adapters'][0]['modules'] = ['layer4.?']
    expect(path, config, 'train.teacher.auxiliary_model_wrapper.kwargs.adapters', 'layer4.?', 'layer3.8')


def test_adapter_dimension_that_does_not_fit(pesf_config):
    path, config = pesf_config
    adapter_kwargs(config)['adapters'][0]['dim'] = 7
    expect(path, config, 'train.teacher.auxiliary_model_wrapper.kwargs.adapters', '7')


def test_hook_path_not_in_model(pesf_config):
    path, config = pesf_config
    config['train']['student']['forward_hook']['output'] = ['layer3', 'layer4']
    expect(path, config, 'train.student.forward_hook.output[1]', '`layer4`', 'layer3')


def test_pesfkd_with_frozen_teacher(pesf_config):
    path, config = pesf_config
    config['train']['teacher']['requires_grad'] = False
    expect(path, config, 'train.teacher.requires_grad', 'PESFKDLoss')


def test_pesfkd_without_adapters(pesf_config):
    path, config = pesf_config
    del config['train']['teacher']['auxiliary_model_wrapper']
    expect(path, config, 'train.teacher.auxiliary_model_wrapper', 'AdapterTeacher')


def test_pesfkd_adapters_on_unfrozen_base(pesf_config):
    path, config = pesf_config
    adapter_kwargs(config)['freeze_base'] = False
    expect(path, config, 'train.teacher.auxiliary_model_wrapper.kwargs.freeze_base')


def test_ftkd_with_frozen_teacher(small_config):
    path = small_config('resnet56_resnet20_ftkd.yaml')
    config = load_config(path)
    config['models']['teacher_model']['src_ckpt'] = None
    config['train']['teacher']['requires_grad'] = False
    expect(path, config, 'train.teacher.requires_grad', 'FTKDLoss')


@pytest.mark.parametrize('name, value, fragment', [
    ('temperature', 0.0, 'temperature: must be > 0'),
    ('beta', -0.5, 'beta: must be >= 0'),
    ('alpha', -1.0, 'alpha: must be >= 0'),
])
def test_bad_numbers(pesf_config, name, value, fragment):
    path, config = pesf_config
    pesf_kwargs(config)[name] = value
    expect(path, config, f'{PESF_TERM}.criterion.kwargs.{name}', fragment)


@pytest.mark.parametrize('value, fragment', [('2e-5', 'must be a number'), (0.0, 'must be > 0')])
def test_bad_learning_rate_names_the_param_group(pesf_config, value, fragment):
    path, config = pesf_config
    config['train']['optimizer']['module_wise_configs'][-1]['kwargs']['lr'] = value  # the adapters' group
    expect(path, config, 'train.optimizer.module_wise_configs[6].kwargs.lr', fragment)


def test_missing_checkpoint(pesf_config):
    path, config = pesf_config
    config['models']['teacher_model']['src_ckpt'] = '/nonexistent/teacher.pt'
    expect(path, config, 'models.teacher_model.src_ckpt', '/nonexistent/teacher.pt')


def test_missing_dst_ckpt_and_unknown_dataset_id(pesf_config):
    path, config = pesf_config
    config['train']['val_data_loader']['dataset_id'] = 'fashion_mnist/vall'
    expect(path, config, 'train.val_data_loader.dataset_id', 'fashion_mnist/val')
    config['train']['val_data_loader']['dataset_id'] = 'fashion_mnist/val'
    del config['models']['student_model']['dst_ckpt']
    with pytest.raises(ConfigError, match='models.student_model.dst_ckpt'):
        validate_config(config)


def test_missing_data_files_name_every_place_looked(small_config, tmp_path, monkeypatch):
    path = small_config(PESF, root_dir=str(tmp_path / 'empty'))
    with open(path) as f:
        text = f.read()
    assert 'download:' not in text  # the loader's default is True; no network attempt in this test
    text = text.replace("        split: '", "        download: False\n        split: '")
    with open(path, 'w') as f:
        f.write(text)
    monkeypatch.setattr(fashion_mnist_module, 'DEBIAN_FASHION_MNIST_DIR', str(tmp_path / 'no_debian'))
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert path in message and str(tmp_path / 'empty') in message and 'no_debian' in message
    assert 'a download: not allowed (download: False)' in message


def test_command_line_prints_one_message(small_config):
    path = small_config(PESF, num_epochs=1)  # its teacher checkpoint was never trained here
    completed = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'image_classification.py'),
                                '--config', path, '--device', 'cpu'], capture_output=True, text=True)
    assert completed.returncode == 1
    last_line = completed.stderr.strip().splitlines()[-1]
    assert last_line.startswith('Config error: models.teacher_model.src_ckpt: checkpoint file not found: ')
    assert 'Traceback' not in completed.stderr
