"""The determinism switch (``-deterministic`` / ``speed.deterministic: True``) is applied, and a bad value is one line."""
import os
import subprocess
import sys

import pytest
import torch

from pesf_ext.engine.errors import ConfigError
from pesf_ext.engine.speed import speed_options

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_yaml_key_and_flag_are_read_and_checked():
    assert speed_options({}).deterministic is False
    assert speed_options({'speed': {'deterministic': True}}).deterministic is True
    with pytest.raises(ConfigError, match=r"^speed\.deterministic: must be True or False, got 'yes'$"):
        speed_options({'speed': {'deterministic': 'yes'}})


@pytest.fixture
def restore_determinism(monkeypatch):
    monkeypatch.delenv('CUBLAS_WORKSPACE_CONFIG', raising=False)
    cudnn = torch.backends.cudnn
    saved = torch.are_deterministic_algorithms_enabled(), cudnn.benchmark, cudnn.deterministic
    yield
    torch.use_deterministic_algorithms(saved[0])
    cudnn.benchmark, cudnn.deterministic = saved[1:]


def test_flag_switches_on_deterministic_algorithms(small_config, restore_determinism):
    from pesf_ext.engine import runner
    from pesf_ext.engine.models import build_model
    config = small_config('resnet20_student_ce.yaml', num_test_samples=8)
    torch.use_deterministic_algorithms(False)
    runner.run(runner.get_args(['--config', config, '--device', 'cpu', '-test_only', '-deterministic']), build_model)
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert os.environ['CUBLAS_WORKSPACE_CONFIG'] == ':4096:8'


def test_bad_yaml_value_stops_with_one_line(small_config, tmp_path):
    path = small_config('resnet20_student_ce.yaml')
    with open(path, 'a') as f:
        f.write("\nspeed:\n  deterministic: 'yes'\n")
    completed = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'image_classification.py'), '--config',
                                path, '--device', 'cpu'], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert completed.returncode == 1
    assert completed.stderr.strip().splitlines()[-1] == \
        "Config error: speed.deterministic: must be True or False, got 'yes'"
    assert 'Traceback' not in completed.stderr
