"""The examples of docs/own_model.md run, and pesf_ext.plain computes the papers' formulas with their gradient routing."""
import copy
import os
import sys

import pytest
import torch
import torch.nn.functional as F

import pesf_ext.plain as pk

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'examples'))

import hf_adapters  # noqa: E402
import kd_to_pesfkd  # noqa: E402
import plain_loop  # noqa: E402
import vision_adapters  # noqa: E402


def kl(target, inputs, tau):
    """tau^2 KL(softmax(target/tau) || softmax(inputs/tau)), batch mean, written out."""
    p = F.softmax(target / tau, dim=1)
    return tau ** 2 * (p * (p.log() - F.log_softmax(inputs / tau, dim=1))).sum(1).mean()


def logits_pair(seed=0):
    generator = torch.Generator().manual_seed(seed)
    z_s = torch.randn(6, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    z_t = (3 * torch.randn(6, 5, generator=generator, dtype=torch.float64)).requires_grad_()
    return z_s, z_t, torch.tensor([0, 1, 2, 3, 4, 0])


def test_pesfkd_loss_is_eqs_7_and_8_with_their_gradient_routing():
    z_s, z_t, y = logits_pair()
    loss = pk.pesfkd_loss(temperature=4.0, alpha=0.1, beta=0.9)(z_s, z_t, y)
    student = 0.1 * F.cross_entropy(z_s, y) + 0.9 * kl(z_t.detach(), z_s, 4.0)
    teacher = 0.1 * F.cross_entropy(z_t, y) + 0.9 * kl(z_s.detach(), z_t, 4.0)
    assert loss.item() == pytest.approx((student + teacher).item(), rel=1e-12)
    grad_s, grad_t = torch.autograd.grad(loss, (z_s, z_t))
    # the student's gradient comes from eq. 7 only, the adapted teacher's from eq. 8 only
    torch.testing.assert_close(grad_s, torch.autograd.grad(student, z_s)[0])
    torch.testing.assert_close(grad_t, torch.autograd.grad(teacher, z_t)[0])


def test_zscore_kd_loss_standardizes_both_sides_and_detaches_the_teacher():
    z_s, z_t, y = logits_pair(1)
    fn = pk.zscore_kd_loss(temperature=2.0, alpha=0.1, beta=9.0)
    loss = fn(z_s, z_t, y)

    def z(x):
        return (x - x.mean(1, keepdim=True)) / (x.std(1, keepdim=True) + 1e-7)
    expected = 0.1 * F.cross_entropy(z_s, y) + 9.0 * kl(z(z_t), z(z_s), 2.0)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-10)
    assert set(fn.terms) == {'student_ce', 'student_kl'}
    loss.backward()
    assert z_t.grad is None and z_s.grad.abs().sum() > 0


def test_logit_loss_takes_any_registered_key_and_refuses_what_needs_a_box():
    z_s, z_t, y = logits_pair(2)
    dkd = pk.logit_loss('DKDLoss', temperature=4.0, ce_weight=1.0, alpha=1.0, beta=8.0)
    assert torch.isfinite(dkd(z_s, z_t, y))
    with pytest.raises(ValueError, match='delta_module_path'):
        pk.pesfkd_loss(teacher_kl='released', delta_module_path='adapters.fc')
    with pytest.raises(ValueError, match='specs is empty'):
        pk.add_adapters(torch.nn.Linear(2, 2), [])


def test_plain_loop_pesfkd_trains_student_and_adapter_only():
    torch.manual_seed(0)
    teacher, student = plain_loop.make_models()
    plain_loop.train_teacher(teacher, steps=3)
    teacher_before = copy.deepcopy(teacher.state_dict())     # weights and BatchNorm running statistics
    student_before = copy.deepcopy(student.state_dict())
    adapters, loss = plain_loop.distil(teacher, student, 'pesfkd', steps=3, adapter_lr=0.1)
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key]), f'frozen teacher changed: {key}'
    assert not teacher.training and adapters.training
    assert sum(p.abs().sum().item() for n, p in adapters.named_parameters() if 'up' in n) > 0   # zero-init moved
    assert any(not torch.equal(v, student_before[k]) for k, v in student.state_dict().items())
    assert loss == loss and loss > 0


def test_plain_loop_zscore_leaves_the_teacher_untouched():
    torch.manual_seed(0)
    teacher, student = plain_loop.make_models()
    before = copy.deepcopy(teacher.state_dict())
    adapters, loss = plain_loop.distil(teacher, student, 'zscore', steps=2)
    assert adapters is None and all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())


def test_hf_example_houlsby_patterns_keep_the_teacher_exact():
    teacher, adapters, same = hf_adapters.main()
    assert same and len(adapters) == 8   # 4 layers x (attention output, feed-forward output)
    assert sorted(adapters)[0] == 'bert__encoder__layer__0__attention__output__dense'


def test_vision_example_patterns():
    results = vision_adapters.main()
    assert results['every block of the last stage'][0] == ['layer4.0', 'layer4.1']
    assert all(same for _, _, same in results.values())
    # LoRA r = 8 on a 512 -> 1000 Linear: 8 * 512 + 1000 * 8 parameters
    assert results['LoRA on the classifier'][1] == 8 * 512 + 1000 * 8


@pytest.mark.parametrize('method', ['pesfkd', 'zscore'])
def test_kd_config_diff_gives_the_shipped_config(method):
    """docs/own_model.md's minimal diff, applied to the shipped KD config, is the shipped PESF-KD / Z-score config."""
    path = os.path.join(ROOT, 'configs', 'fashion_mnist', 'resnet56_resnet20_{}.yaml')
    kd, shipped = kd_to_pesfkd.load_config(path.format('kd')), kd_to_pesfkd.load_config(path.format(method))
    new = kd_to_pesfkd.to_pesfkd(kd) if method == 'pesfkd' else kd_to_pesfkd.to_zscore(kd)
    for config in (new, shipped):
        config['models']['student_model'].pop('dst_ckpt')   # the checkpoint's name says the method
    kwargs = shipped['train']['criterion']['kwargs']['sub_terms'][method]['criterion']['kwargs']
    if kwargs.get('logit_standardization') is False:
        kwargs.pop('logit_standardization')                # the default, spelled out in the shipped config
    assert new == shipped


def test_kd_config_without_module_groups_lists_the_student_too():
    kd = kd_to_pesfkd.load_config(os.path.join(ROOT, 'configs', 'fashion_mnist', 'resnet56_resnet20_kd.yaml'))
    kd['train']['optimizer'].pop('module_wise_configs')
    groups = kd_to_pesfkd.to_pesfkd(kd)['train']['optimizer']['module_wise_configs']
    assert [(g['module'], g['is_teacher']) for g in groups] == [('*', False), ('adapters', True)]
