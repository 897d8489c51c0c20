"""Numbers and gradients of functional.py, PESFKDLoss, FTKDLoss, ZScoreKDLoss and metrics.py.

References are written here with plain torch ops (explicit exp/log/sums), independent of pesf_ext's code.
"""
import types

import pytest
import torch
from torchdistill.losses.mid_level import LogitStdKDLoss
from torchdistill.losses.registry import get_high_level_loss, get_mid_level_loss

import pesf_ext.losses  # noqa: F401  (registers the losses)
from pesf_ext import metrics
from pesf_ext.losses import FTKDLoss, PESFKDLoss, ZScoreKDLoss, functional

N, K = 8, 10
PATHS = dict(student_module_path='.', student_module_io='output', teacher_module_path='.', teacher_module_io='output')
EPS = 1e-7


# ---------------------------------------------------------------- independent references
def ref_standardize(z, std):
    mean = z.sum(dim=1, keepdim=True) / z.shape[1]
    dof = z.shape[1] - 1 if std == 'unbiased' else z.shape[1]
    sigma = (((z - mean) ** 2).sum(dim=1, keepdim=True) / dof).sqrt()
    return (z - mean) / (sigma + EPS)


def ref_softmax(z):
    e = torch.exp(z - z.max(dim=1, keepdim=True).values)
    return e / e.sum(dim=1, keepdim=True)


def ref_kl(z_target, z_input, tau, std=None):
    """tau^2 * batchmean KL(softmax(z_target'/tau) || softmax(z_input'/tau))."""
    if std is not None:
        z_target, z_input = ref_standardize(z_target, std), ref_standardize(z_input, std)
    p, q = ref_softmax(z_target / tau), ref_softmax(z_input / tau)
    return tau ** 2 * (p * (torch.log(p) - torch.log(q))).sum() / z_target.shape[0]


def ref_ce(z, y):
    return -torch.log(ref_softmax(z)[torch.arange(z.shape[0]), y]).mean()


def io(z):
    return {'.': {'output': z}}


def make_logits(seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    z_s = (3 * torch.randn(N, K, generator=g, dtype=dtype)).requires_grad_()
    z_t = (4 * torch.randn(N, K, generator=g, dtype=dtype) + 1).requires_grad_()
    y = torch.randint(0, K, (N,), generator=g)
    return z_s, z_t, y


def grad_of(value, tensor):
    (grad,) = torch.autograd.grad(value, tensor, retain_graph=True, allow_unused=True)
    return torch.zeros_like(tensor) if grad is None else grad


def close(a, b, tol=1e-10):
    return torch.allclose(a, b, atol=tol, rtol=tol)


# ---------------------------------------------------------------- functional
@pytest.mark.parametrize('std', ['unbiased', 'population'])
def test_standardize_rows_zero_mean_unit_std(std):
    z = 5 * torch.randn(6, 20, dtype=torch.float64) + 3
    out = functional.standardize_logits(z, std=std)
    assert close(out.mean(dim=1), torch.zeros(6, dtype=torch.float64), 1e-12)
    assert close(out.std(dim=1, correction=1 if std == 'unbiased' else 0), torch.ones(6, dtype=torch.float64), 1e-6)
    assert close(out, ref_standardize(z, std))


def test_unbiased_and_population_differ():
    z = torch.randn(4, 5, dtype=torch.float64)
    assert not close(functional.standardize_logits(z, 'unbiased'), functional.standardize_logits(z, 'population'), 1e-3)


@pytest.mark.parametrize('tau', [1.0, 2.0, 4.0])
@pytest.mark.parametrize('std', [None, 'unbiased', 'population'])
def test_softened_kl_matches_reference(tau, std):
    z_s, z_t, _ = make_logits()
    standardization = None if std is None else functional.LogitStandardization(std)
    value = functional.softened_kl(z_t, z_s, tau, standardization=standardization)
    assert close(value, ref_kl(z_t, z_s, tau, std))


def test_softened_kl_reductions_are_consistent():
    z_s, z_t, _ = make_logits()
    per_sample = functional.softened_kl(z_t, z_s, 2.0, reduction='none')
    assert per_sample.shape == (N,)
    assert close(per_sample.mean(), functional.softened_kl(z_t, z_s, 2.0))
    assert close(per_sample.sum(), functional.softened_kl(z_t, z_s, 2.0, reduction='sum'))
    assert close(per_sample.sum() / (N * K), functional.softened_kl(z_t, z_s, 2.0, reduction='mean'))


def test_sharpness_is_logsumexp_and_gap_sign():
    z = torch.randn(5, 7, dtype=torch.float64)
    assert close(functional.sharpness(z), torch.log(torch.exp(z).sum(dim=1)))
    assert close(functional.sharpness_gap(z + 1.5, z), torch.full((5,), 1.5, dtype=torch.float64))
    centred = z - z.mean(dim=1, keepdim=True)
    assert (functional.sharpness_gap(3 * centred, centred) > 0).all()  # sharper teacher -> positive gap
    assert (functional.sharpness_gap(centred, 3 * centred) < 0).all()


# ---------------------------------------------------------------- PESF-KD
@pytest.mark.parametrize('tau', [1.0, 4.0])
@pytest.mark.parametrize('alpha,beta,teacher_alpha,teacher_beta', [(0.1, None, None, None), (0.5, 2.0, 1.0, 0.3)])
@pytest.mark.parametrize('std', [None, 'unbiased', 'population'])
def test_pesf_reverse_value(tau, alpha, beta, teacher_alpha, teacher_beta, std):
    z_s, z_ta, y = make_logits()
    loss = PESFKDLoss(**PATHS, temperature=tau, alpha=alpha, beta=beta, teacher_alpha=teacher_alpha,
                      teacher_beta=teacher_beta, logit_standardization=std is not None, std=std or 'unbiased')
    b = 1 - alpha if beta is None else beta
    ta = alpha if teacher_alpha is None else teacher_alpha
    tb = b if teacher_beta is None else teacher_beta
    expected = (alpha * ref_ce(z_s, y) + b * ref_kl(z_ta, z_s, tau, std)
                + ta * ref_ce(z_ta, y) + tb * ref_kl(z_s, z_ta, tau, std))
    assert close(loss(io(z_s), io(z_ta), y), expected)
    assert set(loss.last_terms) == {'student_ce', 'student_kl', 'teacher_ce', 'teacher_kl'}
    assert close(loss.last_terms['teacher_kl'], ref_kl(z_s, z_ta, tau, std))


@pytest.mark.parametrize('std', [None, 'unbiased'])
def test_pesf_reverse_gradient_routing(std):
    z_s, z_ta, y = make_logits()
    tau, alpha, beta, ta, tb = 4.0, 0.2, 0.8, 0.5, 0.7
    kwargs = dict(temperature=tau, alpha=alpha, beta=beta, logit_standardization=std is not None)
    total = PESFKDLoss(**PATHS, **kwargs, teacher_alpha=ta, teacher_beta=tb)(io(z_s), io(z_ta), y)
    student_only = PESFKDLoss(**PATHS, **kwargs, teacher_alpha=0, teacher_beta=0)(io(z_s), io(z_ta), y)
    assert torch.count_nonzero(grad_of(student_only, z_ta)) == 0  # d(student term)/dz_ta == 0

    student_term = alpha * ref_ce(z_s, y) + beta * ref_kl(z_ta.detach(), z_s, tau, std)
    teacher_term = ta * ref_ce(z_ta, y) + tb * ref_kl(z_s.detach(), z_ta, tau, std)
    assert close(grad_of(total, z_s), grad_of(student_term, z_s))
    assert close(grad_of(total, z_ta), grad_of(teacher_term, z_ta))
    assert torch.count_nonzero(grad_of(total, z_ta)) > 0


def test_pesf_shared_value_and_gradient_routing():
    z_s, z_ta, y = make_logits()
    tau, alpha, beta, ta = 2.0, 0.3, 0.7, 0.4
    loss = PESFKDLoss(**PATHS, temperature=tau, alpha=alpha, beta=beta, teacher_alpha=ta, teacher_kl='shared')
    total = loss(io(z_s), io(z_ta), y)
    assert close(total, alpha * ref_ce(z_s, y) + beta * ref_kl(z_ta, z_s, tau) + ta * ref_ce(z_ta, y))
    assert 'teacher_kl' not in loss.last_terms
    assert close(grad_of(total, z_ta), grad_of(beta * ref_kl(z_ta, z_s, tau) + ta * ref_ce(z_ta, y), z_ta))
    assert close(grad_of(total, z_s), grad_of(alpha * ref_ce(z_s, y) + beta * ref_kl(z_ta, z_s, tau), z_s))


def test_pesf_adapters_get_gradients_frozen_teacher_does_not():
    torch.manual_seed(0)
    features = torch.randn(N, 6)
    y = torch.randint(0, K, (N,))
    student, teacher = torch.nn.Linear(6, K), torch.nn.Linear(6, K).requires_grad_(False)
    adapter = torch.nn.Sequential(torch.nn.Linear(K, 4), torch.nn.ReLU(), torch.nn.Linear(4, K))
    z_t = teacher(features)
    z_ta = z_t - adapter(z_t)
    z_s = student(features)
    loss = PESFKDLoss(**PATHS, temperature=4.0, alpha=0.1, beta=0.9)
    loss(io(z_s), io(z_ta), y).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in adapter.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())

    # the adapters' gradient is that of the teacher term alone
    adapter_grads = [p.grad.clone() for p in adapter.parameters()]
    adapter.zero_grad()
    z_ta = z_t - adapter(z_t)
    (0.1 * ref_ce(z_ta, y) + 0.9 * ref_kl(z_s.detach(), z_ta, 4.0)).backward()
    assert all(torch.allclose(a, p.grad, atol=1e-6) for a, p in zip(adapter_grads, adapter.parameters()))


def test_pesf_teacher_warmup_ramps_only_the_adapter_kl():
    z_s, z_ta, y = make_logits(3)
    tau, alpha, beta, ta, tb = 4.0, 0.2, 0.8, 0.5, 0.7
    kwargs = dict(temperature=tau, alpha=alpha, beta=beta, teacher_alpha=ta, teacher_beta=tb)
    warm = PESFKDLoss(**PATHS, **kwargs, teacher_warmup_epochs=4)
    with pytest.raises(RuntimeError, match='set_epoch'):
        warm(io(z_s), io(z_ta), y)
    for epoch, factor in [(1, 0.25), (3, 0.75), (4, 1.0), (30, 1.0)]:
        warm.set_epoch(epoch)
        total = warm(io(z_s), io(z_ta), y)
        student_term = alpha * ref_ce(z_s, y) + beta * ref_kl(z_ta.detach(), z_s, tau)
        teacher_term = ta * ref_ce(z_ta, y) + factor * tb * ref_kl(z_s.detach(), z_ta, tau)
        assert close(total, student_term + teacher_term), epoch
        assert close(grad_of(total, z_s), grad_of(student_term, z_s)), epoch      # the student is not ramped
        assert close(grad_of(total, z_ta), grad_of(teacher_term, z_ta)), epoch
    off = PESFKDLoss(**PATHS, **kwargs)                                            # default 0: no set_epoch needed
    warm.set_epoch(4)
    assert close(off(io(z_s), io(z_ta), y), warm(io(z_s), io(z_ta), y))
    with pytest.raises(ValueError, match='teacher_warmup_epochs'):
        PESFKDLoss(**PATHS, temperature=tau, teacher_warmup_epochs=-1)
    with pytest.raises(ValueError, match='teacher_warmup_epochs'):
        PESFKDLoss(**PATHS, temperature=tau, teacher_kl='shared', teacher_warmup_epochs=2)


def test_pesf_hugging_face_style_output_and_reductions():
    z_s, z_ta, y = make_logits()
    loss = PESFKDLoss(**PATHS, temperature=2.0, alpha=0.5)
    wrapped = loss(io(types.SimpleNamespace(logits=z_s)), io(types.SimpleNamespace(logits=z_ta)), y)
    assert close(wrapped, loss(io(z_s), io(z_ta), y))
    per_sample = PESFKDLoss(**PATHS, temperature=2.0, alpha=0.5, reduction='none')(io(z_s), io(z_ta), y)
    assert per_sample.shape == (N,) and close(per_sample.mean(), wrapped)


# ---------------------------------------------------------------- FT-KD
@pytest.mark.parametrize('tau', [1.0, 4.0])
@pytest.mark.parametrize('alpha,beta,teacher_ce_weight', [(0.1, None, 1.0), (1.0, 3.0, 0.5)])
@pytest.mark.parametrize('std', [None, 'population'])
def test_ftkd_value_and_gradient(tau, alpha, beta, teacher_ce_weight, std):
    z_s, z_t, y = make_logits(1)
    loss = FTKDLoss(**PATHS, temperature=tau, alpha=alpha, beta=beta, teacher_ce_weight=teacher_ce_weight,
                    logit_standardization=std is not None, std=std or 'unbiased')
    b = 1 - alpha if beta is None else beta
    total = loss(io(z_s), io(z_t), y)
    kl = ref_kl(z_t, z_s, tau, std)
    assert close(total, alpha * ref_ce(z_s, y) + b * kl + teacher_ce_weight * ref_ce(z_t, y))
    teacher_grad = grad_of(total, z_t)
    assert torch.count_nonzero(teacher_grad) > 0
    assert close(teacher_grad, grad_of(b * kl + teacher_ce_weight * ref_ce(z_t, y), z_t))
    assert close(grad_of(total, z_s), grad_of(alpha * ref_ce(z_s, y) + b * kl, z_s))


# ---------------------------------------------------------------- Z-score KD
@pytest.mark.parametrize('tau', [1.0, 2.0, 4.0])
@pytest.mark.parametrize('alpha,beta', [(0.1, 9.0), (0.5, None), (1.0, 1.0)])
def test_zscore_equals_torchdistill_logit_std_kd(tau, alpha, beta):
    z_s, z_t, y = (t.detach().float() if t.is_floating_point() else t for t in make_logits(2))
    kwargs = dict(**PATHS, temperature=tau, alpha=alpha, beta=beta)
    ours = ZScoreKDLoss(**kwargs)(io(z_s), io(z_t), y)
    theirs = LogitStdKDLoss(**kwargs)(io(z_s), io(z_t), y)
    assert torch.allclose(ours, theirs, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize('std', ['unbiased', 'population'])
def test_zscore_value_and_teacher_detached(std):
    z_s, z_t, y = make_logits(3)
    total = ZScoreKDLoss(**PATHS, temperature=2.0, alpha=0.1, beta=9.0, std=std)(io(z_s), io(z_t), y)
    assert close(total, 0.1 * ref_ce(z_s, y) + 9.0 * ref_kl(z_t, z_s, 2.0, std))
    assert torch.count_nonzero(grad_of(total, z_t)) == 0


def test_zscore_population_differs_from_unbiased():
    z_s, z_t, y = make_logits(3)
    kwargs = dict(**PATHS, temperature=2.0, alpha=0.1, beta=9.0)
    unbiased = ZScoreKDLoss(**kwargs)(io(z_s), io(z_t), y)
    population = ZScoreKDLoss(**kwargs, std='population')(io(z_s), io(z_t), y)
    assert abs(unbiased.item() - population.item()) > 1e-4


# ---------------------------------------------------------------- argument checks
@pytest.mark.parametrize('cls,kwargs,name', [
    (PESFKDLoss, dict(temperature=0), 'temperature'),
    (PESFKDLoss, dict(temperature=-1), 'temperature'),
    (PESFKDLoss, dict(temperature=1, alpha=-0.1), 'alpha'),
    (PESFKDLoss, dict(temperature=1, alpha=1.5), 'beta'),
    (PESFKDLoss, dict(temperature=1, beta=-1), 'beta'),
    (PESFKDLoss, dict(temperature=1, teacher_alpha=-1), 'teacher_alpha'),
    (PESFKDLoss, dict(temperature=1, teacher_beta=-1), 'teacher_beta'),
    (PESFKDLoss, dict(temperature=1, teacher_kl='forward'), 'teacher_kl'),
    (PESFKDLoss, dict(temperature=1, teacher_kl='shared', teacher_beta=0.5), 'teacher_beta'),
    (PESFKDLoss, dict(temperature=1, logit_standardization=True, std='sample'), 'std'),
    (PESFKDLoss, dict(temperature=1, reduction='avg'), 'reduction'),
    (FTKDLoss, dict(temperature=1, teacher_ce_weight=-1), 'teacher_ce_weight'),
    (FTKDLoss, dict(temperature=0), 'temperature'),
    (ZScoreKDLoss, dict(temperature=2, std='biased'), 'std'),
    (ZScoreKDLoss, dict(temperature=2, eps=-1), 'eps'),
])
def test_bad_arguments_raise_value_error_naming_them(cls, kwargs, name):
    with pytest.raises(ValueError, match=name):
        cls(**PATHS, **kwargs)


def test_weight_defaults():
    loss = PESFKDLoss(**PATHS, temperature=1)
    assert (loss.alpha, loss.beta, loss.teacher_alpha, loss.teacher_beta) == (0.0, 1.0, 0.0, 1.0)
    loss = PESFKDLoss(**PATHS, temperature=1, alpha=0.3)
    assert (loss.alpha, loss.beta) == (0.3, 0.7)


# ---------------------------------------------------------------- through torchdistill
def test_built_through_torchdistill_registries():
    z_s, z_t, y = make_logits(4)
    kwargs = dict(**PATHS, temperature=4.0, alpha=0.1, beta=0.9)
    mid = get_mid_level_loss({'key': 'PESFKDLoss', 'kwargs': kwargs})
    assert isinstance(mid, PESFKDLoss)
    high = get_high_level_loss({'key': 'WeightedSumLoss', 'kwargs': {'sub_terms': {
        'pesf': {'criterion': {'key': 'PESFKDLoss', 'kwargs': kwargs}, 'weight': 0.5},
        'zscore': {'criterion': {'key': 'ZScoreKDLoss', 'kwargs': kwargs}, 'weight': 2.0},
        'ftkd': {'criterion': {'key': 'FTKDLoss', 'kwargs': kwargs}, 'weight': 1.0},
    }}})
    total = high({'student': io(z_s), 'teacher': io(z_t)}, dict(), y)
    expected = (0.5 * mid(io(z_s), io(z_t), y) + 2.0 * ZScoreKDLoss(**kwargs)(io(z_s), io(z_t), y)
                + FTKDLoss(**kwargs)(io(z_s), io(z_t), y))
    assert close(total, expected)


# ---------------------------------------------------------------- metrics
def test_metrics_against_references():
    z_s, z_t, _ = (t.detach() for t in make_logits(5))
    exact_gap = (torch.log(torch.exp(z_t).sum(1)) - torch.log(torch.exp(z_s).sum(1))).mean()
    assert metrics.mean_sharpness_gap(z_t, z_s) == pytest.approx(exact_gap.item(), abs=1e-10)
    assert metrics.mean_kl(z_t, z_s, 4.0) == pytest.approx(ref_kl(z_t, z_s, 4.0).item() / 16, abs=1e-10)
    agreement = (z_t.argmax(1) == z_s.argmax(1)).double().mean().item()
    assert metrics.top1_agreement(z_t, z_s) == pytest.approx(agreement)
    assert metrics.top1_agreement(z_s, z_s + 1) == 1.0


def test_sharpness_gap_approx_tracks_exact_gap_for_small_centred_logits():
    z = torch.randn(256, 100, dtype=torch.float64)
    z_s, z_t = 0.1 * (z - z.mean(1, keepdim=True)), 0.3 * (z - z.mean(1, keepdim=True))
    var_t, var_s = (z_t ** 2).mean(1), (z_s ** 2).mean(1)
    expected = (torch.log(1 + var_t / 2) - torch.log(1 + var_s / 2)).mean().item()
    assert metrics.sharpness_gap_approx(z_t, z_s) == pytest.approx(expected, abs=1e-12)
    assert metrics.sharpness_gap_approx(z_t, z_s) == pytest.approx(metrics.mean_sharpness_gap(z_t, z_s), rel=0.05)


def test_linear_cka_matches_hsic_form_and_invariances():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(40, 8, generator=g, dtype=torch.float64)
    noise = torch.randn(40, 5, generator=g, dtype=torch.float64)
    y = x @ torch.randn(8, 5, generator=g, dtype=torch.float64) + 0.5 * noise
    h = torch.eye(40, dtype=torch.float64) - 1 / 40
    kx, ky = x @ x.T, y @ y.T
    hsic = lambda a, b: torch.trace(a @ h @ b @ h)  # noqa: E731
    expected = (hsic(kx, ky) / torch.sqrt(hsic(kx, kx) * hsic(ky, ky))).item()
    assert metrics.linear_cka(x, y) == pytest.approx(expected, abs=1e-10)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=torch.float64))
    assert metrics.linear_cka(3 * x @ q + 2, y) == pytest.approx(expected, abs=1e-10)
    assert metrics.linear_cka(x, x) == pytest.approx(1.0)
