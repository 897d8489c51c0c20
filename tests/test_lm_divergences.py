"""Token-level divergences (pesf_ext.losses.functional) and TokenKDLoss: values against hand-written formulas,
masking (token-weighted), gradient routing, the TAID schedule, and GKD's JSD against TRL's own function."""
import math

import pytest
import torch

from pesf_ext.losses import functional as fn
from pesf_ext.losses.divergences import TAIDSchedule, TokenKDLoss

TAU = 2.0


def probs(z, tau=1.0):
    e = torch.exp((z - z.max(dim=-1, keepdim=True).values) / tau)
    return e / e.sum(dim=-1, keepdim=True)


def kl_rows(p, q):
    return (p * (p.log() - q.log())).sum(dim=-1)


def masked_mean(values, mask):
    return values[mask].sum() / mask.sum()


@pytest.fixture
def batch():
    gen = torch.Generator().manual_seed(0)
    z_t = torch.randn(3, 5, 11, generator=gen, dtype=torch.float64) * 2
    z_s = torch.randn(3, 5, 11, generator=gen, dtype=torch.float64) * 2
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[0, 3:] = False   # padding
    mask[1, :2] = False   # prompt
    mask[2, 1] = False
    return z_t, z_s, mask


def hand(name, z_t, z_s, tau, param=None):
    """Per-position value of each divergence, written from the papers' definitions."""
    p, q = probs(z_t, tau), probs(z_s, tau)
    if name == 'forward_kl':
        return kl_rows(p, q)
    if name == 'reverse_kl':
        return kl_rows(q, p)
    if name == 'jsd':
        m = param * p + (1 - param) * q
        return param * kl_rows(p, m) + (1 - param) * kl_rows(q, m)
    if name == 'skew_forward_kl':
        return kl_rows(p, param * p + (1 - param) * q)
    if name == 'skew_reverse_kl':
        return kl_rows(q, (1 - param) * p + param * q)
    if name == 'tv':
        return 0.5 * (p - q).abs().sum(dim=-1)
    if name == 'taid':
        target = probs((1 - param) * z_s / tau + param * z_t / tau)
        return kl_rows(target, q)
    raise KeyError(name)


CASES = [('forward_kl', lambda t, s, m: fn.forward_kl(t, s, m, TAU), None),
         ('reverse_kl', lambda t, s, m: fn.reverse_kl(t, s, m, TAU), None),
         ('jsd', lambda t, s, m: fn.generalized_jsd(t, s, 0.3, m, TAU), 0.3),
         ('skew_forward_kl', lambda t, s, m: fn.skew_forward_kl(t, s, 0.1, m, TAU), 0.1),
         ('skew_reverse_kl', lambda t, s, m: fn.skew_reverse_kl(t, s, 0.2, m, TAU), 0.2),
         ('tv', lambda t, s, m: fn.total_variation(t, s, m, TAU), None),
         ('taid', lambda t, s, m: fn.taid_kl(t, s, 0.7, m, TAU), 0.7)]


@pytest.mark.parametrize('name,function,param', CASES, ids=[c[0] for c in CASES])
def test_divergence_matches_hand_formula_with_mask(batch, name, function, param):
    z_t, z_s, mask = batch
    expected = TAU ** 2 * masked_mean(hand(name, z_t, z_s, TAU, param), mask)
    assert torch.allclose(function(z_t, z_s, mask), expected, atol=1e-10)
    assert float(expected) > 0


@pytest.mark.parametrize('name,function,param', CASES, ids=[c[0] for c in CASES])
def test_classification_is_the_unmasked_case(name, function, param):
    gen = torch.Generator().manual_seed(1)
    z_t, z_s = torch.randn(6, 4, generator=gen, dtype=torch.float64), torch.randn(6, 4, generator=gen,
                                                                                 dtype=torch.float64)
    expected = TAU ** 2 * hand(name, z_t, z_s, TAU, param).mean()
    assert torch.allclose(function(z_t, z_s, None), expected, atol=1e-10)


def test_forward_kl_on_classes_is_softened_kl_batchmean():
    gen = torch.Generator().manual_seed(2)
    z_t, z_s = torch.randn(8, 10, generator=gen), torch.randn(8, 10, generator=gen)
    assert torch.allclose(fn.forward_kl(z_t, z_s, temperature=4.0), fn.softened_kl(z_t, z_s, 4.0), atol=1e-6)


def test_token_weighted_not_sequence_weighted():
    """Sequence 0 has 1 counted token, sequence 1 has 3: the loss is the mean over the 4 tokens."""
    gen = torch.Generator().manual_seed(3)
    z_t, z_s = torch.randn(2, 3, 7, generator=gen, dtype=torch.float64), torch.randn(2, 3, 7, generator=gen,
                                                                                    dtype=torch.float64)
    mask = torch.tensor([[True, False, False], [True, True, True]])
    per_token = kl_rows(probs(z_t), probs(z_s))
    token_weighted = (per_token[0, 0] + per_token[1].sum()) / 4
    sequence_weighted = (per_token[0, 0] + per_token[1].mean()) / 2
    value = fn.forward_kl(z_t, z_s, mask)
    assert torch.allclose(value, token_weighted, atol=1e-12)
    assert not torch.allclose(value, sequence_weighted, atol=1e-3)


@pytest.mark.parametrize('name,function,param', CASES, ids=[c[0] for c in CASES])
def test_masked_positions_give_neither_value_nor_gradient(batch, name, function, param):
    z_t, z_s, mask = batch
    reference = function(z_t, z_s, mask)
    z_s = z_s.clone()
    z_s[~mask] = float('nan')  # whatever is there (padding), it must not leak
    z_s.requires_grad_(True)
    value = function(z_t, z_s, mask)
    assert torch.allclose(value, reference, atol=1e-12)
    value.backward()
    assert torch.all(z_s.grad[~mask] == 0)
    assert torch.all(z_s.grad[mask].abs().sum(dim=-1) > 0)


def test_all_masked_is_zero_not_nan():
    z = torch.randn(2, 3, 5, requires_grad=True)
    value = fn.forward_kl(z, z * 2, torch.zeros(2, 3, dtype=torch.bool))
    value.backward()
    assert value.item() == 0.0 and torch.all(z.grad == 0)


def test_skew_zero_and_jsd_end_points_are_the_kls(batch):
    z_t, z_s, mask = batch
    forward, reverse = fn.forward_kl(z_t, z_s, mask), fn.reverse_kl(z_t, z_s, mask)
    assert torch.allclose(fn.skew_forward_kl(z_t, z_s, 0.0, mask), forward)
    assert torch.allclose(fn.skew_reverse_kl(z_t, z_s, 0.0, mask), reverse)
    assert torch.allclose(fn.generalized_jsd(z_t, z_s, 0.0, mask), forward)
    assert torch.allclose(fn.generalized_jsd(z_t, z_s, 1.0, mask), reverse)
    assert not torch.allclose(forward, reverse, atol=1e-3)
    # JSD(0.5) is symmetric and bounded by log 2
    jsd = fn.generalized_jsd(z_t, z_s, 0.5, mask)
    assert torch.allclose(jsd, fn.generalized_jsd(z_s, z_t, 0.5, mask)) and float(jsd) < math.log(2)


def test_zscore_switch_standardizes_before_the_temperature(batch):
    z_t, z_s, mask = batch
    zscore = fn.LogitStandardization('unbiased', 1e-7)
    standard = [(z - z.mean(-1, keepdim=True)) / (z.std(-1, keepdim=True) + 1e-7) for z in (z_t, z_s)]
    for function in (fn.forward_kl, fn.reverse_kl, fn.total_variation):
        assert torch.allclose(function(z_t, z_s, mask, TAU, zscore), function(*standard, mask, TAU), atol=1e-10)


def test_taid_target_detaches_the_student_share(batch):
    z_t, z_s, mask = batch
    z_s = z_s.clone().requires_grad_(True)
    fn.taid_kl(z_t, z_s, 0.4, mask).backward()
    target = probs(0.6 * z_s.detach() + 0.4 * z_t)
    z_s2 = z_s.detach().clone().requires_grad_(True)
    masked_mean(kl_rows(target, probs(z_s2)), mask).backward()
    assert torch.allclose(z_s.grad, z_s2.grad, atol=1e-10)


def test_taid_schedule_follows_the_authors_update():
    schedule = TAIDSchedule(t_start=0.4, t_end=1.0, rate=0.5, momentum_decay=0.9, total_steps=10)
    losses = [5.0, 4.0, 3.5, 3.6, 2.0]
    t, momentum, previous = 0.4, 0.0, None
    for step, loss in enumerate(losses):
        schedule.update(loss)
        if previous is not None:  # first call: records the loss only
            change = (previous - loss) / (previous + 1e-15)
            momentum = 0.9 * momentum + 0.1 * change
            t = min(1.0, max(0.4 + 0.6 * step / 10, t + 0.5 / (1 + math.exp(-momentum)) * (1 - t)))
        previous = loss
        assert schedule.value() == pytest.approx(t, abs=1e-12)
    assert schedule.value() > 0.4 + 0.6 * 4 / 10  # the adaptive step beat the linear schedule here
    linear = TAIDSchedule(t_start=0.2, total_steps=4, adaptive=False)
    values = []
    for loss in (3.0, 2.0, 1.0, 0.5, 0.1):
        linear.update(loss)
        values.append(linear.value())
    assert values == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])


def test_taid_schedule_state_round_trips_through_state_dict():
    a = TAIDSchedule(total_steps=100)
    for loss in (3.0, 2.5, 2.0):
        a.update(loss)
    b = TAIDSchedule(total_steps=100)
    b.load_state_dict(a.state_dict())
    a.update(1.5)
    b.update(1.5)
    assert a.value() == b.value() and int(b.step) == 4


def test_taid_loss_updates_t_in_training_only():
    loss = TokenKDLoss(divergence='taid', alpha=0.0, beta=1.0, taid={'t_start': 0.4, 'total_steps': 4,
                                                                     'adaptive': False})
    z_t, z_s = torch.randn(2, 4, 6), torch.randn(2, 4, 6, requires_grad=True)
    labels = torch.randint(0, 6, (2, 4))
    for _ in range(3):
        loss({'.': {'output': z_s}}, {'.': {'output': z_t}}, labels)
    assert loss.taid.value() == pytest.approx(0.4 + 0.6 * 2 / 4)
    loss.eval()
    loss({'.': {'output': z_s}}, {'.': {'output': z_t}}, labels)
    assert loss.taid.value() == pytest.approx(0.7)
    with pytest.raises(RuntimeError, match='total_steps'):
        TokenKDLoss(divergence='taid')({'.': {'output': z_s}}, {'.': {'output': z_t}}, labels)


def gjsd_trl():
    pytest.importorskip('trl', reason='trl is not installed (pip install trl, or the package extra "lm")')
    import os
    os.environ.setdefault('TRL_EXPERIMENTAL_SILENCE', '1')
    try:
        from trl.experimental.gkd.gkd_trainer import GKDTrainer
    except ImportError:
        try:
            from trl.trainer.gkd_trainer import GKDTrainer
        except ImportError as error:
            pytest.skip(f'this trl version has no GKDTrainer to compare with ({error})')
    return GKDTrainer.generalized_jsd_loss


@pytest.mark.parametrize('beta', [0.0, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize('temperature', [1.0, 2.0])
def test_generalized_jsd_matches_trl(beta, temperature):
    trl_loss = gjsd_trl()
    gen = torch.Generator().manual_seed(4)
    z_s, z_t = torch.randn(3, 6, 13, generator=gen) * 3, torch.randn(3, 6, 13, generator=gen) * 3
    labels = torch.randint(0, 13, (3, 6), generator=gen)
    labels[0, 4:] = -100  # padding
    labels[2, :3] = -100  # prompt
    theirs = trl_loss(z_s, z_t, labels=labels, beta=beta, temperature=temperature)
    ours = fn.generalized_jsd(z_t, z_s, beta, labels != -100, temperature)
    assert torch.allclose(ours, temperature ** 2 * theirs, rtol=1e-5, atol=1e-6)


# ---- TokenKDLoss: shift, CE, gradient routing ----

def lm_inputs(requires_grad=True):
    gen = torch.Generator().manual_seed(5)
    z_s = torch.randn(2, 5, 9, generator=gen, dtype=torch.float64).requires_grad_(requires_grad)
    z_t = torch.randn(2, 5, 9, generator=gen, dtype=torch.float64).requires_grad_(requires_grad)
    labels = torch.randint(0, 9, (2, 5), generator=gen)
    labels[0, :2] = -100
    labels[1, 4] = -100
    return z_s, z_t, labels


def run_loss(loss, z_s, z_t, labels):
    return loss({'.': {'output': z_s}}, {'.': {'output': z_t}}, labels)


def test_token_kd_loss_shifts_logits_and_labels():
    z_s, z_t, labels = lm_inputs(requires_grad=False)
    loss = TokenKDLoss(temperature=TAU, alpha=0.3, beta=0.7, divergence='reverse_kl')
    shifted = labels[:, 1:]
    mask = shifted != -100
    s, t = z_s[:, :-1], z_t[:, :-1]
    ce = -torch.log(probs(s)).gather(-1, shifted.clamp_min(0)[..., None])[..., 0]
    expected = 0.3 * masked_mean(ce, mask) + 0.7 * TAU ** 2 * masked_mean(kl_rows(probs(s, TAU), probs(t, TAU)), mask)
    assert torch.allclose(run_loss(loss, z_s, z_t, labels), expected, atol=1e-10)
    assert set(loss.last_terms) == {'student_ce', 'student_div'}


def test_token_kd_loss_on_classification_logits():
    gen = torch.Generator().manual_seed(6)
    z_s, z_t, y = torch.randn(4, 3, generator=gen), torch.randn(4, 3, generator=gen), torch.tensor([0, 2, 1, 1])
    loss = TokenKDLoss(temperature=4.0, alpha=0.1, beta=0.9)
    expected = 0.1 * torch.nn.functional.cross_entropy(z_s, y) + 0.9 * fn.softened_kl(z_t, z_s, 4.0)
    assert torch.allclose(run_loss(loss, z_s, z_t, y), expected, atol=1e-6)


@pytest.mark.parametrize('divergence', ['forward_kl', 'reverse_kl'])
def test_token_kd_loss_with_zscore_is_zscore_kd_with_that_divergence(divergence):
    """The *_zscore image configs: Z-score KD (Sun et al., CVPR 2024) with the divergence swapped. CE on the raw
    student logits; the divergence on per-sample Z-scored logits (unbiased std) at temperature T, times T^2."""
    from pesf_ext.losses.zscore import ZScoreKDLoss
    gen = torch.Generator().manual_seed(7)
    z_s, z_t, y = torch.randn(5, 4, generator=gen) * 3, torch.randn(5, 4, generator=gen), torch.tensor([0, 3, 1, 1, 2])
    loss = TokenKDLoss(temperature=2.0, alpha=0.1, beta=9.0, divergence=divergence, logit_standardization=True)

    def zscored(z):
        return (z - z.mean(dim=1, keepdim=True)) / z.std(dim=1, keepdim=True)
    p_t, p_s = probs(zscored(z_t), 2.0), probs(zscored(z_s), 2.0)
    kl = kl_rows(p_t, p_s) if divergence == 'forward_kl' else kl_rows(p_s, p_t)
    expected = 0.1 * torch.nn.functional.cross_entropy(z_s, y) + 9.0 * 4.0 * kl.mean()
    assert torch.allclose(run_loss(loss, z_s, z_t, y), expected, atol=1e-5)
    if divergence == 'forward_kl':
        zscore_kd = ZScoreKDLoss('.', 'output', '.', 'output', temperature=2.0, alpha=0.1, beta=9.0)
        assert torch.allclose(run_loss(zscore_kd, z_s, z_t, y), expected, atol=1e-5)


def grads(loss, z_s, z_t, labels):
    z_s.grad = z_t.grad = None
    run_loss(loss, z_s, z_t, labels).backward()
    return z_s.grad, z_t.grad


def test_frozen_teacher_gets_no_gradient():
    z_s, z_t, labels = lm_inputs()
    g_s, g_t = grads(TokenKDLoss(alpha=0.5, divergence='jsd'), z_s, z_t, labels)
    assert g_t is None and g_s.abs().sum() > 0


def test_adapters_mode_routes_each_term_to_its_side():
    """PESF-KD: the student's gradient is that of its own terms (teacher detached); the adapted teacher's is that of
    CE(y, z_ta) + tau^2 KL(p_s || p_ta) with the student detached."""
    z_s, z_t, labels = lm_inputs()
    loss = TokenKDLoss(temperature=TAU, alpha=0.2, beta=0.8, divergence='jsd', teacher_update='adapters',
                       teacher_alpha=0.5, teacher_beta=0.7)
    g_s, g_t = grads(loss, z_s, z_t, labels)
    assert set(loss.last_terms) == {'student_ce', 'student_div', 'teacher_ce', 'teacher_kl'}
    student_only = TokenKDLoss(temperature=TAU, alpha=0.2, beta=0.8, divergence='jsd')
    expected_s, _ = grads(student_only, z_s, z_t, labels)
    assert torch.allclose(g_s, expected_s)
    z_t2 = z_t.detach().clone().requires_grad_(True)
    shifted, s, t = labels[:, 1:], z_s.detach()[:, :-1], z_t2[:, :-1]
    mask = shifted != -100
    ce = -torch.log(probs(t)).gather(-1, shifted.clamp_min(0)[..., None])[..., 0]
    teacher_loss = 0.5 * masked_mean(ce, mask) + 0.7 * TAU ** 2 * masked_mean(kl_rows(probs(s, TAU), probs(t, TAU)),
                                                                                mask)
    teacher_loss.backward()
    assert torch.allclose(g_t, z_t2.grad, atol=1e-10)


def test_full_mode_sends_the_divergence_gradient_to_the_teacher():
    z_s, z_t, labels = lm_inputs()
    _, g_full = grads(TokenKDLoss(alpha=0.5, teacher_update='full', teacher_alpha=0.0), z_s, z_t, labels)
    assert g_full is not None and g_full.abs().sum() > 0
    z_t2 = z_t.detach().clone().requires_grad_(True)
    fn.forward_kl(z_t2[:, :-1], z_s.detach()[:, :-1], labels[:, 1:] != -100).mul(0.5).backward()
    assert torch.allclose(g_full, z_t2.grad, atol=1e-10)


@pytest.mark.parametrize('kwargs,match', [
    ({'divergence': 'kl'}, 'divergence'), ({'teacher_update': 'lora'}, 'teacher_update'),
    ({'jsd_beta': 1.5}, 'jsd_beta'), ({'skew': -0.1}, 'skew'), ({'taid': {'t_start': 0.4}}, 'taid'),
    ({'teacher_beta': 0.5}, 'teacher_beta'), ({'teacher_alpha': 0.5}, 'teacher_alpha'),
    ({'divergence': 'taid', 'taid': {'t_start': 1.2}}, 't_start'),
])
def test_bad_options_name_themselves(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TokenKDLoss(**kwargs)


def test_vocabulary_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match='share a tokenizer'):
        run_loss(TokenKDLoss(), torch.randn(1, 3, 5), torch.randn(1, 3, 6), torch.zeros(1, 3, dtype=torch.long))


def test_next_token_loss_is_huggingface_causal_lm_loss():
    from pesf_ext.losses.divergences import NextTokenLoss
    gen = torch.Generator().manual_seed(8)
    logits, labels = torch.randn(2, 6, 11, generator=gen), torch.randint(0, 11, (2, 6), generator=gen)
    labels[1, :3] = -100
    shifted = labels[:, 1:]
    ce = -torch.log_softmax(logits[:, :-1], -1).gather(-1, shifted.clamp_min(0)[..., None])[..., 0]
    expected = ce[shifted != -100].mean()
    assert torch.allclose(NextTokenLoss()(logits, labels), expected, atol=1e-6)
