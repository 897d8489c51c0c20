"""Random streams under torchrun: each rank its own data and global (dropout) streams, identical initialisations;
a single process (and rank 0) draws exactly what it drew before ranks had streams of their own."""
import random

import numpy as np
import torch

from _dist_run import rank_results, tiny_run_args, torchrun, write_random_teacher
from pesf_ext.engine.rng import DataStream, isolated_stream, seed_distributed_sampler, seed_for


def test_single_process_draws_are_pinned():
    """Committed study records come from single-process runs: these numbers must never change."""
    assert [seed_for(0, s) for s in ('student', 'teacher_side', 'data')] == \
        [2607830887601888011, 1791356198150775146, 2391439310475391764]
    assert seed_for(7, 'data') == 4314404055215217525 and seed_for(None, 'data') == seed_for(0, 'data')
    assert seed_for(0, 'data', rank=0) == seed_for(0, 'data') != seed_for(0, 'data', rank=1)
    stream = DataStream(0)
    with stream.active():
        assert torch.randint(0, 1000, (4,)).tolist() == [960, 913, 183, 438]
        assert np.random.randint(0, 1000, 3).tolist() == [64, 577, 807]
        assert random.randint(0, 999) == 758
    assert torch.equal(DataStream(0, rank=0).state['torch'], DataStream(0).state['torch'])
    with isolated_stream(0, 'student'):
        assert torch.randint(0, 1000, (4,)).tolist() == [208, 371, 660, 22]
    with isolated_stream(3, 'teacher_side'):
        assert torch.randint(0, 1000, (4,)).tolist() == [701, 621, 329, 542]


def test_ranks_draw_own_augmentations_and_dropout_with_identical_inits(small_config, tmp_path):
    config = write_random_teacher(small_config('resnet56_resnet20_pesfkd.yaml', num_train_samples=32,
                                               num_val_samples=8, num_test_samples=8))
    torchrun(2, 'run', tmp_path, 'rng', *tiny_run_args(config))
    records = rank_results(tmp_path, 'rng', 2, ext='pt')
    for part in ('student', 'teacher_side'):  # built from the same seeds on every rank, before DDP's broadcast
        assert records[0][part].keys() == records[1][part].keys() and records[0][part]
        for key, value in records[0][part].items():
            assert torch.equal(value, records[1][part][key]), f'{part}.{key}'
    assert any('down' in key for key in records[0]['teacher_side'])  # PESF-KD's randomly initialised adapters
    for stream in ('data_torch_state', 'dropout_mask', 'augmentation_draws'):
        assert not torch.equal(records[0][stream], records[1][stream]), stream
    assert torch.equal(records[0]['data_torch_state'], DataStream(0).state['torch'])  # rank 0 = one process
    # DistributedSampler: one permutation for all ranks, following --seed (it would be 0 for every seed)
    assert records[0]['sampler_seed'] == records[1]['sampler_seed'] == seed_for(0, 'data') % 2 ** 31


def test_distributed_sampler_seed_follows_the_seed():
    dataset = list(range(10))
    orders = {}
    for seed in (0, 1):
        loader = torch.utils.data.DataLoader(dataset, sampler=torch.utils.data.DistributedSampler(
            dataset, num_replicas=2, rank=0))
        assert seed_distributed_sampler(loader, seed) == seed_for(seed, 'data') % 2 ** 31
        orders[seed] = list(loader.sampler)
    assert orders[0] != orders[1]
    assert seed_distributed_sampler(torch.utils.data.DataLoader(dataset), 0) is None
