"""A hung collective ends the run: with ``PESF_DIST_TIMEOUT_S`` set short, a rank that waits at a barrier the other
rank never reaches stops within the limit, with one line naming the rank and the collective, and torchrun exits
non-zero.

Run as a script under torchrun, this file is its own worker: it joins the group through the runners'
``init_distributed`` and stops through their ``main_guard``.
"""
import os
import subprocess
import sys
import time

import pytest

TIMEOUT_S = 4


def test_dist_timeout_reads_the_environment(monkeypatch):
    from pesf_ext.engine.distributed import DIST_TIMEOUT_ENV, dist_timeout
    from pesf_ext.engine.errors import ConfigError
    monkeypatch.delenv(DIST_TIMEOUT_ENV, raising=False)
    assert dist_timeout().total_seconds() == 1800
    monkeypatch.setenv(DIST_TIMEOUT_ENV, '7.5')
    assert dist_timeout().total_seconds() == 7.5
    assert dist_timeout(3).total_seconds() == 3  # an explicit value wins
    for bad in ('0', '-1', 'ten', 'inf'):
        monkeypatch.setenv(DIST_TIMEOUT_ENV, bad)
        with pytest.raises(ConfigError, match=DIST_TIMEOUT_ENV):
            dist_timeout()


def test_a_barrier_one_rank_never_reaches_ends_the_run_with_one_line(tmp_path):
    command = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
               os.path.abspath(__file__), str(tmp_path)]
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PESF_DIST_TIMEOUT_S': str(TIMEOUT_S)}
    start = time.monotonic()
    completed = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               timeout=120)
    elapsed = time.monotonic() - start
    assert completed.returncode != 0
    # rank 0 sleeps 90 s: the run ended because rank 1 gave up after TIMEOUT_S (plus start-up and torchrun's stop)
    assert elapsed < 60, elapsed
    lines = [line for line in completed.stderr.splitlines() if line.startswith('Distributed: rank ')]
    assert len(lines) == 1, completed.stderr[-3000:]
    assert lines[0].startswith('Distributed: rank 1 of 2 timed out waiting in barrier'), lines[0]
    assert f'limit {TIMEOUT_S} s, PESF_DIST_TIMEOUT_S' in lines[0]
    assert 'test_dist_timeout.py' in lines[0]  # where the code called it
    with open(tmp_path / 'run.log') as f:  # the traceback went to the run log
        assert 'Traceback' in f.read()


def hang_or_wait():
    import torch
    from pesf_ext.engine.distributed import barrier, get_rank, init_distributed
    init_distributed(torch.device('cpu'))
    if get_rank() == 0:
        time.sleep(90)  # never reaches the barrier
    barrier()


if __name__ == '__main__':
    import argparse
    from pesf_ext.engine.cli import main_guard
    main_guard(hang_or_wait, argparse.Namespace(debug=False, run_log=os.path.join(sys.argv[1], 'run.log')))
