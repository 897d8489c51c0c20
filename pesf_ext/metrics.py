"""Analysis metrics on logits and features (evaluation only, no gradients needed).

Each returns a Python float (batch mean). Sharpness and KL come from :mod:`pesf_ext.losses.functional`.
"""
import math

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


def probability_loyalty(teacher_logits, student_logits):
    """Mean probability loyalty (Xu et al., `"Beyond Preserved Accuracy: Evaluating Loyalty and Robustness of BERT
    Compression" <https://arxiv.org/abs/2109.03228>`_, EMNLP 2021, §3.1.2), as the PESF-KD paper reports it:

    .. math:: PL = \\frac{1}{N} \\sum_i 1 - \\sqrt{D_{JS}(p_{t,i} \\| p_{s,i})}, \\quad
        D_{JS}(p \\| q) = \\tfrac{1}{2} KL(p \\| m) + \\tfrac{1}{2} KL(q \\| m), \\; m = \\tfrac{1}{2}(p + q)

    with p = softmax(z) (temperature 1) and natural logarithms, as ``scipy.spatial.distance.jensenshannon`` (the
    authors' recommended implementation). 1 for identical predictions."""
    return probability_loyalty_per_sample(teacher_logits, student_logits).mean().item()


def probability_loyalty_per_sample(teacher_logits, student_logits):
    """Per-sample :math:`1 - \\sqrt{D_{JS}}` of :func:`probability_loyalty` (float64)."""
    log_p = torch.log_softmax(teacher_logits.double(), dim=-1)
    log_q = torch.log_softmax(student_logits.double(), dim=-1)
    log_m = torch.logsumexp(torch.stack([log_p, log_q]), dim=0) - math.log(2.0)
    jsd = 0.5 * (kl_divergence(log_p, log_m, 'none') + kl_divergence(log_q, log_m, 'none'))  # KL(p||m), KL(q||m)
    return 1.0 - jsd.clamp_min(0.0).sqrt()


def logit_mean_std(logits):
    """Per-sample mean and (population) standard deviation of the logits over classes, the statistics that
    Z-score standardization removes (Sun et al., CVPR 2024, Figs. 3 and 5): two (N,) tensors."""
    logits = logits.double()
    return logits.mean(dim=-1), logits.std(dim=-1, correction=0)


def _unbiased_hsic(gram_x, gram_y):
    """Unbiased HSIC estimator of Song et al. (JMLR 2012), eq. 5:

    .. math:: HSIC_1(K, L) = \\frac{1}{n(n-3)} \\Big[\\mathrm{tr}(\\tilde K \\tilde L)
        + \\frac{1^\\top \\tilde K 1 \\, 1^\\top \\tilde L 1}{(n-1)(n-2)} - \\frac{2}{n-2} 1^\\top \\tilde K \\tilde L 1\\Big]

    with :math:`\\tilde K, \\tilde L` the Gram matrices with their diagonals set to zero (n ≥ 4)."""
    n = gram_x.shape[0]
    k = gram_x - torch.diag(torch.diagonal(gram_x))
    l_ = gram_y - torch.diag(torch.diagonal(gram_y))
    trace = (k * l_).sum()  # tr(K L) for symmetric L
    ones_k, ones_l = k.sum(dim=0), l_.sum(dim=0)
    return (trace + k.sum() * l_.sum() / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * (ones_k @ ones_l)) / (n * (n - 3))


class MinibatchCKA:
    """Linear CKA accumulated over minibatches (Nguyen, Raghu, Kornblith, `"Do Wide and Deep Networks Learn the
    Same Things?" <https://arxiv.org/abs/2010.15327>`_, ICLR 2021, eq. 3), so that a whole test set never has to
    be held in memory:

    .. math:: CKA_{mb} = \\frac{\\frac{1}{k}\\sum_i HSIC_1(K_i, L_i)}
        {\\sqrt{\\frac{1}{k}\\sum_i HSIC_1(K_i, K_i)} \\sqrt{\\frac{1}{k}\\sum_i HSIC_1(L_i, L_i)}}

    with :math:`K_i = X_i X_i^\\top`, :math:`L_i = Y_i Y_i^\\top` the linear Gram matrices of minibatch i and
    :math:`HSIC_1` the unbiased estimator (:func:`_unbiased_hsic`). Minibatches of fewer than 4 samples are
    skipped (the estimator needs n ≥ 4). Invariant to orthogonal transforms and isotropic scaling of either side.
    """

    def __init__(self):
        self.xy = self.xx = self.yy = 0.0
        self.batches = 0

    def update(self, x, y):
        x = x.reshape(x.shape[0], -1).double()
        y = y.reshape(y.shape[0], -1).double()
        if x.shape[0] < 4:
            return
        gram_x, gram_y = x @ x.T, y @ y.T
        self.xy += _unbiased_hsic(gram_x, gram_y).item()
        self.xx += _unbiased_hsic(gram_x, gram_x).item()
        self.yy += _unbiased_hsic(gram_y, gram_y).item()
        self.batches += 1

    def compute(self):
        if self.batches == 0 or self.xx <= 0 or self.yy <= 0:
            return float('nan')
        return self.xy / math.sqrt(self.xx * self.yy)


def zscore_extreme_logits(num_classes, std='unbiased'):
    """The standardized logit vector with the largest possible top entry, and that entry (Sun et al., CVPR 2024).

    A Z-scored vector has mean 0 and :math:`\\sum_k z_k^2 = d` with :math:`d = K - 1` (``std='unbiased'``) or
    :math:`K` (``'population'``). Under those constraints the top entry is largest when the other :math:`K - 1`
    are equal, :math:`z = (a, -a/(K-1), \\dots)`, which gives :math:`a = \\sqrt{d (K-1) / K}`: :math:`(K-1)/\\sqrt K`
    unbiased, :math:`\\sqrt{K-1}` population. So the sharpest target Z-score KD can give at temperature
    :math:`\\tau` is fixed by :math:`K` and :math:`\\tau` alone, whatever the teacher: 10 classes cannot be as peaked
    as 100. Returns (the vector as a (K,) float64 tensor, a)."""
    from .losses.functional import STD_CHOICES, check_choice
    check_choice('std', std, STD_CHOICES)
    if num_classes < 2:
        raise ValueError(f'num_classes must be >= 2, got {num_classes}')
    d = num_classes - 1 if std == 'unbiased' else num_classes
    top = math.sqrt(d * (num_classes - 1) / num_classes)
    vector = torch.full((num_classes,), -top / (num_classes - 1), dtype=torch.float64)
    vector[0] = top
    return vector, top


def zscore_max_probability(num_classes, temperature, std='unbiased'):
    """Largest top-class probability of :math:`\\mathrm{softmax}(Z(z)/\\tau)` over all logit vectors :math:`z`
    (attained by :func:`zscore_extreme_logits`)."""
    vector, _ = zscore_extreme_logits(num_classes, std)
    return torch.softmax(vector / temperature, dim=0)[0].item()
