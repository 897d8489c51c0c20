"""torchrun with 2 CPU processes (gloo): ranks end with identical student and teacher weights and metrics."""
import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, 'tests', '_distributed_worker.py')


def torchrun(out_dir, config_path, log_path):
    command = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', WORKER,
               str(out_dir), '--config', config_path, '--device', 'cpu', '--seed', '0']
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    with open(log_path, 'w') as log:
        completed = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=600, cwd=ROOT)
    assert completed.returncode == 0, open(log_path).read()[-4000:]


@pytest.mark.parametrize('method', ['pesfkd', 'ftkd'])
def test_two_cpu_processes_stay_in_sync(method, trained_teacher, small_config, tmp_path):
    config = small_config(f'resnet56_resnet20_{method}.yaml', num_train_samples=256)
    torchrun(tmp_path, config, tmp_path / 'torchrun.log')
    log = open(tmp_path / 'torchrun.log').read()
    assert 'backend gloo' in log
    states = [torch.load(tmp_path / f'rank{rank}.pt', weights_only=False) for rank in (0, 1)]
    metrics = [json.load(open(tmp_path / f'rank{rank}.json')) for rank in (0, 1)]
    for part in ('student', 'teacher'):
        assert states[0][part].keys() == states[1][part].keys()
        for key, value in states[0][part].items():
            torch.testing.assert_close(value, states[1][part][key], rtol=0, atol=1e-6, msg=f'{part}.{key}')
    assert metrics[0] == metrics[1]
    # the teacher side really trained: adapters left their zero init / the fine-tuned teacher moved
    if method == 'pesfkd':
        assert any(v.abs().sum() > 0 for k, v in states[0]['teacher'].items() if 'up' in k)
    pretrained = torch.load(load_teacher_ckpt(config), weights_only=False)['model']
    moved = any(not torch.equal(pretrained[k], states[0]['teacher'][k]) for k in pretrained
                if k in states[0]['teacher'])
    assert moved == (method == 'ftkd')


def load_teacher_ckpt(config_path):
    from pesf_ext.engine.config import load_config
    return load_config(config_path)['models']['teacher_model']['src_ckpt']
