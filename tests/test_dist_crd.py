"""Checkpoints do not depend on the number of processes: a CRD run under torchrun (whose Linear4CRD wraps its
normalizer, and the student, in DDP) is tested and resumed in one process with the same metrics."""
import os

import torch
from torch import nn

from _dist_run import rank_results, tiny_run_args, torchrun, write_random_teacher
from pesf_ext.engine.checkpoint import checkpoint_paths, clean_key, load_trainable_state_dict


def test_clean_key_removes_only_ddp_segments():
    paths = {'normalizer', 'model'}
    assert clean_key('normalizer.module.linear.weight', paths) == 'normalizer.linear.weight'
    assert clean_key('model.module.layer1.0.conv1.weight', paths) == 'model.layer1.0.conv1.weight'
    assert clean_key('head.module.weight', paths) == 'head.module.weight'  # a submodule really named 'module'


def test_files_with_ddp_segments_still_load():
    model = nn.Sequential()
    model.add_module('normalizer', nn.Sequential(nn.Linear(3, 2)))
    old = {'normalizer.module.0.weight': torch.ones(2, 3), 'normalizer.module.0.bias': torch.zeros(2)}
    load_trainable_state_dict(model, old)
    assert torch.equal(model.normalizer[0].weight, torch.ones(2, 3))


def test_crd_trained_with_torchrun_tests_and_resumes_in_one_process(small_config, tmp_path):
    from pesf_ext.engine import runner
    from pesf_ext.engine.models import build_model
    config = write_random_teacher(small_config('resnet56_resnet20_crd.yaml', num_train_samples=32,
                                               crd_num_samples=32, crd_num_negative_samples=16,
                                               num_val_samples=8, num_test_samples=8))
    args = tiny_run_args(config)
    torchrun(2, 'run', tmp_path, 'crd', *args)
    two_processes = rank_results(tmp_path, 'crd', 2)[0]['test']
    dst_ckpt = runner.load_config(config)['models']['student_model']['dst_ckpt']
    for path in checkpoint_paths(dst_ckpt):
        state = torch.load(path, weights_only=False)
        for part in ('model', 'teacher', 'student'):
            assert not any('.module.' in key for key in state.get(part) or {}), (os.path.basename(path), part)
    test_only = runner.run(runner.get_args(args + ['-test_only']), build_model)['test']
    resumed = runner.run(runner.get_args(args + ['-resume']), build_model)['test']
    assert test_only == resumed
    assert test_only['student'] == two_processes['student'] and test_only['teacher'] == two_processes['teacher']
