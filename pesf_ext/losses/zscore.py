"""KD on Z-scored logits (logit standardization)."""
from torchdistill.losses.registry import register_mid_level_loss

from .kd import LogitKDLoss


@register_mid_level_loss
class ZScoreKDLoss(LogitKDLoss):
    """KD with logit standardization (Sun et al., CVPR 2024, Alg. 2), teacher detached.

    .. math:: L = \\alpha \\cdot CE(y, z_s) + \\beta \\cdot \\tau^2
              KL(\\mathrm{softmax}(Z(z_t)/\\tau) \\| \\mathrm{softmax}(Z(z_s)/\\tau)),
              \\quad Z(z) = (z - \\bar{z}) / (\\sigma(z) + \\epsilon)

    The CE uses the raw student logits. ``std='unbiased'`` (default) is the authors' code and torchdistill's
    ``LogitStdKDLoss``; ``'population'`` is the std written in Alg. 1.

    Same kwargs and, for ``alpha > 0``, same value as ``torchdistill.losses.mid_level.LogitStdKDLoss``. One
    difference: ``LogitStdKDLoss`` returns the *unscaled* soft loss (no beta, no tau^2) when ``alpha`` is None
    or 0 or targets are None; this loss is always ``alpha * CE + beta * tau^2 * KL`` (alpha None -> 0, beta
    None -> ``1 - alpha``).

    Shangquan Sun, Wenqi Ren, Jingzhi Li, Rui Wang, Xiaochun Cao: `"Logit Standardization in Knowledge
    Distillation" <https://arxiv.org/abs/2403.01427>`_ @ CVPR 2024 (2024)

    Other arguments: see :class:`pesf_ext.losses.base.LogitPairLoss`. ``last_terms`` keys: 'student_ce',
    'student_kl'.

    .. code-block:: yaml

        criterion:
          key: 'ZScoreKDLoss'
          kwargs:
            student_module_path: '.'
            student_module_io: 'output'
            teacher_module_path: '.'
            teacher_module_io: 'output'
            temperature: 2.0
            alpha: 0.1   # lambda_CE
            beta: 9.0    # lambda_KD
            std: 'unbiased'
    """
    def __init__(self, student_module_path, student_module_io, teacher_module_path, teacher_module_io,
                 temperature, eps=1e-7, alpha=None, beta=None, reduction='batchmean', std='unbiased',
                 target_correction=None):
        super().__init__(student_module_path, student_module_io, teacher_module_path, teacher_module_io,
                         temperature, alpha, beta, reduction, logit_standardization=True, std=std, eps=eps,
                         target_correction=target_correction)
