"""Two torchrun "nodes" on one machine (``--nnodes 2``, c10d rendezvous), each with its own working folder and its
own ``--cache_dir``, checkpoints on one shared absolute path: the causal-LM runner gives the test results of a
two-process single-node run, only global rank 0 writes checkpoints and the summary, and each node's local rank 0
fills that node's data cache. Plus :func:`main_process_first` on 2 nodes x 2 processes."""
import json
import os
import subprocess
import sys
import time

import torch
from torch import distributed as dist
from torch import multiprocessing as mp

from test_lm_configs import ROOT, shrink, tiny_dirs  # noqa: F401 (tiny_dirs: the module-scoped fixture)
from pesf_ext.engine.config import load_config
from pesf_ext.engine.distributed import main_process_first
from _dist_run import free_port  # noqa: E402

WORKER = os.path.join(ROOT, 'tests', '_multinode_worker.py')
CONFIG = os.path.join(ROOT, 'configs/causal_lm_offline/gpt2_4l_gpt2_2l_stdlib_kd.yaml')


def launch(launcher, config, out_dir, tag, cwd, shared):
    args = ['--config', 'unused.yaml', '--seed', '0', '--device', 'cpu', '--cache_dir', str(cwd / 'cache'),
            '--max_steps_per_epoch', '3', '--summary_json', 'summary.json',
            '--set', f'models.student_model.dst_ckpt={shared}/student.pt']
    os.makedirs(cwd, exist_ok=True)
    command = [sys.executable, '-m', 'torch.distributed.run', *launcher, WORKER, config, str(out_dir), tag, *args]
    return subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, 'OMP_NUM_THREADS': '1'})


def finish(process):
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-4000:]
    return output


def test_two_nodes_equal_one_node_of_two_processes(tiny_dirs, tmp_path):  # noqa: F811
    config = shrink(load_config(CONFIG), tiny_dirs, tmp_path)
    config['train']['num_epochs'] = 2
    config_path = str(tmp_path / 'config.pt')
    torch.save(config, config_path)
    shared, port = tmp_path / 'shared', free_port()
    nodes = [launch(['--nnodes', '2', '--node_rank', str(node), '--nproc_per_node', '1', '--rdzv-backend', 'c10d',
                     '--rdzv-endpoint', f'localhost:{port}'], config_path, tmp_path, 'multi', tmp_path / f'node{node}',
                    shared) for node in range(2)]
    for node in nodes:
        finish(node)
    single = launch(['--standalone', '--nproc_per_node', '2'], config_path, tmp_path, 'single', tmp_path / 'single',
                    tmp_path / 'single_ckpt')
    finish(single)
    multi = [json.load(open(tmp_path / f'multi_rank{rank}.json')) for rank in range(2)]
    one_node = [json.load(open(tmp_path / f'single_rank{rank}.json')) for rank in range(2)]
    for rank in range(2):
        assert multi[rank]['test'] == one_node[rank]['test'] == one_node[0]['test']  # perplexities, exactly
        assert multi[rank]['lr'] == one_node[rank]['lr'] and len(multi[rank]['lr']) == 2 * 3
    assert 1.0 < multi[0]['test']['student']['perplexity'] < 1e4
    written = {rank: {os.path.dirname(p) for p in multi[rank]['saved']} for rank in range(2)}
    assert written[0] == {str(shared)} and written[1] == set()  # the checkpoints: global rank 0 only
    assert {'student.pt', 'student_last.pt'} <= set(os.listdir(shared))
    summaries = [os.path.isfile(tmp_path / f'node{node}' / 'summary.json') for node in range(2)]
    assert sorted(summaries) == [False, True]  # rank 0's node, whichever the rendezvous made rank 0
    for node in range(2):  # each node's local rank 0 tokenized into its own cache
        cache = tmp_path / f'node{node}' / 'cache'
        assert any(name.endswith('.arrow') for _, _, names in os.walk(cache) for name in names), node


def first_worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), LOCAL_RANK=str(rank % 2))
    torch.set_num_threads(1)
    dist.init_process_group('gloo', rank=rank, world_size=world)
    node = rank // 2
    marker = os.path.join(out_dir, f'node{node}.done')
    try:
        with main_process_first(local=True):
            if rank % 2 == 0:
                time.sleep(0.5)  # a slow preparation: the node's other process must still wait
                saw_marker = os.path.exists(marker)
                open(marker, 'w').close()
            else:
                saw_marker = os.path.exists(marker)
        with open(os.path.join(out_dir, f'rank{rank}.json'), 'w') as f:
            json.dump({'saw_marker': saw_marker, 'node': node}, f)
    finally:
        dist.destroy_process_group()


def test_local_rank_zero_of_each_node_prepares_first(tmp_path):
    mp.spawn(first_worker, args=(4, free_port(), str(tmp_path)), nprocs=4, join=True)
    seen = [json.load(open(tmp_path / f'rank{rank}.json'))['saw_marker'] for rank in range(4)]
    assert seen == [False, True, False, True]  # local rank 1 of each node ran after its node's local rank 0
