"""LogitDISTLoss: equal to torchdistill's DISTLoss (plus CE), a hand-written Pearson form, Z-score, routing."""
import pytest
import torch
from torchdistill.losses.mid_level import DISTLoss

import pesf_ext.losses  # noqa: F401
from pesf_ext.losses import LogitDISTLoss

N, K = 16, 10
PATHS = dict(student_module_path='.', student_module_io='output', teacher_module_path='.', teacher_module_io='output')


def hand_pearson(a, b):
    """1 - mean over rows of cov / (std std), with explicit sums."""
    values = []
    for x, y in zip(a, b):
        dx, dy = x - x.sum() / len(x), y - y.sum() / len(y)
        values.append((dx * dy).sum() / ((dx * dx).sum().sqrt() * (dy * dy).sum().sqrt()))
    return 1 - sum(values) / len(values)


def batch(seed):
    g = torch.Generator().manual_seed(seed)
    return ((2 * torch.randn(N, K, generator=g, dtype=torch.float64)).requires_grad_(),
            (3 * torch.randn(N, K, generator=g, dtype=torch.float64)).requires_grad_(),
            torch.randint(0, K, (N,), generator=g))


@pytest.mark.parametrize('tau,beta,gamma', [(1.0, 1.0, 1.0), (4.0, 2.0, 2.0), (2.0, 1.0, 0.0)])
def test_equals_torchdistill_dist_and_hand_formula(tau, beta, gamma):
    z_s, z_t, y = batch(0)
    ours = LogitDISTLoss(**PATHS, temperature=tau, alpha=0.0, inter_weight=beta, intra_weight=gamma)
    value = ours({'.': {'output': z_s}}, {'.': {'output': z_t}}, y)
    theirs = DISTLoss(**PATHS, beta=beta, gamma=gamma, tau=tau)({'.': {'output': z_s}}, {'.': {'output': z_t}})
    torch.testing.assert_close(value, theirs)
    p_s, p_t = torch.softmax(z_s / tau, 1), torch.softmax(z_t / tau, 1)
    hand = tau ** 2 * (beta * hand_pearson(p_s, p_t) + gamma * hand_pearson(p_s.t(), p_t.t()))
    torch.testing.assert_close(value, hand)


def test_zscore_and_ce_and_teacher_detached():
    z_s, z_t, y = batch(1)
    loss = LogitDISTLoss(**PATHS, temperature=2.0, alpha=0.5, logit_standardization=True)
    value = loss({'.': {'output': z_s}}, {'.': {'output': z_t}}, y)

    def z(v):
        return (v - v.mean(1, keepdim=True)) / (v.std(1, keepdim=True) + 1e-7)
    p_s, p_t = torch.softmax(z(z_s) / 2, 1), torch.softmax(z(z_t) / 2, 1)
    hand = 0.5 * torch.nn.functional.cross_entropy(z_s, y) + 4 * (hand_pearson(p_s, p_t) +
                                                                  hand_pearson(p_s.t(), p_t.t()))
    torch.testing.assert_close(value, hand)
    grad_s, grad_t = torch.autograd.grad(value, [z_s, z_t], allow_unused=True)
    assert grad_s.abs().sum() > 0 and grad_t is None
    with pytest.raises(ValueError, match='inter_weight'):
        LogitDISTLoss(**PATHS, inter_weight=-1.0)
