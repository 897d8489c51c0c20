"""FT-KD: KD in which the teacher is fine-tuned together with the student."""
from torchdistill.losses.registry import register_mid_level_loss

from .base import LogitPairLoss, check_weight


@register_mid_level_loss
class FTKDLoss(LogitPairLoss):
    """Fine-tuned-teacher KD (PESF-KD paper, Sec. IV-A, eqs. 4-5): teacher logits are *not* detached.

    .. math:: L = \\alpha \\cdot CE(y, z_s) + \\beta \\cdot \\tau^2 KL(p^\\tau_t \\| p^\\tau_s)
              + w_t \\cdot CE(y, z_t)

    The KL gradient reaches the teacher as well as the student (eq. 5) and the teacher is also trained on the
    labels (eq. 4, :math:`w_t` = ``teacher_ce_weight``). Make the teacher updatable in torchdistill
    (``teacher.requires_grad: True``, its own lr via ``module_wise_configs``; paper: 1e-3).

    Jun Rao, Xv Meng, Liang Ding, Shuhan Qi, Xuebo Liu, Min Zhang, Dacheng Tao: `"Parameter-Efficient and
    Student-Friendly Knowledge Distillation" <https://arxiv.org/abs/2205.15308>`_ @ IEEE TMM (2023)

    ``alpha`` is the CE weight, ``beta`` (default ``1 - alpha``) the KL weight (the paper's alpha is ``beta``).
    Other arguments: see :class:`pesf_ext.losses.base.LogitPairLoss`. ``last_terms`` keys: 'student_ce',
    'student_kl', 'teacher_ce'.

    .. code-block:: yaml

        criterion:
          key: 'FTKDLoss'
          kwargs:
            student_module_path: '.'
            student_module_io: 'output'
            teacher_module_path: '.'
            teacher_module_io: 'output'
            temperature: 4.0
            alpha: 0.1
            beta: 0.9
            teacher_ce_weight: 1.0
    """
    def __init__(self, student_module_path, student_module_io, teacher_module_path, teacher_module_io,
                 temperature, alpha=None, beta=None, reduction='batchmean', teacher_ce_weight=1.0,
                 logit_standardization=False, std='unbiased', eps=1e-7, target_correction=None):
        super().__init__(student_module_path, student_module_io, teacher_module_path, teacher_module_io,
                         temperature, alpha, beta, reduction, logit_standardization, std, eps, target_correction)
        self.teacher_ce_weight = check_weight('teacher_ce_weight', teacher_ce_weight)

    def forward(self, student_io_dict, teacher_io_dict, targets=None, *args, **kwargs):
        z_s, z_t = self.logits(student_io_dict, teacher_io_dict)
        return self.weighted_sum([
            ('student_ce', self.alpha, lambda: self.cross_entropy(z_s, targets)),
            ('student_kl', self.beta, lambda: self.kl(self.corrected(z_t, targets), z_s)),
            ('teacher_ce', self.teacher_ce_weight, lambda: self.cross_entropy(z_t, targets)),
        ], reference=z_s)

    def extra_repr(self):
        return f'{super().extra_repr()}, teacher_ce_weight={self.teacher_ce_weight}'
