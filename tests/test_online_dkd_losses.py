"""Numbers and gradients of DMLLoss, KDCLLoss and DKDLoss against plain-torch references written here."""
import pytest
import torch
from torchdistill.losses.registry import get_high_level_loss, get_mid_level_loss

import pesf_ext.losses  # noqa: F401  (registers the losses)
from pesf_ext.losses import DKDLoss, DMLLoss, KDCLLoss

N, K = 8, 10
PATHS = dict(student_module_path='.', student_module_io='output', teacher_module_path='.', teacher_module_io='output')
EPS = 1e-7


def ref_standardize(z, std):
    if std is None:
        return z
    mean = z.sum(dim=1, keepdim=True) / z.shape[1]
    dof = z.shape[1] - 1 if std == 'unbiased' else z.shape[1]
    return (z - mean) / ((((z - mean) ** 2).sum(dim=1, keepdim=True) / dof).sqrt() + EPS)


def ref_softmax(z):
    e = torch.exp(z - z.max(dim=1, keepdim=True).values)
    return e / e.sum(dim=1, keepdim=True)


def ref_kl(z_target, z_input, tau, std=None):
    p, q = ref_softmax(ref_standardize(z_target, std) / tau), ref_softmax(ref_standardize(z_input, std) / tau)
    return tau ** 2 * (p * (torch.log(p) - torch.log(q))).sum() / z_target.shape[0]


def ref_ce(z, y):
    return -torch.log(ref_softmax(z)[torch.arange(z.shape[0]), y]).mean()


def ref_dkd_parts(z_s, z_t, y, tau, std=None):
    """(TCKD, NCKD) as in the authors' code: binary masses, then the gt logit pushed down by 1000."""
    gt = torch.zeros_like(z_s).scatter_(1, y.view(-1, 1), 1.0)
    z_s, z_t = ref_standardize(z_s, std) / tau, ref_standardize(z_t.detach(), std) / tau
    p_s, p_t = ref_softmax(z_s), ref_softmax(z_t)
    b_s = torch.stack([(p_s * gt).sum(1), (p_s * (1 - gt)).sum(1)], dim=1)
    b_t = torch.stack([(p_t * gt).sum(1), (p_t * (1 - gt)).sum(1)], dim=1)
    tckd = (b_t * (torch.log(b_t) - torch.log(b_s))).sum() / N * tau ** 2
    q_s, q_t = ref_softmax(z_s - 1000 * gt), ref_softmax(z_t - 1000 * gt)
    q_s, q_t = (torch.where(gt.bool(), torch.ones_like(q), q) for q in (q_s, q_t))  # gt column: 1 * log(1/1) = 0
    terms = q_t * (torch.log(q_t) - torch.log(q_s))
    nckd = terms.sum() / N * tau ** 2
    return tckd, nckd


def io(z):
    return {'.': {'output': z}}


def make_logits(seed=0):
    g = torch.Generator().manual_seed(seed)
    z_s = (3 * torch.randn(N, K, generator=g, dtype=torch.float64)).requires_grad_()
    z_t = (4 * torch.randn(N, K, generator=g, dtype=torch.float64) + 1).requires_grad_()
    return z_s, z_t, torch.randint(0, K, (N,), generator=g)


def grad_of(value, tensor):
    (grad,) = torch.autograd.grad(value, tensor, retain_graph=True, allow_unused=True)
    return torch.zeros_like(tensor) if grad is None else grad


def close(a, b, tol=1e-10):
    return torch.allclose(a, b, atol=tol, rtol=tol)


def std_kwargs(std):
    return dict(logit_standardization=std is not None, std=std or 'unbiased')


# ---------------------------------------------------------------- DML
@pytest.mark.parametrize('tau', [1.0, 3.0])
@pytest.mark.parametrize('weights', [dict(), dict(alpha=0.5, beta=2.0, teacher_alpha=1.0, teacher_beta=0.25)])
@pytest.mark.parametrize('std', [None, 'unbiased', 'population'])
def test_dml_value_and_routing(tau, weights, std):
    z_s, z_t, y = make_logits()
    loss = DMLLoss(**PATHS, temperature=tau, **weights, **std_kwargs(std))
    a, b = weights.get('alpha', 1.0), weights.get('beta', 1.0)
    ta, tb = weights.get('teacher_alpha', a), weights.get('teacher_beta', b)
    total = loss(io(z_s), io(z_t), y)
    student_term = a * ref_ce(z_s, y) + b * ref_kl(z_t.detach(), z_s, tau, std)
    teacher_term = ta * ref_ce(z_t, y) + tb * ref_kl(z_s.detach(), z_t, tau, std)
    assert close(total, student_term + teacher_term)
    assert close(grad_of(total, z_s), grad_of(student_term, z_s))
    assert close(grad_of(total, z_t), grad_of(teacher_term, z_t))
    assert set(loss.last_terms) == {'student_ce', 'student_kl', 'teacher_ce', 'teacher_kl'}


def test_dml_defaults():
    loss = DMLLoss(**PATHS)
    assert (loss.temperature, loss.alpha, loss.beta, loss.teacher_alpha, loss.teacher_beta) == (1.0, 1, 1, 1, 1)


# ---------------------------------------------------------------- KDCL
def ref_kdcl_ensemble(z_s, z_t, y, target):
    z_s, z_t = z_s.detach(), z_t.detach()
    if target == 'naive':
        return 0.5 * z_s + 0.5 * z_t
    rows = torch.arange(z_s.shape[0])
    shifted_s, shifted_t = z_s - z_s[rows, y].unsqueeze(1), z_t - z_t[rows, y].unsqueeze(1)
    return torch.where(shifted_s < shifted_t, shifted_s, shifted_t)


@pytest.mark.parametrize('target', ['naive', 'min_logit'])
@pytest.mark.parametrize('tau,alpha,beta', [(1.0, 1.0, 1.0), (4.0, 0.3, 2.0)])
@pytest.mark.parametrize('std', [None, 'unbiased', 'population'])
def test_kdcl_value_and_routing(target, tau, alpha, beta, std):
    z_s, z_t, y = make_logits(1)
    loss = KDCLLoss(**PATHS, temperature=tau, alpha=alpha, beta=beta, target=target, **std_kwargs(std))
    total = loss(io(z_s), io(z_t), y)
    z_ens = ref_kdcl_ensemble(z_s, z_t, y, target)
    student_term = alpha * ref_ce(z_s, y) + beta * ref_kl(z_ens, z_s, tau, std)
    teacher_term = alpha * ref_ce(z_t, y) + beta * ref_kl(z_ens, z_t, tau, std)
    assert close(total, student_term + teacher_term)
    assert close(grad_of(total, z_s), grad_of(student_term, z_s))
    assert close(grad_of(total, z_t), grad_of(teacher_term, z_t))


def test_kdcl_min_logit_ensemble_has_zero_gt_logit():
    z_s, z_t, y = make_logits(2)
    z_ens = KDCLLoss(**PATHS, temperature=1.0, target='min_logit').ensemble_logits(z_s, z_t, y)
    assert not z_ens.requires_grad
    assert torch.count_nonzero(z_ens[torch.arange(N), y]) == 0
    assert (z_ens <= z_s - z_s[torch.arange(N), y].unsqueeze(1)).all()


# ---------------------------------------------------------------- DKD
@pytest.mark.parametrize('tau', [1.0, 4.0])
@pytest.mark.parametrize('ce_weight,alpha,beta', [(1.0, 1.0, 8.0), (0.5, 2.0, 0.5)])
@pytest.mark.parametrize('std', [None, 'unbiased', 'population'])
def test_dkd_value_and_teacher_detached(tau, ce_weight, alpha, beta, std):
    z_s, z_t, y = make_logits(3)
    loss = DKDLoss(**PATHS, ce_weight=ce_weight, alpha=alpha, beta=beta, temperature=tau, **std_kwargs(std))
    total = loss(io(z_s), io(z_t), y)
    tckd, nckd = ref_dkd_parts(z_s, z_t, y, tau, std)
    expected = ce_weight * ref_ce(z_s, y) + alpha * tckd + beta * nckd
    assert close(total, expected)
    assert close(loss.last_terms['tckd'], tckd) and close(loss.last_terms['nckd'], nckd)
    assert close(grad_of(total, z_s), grad_of(expected, z_s))
    assert torch.count_nonzero(grad_of(total, z_t)) == 0


def test_dkd_tckd_plus_nckd_relation_to_kd():
    """Sanity of the decomposition (DKD eq. 3): KD = TCKD + (1 - p_t_gt) * NCKD per sample, here with batch 1."""
    z_s, z_t, y = (t[:1] for t in make_logits(4))
    loss = DKDLoss(**PATHS, ce_weight=0.0, alpha=1.0, beta=1.0, temperature=2.0)
    loss(io(z_s), io(z_t), y)
    p_t_gt = ref_softmax(z_t / 2.0)[0, y[0]]
    kd = ref_kl(z_t, z_s, 2.0)
    assert close(loss.last_terms['tckd'] + (1 - p_t_gt) * loss.last_terms['nckd'], kd, 1e-9)


def test_dkd_warmup_scales_kd_terms_with_set_epoch():
    z_s, z_t, y = make_logits(5)
    full = DKDLoss(**PATHS)(io(z_s), io(z_t), y)
    ce = ref_ce(z_s, y)
    warm = DKDLoss(**PATHS, warmup_epochs=4)
    with pytest.raises(RuntimeError, match='set_epoch'):
        warm(io(z_s), io(z_t), y)
    for epoch, factor in [(0, 0.0), (1, 0.25), (3, 0.75), (4, 1.0), (30, 1.0)]:
        warm.set_epoch(epoch)
        assert close(warm(io(z_s), io(z_t), y), ce + factor * (full - ce)), epoch


# ---------------------------------------------------------------- arguments and torchdistill
@pytest.mark.parametrize('cls,kwargs,name', [
    (DMLLoss, dict(temperature=0), 'temperature'),
    (DMLLoss, dict(teacher_beta=-1), 'teacher_beta'),
    (DMLLoss, dict(std='sample'), 'std'),
    (KDCLLoss, dict(temperature=1.0, target='mean'), 'target'),
    (KDCLLoss, dict(temperature=1.0, alpha=-1), 'alpha'),
    (KDCLLoss, dict(temperature=-2.0), 'temperature'),
    (DKDLoss, dict(temperature=0), 'temperature'),
    (DKDLoss, dict(ce_weight=-1), 'ce_weight'),
    (DKDLoss, dict(beta=-8), 'beta'),
    (DKDLoss, dict(warmup_epochs=-1), 'warmup_epochs'),
    (DKDLoss, dict(logit_standardization=True, std='median'), 'std'),
])
def test_bad_arguments_raise_value_error_naming_them(cls, kwargs, name):
    with pytest.raises(ValueError, match=name):
        cls(**PATHS, **kwargs)


def test_built_through_torchdistill_registries():
    z_s, z_t, y = make_logits(6)
    configs = {
        'dml': ({'key': 'DMLLoss', 'kwargs': dict(**PATHS)}, 1.0),
        'kdcl': ({'key': 'KDCLLoss', 'kwargs': dict(**PATHS, temperature=2.0, target='min_logit')}, 0.5),
        'dkd': ({'key': 'DKDLoss', 'kwargs': dict(**PATHS, temperature=4.0)}, 2.0),
    }
    high = get_high_level_loss({'key': 'WeightedSumLoss', 'kwargs': {'sub_terms': {
        name: {'criterion': config, 'weight': weight} for name, (config, weight) in configs.items()}}})
    total = high({'student': io(z_s), 'teacher': io(z_t)}, dict(), y)
    expected = sum(weight * get_mid_level_loss(config)(io(z_s), io(z_t), y) for config, weight in configs.values())
    assert close(total, expected)
