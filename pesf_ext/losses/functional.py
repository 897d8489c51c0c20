"""The single home of the logit math used by every loss in :mod:`pesf_ext.losses` and by :mod:`pesf_ext.metrics`.

Nothing here detaches anything: callers decide which side of a divergence receives gradients.

References
- Hinton et al., "Distilling the Knowledge in a Neural Network", NIPS-W 2014 (softened KL, tau^2 scaling).
- Sun et al., "Logit Standardization in Knowledge Distillation", CVPR 2024 (Alg. 1: Z-score of logits).
- Rao et al., "Parameter-Efficient and Student-Friendly Knowledge Distillation", IEEE TMM 2023
  (PESF-KD, eq. 2: sharpness, eq. 3: sharpness gap).
"""
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


def standardize_logits(logits, std='unbiased', eps=1e-7):
    """Z-score per sample over the last (class) dimension (Sun et al., CVPR 2024, Alg. 1).

    .. math:: Z(z) = (z - \\bar{z}) / (\\sigma(z) + \\epsilon)

    ``std='unbiased'`` divides the variance by K - 1, ``'population'`` by K.
    """
    check_choice('std', std, STD_CHOICES)
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
