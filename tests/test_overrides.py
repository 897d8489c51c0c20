"""--set overrides: applied, type-checked, unknown paths rejected with the key named."""
import pytest

from pesf_ext.engine.errors import ConfigError
from pesf_ext.engine.overrides import apply_overrides


class Built:  # stands for an object built by !import_call while the YAML is read
    pass


def make_config():
    return {'train': {'num_epochs': 30, 'log_freq': 100, 'flag': True, 'name': 'SGD',
                      'optimizer': {'kwargs': {'lr': 0.05}, 'module_wise_configs': [{'kwargs': {'lr': 2e-5}}]},
                      'scheduler': {'kwargs': {'milestones': [15, 25]}}, 'nothing': None},
            'datasets': {'train': Built()}}


def test_values_applied_with_types():
    config = make_config()
    applied = apply_overrides(config, ['train.num_epochs=5', 'train.optimizer.kwargs.lr=1',
                                       'train.optimizer.module_wise_configs.0.kwargs.lr=1e-4',
                                       'train.scheduler.kwargs.milestones=[2, 4]', 'train.flag=false',
                                       'train.nothing={a: 1}', '+train.post_epoch_process=abc'])
    assert config['train']['num_epochs'] == 5 and isinstance(config['train']['num_epochs'], int)
    assert config['train']['optimizer']['kwargs']['lr'] == 1.0
    assert isinstance(config['train']['optimizer']['kwargs']['lr'], float)
    assert config['train']['optimizer']['module_wise_configs'][0]['kwargs']['lr'] == 1e-4  # YAML 1.1 '1e-4'
    assert config['train']['scheduler']['kwargs']['milestones'] == [2, 4]
    assert config['train']['flag'] is False
    assert config['train']['nothing'] == {'a': 1}
    assert config['train']['post_epoch_process'] == 'abc'
    assert applied[0] == ('train.num_epochs', 30, 5)


@pytest.mark.parametrize('override, message', [
    ('train.num_epoch=5', 'train.num_epoch: no such key in the YAML. Closest: num_epochs'),
    ('train.nope.lr=5', 'train.nope: no such key'),
    ('train.optimizer.module_wise_configs.3.kwargs.lr=1', '`3` is not an index of this 1-item list'),
    ('train.num_epochs=five', "train.num_epochs: expected int like the YAML value 30, got str 'five'"),
    ('train.num_epochs=2.5', 'train.num_epochs: expected int'),
    ('train.flag=1', 'train.flag: expected bool'),
    ('train.name=3', 'train.name: expected str'),
    ('train.scheduler.kwargs.milestones=3', 'milestones: expected list'),
    ('datasets.train.root=x', 'datasets.train.root: the YAML value above it is a Built'),
    ('datasets.train=x', 'built while the YAML is read'),
    ('train.num_epochs', 'expected KEY=VALUE'),
    ('+train.optimizer.module_wise_configs.1=3', 'a new key can only be added under a mapping'),
    ('train.name=[layer3.?]', "train.name: value `[layer3.?]` is not valid YAML"),
    ('train.name=[layer3.?]', "quote a string that holds one of YAML's special characters"),
])
def test_bad_overrides_name_the_key_and_change_nothing(override, message):
    config = make_config()
    with pytest.raises(ConfigError, match=None) as info:
        apply_overrides(config, ['train.log_freq=1', override])
    assert message in str(info.value)
    assert config['train']['log_freq'] == 100  # checked before anything is applied


def test_runner_cli_rejects_unknown_path_before_running(tmp_path):
    import subprocess
    import sys
    import os
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config = os.path.join(root, 'configs', 'fashion_mnist', 'resnet56_resnet20_kd.yaml')
    done = subprocess.run([sys.executable, os.path.join(root, 'tools', 'image_classification.py'), '--config',
                           config, '--device', 'cpu', '--set', 'train.num_epoch=5'],
                          capture_output=True, text=True, cwd=str(tmp_path))
    assert done.returncode != 0
    assert 'Config error: --set train.num_epoch: no such key in the YAML' in done.stderr
    assert 'Traceback' not in done.stderr
