"""Chunked token-level losses (``chunk_tokens`` / ``speed.loss_chunk_tokens``): the same values and gradients as the
unchunked path, for every divergence x teacher_update x Z-score, and several times less memory (tensor bytes, the
same on every machine: pesf_ext.losses.memory)."""
import itertools
import types

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torchdistill.losses.high_level import WeightedSumLoss

from pesf_ext.engine.errors import ConfigError
from pesf_ext.engine.speed import apply_speed, speed_options
from pesf_ext.losses import functional
from pesf_ext.losses.divergences import DIVERGENCE_CHOICES, NextTokenLoss, TokenKDLoss, token_cross_entropy
from pesf_ext.losses.memory import chunked_loss_comparison, comparison_table, loss_memory

B, T, V = 3, 9, 37          # 3 x 8 = 24 predicted positions
CHUNK = 5                   # does not divide 24; chunk [10, 15) lies in row 1, which has no counted token
UPDATES = ('frozen', 'adapters', 'full')
EXTRA = {'jsd': {'jsd_beta': 0.3}, 'skew_forward_kl': {'skew': 0.2}, 'skew_reverse_kl': {'skew': 0.2},
         'taid': {'taid': {'t_start': 0.6, 'total_steps': 10}}}


def lm_batch(dtype=torch.float32, seed=0):
    """(z_s, z_t, labels): prompts (-100 first), padding (-100 last), one sequence without any counted token; the
    excluded positions hold large garbage logits, which must change neither value nor gradient."""
    generator = torch.Generator().manual_seed(seed)
    z_s = 2 * torch.randn(B, T, V, generator=generator)
    z_t = 3 * torch.randn(B, T, V, generator=generator)
    labels = torch.randint(0, V, (B, T), generator=generator)
    labels[0, :3] = -100
    labels[1] = -100
    labels[2, 6:] = -100
    excluded = torch.cat([labels[:, 1:] == -100, torch.ones(B, 1, dtype=torch.bool)], dim=1)
    z_s[excluded] = 1e4 * torch.randn(int(excluded.sum()), V, generator=generator)
    z_t[excluded] = -1e4 * torch.randn(int(excluded.sum()), V, generator=generator)
    return z_s.to(dtype), z_t.to(dtype), labels


def make_loss(divergence, update, zscore, chunk_tokens=None, temperature=2.0):
    return TokenKDLoss(temperature=temperature, alpha=0.3, beta=0.7, divergence=divergence, teacher_update=update,
                       logit_standardization=zscore, chunk_tokens=chunk_tokens, **EXTRA.get(divergence, {}))


def run(loss, z_s, z_t, labels, teacher_grad):
    """Loss value, last_terms and the gradients of the student's and (when it gets one) the teacher's logits."""
    z_s = z_s.detach().requires_grad_()
    z_t = z_t.detach().requires_grad_(teacher_grad)
    value = loss({'.': {'output': z_s}}, {'.': {'output': z_t}}, labels)
    value.backward()
    return value.detach(), {k: v.clone() for k, v in loss.last_terms.items()}, z_s.grad, z_t.grad


@pytest.mark.parametrize('divergence,update,zscore', list(itertools.product(DIVERGENCE_CHOICES, UPDATES,
                                                                                (False, True))))
def test_chunked_equals_unchunked(divergence, update, zscore):
    z_s, z_t, labels = lm_batch()
    teacher_grad = update != 'frozen'
    plain = run(make_loss(divergence, update, zscore), z_s, z_t, labels, teacher_grad)
    chunked = run(make_loss(divergence, update, zscore, CHUNK), z_s, z_t, labels, teacher_grad)
    torch.testing.assert_close(chunked[0], plain[0], rtol=1e-5, atol=1e-6)
    assert chunked[1].keys() == plain[1].keys() and len(plain[1]) >= 2
    for name in plain[1]:
        torch.testing.assert_close(chunked[1][name], plain[1][name], rtol=1e-5, atol=1e-6, msg=name)
    torch.testing.assert_close(chunked[2], plain[2], rtol=1e-4, atol=1e-7)
    assert plain[2].abs().sum() > 0
    if teacher_grad:
        torch.testing.assert_close(chunked[3], plain[3], rtol=1e-4, atol=1e-7)
        assert plain[3].abs().sum() > 0
    else:
        assert chunked[3] is None and plain[3] is None


def test_excluded_positions_get_no_gradient_and_counted_ones_weigh_the_same():
    z_s, z_t, labels = lm_batch()
    _, _, grad_s, grad_t = run(make_loss('jsd', 'full', True, CHUNK), z_s, z_t, labels, True)
    excluded = torch.cat([labels[:, 1:] == -100, torch.ones(B, 1, dtype=torch.bool)], dim=1)
    assert grad_s[excluded].abs().max() == 0 and grad_t[excluded].abs().max() == 0
    assert grad_s[~excluded].abs().sum(dim=-1).min() > 0


def test_forward_kl_chunked_matches_the_hand_formula():
    z_s, z_t, labels = lm_batch(torch.float64)
    tau = 2.0
    value = functional.forward_kl(z_t[:, :-1], z_s[:, :-1], labels[:, 1:] != -100, tau, chunk_tokens=CHUNK)
    p_t, p_s = torch.softmax(z_t[:, :-1] / tau, -1), torch.softmax(z_s[:, :-1] / tau, -1)
    per_token = (p_t * (p_t.log() - p_s.log())).sum(-1)
    counted = labels[:, 1:] != -100
    torch.testing.assert_close(value, tau ** 2 * per_token[counted].sum() / counted.sum(), rtol=1e-12, atol=0)


@pytest.mark.parametrize('name', ['forward_kl', 'reverse_kl', 'generalized_jsd', 'skew_forward_kl',
                                  'skew_reverse_kl', 'total_variation', 'taid_kl'])
def test_functional_divergences_chunked(name):
    z_s, z_t, labels = lm_batch(torch.float64)
    function = getattr(functional, name)
    args = {'generalized_jsd': (0.4,), 'skew_forward_kl': (0.1,), 'skew_reverse_kl': (0.1,), 'taid_kl': (0.7,)}
    mask = labels[:, 1:] != -100
    std = functional.LogitStandardization()
    values, grads = [], []
    for chunk in (None, 7):
        z_t_leaf, z_s_leaf = z_t.clone().requires_grad_(), z_s.clone().requires_grad_()
        value = function(z_t_leaf[:, :-1], z_s_leaf[:, :-1], *args.get(name, ()), mask=mask, temperature=1.5,
                         standardization=std, chunk_tokens=chunk)
        values.append(value)
        grads.append(torch.autograd.grad(value, [z_s_leaf, z_t_leaf]))
    torch.testing.assert_close(values[1], values[0], rtol=1e-12, atol=1e-14)
    for chunked, plain in zip(grads[1], grads[0]):
        torch.testing.assert_close(chunked, plain, rtol=1e-10, atol=1e-14)


def test_token_cross_entropy_and_next_token_loss_chunked():
    z_s, _, labels = lm_batch(torch.float64)
    leaf = z_s.clone().requires_grad_()
    plain = NextTokenLoss()(leaf, labels)
    grad = torch.autograd.grad(plain, leaf)[0]
    leaf = z_s.clone().requires_grad_()
    chunked = NextTokenLoss(chunk_tokens=CHUNK)(leaf, labels)
    torch.testing.assert_close(chunked, plain, rtol=1e-12, atol=0)
    torch.testing.assert_close(torch.autograd.grad(chunked, leaf)[0], grad, rtol=1e-10, atol=1e-14)
    flat = F.cross_entropy(z_s[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(token_cross_entropy(z_s[:, :-1], labels[:, 1:], chunk_tokens=4), flat)
    nothing = torch.full_like(labels, -100)
    assert token_cross_entropy(z_s[:, :-1], nothing[:, 1:], chunk_tokens=4) == 0


@pytest.mark.parametrize('divergence', ['forward_kl', 'jsd', 'taid'])
def test_bf16_inputs(divergence):
    """bf16 logits: each chunk is upcast to float32 (as the unchunked CE is, and as the runner's AMP path upcasts the
    whole logits), so the chunked loss equals the unchunked one on the float32 copies; gradients come back in bf16."""
    z_s, z_t, labels = lm_batch(torch.bfloat16)
    chunked = run(make_loss(divergence, 'adapters', True, CHUNK), z_s, z_t, labels, True)
    reference = run(make_loss(divergence, 'adapters', True), z_s.float(), z_t.float(), labels, True)
    same_dtype = run(make_loss(divergence, 'adapters', True), z_s, z_t, labels, True)
    assert chunked[2].dtype == torch.bfloat16 and chunked[3].dtype == torch.bfloat16
    torch.testing.assert_close(chunked[0], reference[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(chunked[2], reference[2].bfloat16(), rtol=2e-2, atol=1e-4)
    torch.testing.assert_close(chunked[3], reference[3].bfloat16(), rtol=2e-2, atol=1e-4)
    torch.testing.assert_close(chunked[0], same_dtype[0].float(), rtol=5e-2, atol=5e-2)


def test_classification_logits_chunked():
    generator = torch.Generator().manual_seed(1)
    z_s, z_t = torch.randn(11, 7, generator=generator), torch.randn(11, 7, generator=generator)
    targets = torch.randint(0, 7, (11,), generator=generator)
    plain = run(make_loss('forward_kl', 'adapters', False), z_s, z_t, targets, True)
    chunked = run(make_loss('forward_kl', 'adapters', False, 4), z_s, z_t, targets, True)
    torch.testing.assert_close(chunked[0], plain[0])
    torch.testing.assert_close(chunked[2], plain[2])
    torch.testing.assert_close(chunked[3], plain[3])


def test_chunked_path_has_no_host_read_and_no_data_dependent_shape():
    seen = []

    class Ops(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    z_s, z_t, labels = lm_batch()
    with Ops():
        run(make_loss('jsd', 'adapters', True, CHUNK), z_s, z_t, labels, True)
    forbidden = [op for op in seen if any(name in op for name in ('nonzero', 'masked_select', '_local_scalar_dense'))]
    assert seen and not forbidden


def test_memory_several_times_less_and_side_by_side_table():
    """Tensor bytes (not a machine's allocator): 2048 tokens x 8192 vocabulary, chunks of 128 tokens."""
    tokens, vocab = 2048, 8192
    rows = chunked_loss_comparison(tokens, vocab, (None, 128), ('frozen', 'adapters'), repeats=1)
    print('\n' + comparison_table(rows, tokens, vocab))
    one = tokens * vocab * 4
    for plain, chunked in zip(rows[::2], rows[1::2]):
        sides = 1 if plain['teacher_update'] == 'frozen' else 2
        assert chunked['saved_bytes'] == sides * one  # exactly the gradient of each differentiated side
        assert plain['saved_bytes'] >= 2.5 * chunked['saved_bytes']
        assert plain['forward_peak_bytes'] >= 3 * chunked['forward_peak_bytes']
        assert plain['backward_peak_bytes'] >= 2 * chunked['backward_peak_bytes'] - one


def test_loss_memory_counts_what_is_saved():
    x = torch.randn(256, 64, requires_grad=True)
    report = loss_memory(lambda v: torch.log_softmax(v, -1).exp().sum(), x)
    assert report['saved_bytes'] == 2 * x.numel() * 4  # log_softmax's output and exp's output
    assert report['forward_peak_bytes'] >= 2 * x.numel() * 4 and report['backward_peak_bytes'] >= x.numel() * 4


def test_speed_switch_reaches_every_token_loss_of_each_stage():
    assert speed_options({'speed': {'loss_chunk_tokens': 64}}).loss_chunk_tokens == 64
    assert speed_options({}).loss_chunk_tokens is None
    for bad in (0, -3, 2.5, True, '64'):
        with pytest.raises(ConfigError, match='speed.loss_chunk_tokens'):
            speed_options({'speed': {'loss_chunk_tokens': bad}})

    def criterion():
        return WeightedSumLoss(sub_terms={'kd': {'criterion': TokenKDLoss(), 'weight': 1.0},
                                          'ce': {'criterion': NextTokenLoss(), 'weight': 0.5}})

    calls = []
    box = types.SimpleNamespace(model=torch.nn.Linear(2, 2), criterion=criterion(),
                                forward_process=lambda *args, **kwargs: calls.append(box.criterion))
    apply_speed(box, speed_options({'speed': {'loss_chunk_tokens': 64}}), torch.device('cpu'))
    box.forward_process(torch.zeros(1))
    box.criterion = criterion()  # the next stage's criterion
    box.forward_process(torch.zeros(1))
    for used in calls:
        assert [term.chunk_tokens for term, _ in used.term_dict.values()] == [64, 64]
    with pytest.raises(ValueError, match='chunk_tokens'):
        TokenKDLoss(chunk_tokens=0)


@pytest.mark.parametrize('chunk_tokens', [None, 4])
def test_amp_upcasts_whole_logits_only_without_chunks(chunk_tokens):
    """Under ``speed.amp: 'bf16'`` the criterion runs on float32 copies of its inputs, except with chunking on:
    a whole float32 [tokens, vocabulary] copy is what chunking avoids, so the chunked loss gets the bf16 logits
    and upcasts one chunk at a time. The loss agrees with the float32 one either way."""
    z_s, z_t, labels = lm_batch(seed=3)
    z_s, z_t = z_s.clamp(-8, 8), z_t.clamp(-8, 8)  # the garbage logits of lm_batch would swamp bf16 rounding
    seen = []

    class Spy(TokenKDLoss):
        def forward(self, student_io_dict, teacher_io_dict, targets=None, *args, **kwargs):
            seen.append(student_io_dict['.']['output'].dtype)
            return super().forward(student_io_dict, teacher_io_dict, targets, *args, **kwargs)

    loss = Spy(temperature=2.0, alpha=0.3, beta=0.7)

    def forward_process(sample_batch, targets=None, supp_dict=None, **kwargs):
        logits = sample_batch @ torch.eye(V)  # a matmul: bf16 under autocast, like a model's output layer
        return box.criterion({'.': {'output': logits}}, {'.': {'output': z_t.to(torch.bfloat16)}}, targets)

    box = types.SimpleNamespace(model=torch.nn.Linear(2, 2), criterion=loss, forward_process=forward_process)
    options = speed_options({'speed': {'amp': 'bf16', 'loss_chunk_tokens': chunk_tokens}})
    apply_speed(box, options, torch.device('cpu'))
    value = box.forward_process(z_s, labels)
    assert seen == [torch.float32 if chunk_tokens is None else torch.bfloat16]
    reference = TokenKDLoss(temperature=2.0, alpha=0.3, beta=0.7)(
        {'.': {'output': z_s.to(torch.bfloat16).float()}}, {'.': {'output': z_t.to(torch.bfloat16).float()}}, labels)
    assert value.dtype == torch.float32
    assert torch.allclose(value, reference, rtol=1e-3, atol=1e-3)
