"""The authors' released training step (PESFKDLoss teacher_kl='released') and the label-correction switch.

The reference below transcribes ``train_distill`` of 1170300319/PESF-KD (``cv/helper/loops.py``) step by step with
plain torch ops and Python loops: the per-sample swap of ``logit_t_cor`` / ``logit_s_cor``, the head adapter
``logit_t - adapter(feat)``, RepDistiller's ``DistillKL`` and ``gamma * CE + alpha * div + CE(teacher)``.
"""
import pytest
import torch
import torch.nn.functional as F

import pesf_ext.losses  # noqa: F401  (registers the losses)
from pesf_ext.adapters.modules import HeadAdapter
from pesf_ext.losses import DKDLoss, FTKDLoss, LogitKDLoss, PESFKDLoss, ZScoreKDLoss
from pesf_ext.losses.functional import swap_label_correction

N, K, D = 6, 5, 7
PATHS = dict(student_module_path='.', student_module_io='output', teacher_module_path='.', teacher_module_io='output')


def loop_swap(logits, targets):
    """The released code's loop: swap(z[i][argmax_i], z[i][y_i]) on a detached copy."""
    z = logits.detach().clone()
    for i in range(z.shape[0]):
        top = int(torch.argmax(logits[i]))
        value = z[i][top].clone()
        z[i][top] = z[i][targets[i]]
        z[i][targets[i]] = value
    return z


def distill_kl(y_s, y_t, tau):
    """RepDistiller's DistillKL: sum KL(softmax(y_t/T) || softmax(y_s/T)) * T^2 / N; the target is NOT detached."""
    p_s = F.log_softmax(y_s / tau, dim=1)
    p_t = F.softmax(y_t / tau, dim=1)
    return (p_t * (torch.log(p_t) - p_s)).sum() * tau ** 2 / y_s.shape[0]


def released_loss(logit_s, logit_t, feat, adapter, target, tau, gamma, alpha):
    logit_t_cor = loop_swap(logit_t, target)
    logit_s_cor = loop_swap(logit_s, target)
    logit_t = logit_t - adapter(feat)
    loss_div = distill_kl(logit_s, logit_t_cor, tau) + distill_kl(logit_s_cor, logit_t, tau)
    return gamma * F.cross_entropy(logit_s, target) + alpha * loss_div + F.cross_entropy(logit_t, target)


def batch(seed):
    g = torch.Generator().manual_seed(seed)
    z_s = (3 * torch.randn(N, K, generator=g)).requires_grad_()
    z_t = 3 * torch.randn(N, K, generator=g)          # the frozen teacher runs under no_grad in the released code
    feat = torch.randn(N, D, generator=g)
    y = torch.randint(0, K, (N,), generator=g)
    y[0] = int(z_t[0].argmax())                         # one row whose teacher already predicts its label
    return z_s, z_t, feat, y


def head_adapter(seed):
    torch.manual_seed(seed)
    adapter = HeadAdapter(D, K, bottleneck=3, zero_init=False)   # released: default init, not zero
    return adapter


def released_adapter(adapter):
    """The released Adapter as a function of the feature: l1 -> Linear -> ReLU -> Linear, added with a minus."""
    return lambda feat: adapter.net(feat)


@pytest.mark.parametrize('tau,gamma,alpha', [(4.0, 1.0, 0.9), (6.0, 0.5, 2.0), (1.0, 1.0, 1.0)])
def test_released_loss_and_gradients_match_the_transcription(tau, gamma, alpha):
    for seed in range(3):
        z_s, z_t, feat, y = batch(seed)
        adapter = head_adapter(seed)
        reference = released_loss(z_s, z_t, feat, released_adapter(adapter), y, tau, gamma, alpha)
        ref_grads = torch.autograd.grad(reference, [z_s, *adapter.parameters()])

        loss = PESFKDLoss(**PATHS, temperature=tau, alpha=gamma, beta=alpha, teacher_alpha=1.0, teacher_beta=alpha,
                          teacher_kl='released', target_correction='swap', delta_module_path='adapters.fc')
        delta = adapter(feat, None)                     # what the adapter adds to the teacher's logits (hooked)
        value = loss({'.': {'output': z_s}}, {'.': {'output': z_t + delta}, 'adapters.fc': {'output': delta}}, y)
        grads = torch.autograd.grad(value, [z_s, *adapter.parameters()])
        torch.testing.assert_close(value, reference)
        for got, expected in zip(grads, ref_grads):
            torch.testing.assert_close(got, expected)
        assert all(g.abs().sum() > 0 for g in grads)    # student and every adapter parameter are trained


def test_released_student_gradient_does_not_depend_on_the_adapter():
    """The student learns from the pre-adapter (corrected) teacher: its gradient is the same for any adapter."""
    z_s, z_t, feat, y = batch(0)
    loss = PESFKDLoss(**PATHS, temperature=4.0, alpha=1.0, beta=0.9, teacher_kl='released',
                      target_correction='swap', delta_module_path='adapters.fc')
    student_grads = []
    for seed in (1, 2):
        delta = head_adapter(seed)(feat, None)
        value = loss({'.': {'output': z_s}}, {'.': {'output': z_t + delta}, 'adapters.fc': {'output': delta}}, y)
        student_grads.append(torch.autograd.grad(value, z_s)[0])
    torch.testing.assert_close(student_grads[0], student_grads[1])


def test_released_adapter_kl_reaches_the_adapter_through_the_target():
    """With only the adapter-side KL weighted, the adapter gets gradient and the student none."""
    z_s, z_t, feat, y = batch(1)
    adapter = head_adapter(3)
    loss = PESFKDLoss(**PATHS, temperature=4.0, alpha=0.0, beta=0.0, teacher_alpha=0.0, teacher_beta=1.0,
                      teacher_kl='released', target_correction='swap', delta_module_path='adapters.fc')
    delta = adapter(feat, None)
    value = loss({'.': {'output': z_s}}, {'.': {'output': z_t + delta}, 'adapters.fc': {'output': delta}}, y)
    grads = torch.autograd.grad(value, [z_s, *adapter.parameters()], allow_unused=True)
    assert grads[0] is None or grads[0].abs().sum() == 0
    assert all(g is not None and g.abs().sum() > 0 for g in grads[1:])
    torch.testing.assert_close(value, distill_kl(loop_swap(z_s, y), z_t + delta, 4.0))


def test_released_needs_the_delta_path_and_only_there():
    with pytest.raises(ValueError, match='delta_module_path'):
        PESFKDLoss(**PATHS, temperature=4.0, teacher_kl='released')
    with pytest.raises(ValueError, match='delta_module_path'):
        PESFKDLoss(**PATHS, temperature=4.0, teacher_kl='reverse', delta_module_path='adapters.fc')
    with pytest.raises(ValueError, match='target_correction'):
        LogitKDLoss(**PATHS, temperature=4.0, target_correction='argmax')


def test_head_adapter_zero_init_switch():
    feat = torch.randn(N, D)
    assert HeadAdapter(D, K).forward(feat, None).abs().sum() == 0        # default: identity at init
    assert HeadAdapter(D, K, zero_init=False).forward(feat, None).abs().sum() > 0


# ---------------------------------------------------------------- target_correction='swap' on every logit loss
def test_swap_matches_the_released_loop_and_is_a_permutation():
    z, _, _, y = batch(4)
    z = z.detach()
    swapped = swap_label_correction(z, y)
    torch.testing.assert_close(swapped, loop_swap(z, y))
    assert torch.equal(swapped.argmax(dim=1), y)
    torch.testing.assert_close(swapped.sort(dim=1).values, z.sort(dim=1).values)


@pytest.mark.parametrize('cls,kwargs', [
    (LogitKDLoss, dict(temperature=4.0, alpha=0.1, beta=0.9)),
    (ZScoreKDLoss, dict(temperature=2.0, alpha=0.1, beta=9.0)),
    (DKDLoss, dict(temperature=4.0, alpha=1.0, beta=8.0)),
    (PESFKDLoss, dict(temperature=4.0, alpha=0.1, beta=0.9, teacher_alpha=0.0, teacher_beta=0.0)),
])
def test_swap_equals_the_loss_on_hand_corrected_teacher_logits(cls, kwargs):
    z_s, z_t, _, y = batch(5)
    corrected = cls(**PATHS, **kwargs, target_correction='swap')
    plain = cls(**PATHS, **kwargs)
    got = corrected({'.': {'output': z_s}}, {'.': {'output': z_t}}, y)
    expected = plain({'.': {'output': z_s}}, {'.': {'output': loop_swap(z_t, y)}}, y)
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, plain({'.': {'output': z_s}}, {'.': {'output': z_t}}, y))


def test_swap_keeps_the_fine_tuned_teachers_gradient_permuted():
    """FT-KD's teacher is not detached: the KL gradient reaches it through the swap (a permutation)."""
    z_s, z_t, _, y = batch(6)
    z_t = z_t.clone().requires_grad_()
    loss = FTKDLoss(**PATHS, temperature=4.0, alpha=0.0, beta=1.0, teacher_ce_weight=0.0, target_correction='swap')
    grad = torch.autograd.grad(loss({'.': {'output': z_s}}, {'.': {'output': z_t}}, y), z_t)[0]
    leaf = loop_swap(z_t, y).requires_grad_()
    expected = torch.autograd.grad(distill_kl(z_s, leaf, 4.0), leaf)[0]
    for i in range(N):                                  # undo the swap on the gradient's row
        top = int(z_t[i].argmax())
        expected[i, [top, int(y[i])]] = expected[i, [int(y[i]), top]]
    torch.testing.assert_close(grad, expected)


def test_swap_needs_targets_and_class_logits():
    z_s, z_t, _, _ = batch(7)
    loss = LogitKDLoss(**PATHS, temperature=4.0, target_correction='swap')
    with pytest.raises(ValueError, match='targets'):
        loss({'.': {'output': z_s}}, {'.': {'output': z_t}}, None)
