"""Helpers of tests/test_dist_*.py: start tests/_dist_worker.py under torchrun on CPU (gloo) and read its results."""
import json
import os
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
