"""CTKD (curriculum temperature): the reversal curriculum, the gradient reversal, CTKDLoss against a hand-written
formula and its gradient routing (student descends, temperature ascends), and the epoch reaching the student wrapper.
"""
import math
import types

import pytest
import torch
from torch import nn

import pesf_ext.losses  # noqa: F401  (registers the losses and the wrapper)
from pesf_ext.losses import CTKDLoss, LogitKDLoss
from pesf_ext.losses.ctkd import CurriculumTemperature, GlobalTemperature, GradientReversal, cosine_curriculum
from pesf_ext.procs import distillation_pre_epoch_process

N, K = 8, 10
PATHS = dict(student_module_path='.', student_module_io='output', teacher_module_path='.', teacher_module_io='output')


def test_cosine_curriculum_goes_from_start_to_end():
    assert cosine_curriculum(0) == 0.0
    assert cosine_curriculum(5) == pytest.approx(-0.5)
    assert cosine_curriculum(10) == pytest.approx(-1.0)
    assert cosine_curriculum(240) == pytest.approx(-1.0)
    assert cosine_curriculum(2.5, 1.0, 3.0, 10) == pytest.approx(3.0 + (1.0 - 3.0) * (1 + math.cos(math.pi / 4)) / 2)
    with pytest.raises(ValueError):
        cosine_curriculum(1, num_epochs=0)


def test_gradient_reversal_is_identity_forward_and_scales_backward():
    x = torch.randn(5, requires_grad=True)
    y = GradientReversal.apply(x, -0.7)
    assert torch.equal(y, x)
    (grad,) = torch.autograd.grad((y * torch.arange(5.)).sum(), x)
    torch.testing.assert_close(grad, -0.7 * torch.arange(5.))


def hand_ctkd(z_s, z_t, y, tau, alpha, beta, standardize):
    def z(v):
        return (v - v.mean(1, keepdim=True)) / (v.std(1, keepdim=True) + 1e-7) if standardize else v
    p = torch.softmax(z(z_t) / tau, 1)
    log_q = torch.log_softmax(z(z_s) / tau, 1)
    kl = (p * (torch.log(p) - log_q)).sum() / z_s.shape[0]
    return alpha * nn.functional.cross_entropy(z_s, y) + beta * tau ** 2 * kl


@pytest.mark.parametrize('standardize,alpha,beta', [(False, 0.1, 0.9), (True, 0.1, 9.0)])
def test_ctkd_value_and_gradient_routing(standardize, alpha, beta):
    g = torch.Generator().manual_seed(0)
    z_s = (2 * torch.randn(N, K, generator=g, dtype=torch.float64)).requires_grad_()   # float64: the temperature's
    z_t = (3 * torch.randn(N, K, generator=g, dtype=torch.float64)).requires_grad_()   # gradient is a small difference
    y = torch.randint(0, K, (N,), generator=g)
    temperature = GlobalTemperature(init=0.3).double()
    temperature.set_epoch(10)                       # reversal weight -1
    tau = temperature()
    loss = CTKDLoss(**PATHS, alpha=alpha, beta=beta, logit_standardization=standardize)
    value = loss({'.': {'output': z_s}, 'temperature': {'output': tau}}, {'.': {'output': z_t}}, y)

    t = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)     # the same loss by hand, tau as a plain function of t
    expected = hand_ctkd(z_s, z_t.detach(), y, 1 + 20 * torch.sigmoid(t), alpha, beta, standardize)
    torch.testing.assert_close(value, expected)
    assert loss.last_terms['temperature'] == pytest.approx(1 + 20 * 1 / (1 + math.exp(-0.3)))

    grad_s, grad_param, grad_t = torch.autograd.grad(value, [z_s, temperature.param, z_t], allow_unused=True)
    hand_s, hand_t = torch.autograd.grad(expected, [z_s, t])
    torch.testing.assert_close(grad_s, hand_s)                    # the student descends L
    torch.testing.assert_close(grad_param, -hand_t.reshape(1))      # the temperature ascends it (weight -1)
    assert grad_t is None                                           # the teacher is held fixed


def test_ctkd_at_a_fixed_temperature_is_kd():
    g = torch.Generator().manual_seed(1)
    z_s, z_t = torch.randn(N, K, generator=g), torch.randn(N, K, generator=g)
    y = torch.randint(0, K, (N,), generator=g)
    tau = torch.tensor([3.0])
    ctkd = CTKDLoss(**PATHS, alpha=0.1, beta=0.9)({'.': {'output': z_s}, 'temperature': {'output': tau}},
                                                   {'.': {'output': z_t}}, y)
    kd = LogitKDLoss(**PATHS, temperature=3.0, alpha=0.1, beta=0.9)({'.': {'output': z_s}}, {'.': {'output': z_t}}, y)
    torch.testing.assert_close(ctkd, kd)


def test_no_reversal_before_the_curriculum_starts():
    temperature = GlobalTemperature()
    temperature.set_epoch(0)
    (grad,) = torch.autograd.grad(temperature().sum(), temperature.param)
    assert grad.abs().sum() == 0


def test_pre_epoch_process_sets_the_students_curriculum():
    student = CurriculumTemperature(nn.Linear(4, K), torch.device('cpu'))
    box = types.SimpleNamespace(
        teacher_model=nn.Linear(4, K).eval(), student_model=student, criterion=nn.Identity(),
        teacher_io_dict=dict(), student_io_dict=dict(), train_data_loader=types.SimpleNamespace(sampler=None),
        teacher_any_frozen=True, student_any_frozen=False, distributed=False)
    distillation_pre_epoch_process(box, epoch=4)         # 0-based epoch 4 -> the authors' epoch 5
    assert student.temperature.reversal_weight == pytest.approx(cosine_curriculum(5))
    out = student(torch.randn(3, 4))
    assert out.shape == (3, K)


def test_bad_temperature_arguments_are_refused():
    with pytest.raises(ValueError, match='t_start'):
        GlobalTemperature(t_start=0.0)
    with pytest.raises(ValueError, match='num_epochs'):
        GlobalTemperature(curriculum_epochs=0)
