"""Helpers of tests/test_dist_*.py: start tests/_dist_worker.py under torchrun on CPU (gloo) and read its results."""
import json
import os
import socket
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, 'tests', '_dist_worker.py')


def torchrun(nproc, mode, out_dir, tag, *args, expect_ok=True):
    """Runs the worker on ``nproc`` gloo processes (one thread each); returns its log text."""
    command = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={nproc}', WORKER,
               mode, str(out_dir), tag, *map(str, args)]
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    completed = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                               timeout=300, cwd=ROOT)
    if expect_ok:
        assert completed.returncode == 0, completed.stdout[-4000:]
    return completed.stdout


def rank_results(out_dir, tag, nproc, ext='json'):
    paths = [os.path.join(out_dir, f'{tag}_rank{rank}.{ext}') for rank in range(nproc)]
    if ext == 'json':
        return [json.load(open(path)) for path in paths]
    return [torch.load(path, weights_only=False) for path in paths]


def write_random_teacher(config_path):
    """Saves a randomly initialised teacher where ``config_path``'s teacher checkpoint is expected (these tests
    check bookkeeping across processes, not accuracy, so the teacher needs no training)."""
    from pesf_ext.engine.config import load_config
    from pesf_ext.engine.models import build_model
    teacher_config = load_config(config_path)['models']['teacher_model']
    torch.manual_seed(0)
    model = build_model({'key': teacher_config['key'], 'kwargs': teacher_config['kwargs']}, torch.device('cpu'),
                        False, 'models.teacher_model')
    os.makedirs(os.path.dirname(teacher_config['src_ckpt']), exist_ok=True)
    torch.save({'model': model.state_dict()}, teacher_config['src_ckpt'])
    return config_path


def tiny_run_args(config_path, *extra, batch_size=16, steps=1):
    """Runner arguments for a seconds-long run: ``steps`` training steps of ``batch_size`` per epoch."""
    return ['--config', config_path, '--device', 'cpu', '--seed', '0', '--max_steps_per_epoch', str(steps),
            '--set', f'train.train_data_loader.kwargs.batch_size={batch_size}',
            'train.val_data_loader.kwargs.batch_size=8', 'test.test_data_loader.kwargs.batch_size=8', *extra]


def free_port():
    """A TCP port free on this machine now (for MASTER_PORT or a rendezvous endpoint)."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]
