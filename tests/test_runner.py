"""The runner on real Fashion-MNIST subsets: end to end, exact resume, NaN stops, checkpoints left intact."""
import os
import shutil

import pytest
import torch

import pesf_ext  # noqa: F401
from pesf_ext.adapters import AdapterTeacher
from pesf_ext.engine import runner
from pesf_ext.engine.checkpoint import checkpoint_paths
from pesf_ext.engine.config import load_config
from pesf_ext.engine.loop import NonFiniteLossError
from pesf_ext.engine.models import build_model
from pesf_ext.losses import PESFKDLoss


def run(config_path, *extra, config=None):
    args = runner.get_args(['--config', config_path, '--device', 'cpu', '--seed', '0', *extra])
    return runner.run(args, build_model, config=config)


def student_ckpt(config_path, name='student_model'):
    return load_config(config_path)['models'][name]['dst_ckpt']


def test_pesfkd_end_to_end_on_fashion_mnist(trained_teacher, small_config):
    path = small_config('resnet56_resnet20_pesfkd.yaml', num_train_samples=256)
    teacher_ckpt = load_config(path)['models']['teacher_model']['src_ckpt']
    pretrained = torch.load(teacher_ckpt, weights_only=False)['model']
    results = run(path)

    test = results['test']
    assert 0.0 <= test['student']['top1'] <= 100.0 and 0.0 <= test['teacher']['top1'] <= 100.0
    assert isinstance(test['sharpness_gap'], float)
    assert results['seconds_per_step'] > 0
    trainable, total = results['counts']['teacher']
    assert 0 < trainable < 0.1 * total
    # the frozen base (weights and BatchNorm statistics) is exactly the pretrained teacher
    base = results['_models']['teacher'].model
    for key, value in base.state_dict().items():
        assert torch.equal(value.cpu(), pretrained[key]), key
    # the trained adapters were saved beside the best student and moved away from their zero init
    _, teacher_path, last_path = checkpoint_paths(student_ckpt(path))
    adapters = torch.load(teacher_path, weights_only=False)['teacher']
    assert adapters and all(key.startswith('adapters.') for key in adapters)
    assert any(value.abs().sum() > 0 for key, value in adapters.items() if 'up' in key)
    assert os.path.isfile(last_path)


def test_adapted_teacher_loads_back_for_evaluation(trained_teacher, small_config):
    path = small_config('resnet56_resnet20_pesfkd.yaml', num_train_samples=256)
    trained = run(path)
    evaluated = run(path, '-test_only')
    assert isinstance(evaluated['_models']['teacher'], AdapterTeacher)
    assert evaluated['test']['teacher'] == trained['test']['teacher']
    assert evaluated['test']['student'] == trained['test']['student']


def test_resume_matches_uninterrupted_run(trained_teacher, small_config, monkeypatch, tmp_path):
    reference = small_config('resnet56_resnet20_pesfkd.yaml', num_epochs=2, ckpt_root=str(tmp_path / 'a'))
    interrupted = small_config('resnet56_resnet20_pesfkd.yaml', num_epochs=2, ckpt_root=str(tmp_path / 'b'))
    for root in ('a', 'b'):  # both read the teacher trained by the fixture
        shutil.copytree(tmp_path / 'ckpt' / 'ce', tmp_path / root / 'ce')
    run(reference)

    real_train_one_epoch = runner.train_one_epoch

    def crash_in_second_epoch(box, device, epoch, *args):
        if epoch == 1:
            raise KeyboardInterrupt('simulated crash')
        return real_train_one_epoch(box, device, epoch, *args)

    monkeypatch.setattr(runner, 'train_one_epoch', crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        run(interrupted)
    monkeypatch.setattr(runner, 'train_one_epoch', real_train_one_epoch)
    run(interrupted, '-resume')

    last_a = torch.load(checkpoint_paths(student_ckpt(reference))[2], weights_only=False)
    last_b = torch.load(checkpoint_paths(student_ckpt(interrupted))[2], weights_only=False)
    assert last_a['epoch'] == last_b['epoch'] == 1
    # the resumed run's mean step time covers the steps before the crash too
    assert last_a['timing']['steps'] == last_b['timing']['steps'] > 0 and last_b['timing']['step_seconds'] > 0
    for part in ('student', 'teacher'):
        assert last_a[part].keys() == last_b[part].keys()
        for key in last_a[part]:
            torch.testing.assert_close(last_a[part][key], last_b[part][key], rtol=0, atol=1e-6, msg=key)


def test_non_finite_loss_stops_and_keeps_checkpoints(trained_teacher, small_config, monkeypatch):
    path = small_config('resnet56_resnet20_pesfkd.yaml', num_epochs=2)
    best_path, _, last_path = checkpoint_paths(student_ckpt(path))
    real_forward = PESFKDLoss.forward

    def explode_in_second_epoch(self, student_io_dict, teacher_io_dict, targets):
        loss = real_forward(self, student_io_dict, teacher_io_dict, targets)
        if os.path.isfile(last_path):  # the first epoch finished and was checkpointed
            self.last_terms['teacher_kl'] = torch.tensor(float('nan'))
            return loss * float('nan')
        return loss

    monkeypatch.setattr(PESFKDLoss, 'forward', explode_in_second_epoch)
    with pytest.raises(NonFiniteLossError) as error:
        run(path)
    message = str(error.value)
    assert 'epoch 1, step 0' in message and 'pesfkd.teacher_kl=nan' in message and 'pesfkd.student_ce=' in message
    saved = torch.load(last_path, weights_only=False)
    assert saved['epoch'] == 0
    assert all(torch.isfinite(v).all() for v in saved['student'].values() if v.is_floating_point())
    assert os.path.isfile(best_path)
