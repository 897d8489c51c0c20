"""Transformed teacher matching: a power-transformed (softened) teacher against the student's plain softmax."""
from torchdistill.losses.registry import register_mid_level_loss

from .base import LogitPairLoss
from .functional import is_regression, transformed_teacher_kl


def check_gamma(gamma):
    """Raises ValueError unless the power ``gamma`` is a number > 0."""
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or gamma <= 0:
        raise ValueError(f'gamma must be a number > 0 (the power of the teacher transform, 1 / temperature), '
                         f'got {gamma!r}')
    return gamma


@register_mid_level_loss
class TTMLoss(LogitPairLoss):
    """Transformed Teacher Matching, teacher detached.

    .. math:: L = \\alpha \\cdot CE(y, z_s) + \\beta \\cdot \\frac{1}{N} \\sum_i KL(\\tilde{p}_{t,i} \\| p_{s,i}),
              \\quad \\tilde{p}_{t,k} = \\frac{p_{t,k}^\\gamma}{\\sum_j p_{t,j}^\\gamma}
              = \\mathrm{softmax}(\\gamma z_t)_k, \\quad p_s = \\mathrm{softmax}(z_s)

    KD with the temperature :math:`T = 1/\\gamma` on the teacher side only and no :math:`T^2` factor. As the
    authors' code (zkxufo/TTM ``distiller_zoo/ttm.py``, ``helper/loops.py``): per-sample KL summed over classes,
    mean over the batch ('batchmean'), total ``r * CE + b * TTM``; README example for VGG13 -> VGG8 on CIFAR-100:
    ``--ttm_l 0.1 -r 1 -b 45`` (gamma 0.1, alpha 1, beta 45). **Naming:** the authors' ``--gamma`` / ``-r`` is
    the CE weight (``alpha`` here); the paper's :math:`\\gamma` (their ``--ttm_l``) is ``gamma`` here.

    ``logit_standardization=True`` Z-scores the **teacher's** logits before the power transform (Sun et al.,
    CVPR 2024): the target :math:`\\mathrm{softmax}(\\gamma Z(z_t))` then has logit std :math:`\\gamma` whatever
    the teacher's scale, so gamma alone sets how soft it is. The student is not standardized: TTM gives it no
    temperature, and a standardized student (std 1) could not reach a target of std :math:`\\gamma \\ne 1`.

    Kaixiang Zheng, En-Hui Yang: `"Knowledge Distillation Based on Transformed Teacher Matching"
    <https://arxiv.org/abs/2402.11148>`_ @ ICLR 2024 (2024)

    Arguments: see :class:`pesf_ext.losses.base.LogitPairLoss` (``alpha``: CE weight, ``beta``: TTM weight;
    ``gamma`` > 0 replaces ``temperature``; ``target_correction`` is not offered). Class logits only.
    ``last_terms`` keys: 'student_ce', 'student_kl'.

    .. code-block:: yaml

        criterion:
          key: 'TTMLoss'
          kwargs:
            student_module_path: '.'
            student_module_io: 'output'
            teacher_module_path: '.'
            teacher_module_io: 'output'
            gamma: 0.1
            alpha: 1.0
            beta: 45.0
    """
    weighted = False

    def __init__(self, student_module_path, student_module_io, teacher_module_path, teacher_module_io,
                 gamma, alpha=None, beta=None, reduction='batchmean', logit_standardization=False,
                 std='unbiased', eps=1e-7):
        check_gamma(gamma)
        super().__init__(student_module_path, student_module_io, teacher_module_path, teacher_module_io,
                         1.0 / gamma, alpha, beta, reduction, logit_standardization, std, eps)
        self.gamma = gamma

    def forward(self, student_io_dict, teacher_io_dict, targets=None, *args, **kwargs):
        z_s, z_t = self.logits(student_io_dict, teacher_io_dict)
        if is_regression(z_s):
            raise ValueError(f'{type(self).__name__} needs class logits (N, K >= 2); a regression head has no '
                             'distribution to transform')
        return self.weighted_sum([
            ('student_ce', self.alpha, lambda: self.cross_entropy(z_s, targets)),
            ('student_kl', self.beta, lambda: transformed_teacher_kl(
                z_t.detach(), z_s, self.gamma, self.reduction, self.weighted, self.standardization)),
        ], reference=z_s)

    def extra_repr(self):
        return f'gamma={self.gamma}, {super().extra_repr()}'


@register_mid_level_loss
class WTTMLoss(TTMLoss):
    """Weighted TTM, teacher detached: TTM with each sample's KL weighted by the teacher's power sum.

    .. math:: L = \\alpha \\cdot CE(y, z_s) + \\beta \\cdot \\frac{1}{N} \\sum_i \\Big(\\sum_k p_{t,i,k}^\\gamma\\Big)
              KL(\\tilde{p}_{t,i} \\| p_{s,i})

    The weight :math:`\\sum_k p_{t,k}^\\gamma` (the transform's normaliser, before normalisation; a smoother
    teacher gets a larger one, between 1 and :math:`K^{1-\\gamma}`) is used raw, not divided by its batch mean,
    as in the authors' ``distiller_zoo/wttm.py`` (``mean(norm * KL)``); with ``logit_standardization`` it is
    computed from the Z-scored teacher. Everything else as :class:`TTMLoss`.

    Kaixiang Zheng, En-Hui Yang: `"Knowledge Distillation Based on Transformed Teacher Matching"
    <https://arxiv.org/abs/2402.11148>`_ @ ICLR 2024 (2024)

    .. code-block:: yaml

        criterion:
          key: 'WTTMLoss'
          kwargs:
            student_module_path: '.'
            student_module_io: 'output'
            teacher_module_path: '.'
            teacher_module_io: 'output'
            gamma: 0.1
            alpha: 1.0
            beta: 45.0
    """
    weighted = True
