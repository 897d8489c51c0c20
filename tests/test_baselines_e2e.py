"""The papers' baselines and combinations end to end on real Fashion-MNIST subsets, one shipped config per family:
online KD (DML, KDCL), representation KD on top of PESF-KD (CRD, PKT) and DKD with Z-score standardization.

Each test runs a config of configs/fashion_mnist/ through the real runner on a tiny budget and checks what the
method is supposed to change (and leave alone), not just that it runs.
"""
import copy

import pytest
import torch
from torchdistill.losses.mid_level import PKTLoss
from torchdistill.models.wrapper import Linear4CRD

import pesf_ext  # noqa: F401
from pesf_ext.adapters import AdapterTeacher
from pesf_ext.engine import runner
from pesf_ext.engine.checkpoint import checkpoint_paths
from pesf_ext.engine.config import load_config
from pesf_ext.engine.models import build_model
from pesf_ext.losses import DKDLoss

pytestmark = pytest.mark.usefixtures('trained_teacher')  # conftest: a short CE run with precise BatchNorm


def distill(small_config, name, **anchors):
    """Runs configs/fashion_mnist/<name> on a tiny budget with the teacher of conftest's ``trained_teacher``;
    returns (loaded config, results); the runner only adds defaults to the config it is given."""
    path = small_config(name, **anchors)
    config = load_config(path)
    args = runner.get_args(['--config', path, '--device', 'cpu', '--seed', '0'])
    return config, runner.run(args, build_model, config=config)


def pretrained_state(config):
    return torch.load(config['models']['teacher_model']['src_ckpt'], weights_only=False)['model']


def teacher_side_ckpt(config):
    return torch.load(checkpoint_paths(config['models']['student_model']['dst_ckpt'])[1], weights_only=False)['teacher']


def assert_same_state(state, reference):
    assert state.keys() == reference.keys()
    for key, value in state.items():
        assert torch.equal(value.cpu(), reference[key].cpu()), key


def assert_adapters_trained(teacher, saved):
    """Adapters left their zero-initialised up-projection and were saved beside the best student."""
    ups = {key: value for key, value in teacher.adapters.state_dict().items() if 'up' in key}
    assert ups and any(value.abs().sum() > 0 for value in ups.values())
    for key, value in teacher.adapters.state_dict().items():
        assert torch.equal(saved[f'adapters.{key}'], value.cpu()), key


@pytest.mark.parametrize('name', ['resnet56_resnet20_dml.yaml', 'resnet56_resnet20_kdcl.yaml'])
def test_online_kd_fine_tunes_the_whole_pretrained_teacher(small_config, name):
    config, results = distill(small_config, name, num_train_samples=256)
    trainable, total = results['counts']['teacher']
    assert trainable == total > 0
    pretrained = pretrained_state(config)
    teacher = results['_models']['teacher']
    assert not isinstance(teacher, AdapterTeacher)
    # every parameter of the teacher moved away from the pretrained checkpoint it started from ...
    for name_, param in teacher.named_parameters():
        assert not torch.equal(param.detach().cpu(), pretrained[name_]), name_
    # ... and the trained teacher (weights and BatchNorm statistics) is saved and is what was evaluated
    saved = teacher_side_ckpt(config)
    assert {name_ for name_, _ in teacher.named_parameters()} <= saved.keys()
    assert any(key.endswith('running_mean') for key in saved)
    state = teacher.state_dict()
    for key, value in saved.items():
        assert torch.equal(value, state[key].cpu()), key
    assert 0.0 <= results['test']['teacher']['top1'] <= 100.0 and isinstance(results['test']['sharpness_gap'], float)


def test_pesfkd_on_crd_trains_adapters_and_both_crd_heads_only(small_config, monkeypatch):
    built = []
    real_init = Linear4CRD.__init__

    def recording_init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        built.append((self, copy.deepcopy(self.normalizer.state_dict())))

    monkeypatch.setattr(Linear4CRD, '__init__', recording_init)
    config, results = distill(small_config, 'resnet56_resnet20_pesfkd_crd.yaml', num_train_samples=256,
                              crd_num_samples=256, crd_num_negative_samples=64)
    teacher, student = results['_models']['teacher'], results['_models']['student']
    # both CRD wrappers were built, one inside the adapted teacher, one around the student
    assert isinstance(teacher, AdapterTeacher) and isinstance(teacher.inner, Linear4CRD)
    assert {id(wrapper.model) for wrapper, _ in built} == {id(teacher.model), id(student)}
    assert not teacher.inner.is_teacher  # its forward keeps the adapters differentiable
    # the frozen base is bitwise the pretrained teacher (weights and BatchNorm statistics)
    assert_same_state(teacher.model.state_dict(), pretrained_state(config))
    # the adapters and both CRD embedding heads trained; the teacher side saved adapters + its CRD head only
    saved = teacher_side_ckpt(config)
    assert saved.keys() == {f'adapters.{k}' for k in teacher.adapters.state_dict()} | {
        f'inner.normalizer.{k}' for k in teacher.inner.normalizer.state_dict()}
    assert_adapters_trained(teacher, saved)
    for wrapper, initial in built:
        moved = [key for key, value in wrapper.normalizer.state_dict().items() if not torch.equal(value, initial[key])]
        assert moved, 'a CRD embedding head did not train'
    trainable, _ = results['counts']['teacher']
    assert trainable == sum(p.numel() for p in teacher.adapters.parameters()) + sum(
        p.numel() for p in teacher.inner.normalizer.parameters())
    # the best student checkpoint is the plain student network (no wrapper keys), as evaluation needs it
    best = torch.load(config['models']['student_model']['dst_ckpt'], weights_only=False)['model']
    assert best.keys() == student.state_dict().keys()


def test_pesfkd_on_pkt_matches_penultimate_features(small_config, monkeypatch):
    seen = []
    real_forward = PKTLoss.forward

    def recording_forward(self, student_io_dict, teacher_io_dict, *args, **kwargs):
        teacher_features = teacher_io_dict[self.teacher_module_path][self.teacher_module_io]
        seen.append((student_io_dict[self.student_module_path][self.student_module_io].shape,
                     teacher_features.shape, teacher_features.requires_grad))
        return real_forward(self, student_io_dict, teacher_io_dict, *args, **kwargs)

    monkeypatch.setattr(PKTLoss, 'forward', recording_forward)
    config, results = distill(small_config, 'resnet56_resnet20_pesfkd_pkt.yaml', num_train_samples=128)
    # PKT compared the 64-d penultimate features (the classifiers' inputs) of student and adapted teacher; the
    # teacher's depend on the adapters, so PKT's gradient reaches them too (as the config's comment says)
    assert seen and all(s[1:] == t[1:] == (64,) and s[0] == t[0] and grad for s, t, grad in seen)
    teacher = results['_models']['teacher']
    assert isinstance(teacher, AdapterTeacher)
    assert_same_state(teacher.model.state_dict(), pretrained_state(config))
    assert_adapters_trained(teacher, teacher_side_ckpt(config))


def test_dkd_with_zscore_warms_up_per_epoch(small_config, monkeypatch):
    calls = []
    real_forward = DKDLoss.forward

    def recording_forward(self, *args, **kwargs):
        loss = real_forward(self, *args, **kwargs)
        calls.append({'epoch': self.epoch, 'factor': self.warmup_factor(), 'loss': loss.item(),
                      'terms': set(self.last_terms), 'module': self})
        return loss

    monkeypatch.setattr(DKDLoss, 'forward', recording_forward)
    config, results = distill(small_config, 'resnet56_resnet20_dkd_zscore.yaml', num_train_samples=128,
                              num_epochs=2)
    dkd = calls[0]['module']
    # the Z-score authors' DKD settings: alpha, beta x 9 (beta = 2 for ResNet-56 -> ResNet-20), base temperature 2
    assert (dkd.alpha, dkd.beta, dkd.temperature, dkd.ce_weight) == (9.0, 18.0, 2.0, 1.0)
    assert dkd.standardization is not None and dkd.warmup_epochs == 3
    # distillation_pre_epoch_process numbers epochs from 1: w = 1/3 during epoch 1, 2/3 during epoch 2
    by_epoch = {}
    for call in calls:
        by_epoch.setdefault(call['epoch'], set()).add(call['factor'])
    assert by_epoch == {1: {1 / 3}, 2: {2 / 3}}
    assert all(call['terms'] == {'student_ce', 'tckd', 'nckd'} for call in calls)
    assert all(torch.isfinite(torch.tensor(call['loss'])) for call in calls)
    assert results['counts']['teacher'][0] == 0  # DKD keeps the teacher frozen


def test_pesfkd_teacher_warmup_follows_the_epochs(small_config, monkeypatch):
    """``teacher_warmup_epochs`` (issue 9's option) gets its epoch from the pre-epoch process inside
    WeightedSumLoss: the adapter KL weight is beta_t / 3 in epoch 1 and 2 beta_t / 3 in epoch 2."""
    from pesf_ext.losses import PESFKDLoss
    weights = []
    real_forward = PESFKDLoss.forward

    def recording_forward(self, *args, **kwargs):
        loss = real_forward(self, *args, **kwargs)
        weights.append((self.epoch, self.teacher_beta * min(self.epoch / self.teacher_warmup_epochs, 1)))
        return loss

    monkeypatch.setattr(PESFKDLoss, 'forward', recording_forward)
    path = small_config('resnet56_resnet20_pesfkd.yaml', num_train_samples=128, num_epochs=2)
    config = load_config(path)
    config['train']['criterion']['kwargs']['sub_terms']['pesfkd']['criterion']['kwargs']['teacher_warmup_epochs'] = 3
    args = runner.get_args(['--config', path, '--device', 'cpu', '--seed', '0'])
    runner.run(args, build_model, config=config)
    assert dict(weights) == {1: pytest.approx(0.9 / 3), 2: pytest.approx(0.9 * 2 / 3)}
