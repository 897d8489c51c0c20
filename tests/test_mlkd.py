"""MLKD: MLKDLoss against a transcription of the reference's forward_train (sunshangquan/logit-standardization-KD
mdistiller/distillers/MLKD.py), written here with numpy percentiles and plain torch ops; the two-view forward proc;
gradient routing (teacher detached)."""
import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import pesf_ext.losses  # noqa: F401  (registers the loss and the forward proc)
from pesf_ext.data import TwoViews
from pesf_ext.losses import MLKDLoss, forward_two_views

N, K = 12, 7
PATHS = dict(student_module_path='.', student_module_io='output', teacher_module_path='.', teacher_module_io='output')


def z_score(z):
    return (z - z.mean(-1, keepdim=True)) / (1e-7 + z.std(-1, keepdim=True))


def ref_kd(s, t, temp, stand):
    s, t = (z_score(s), z_score(t)) if stand else (s, t)
    return F.kl_div(F.log_softmax(s / temp, 1), F.softmax(t / temp, 1), reduction='none').sum(1).mean() * temp ** 2


def ref_cc(s, t, temp):
    ps, pt = F.softmax(s / temp, 1), F.softmax(t / temp, 1)
    return ((pt.T @ pt - ps.T @ ps) ** 2).sum() / s.shape[1]


def ref_bc(s, t, temp):
    ps, pt = F.softmax(s / temp, 1), F.softmax(t / temp, 1)
    return ((pt @ pt.T - ps @ ps.T) ** 2).sum() / s.shape[0]


def reference(s_w, s_s, t_w, t_s, y, temp, ce_w, kd_w, stand):
    """forward_train's loss dict summed: the masks multiply batch-averaged losses, then .mean()."""
    pred = F.softmax(t_w, 1)
    conf = pred.max(1).values
    mask = (conf <= float(np.percentile(conf.numpy(), 50))).float()
    class_conf = pred.sum(0)
    class_mask = (class_conf <= float(np.percentile(class_conf.numpy(), 50))).float()
    temps = [temp, 3.0, 5.0, 2.0, 6.0]
    ce = ce_w * (F.cross_entropy(s_w, y) + F.cross_entropy(s_s, y))
    kd_weak = sum(kd_w * (ref_kd(s_w, t_w, T, stand) * mask).mean() for T in temps)
    kd_strong = sum(kd_w * ref_kd(s_s, t_s, T, stand) for T in temps[:3]) + \
        sum(kd_w * ref_kd(s_w, t_w, T, stand) for T in temps[3:])
    cc_weak = sum(kd_w * (ref_cc(s_w, t_w, T) * class_mask).mean() for T in temps)
    bc_weak = sum(kd_w * (ref_bc(s_w, t_w, T) * mask).mean() for T in temps)
    return ce + kd_weak + kd_strong + cc_weak + bc_weak


def logits(seed):
    g = torch.Generator().manual_seed(seed)
    z_s = (2 * torch.randn(2 * N, K, generator=g, dtype=torch.float64)).requires_grad_()
    z_t = (3 * torch.randn(2 * N, K, generator=g, dtype=torch.float64)).requires_grad_()
    return z_s, z_t, torch.randint(0, K, (N,), generator=g)


@pytest.mark.parametrize('stand,temp', [(False, 4.0), (True, 2.0)])
def test_mlkd_matches_the_reference_and_routes_gradient_to_the_student_only(stand, temp):
    for seed in range(3):
        z_s, z_t, y = logits(seed)
        loss = MLKDLoss(**PATHS, temperature=temp, alpha=1.0, beta=9.0, logit_standardization=stand)
        value = loss({'.': {'output': z_s}}, {'.': {'output': z_t}}, y)
        s_w, s_s = z_s.chunk(2)
        t_w, t_s = z_t.detach().chunk(2)
        expected = reference(s_w, s_s, t_w, t_s, y, temp, 1.0, 9.0, stand)
        torch.testing.assert_close(value, expected)
        grad_s, grad_t = torch.autograd.grad(value, [z_s, z_t], allow_unused=True)
        torch.testing.assert_close(grad_s, torch.autograd.grad(expected, z_s)[0])
        assert grad_t is None
        assert set(loss.last_terms) == {'student_ce', 'kd_weak', 'kd_strong', 'cc', 'bc'}


def test_all_strong_view_temperatures_changes_only_the_strong_term():
    z_s, z_t, y = logits(5)
    reference_like = MLKDLoss(**PATHS)
    all_strong = MLKDLoss(**PATHS, strong_view_temperatures=5)
    reference_like({'.': {'output': z_s}}, {'.': {'output': z_t}}, y)
    all_strong({'.': {'output': z_s}}, {'.': {'output': z_t}}, y)
    for name in ('student_ce', 'kd_weak', 'cc', 'bc'):
        torch.testing.assert_close(reference_like.last_terms[name], all_strong.last_terms[name])
    assert not torch.allclose(reference_like.last_terms['kd_strong'], all_strong.last_terms['kd_strong'])


def test_forward_two_views_runs_the_model_once_per_view():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, K), nn.BatchNorm1d(K)).train()
    batch = torch.randn(5, 2, 3, 2, 2)
    out = forward_two_views(model, batch)
    assert out.shape == (10, K)
    torch.testing.assert_close(out, torch.cat([model(batch[:, 0]), model(batch[:, 1])]))  # BN per view


def test_two_views_transform_and_bad_shapes():
    views = TwoViews(lambda x: x + 1, lambda x: x * 2)
    torch.testing.assert_close(views(torch.ones(3, 2, 2)), torch.stack([torch.full((3, 2, 2), 2.)] * 2))
    loss = MLKDLoss(**PATHS)
    with pytest.raises(ValueError, match='two views'):
        loss({'.': {'output': torch.randn(5, K)}}, {'.': {'output': torch.randn(5, K)}}, torch.zeros(2).long())
    with pytest.raises(ValueError, match='temperature'):
        MLKDLoss(**PATHS, extra_temperatures=(3.0, -1.0))
    with pytest.raises(ValueError, match='strong_view_temperatures'):
        MLKDLoss(**PATHS, strong_view_temperatures=9)
