"""The single home of the logit math used by every loss in :mod:`pesf_ext.losses` and by :mod:`pesf_ext.metrics`.

Nothing here detaches anything: callers decide which side of a divergence receives gradients.

References
- Hinton et al., "Distilling the Knowledge in a Neural Network", NIPS-W 2014 (softened KL, tau^2 scaling).
- Sun et al., "Logit Standardization in Knowledge Distillation", CVPR 2024 (Alg. 1: Z-score of logits).
- Rao et al., "Parameter-Efficient and Student-Friendly Knowledge Distillation", IEEE TMM 2023
  (PESF-KD, eq. 2: sharpness, eq. 3: sharpness gap).
"""
import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

STD_CHOICES = ('unbiased', 'population')
REDUCTION_CHOICES = ('batchmean', 'sum', 'mean', 'none')


def check_choice(name, value, choices):
    """Raises ValueError naming the argument ``name`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f'{name} must be one of {choices}, got {value!r}')


@dataclass(frozen=True)
class LogitStandardization:
    """Z-score configuration: ``std`` is 'unbiased' (authors' code, torchdistill's LogitStdKDLoss) or
    'population' (Alg. 1 of Sun et al., CVPR 2024); ``eps`` is added to the std."""
    std: str = 'unbiased'
    eps: float = 1e-7

    def __post_init__(self):
        check_choice('std', self.std, STD_CHOICES)
        if self.eps < 0:
            raise ValueError(f'eps must be >= 0, got {self.eps}')


def at_least_float32(tensor):
    """``tensor`` upcast to float32 when it is float16 / bfloat16 (what autocast hands a loss); other dtypes as is."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


def float32_matmul(a, b):
    """``a @ b`` with autocast off and half-precision inputs upcast to float32; the gradient flows back in the
    inputs' dtype. Gram and FSP products of feature maps need it under AMP: a ResNet layer3 map (64 x 8 x 8, elements
    ~5-20) has a squared norm ~1e5, beyond float16's largest value 65,504, and bfloat16's 8-bit mantissa loses the
    small differences between a student's and a teacher's Gram matrix."""
    with torch.autocast(a.device.type, enabled=False):
        return at_least_float32(a) @ at_least_float32(b)


def standardize_logits(logits, std='unbiased', eps=1e-7):
    """Z-score per sample over the last (class) dimension (Sun et al., CVPR 2024, Alg. 1).

    .. math:: Z(z) = (z - \\bar{z}) / (\\sigma(z) + \\epsilon)

    ``std='unbiased'`` divides the variance by K - 1, ``'population'`` by K. Mean and std are computed in float32
    (autocast off) for float16 / bfloat16 logits, and the result is float32.
    """
    check_choice('std', std, STD_CHOICES)
    with torch.autocast(logits.device.type, enabled=False):
        logits = at_least_float32(logits)
        mean = logits.mean(dim=-1, keepdim=True)
        sigma = logits.std(dim=-1, keepdim=True, correction=1 if std == 'unbiased' else 0)
        return (logits - mean) / (sigma + eps)


def soften(logits, temperature, standardization=None):
    """Logits divided by the temperature, ``z / tau``; with a :class:`LogitStandardization`, ``Z(z) / tau``."""
    if standardization is not None:
        logits = standardize_logits(logits, standardization.std, standardization.eps)
    return logits / temperature


def reduce_per_sample(values, reduction):
    """Reduces an (N, ...) tensor of element-wise loss values.

    'batchmean': sum / N; 'sum': sum; 'mean': mean over all elements (torch's KLDivLoss 'mean');
    'none': per-sample vector (sum over every dim but the first).
    """
    check_choice('reduction', reduction, REDUCTION_CHOICES)
    if reduction == 'batchmean':
        return values.sum() / values.shape[0]
    if reduction == 'sum':
        return values.sum()
    if reduction == 'mean':
        return values.mean()
    return values.reshape(values.shape[0], -1).sum(dim=1)


def kl_divergence(target_log_probs, input_log_probs, reduction='batchmean'):
    """KL(p || q) = sum_k p_k (log p_k - log q_k) from log-probabilities, p the target, q the input.

    Works for any categorical distribution over the last dim (e.g. DKD's binary and non-target ones).
    """
    values = F.kl_div(input_log_probs, target_log_probs, reduction='none', log_target=True)
    return reduce_per_sample(values, reduction)


def softened_kl(target_logits, input_logits, temperature, reduction='batchmean', standardization=None):
    """Temperature-scaled KD divergence (Hinton et al., 2014), optionally on Z-scored logits (Sun et al., 2024).

    .. math:: \\tau^2 \\cdot KL(\\mathrm{softmax}(z_{target}/\\tau) \\| \\mathrm{softmax}(z_{input}/\\tau))

    Computed from two log_softmax's (``log_target=True``) for stability. Nothing is detached.
    """
    target_log_probs = torch.log_softmax(soften(target_logits, temperature, standardization), dim=-1)
    input_log_probs = torch.log_softmax(soften(input_logits, temperature, standardization), dim=-1)
    return temperature ** 2 * kl_divergence(target_log_probs, input_log_probs, reduction)


def swap_label_correction(logits, targets):
    """Label correction of the PESF-KD authors' released code (``logit_t_cor`` in ``cv/helper/loops.py``): per
    sample, the largest logit and the ground-truth class's logit change places, so the label's class becomes the
    argmax and the distribution's shape is otherwise kept. Rows already predicting their label are unchanged.

    .. math:: \\tilde{z}_{i,y_i} = z_{i,m_i}, \\quad \\tilde{z}_{i,m_i} = z_{i,y_i}, \\quad m_i = \\arg\\max_k z_{i,k}

    A permutation (a gather), so gradient flows through it when ``logits`` require it. ``logits``: (N, K);
    ``targets``: (N,) class indices.
    """
    if logits.dim() != 2 or logits.shape[-1] < 2:
        raise ValueError(f'label correction needs (N, K >= 2) class logits, got shape {tuple(logits.shape)}')
    if targets is None:
        raise ValueError('label correction needs the targets (ground-truth class indices)')
    label = targets.view(-1, 1).long()
    top = logits.argmax(dim=1, keepdim=True)
    order = torch.arange(logits.shape[1], device=logits.device).expand_as(logits)
    order = order.scatter(1, top, label).scatter(1, label, top)
    return logits.gather(1, order)


def cross_entropy(logits, targets, reduction='batchmean'):
    """CE(y, z) with the KL reduction mapped as torchdistill does ('batchmean' and 'mean' -> 'mean')."""
    check_choice('reduction', reduction, REDUCTION_CHOICES)
    return F.cross_entropy(logits, targets, reduction='mean' if reduction == 'batchmean' else reduction)


def is_regression(logits):
    """A single output per sample, (N,) or (N, 1), is a regression head (GLUE STS-B), not a class distribution."""
    return logits.dim() == 1 or logits.shape[-1] == 1


def squared_error(prediction, target, reduction='batchmean'):
    """Regression counterpart of the CE and KD terms (BERT-KD practice for STS-B, e.g. TinyBERT):

    .. math:: \\frac{1}{N} \\sum_i (\\hat{y}_i - t_i)^2

    ``target`` is the label for the hard term and the teacher's prediction for the distillation term; both are
    flattened to (N,). 'batchmean' and 'mean' are the mean over samples, 'sum' the sum, 'none' per sample.
    """
    check_choice('reduction', reduction, REDUCTION_CHOICES)
    values = (prediction.reshape(-1).float() - target.reshape(-1).float()) ** 2
    if reduction == 'none':
        return values
    return values.sum() if reduction == 'sum' else values.mean()


def sharpness(logits):
    """Sharpness of logits (PESF-KD, Rao et al., eq. 2): :math:`S(z) = \\log \\sum_k \\exp(z_k)`, per sample."""
    return torch.logsumexp(logits, dim=-1)


def sharpness_gap(teacher_logits, student_logits):
    """Sharpness gap (PESF-KD, Rao et al., eq. 3): :math:`G = S(z_t) - S(z_s)`, per sample."""
    return sharpness(teacher_logits) - sharpness(student_logits)


# ---- transformed teacher matching (TTM, WTTM) and batch-standardized KD (LumiNet) ----

def power_transform_log_probs(logits, gamma):
    """Power transform of a softmax (TTM, Zheng & Yang, ICLR 2024, eq. 6): :math:`\\tilde{p}_k = p_k^\\gamma /
    \\sum_j p_j^\\gamma`, which equals :math:`\\mathrm{softmax}(\\gamma z)`, i.e. temperature :math:`1/\\gamma`.

    Returns ``(log p~, log sum_j p_j^gamma)``, both from log-probabilities (no underflow of :math:`p^\\gamma`); the
    second is WTTM's per-sample weight :math:`\\sum_j p_j^\\gamma` in log space, shape (N,).
    """
    scaled = gamma * torch.log_softmax(logits, dim=-1)
    log_norm = torch.logsumexp(scaled, dim=-1)
    return scaled - log_norm.unsqueeze(-1), log_norm


def transformed_teacher_kl(teacher_logits, student_logits, gamma, reduction='batchmean', weighted=False,
                           standardization=None):
    """TTM / WTTM divergence (Zheng & Yang, "Knowledge Distillation Based on Transformed Teacher Matching",
    ICLR 2024): the power-transformed teacher against the student's plain softmax (no student temperature, no
    :math:`\\tau^2`).

    .. math:: TTM_i = KL(\\tilde{p}_{t,i} \\| p_{s,i}), \\qquad
              WTTM_i = \\Big(\\sum_k p_{t,i,k}^\\gamma\\Big) \\cdot KL(\\tilde{p}_{t,i} \\| p_{s,i})

    WTTM's weight is the raw normaliser :math:`\\sum_k p_{t,k}^\\gamma \\in [1, K^{1-\\gamma}]` for
    :math:`\\gamma \\le 1`, not divided by its batch mean (the authors' ``distiller_zoo/wttm.py``:
    ``mean(norm * KL)``). With a :class:`LogitStandardization` the *teacher's* logits are Z-scored before the
    softmax, so :math:`\\tilde{p}_t = \\mathrm{softmax}(\\gamma Z(z_t))` has logit std :math:`\\gamma` whatever the
    teacher's scale; the student keeps its plain softmax. 'batchmean' is the authors' reduction.
    """
    if standardization is not None:
        teacher_logits = standardize_logits(teacher_logits, standardization.std, standardization.eps)
    target_log_probs, log_norm = power_transform_log_probs(teacher_logits, gamma)
    values = F.kl_div(torch.log_softmax(student_logits, dim=-1), target_log_probs, reduction='none',
                      log_target=True)
    if weighted:
        values = values * log_norm.exp().unsqueeze(-1)
    return reduce_per_sample(values, reduction)


def batch_standardize_logits(logits, eps=1e-5, statistics_from=None):
    """LumiNet's 'perception' (Hossain et al., 2023): each class's logit standardized over the batch,

    .. math:: \\hat{z}_{i,k} = (z_{i,k} - \\mu_k) / \\sqrt{\\sigma_k^2 + \\epsilon}

    with :math:`\\mu_k`, :math:`\\sigma_k^2` the mean and population (biased) variance of column k, as the
    authors' ``perception()``. ``statistics_from`` (an (M, K) tensor, e.g. the rows of every process) gives the
    statistics instead of ``logits`` itself. A batch of one sample standardizes to zeros.
    """
    source = logits if statistics_from is None else statistics_from
    mean = source.mean(dim=0, keepdim=True)
    var = source.var(dim=0, keepdim=True, correction=0)
    return (logits - mean) / torch.sqrt(var + eps)


def batch_standardized_kl(target_logits, input_logits, temperature, reduction='batchmean', eps=1e-5,
                          target_statistics=None, input_statistics=None):
    """LumiNet's divergence (Hossain et al., 2023, ``luminet_loss``): KL of the batch-standardized logits, softened
    by :math:`\\tau`, **without** the :math:`\\tau^2` factor (the authors scale it by their ALPHA squared instead):

    .. math:: KL(\\mathrm{softmax}(\\hat{z}_t / \\tau) \\| \\mathrm{softmax}(\\hat{z}_s / \\tau))

    ``*_statistics``: see :func:`batch_standardize_logits` (``statistics_from``).
    """
    target = batch_standardize_logits(target_logits, eps, target_statistics) / temperature
    source = batch_standardize_logits(input_logits, eps, input_statistics) / temperature
    return kl_divergence(torch.log_softmax(target, dim=-1), torch.log_softmax(source, dim=-1), reduction)


# ---- token-level divergences for causal language models (any [..., V] logits; [N, K] is the unmasked case) ----

def masked_rows(teacher_logits, student_logits, mask=None):
    """``(teacher, student, mask)``: two (..., V) logit tensors with the rows of the positions where ``mask`` (shape
    (...)) is False set to 0 (all rows kept when it is None), and the boolean mask. Zeroing the rows before any
    softmax (``torch.where``, not a product: 0 * inf is NaN) keeps masked positions (padding, prompt) out of the value
    *and* the gradient, whatever they hold; the shapes stay those of the inputs, so no step waits for the host to
    learn how many positions count (boolean indexing ``logits[mask]`` would)."""
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(f'teacher logits {tuple(teacher_logits.shape)} and student logits '
                         f'{tuple(student_logits.shape)} differ in shape')
    if mask is None:
        return teacher_logits, student_logits, None
    mask = mask.to(torch.bool)
    if mask.shape != student_logits.shape[:-1]:
        raise ValueError(f'mask of shape {tuple(mask.shape)} does not match logit positions of shape '
                         f'{tuple(student_logits.shape[:-1])}')
    rows = mask.unsqueeze(-1)
    return torch.where(rows, teacher_logits, 0.0), torch.where(rows, student_logits, 0.0), mask


def position_mean(values, mask=None):
    """Mean of the per-position ``values`` (shape (...)) over the positions where ``mask`` is True (token-weighted:
    each counted token weighs the same, whatever sequence it is in); 0 when none counts. The count stays on the
    device. Without a mask, the mean over all positions: for (N, K) classification, the 'batchmean'."""
    if mask is None:
        return values.sum() / max(values.numel(), 1)
    return torch.where(mask, values, 0.0).sum() / mask.sum().clamp_min(1)


def softened_log_probs(teacher_rows, student_rows, temperature=1.0, standardization=None):
    """:math:`\\log \\mathrm{softmax}(z / \\tau)` (with a :class:`LogitStandardization`, of :math:`Z(z) / \\tau`) of
    the teacher's and the student's rows, each (..., V)."""
    return (torch.log_softmax(soften(teacher_rows, temperature, standardization), dim=-1),
            torch.log_softmax(soften(student_rows, temperature, standardization), dim=-1))


def position_kl(target_log_probs, input_log_probs):
    """KL(p || q) per position (summed over the last, vocabulary, dim) from log-probabilities; shape (...)."""
    return F.kl_div(input_log_probs, target_log_probs, reduction='none', log_target=True).sum(dim=-1)


def mixture_log_probs(log_p, log_q, weight_p):
    """:math:`\\log(w p + (1 - w) q)` from log-probabilities, computed as a logsumexp (stable); w in [0, 1]."""
    if not 0.0 <= weight_p <= 1.0:
        raise ValueError(f'mixture weight must be in [0, 1], got {weight_p!r}')
    if weight_p == 0:
        return log_q
    if weight_p == 1:
        return log_p
    return torch.logaddexp(log_p + math.log(weight_p), log_q + math.log1p(-weight_p))


# Per-token values: (..., V) teacher and student rows -> (...) divergences, tau^2 included. The public functions
# below average them over the counted tokens, all at once or chunk by chunk (``chunk_tokens``).

def forward_kl_tokens(teacher_rows, student_rows, temperature=1.0, standardization=None):
    """:math:`\\tau^2 KL(p^\\tau_t \\| p^\\tau_s)` per token."""
    log_t, log_s = softened_log_probs(teacher_rows, student_rows, temperature, standardization)
    return temperature ** 2 * position_kl(log_t, log_s)


def reverse_kl_tokens(teacher_rows, student_rows, temperature=1.0, standardization=None):
    """:math:`\\tau^2 KL(p^\\tau_s \\| p^\\tau_t)` per token."""
    return forward_kl_tokens(student_rows, teacher_rows, temperature, standardization)


def generalized_jsd_tokens(teacher_rows, student_rows, beta=0.5, temperature=1.0, standardization=None):
    """:math:`\\tau^2 JSD_\\beta` per token (see :func:`generalized_jsd`; 0: forward KL, 1: reverse KL)."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f'beta (JSD) must be in [0, 1], got {beta!r}')
    if beta == 0:
        return forward_kl_tokens(teacher_rows, student_rows, temperature, standardization)
    if beta == 1:
        return reverse_kl_tokens(teacher_rows, student_rows, temperature, standardization)
    log_t, log_s = softened_log_probs(teacher_rows, student_rows, temperature, standardization)
    log_m = mixture_log_probs(log_t, log_s, beta)
    return temperature ** 2 * (beta * position_kl(log_t, log_m) + (1 - beta) * position_kl(log_s, log_m))


def skew_forward_kl_tokens(teacher_rows, student_rows, skew=0.1, temperature=1.0, standardization=None):
    """:math:`\\tau^2 KL(p_t \\| \\lambda p_t + (1 - \\lambda) p_s)` per token (see :func:`skew_forward_kl`)."""
    log_t, log_s = softened_log_probs(teacher_rows, student_rows, temperature, standardization)
    return temperature ** 2 * position_kl(log_t, mixture_log_probs(log_t, log_s, skew))


def skew_reverse_kl_tokens(teacher_rows, student_rows, skew=0.1, temperature=1.0, standardization=None):
    """:math:`\\tau^2 KL(p_s \\| (1 - \\lambda) p_t + \\lambda p_s)` per token (see :func:`skew_reverse_kl`)."""
    log_t, log_s = softened_log_probs(teacher_rows, student_rows, temperature, standardization)
    return temperature ** 2 * position_kl(log_s, mixture_log_probs(log_s, log_t, skew))


def total_variation_tokens(teacher_rows, student_rows, temperature=1.0, standardization=None):
    """:math:`\\tau^2 \\tfrac12 \\sum_v |p^\\tau_{t,v} - p^\\tau_{s,v}|` per token."""
    log_t, log_s = softened_log_probs(teacher_rows, student_rows, temperature, standardization)
    return temperature ** 2 * 0.5 * (log_t.exp() - log_s.exp()).abs().sum(dim=-1)


def check_taid_t(t):
    """A ValueError unless the number ``t`` is in [0, 1]. A tensor (:class:`~pesf_ext.losses.divergences.TAIDSchedule`'s
    buffer, clamped to [t_start, t_end] by its update) is not read: reading it would wait for the device."""
    if not isinstance(t, torch.Tensor) and not 0.0 <= t <= 1.0:
        raise ValueError(f'TAID interpolation t must be in [0, 1], got {t!r}')


def taid_kl_tokens(teacher_rows, student_rows, t, temperature=1.0, standardization=None):
    """TAID's :math:`\\tau^2 KL(\\mathrm{softmax}((1 - t)\\,\\mathrm{sg}(z_s) + t z_t) \\| p^\\tau_s)` per token (logits
    softened first; the student's share of the target is detached, see :func:`taid_kl`)."""
    check_taid_t(t)
    z_s = soften(student_rows, temperature, standardization)
    target = (1 - t) * z_s.detach() + t * soften(teacher_rows, temperature, standardization)
    return temperature ** 2 * position_kl(torch.log_softmax(target, dim=-1), torch.log_softmax(z_s, dim=-1))


def cross_entropy_tokens(logits, labels, ignore_index=-100):
    """Next-token CE per token, :math:`-\\log \\mathrm{softmax}(z)_y` in float32; 0 where ``labels`` is
    ``ignore_index``."""
    return F.cross_entropy(at_least_float32(logits), labels, ignore_index=ignore_index, reduction='none')


def token_mean(token_values, teacher_logits, student_logits, mask=None, chunk_tokens=None):
    """:math:`\\mathrm{mean}_{i \\in mask}` ``token_values(teacher_rows, student_rows)`` over the positions of two
    (..., V) logit tensors (token-weighted; 0 when no position counts). ``chunk_tokens`` None: all unmasked rows at
    once, masked rows zeroed (:func:`masked_rows`; no host synchronisation); an integer: :func:`chunked_token_means`,
    whose memory is O(chunk_tokens x V)."""
    if chunk_tokens is None:
        teacher_rows, student_rows, mask = masked_rows(teacher_logits, student_logits, mask)
        return position_mean(token_values(teacher_rows, student_rows), mask)
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(f'teacher logits {tuple(teacher_logits.shape)} and student logits '
                         f'{tuple(student_logits.shape)} differ in shape')
    total, _ = chunked_token_means([(1.0, lambda rows, labels: token_values(*rows))],
                                   (teacher_logits, student_logits), mask, chunk_tokens=chunk_tokens)
    return total


def forward_kl(teacher_logits, student_logits, mask=None, temperature=1.0, standardization=None, chunk_tokens=None):
    """Token-level KD (Hinton et al., 2014): :math:`\\tau^2 \\cdot \\mathrm{mean}_{i \\in mask}
    KL(p^\\tau_t \\| p^\\tau_s)_i` over the positions of (..., V) logits.

    On (N, K) logits without a mask this equals :func:`softened_kl` with 'batchmean' (a test checks it); it sums per
    row itself so that a batch without any counted token gives 0. ``chunk_tokens``: see :func:`token_mean` (the same
    for every divergence below).
    """
    return token_mean(functools.partial(forward_kl_tokens, temperature=temperature, standardization=standardization),
                      teacher_logits, student_logits, mask, chunk_tokens)


def reverse_kl(teacher_logits, student_logits, mask=None, temperature=1.0, standardization=None, chunk_tokens=None):
    """Reverse KL (MiniLLM, Gu et al., ICLR 2024, token level): :math:`\\tau^2 \\cdot \\mathrm{mean}_{i \\in mask}
    KL(p^\\tau_s \\| p^\\tau_t)_i`. Mode-seeking: the student is penalised where it puts mass the teacher does not.
    (MiniLLM optimises the sequence-level reverse KL with policy gradients; this is its per-token, exact form, as
    DistiLLM's and TAID's ``reverse_kl`` losses compute it.)"""
    return forward_kl(student_logits, teacher_logits, mask, temperature, standardization, chunk_tokens)


def generalized_jsd(teacher_logits, student_logits, beta=0.5, mask=None, temperature=1.0, standardization=None,
                    chunk_tokens=None):
    """Generalized Jensen-Shannon divergence of GKD (Agarwal et al., ICLR 2024, eq. 1), in TRL's convention
    (``GKDTrainer.generalized_jsd_loss``): with the mixture :math:`m = \\beta p_t + (1 - \\beta) p_s`,

    .. math:: JSD_\\beta = \\beta KL(p_t \\| m) + (1 - \\beta) KL(p_s \\| m), \\quad
              JSD_0 := KL(p_t \\| p_s) \\text{ (forward)}, \\quad JSD_1 := KL(p_s \\| p_t) \\text{ (reverse)}

    (the end points are defined as the KLs, as TRL does; the mixture formula itself tends to 0 there). Multiplied by
    :math:`\\tau^2` (TRL does not scale; at :math:`\\tau = 1` the two agree) and averaged over the unmasked positions
    (TRL's 'batchmean' with labels).
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f'beta (JSD) must be in [0, 1], got {beta!r}')
    values = functools.partial(generalized_jsd_tokens, beta=beta, temperature=temperature,
                               standardization=standardization)
    return token_mean(values, teacher_logits, student_logits, mask, chunk_tokens)


def skew_forward_kl(teacher_logits, student_logits, skew=0.1, mask=None, temperature=1.0, standardization=None,
                    chunk_tokens=None):
    """Skew KL of DistiLLM (Ko et al., ICML 2024, eq. 2): :math:`\\tau^2 KL(p_t \\| \\lambda p_t + (1 - \\lambda) p_s)`,
    ``skew`` = :math:`\\lambda` in [0, 1] (0: forward KL; authors' default 0.1). Gradient flows into the student
    through the mixture. DistiLLM's ``skewed_forward_kl`` returns the cross-entropy
    :math:`-\\sum p_t \\log m`, which differs from this KL by the teacher's entropy (same student gradient)."""
    values = functools.partial(skew_forward_kl_tokens, skew=skew, temperature=temperature,
                               standardization=standardization)
    return token_mean(values, teacher_logits, student_logits, mask, chunk_tokens)


def skew_reverse_kl(teacher_logits, student_logits, skew=0.1, mask=None, temperature=1.0, standardization=None,
                    chunk_tokens=None):
    """Skew reverse KL of DistiLLM (Ko et al., ICML 2024): :math:`\\tau^2 KL(p_s \\| (1 - \\lambda) p_t + \\lambda p_s)`,
    ``skew`` = :math:`\\lambda` in [0, 1] (0: reverse KL; authors' default 0.1), as their ``skewed_reverse_kl``."""
    values = functools.partial(skew_reverse_kl_tokens, skew=skew, temperature=temperature,
                               standardization=standardization)
    return token_mean(values, teacher_logits, student_logits, mask, chunk_tokens)


def total_variation(teacher_logits, student_logits, mask=None, temperature=1.0, standardization=None,
                    chunk_tokens=None):
    """Total variation distance (DistiLLM's ``tv_distance``; Wen et al., ACL 2023):
    :math:`\\tau^2 \\cdot \\mathrm{mean}_i \\tfrac12 \\sum_v |p^\\tau_{t,v} - p^\\tau_{s,v}|`."""
    values = functools.partial(total_variation_tokens, temperature=temperature, standardization=standardization)
    return token_mean(values, teacher_logits, student_logits, mask, chunk_tokens)


def taid_kl(teacher_logits, student_logits, t, mask=None, temperature=1.0, standardization=None, chunk_tokens=None):
    """TAID (Shing et al., ICLR 2025, eq. 3): forward KL to the interpolated target
    :math:`p_t^{(t)} = \\mathrm{softmax}((1 - t)\\, \\mathrm{sg}(z_s) + t\\, z_t)` (logits softened first),

    .. math:: \\tau^2 \\cdot \\mathrm{mean}_{i \\in mask} KL(p^{(t)}_i \\| p^\\tau_{s,i})

    The student's share of the target is detached here, as in the authors' ``TAID.compute_loss`` (the one place in
    this module that detaches: it is part of TAID's definition). ``t`` in [0, 1]; 1 is forward KL.
    """
    check_taid_t(t)
    values = functools.partial(taid_kl_tokens, t=t, temperature=temperature, standardization=standardization)
    return token_mean(values, teacher_logits, student_logits, mask, chunk_tokens)


# ---- chunked token means: O(chunk x V) memory in forward and backward ----

def check_chunk_tokens(chunk_tokens, name='chunk_tokens'):
    """``chunk_tokens`` unchanged when it is None or an integer >= 1; a ValueError naming ``name`` otherwise."""
    if chunk_tokens is not None and (isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int)
                                     or chunk_tokens < 1):
        raise ValueError(f'{name} must be an integer >= 1 or null (off), got {chunk_tokens!r}')
    return chunk_tokens


def as_row_grid(tensor, trailing):
    """``tensor`` (leading positions, then ``trailing`` dims) as (R, C, ...) with C its last position dim: a view for
    (C, ...) and (R, C, ...) tensors, whatever their strides (a causal shift ``z[:, :-1]`` or a vocabulary slice)."""
    positions = tensor.shape[:tensor.dim() - trailing]
    rest = tensor.shape[tensor.dim() - trailing:]
    if len(positions) == 2:
        return tensor
    if len(positions) < 2:
        return tensor.reshape(1, positions[0] if positions else 1, *rest)
    return tensor.reshape(-1, positions[-1], *rest)  # more position dims: a copy when they cannot merge


def grid_segments(start, stop, columns):
    """(row, first, last) column ranges covering the flat positions [start, stop) of an (R, ``columns``) grid."""
    return [(row, max(start - row * columns, 0), min(stop - row * columns, columns))
            for row in range(start // columns, (stop - 1) // columns + 1)]


def take_segments(grid, segments):
    """The positions of ``segments`` of a grid (:func:`as_row_grid`), one after another: a view for one segment."""
    pieces = [grid[row, first:last] for row, first, last in segments]
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces)


def put_segments(grid, segments, values):
    """Writes ``values`` (the positions of ``segments`` one after another) into ``grid`` in place."""
    offset = 0
    for row, first, last in segments:
        grid[row, first:last] = values[offset:offset + last - first]
        offset += last - first


@dataclass
class ChunkPlan:
    """What :class:`ChunkedTokenMeans` computes: ``terms`` (weight, fn) pairs, ``fn(rows, labels)`` -> (c,) values per
    token; ``mask`` and ``labels`` (R, C) grids or None; ``count`` the number of counted tokens (a tensor, >= 1)."""
    terms: list
    mask: torch.Tensor
    labels: torch.Tensor
    count: torch.Tensor
    chunk_tokens: int


class ChunkedTokenMeans(torch.autograd.Function):
    """Token means of several per-token terms over (..., V) logit tensors, chunk by chunk, with each chunk's
    gradient computed in the forward pass (Liger-Kernel's fused-loss pattern; torch.autograd.grad on the chunk).

    Forward, per chunk of ``chunk_tokens`` positions: the chunk's rows are taken (a view, or a chunk-sized copy where
    a chunk spans two sequences), upcast to float32 with masked rows set to 0 (so whatever they hold, they add
    nothing to the value or the gradient), every term evaluated, masked tokens zeroed and summed, and the gradient
    of :math:`\\sum_k w_k \\cdot \\mathrm{chunk\\ sum}_k / \\mathrm{count}` with respect to the chunk of every input
    that needs one written into that input's gradient buffer (its shape and dtype). The chunk's graph is then freed.
    Backward multiplies the buffers by the incoming gradient in place and returns them.

    Why this and not ``torch.utils.checkpoint`` per chunk: checkpointing keeps the inputs for a second forward in
    backward (one more pass over the vocabulary, about a third more loss time) and its per-chunk gradients meet in a
    split/cat of the whole input; here nothing is recomputed, and what lives from forward to backward is exactly the
    gradient each differentiated input will receive anyway (one N x V tensor in its dtype), so every transient is
    O(chunk x V). The cost: the gradient is computed even when no backward follows (only under grad mode, with an
    input requiring grad), and the result cannot be differentiated twice (``retain_graph`` re-use raises).
    """
    @staticmethod
    def forward(ctx, plan, *logits):
        needs = ctx.needs_input_grad[1:]
        grids = [as_row_grid(x, 1) for x in logits]
        buffers = [None] * len(logits)
        columns = grids[0].shape[1]
        positions = grids[0].shape[0] * columns
        dtype = torch.promote_types(torch.float32, logits[0].dtype)  # float32, or float64 for float64 logits
        weights = torch.tensor([w for w, _ in plan.terms], dtype=dtype, device=logits[0].device)
        sums = torch.zeros(len(plan.terms), dtype=dtype, device=logits[0].device)
        for start in range(0, positions, plan.chunk_tokens):
            segments = grid_segments(start, min(start + plan.chunk_tokens, positions), columns)
            chunk_sums, grads = chunk_terms_and_grads(plan, grids, needs, segments, weights)
            sums += chunk_sums
            for index, grad in enumerate(grads):
                if grad is not None:
                    if buffers[index] is None:
                        buffers[index] = torch.zeros_like(logits[index], memory_format=torch.contiguous_format)
                    put_segments(as_row_grid(buffers[index], 1), segments, grad)
        ctx.save_for_backward(*buffers)
        means = sums / plan.count
        ctx.mark_non_differentiable(means)
        return (weights * means).sum(), means

    @staticmethod
    def backward(ctx, grad_total, grad_means):
        return (None,) + tuple(None if buffer is None else buffer.mul_(grad_total) for buffer in ctx.saved_tensors)


def chunk_terms_and_grads(plan, grids, needs, segments, weights):
    """One chunk of :class:`ChunkedTokenMeans`: the (K,) sums of the terms over its counted tokens and the gradient
    of the weighted sum / count with respect to each input's chunk (None where not needed or not reached)."""
    mask = take_segments(plan.mask, segments)
    labels = None if plan.labels is None else take_segments(plan.labels, segments)
    leaves = [take_segments(grid, segments).detach().requires_grad_(need) for grid, need in zip(grids, needs)]
    with torch.enable_grad(), torch.autocast(grids[0].device.type, enabled=False):
        rows = tuple(torch.where(mask.unsqueeze(-1), at_least_float32(leaf), 0.0) for leaf in leaves)
        chunk_sums = torch.stack([torch.where(mask, fn(rows, labels), 0.0).sum() for _, fn in plan.terms])
        wanted = [leaf for leaf, need in zip(leaves, needs) if need]
        if not wanted or not chunk_sums.requires_grad:
            return chunk_sums.detach(), [None] * len(leaves)
        grads = iter(torch.autograd.grad((weights * chunk_sums).sum() / plan.count, wanted, allow_unused=True))
    return chunk_sums.detach(), [next(grads) if need else None for need in needs]


def chunked_token_means(terms, logits, mask=None, labels=None, chunk_tokens=1024):
    """``(total, means)``: the token mean of each per-token term over the positions where ``mask`` is True, in chunks
    of ``chunk_tokens`` positions, and :math:`\\sum_k w_k \\cdot \\mathrm{mean}_k` differentiable with respect to
    every tensor of ``logits`` that requires a gradient (:class:`ChunkedTokenMeans`).

    ``terms``: (weight, fn) pairs, ``fn(rows, labels)`` giving the (c,) per-token values of one chunk from ``rows``,
    the chunk of each tensor of ``logits`` in order, (c, V) float32; detach inside ``fn`` what a term must not
    differentiate. ``logits``: (..., V) tensors with the same positions; ``mask``/``labels``: (...) or None. Every
    counted token weighs the same, whichever chunk it falls in; ``means`` (K,) is detached; 0 when none counts.
    The token count stays on the device (no host synchronisation).
    """
    check_chunk_tokens(chunk_tokens)
    positions = logits[0].shape[:-1]
    for tensor in logits[1:]:
        if tensor.shape[:-1] != positions:
            raise ValueError(f'logit tensors of shapes {tuple(logits[0].shape)} and {tuple(tensor.shape)} differ in '
                             'positions')
    if mask is None:
        mask = torch.ones(positions, dtype=torch.bool, device=logits[0].device)
    mask = mask.to(torch.bool)
    if mask.shape != positions:
        raise ValueError(f'mask of shape {tuple(mask.shape)} does not match logit positions of shape '
                         f'{tuple(positions)}')
    plan = ChunkPlan(list(terms), as_row_grid(mask, 0), None if labels is None else as_row_grid(labels, 0),
                     mask.sum().clamp_min(1), chunk_tokens)
    return ChunkedTokenMeans.apply(plan, *logits)


def taid_next_t(t, momentum, previous_loss, loss, progress, t_start=0.4, t_end=1.0, rate=5e-4, momentum_decay=0.99):
    """One update of TAID's interpolation parameter (Shing et al., ICLR 2025, Alg. 1; the authors' ``update_t``):

    .. math:: \\delta = \\frac{L_{prev} - L}{L_{prev} + 10^{-15}}, \\quad m \\leftarrow \\beta m + (1 - \\beta)\\delta,
              \\quad t \\leftarrow \\min(t_{end}, \\max(t_{start} + (t_{end} - t_{start})\\,\\mathrm{progress},
              \\; t + \\alpha\\, \\sigma(m)(1 - t)))

    ``rate`` is their alpha (5e-4), ``momentum_decay`` their beta (0.99), ``progress`` = step / total steps. Tensor
    math (``t``, ``momentum``, ``previous_loss``, ``loss``, ``progress``: numbers or 0-dim tensors; use float64 for
    the authors' double precision), so the update runs where the loss is, without a host read. Returns
    (t, momentum) as 0-dim tensors. ``t`` never decreases below the linear schedule and rises faster while the loss
    falls.
    """
    t, momentum, previous_loss, loss, progress = (torch.as_tensor(x, dtype=torch.float64)
                                                  for x in (t, momentum, previous_loss, loss, progress))
    relative_change = (previous_loss - loss) / (previous_loss + 1e-15)
    momentum = momentum_decay * momentum + (1 - momentum_decay) * relative_change
    linear = t_start + (t_end - t_start) * progress
    adaptive = t + rate * torch.sigmoid(momentum) * (1 - t)
    return torch.clamp(torch.maximum(linear, adaptive), max=t_end), momentum
