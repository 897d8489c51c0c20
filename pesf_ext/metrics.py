"""Analysis metrics on logits and features (evaluation only, no gradients needed).

Each returns a Python float (batch mean). Sharpness and KL come from :mod:`pesf_ext.losses.functional`.
"""
import torch

from .losses.functional import kl_divergence, sharpness_gap


def mean_sharpness_gap(teacher_logits, student_logits):
    """Mean sharpness gap (PESF-KD, Rao et al., IEEE TMM 2023, eqs. 2-3):
    :math:`\\frac{1}{N} \\sum_i \\mathrm{logsumexp}(z_{t,i}) - \\mathrm{logsumexp}(z_{s,i})`."""
    return sharpness_gap(teacher_logits, student_logits).mean().item()


def sharpness_gap_approx(teacher_logits, student_logits):
    """Mean of the second-order approximation of the sharpness gap (PESF-KD, eq. 10):
    :math:`\\log(1 + \\sigma_t^2 / 2) - \\log(1 + \\sigma_s^2 / 2)`, :math:`\\sigma^2` the per-sample
    (population) variance of the logits over classes. Comparable with :func:`mean_sharpness_gap` up to the
    shift :math:`\\log K` that cancels in the gap, for zero-mean logits of moderate scale."""
    def log_term(logits):
        return torch.log1p(logits.var(dim=-1, correction=0) / 2)
    return (log_term(teacher_logits) - log_term(student_logits)).mean().item()


def mean_kl(teacher_logits, student_logits, temperature=1.0):
    """Plain :math:`KL(\\mathrm{softmax}(z_t/\\tau) \\| \\mathrm{softmax}(z_s/\\tau))` averaged over samples,
    **without** the :math:`\\tau^2` factor of the KD loss (Hinton et al., 2014)."""
    return kl_divergence(torch.log_softmax(teacher_logits / temperature, dim=-1),
                         torch.log_softmax(student_logits / temperature, dim=-1), 'batchmean').item()


def top1_agreement(teacher_logits, student_logits):
    """Fraction of samples where teacher and student predict the same class: :math:`\\frac{1}{N} \\sum_i
    [\\arg\\max z_{t,i} = \\arg\\max z_{s,i}]`."""
    return (teacher_logits.argmax(dim=-1) == student_logits.argmax(dim=-1)).float().mean().item()


def linear_cka(x, y):
    """Linear centred kernel alignment between two (N, D1) and (N, D2) feature matrices (extra dims flattened).

    .. math:: CKA(X, Y) = \\frac{\\|Y_c^\\top X_c\\|_F^2}{\\|X_c^\\top X_c\\|_F \\, \\|Y_c^\\top Y_c\\|_F}

    with :math:`X_c, Y_c` column-centred. Computed in float64.
    Simon Kornblith, Mohammad Norouzi, Honglak Lee, Geoffrey Hinton: `"Similarity of Neural Network
    Representations Revisited" <https://arxiv.org/abs/1905.00414>`_ @ ICML 2019
    """
    x = x.reshape(x.shape[0], -1).double()
    y = y.reshape(y.shape[0], -1).double()
    x = x - x.mean(dim=0, keepdim=True)
    y = y - y.mean(dim=0, keepdim=True)
    cross = torch.linalg.matrix_norm(y.T @ x) ** 2
    return (cross / (torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y))).item()
