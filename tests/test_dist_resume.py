"""-resume under torchrun: each rank gets its own random states back (exact resume); another number of processes
resumes with fresh per-rank streams and a warning; checkpoints from before per-rank states still resume."""
import logging
import os
import random
import shutil
import types

import numpy as np
import pytest
import torch

from _dist_run import tiny_run_args, torchrun, write_random_teacher
from pesf_ext.engine.checkpoint import restore_streams, rng_state
from pesf_ext.engine.rng import DataStream

STEPS = 2


def run_args(config, dst_dir, epochs, *extra):
    return tiny_run_args(config, f'models.student_model.dst_ckpt={dst_dir}/student.pt', f'train.num_epochs={epochs}',
                         *extra, steps=STEPS)


@pytest.fixture
def saved_after_one_epoch(small_config, tmp_path):
    """(config, directory): a 2-process run stopped after epoch 1 of 2, its checkpoints in ``tmp_path/saved``."""
    config = write_random_teacher(small_config('resnet56_resnet20_pesfkd.yaml', num_train_samples=64,
                                               num_val_samples=8, num_test_samples=8))
    torchrun(2, 'run', tmp_path, 'first', *run_args(config, tmp_path / 'saved', 1))
    return config, tmp_path / 'saved'


def resumable_copy(saved, target):
    shutil.copytree(saved, target)
    return target


def last(directory):
    return torch.load(os.path.join(directory, 'student_last.pt'), weights_only=False)


def test_two_process_resume_equals_uninterrupted_run(saved_after_one_epoch, tmp_path):
    config, saved = saved_after_one_epoch
    state = last(saved)
    assert state['world_size'] == 2 and len(state['rng_per_rank']) == 2
    assert not torch.equal(state['rng_per_rank'][0]['data_rng']['torch'], state['rng_per_rank'][1]['data_rng']['torch'])
    torchrun(2, 'run', tmp_path, 'resumed', *run_args(config, saved, 2), '-resume')
    torchrun(2, 'run', tmp_path, 'straight', *run_args(config, tmp_path / 'straight', 2))
    resumed, straight = last(saved), last(tmp_path / 'straight')
    assert resumed['epoch'] == straight['epoch'] == 1
    for part in ('student', 'teacher'):
        assert resumed[part].keys() == straight[part].keys()
        for key, value in straight[part].items():
            assert torch.equal(resumed[part][key], value), f'{part}.{key}'
    for rank in range(2):
        assert torch.equal(resumed['rng_per_rank'][rank]['data_rng']['torch'],
                           straight['rng_per_rank'][rank]['data_rng']['torch'])


def test_resume_on_one_and_three_processes_starts_fresh_streams(saved_after_one_epoch, tmp_path, caplog):
    from pesf_ext.engine import runner
    from pesf_ext.engine.models import build_model
    config, saved = saved_after_one_epoch
    one = resumable_copy(saved, tmp_path / 'one')
    with caplog.at_level(logging.WARNING):
        results = runner.run(runner.get_args(run_args(config, one, 2, '-resume')), build_model)
    assert 'saved with 2 process(es), resumed with 1' in caplog.text
    assert last(one)['epoch'] == 1 and last(one)['world_size'] == 1
    assert 0 <= results['test']['student']['top1'] <= 100
    three = resumable_copy(saved, tmp_path / 'three')
    log = torchrun(3, 'run', tmp_path, 'three', *run_args(config, three, 2, '-resume'))
    assert 'saved with 2 process(es), resumed with 3' in log
    assert last(three)['epoch'] == 1 and last(three)['world_size'] == 3


def test_checkpoint_without_per_rank_states_resumes_exactly():
    """Files written before per-rank states hold one 'rng' and one 'data_rng': a single process gets them back."""
    stream = DataStream(5)
    with stream.active():
        torch.rand(3)
    torch.manual_seed(11), np.random.seed(11), random.seed(11)
    old = {'epoch': 3, 'rng': rng_state(), 'data_rng': stream.state_dict()}
    expected = (torch.rand(2), np.random.rand(), random.random())
    with stream.active():
        expected_data = torch.rand(2)
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    box = types.SimpleNamespace(data_stream=DataStream(0))
    restore_streams(box, old, seed=0)
    assert torch.equal(torch.rand(2), expected[0]) and np.random.rand() == expected[1]
    assert random.random() == expected[2]
    with box.data_stream.active():
        assert torch.equal(torch.rand(2), expected_data)
