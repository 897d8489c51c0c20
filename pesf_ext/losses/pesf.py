"""PESF-KD: parameter-efficient, student-friendly KD (student and teacher adapters trained together)."""
from torchdistill.losses.registry import register_mid_level_loss

from .base import LogitPairLoss, check_weight
from .functional import check_choice

TEACHER_KL_CHOICES = ('reverse', 'shared')


@register_mid_level_loss
class PESFKDLoss(LogitPairLoss):
    """PESF-KD loss: student KD loss plus the loss of the teacher's adapters, summed so one backward serves both.

    Student (eq. 7), adapter-adjusted teacher logits :math:`z_{ta}` detached:

    .. math:: L_s = \\alpha \\cdot CE(y, z_s) + \\beta \\cdot \\tau^2 KL(p^\\tau_{ta} \\| p^\\tau_s)

    ``teacher_kl='reverse'`` (paper eq. 8, default), student logits detached:

    .. math:: L_{ta} = \\alpha_t \\cdot CE(y, z_{ta}) + \\beta_t \\cdot \\tau^2 KL(p^\\tau_s \\| p^\\tau_{ta})

    ``teacher_kl='shared'`` (the authors' released code): no reverse KL; instead :math:`z_{ta}` is *not* detached
    in the student's KL term, so the adapters also receive that term's gradient, and
    :math:`L_{ta} = \\alpha_t \\cdot CE(y, z_{ta})`. ``teacher_beta`` does not exist in this mode.

    The sum :math:`L_s + L_{ta}` is returned: student and adapters have disjoint parameters, so one backward
    gives each its own gradient. Frozen teacher parameters get none, which keeps PESF-KD cheap.

    Jun Rao, Xv Meng, Liang Ding, Shuhan Qi, Xuebo Liu, Min Zhang, Dacheng Tao: `"Parameter-Efficient and
    Student-Friendly Knowledge Distillation" <https://arxiv.org/abs/2205.15308>`_ @ IEEE TMM (2023)

    Weights follow torchdistill: ``alpha`` is the CE weight, ``beta`` (default ``1 - alpha``) the KL weight;
    **the paper's alpha (KL weight) is ``beta`` here**, its ``1 - alpha`` is ``alpha``.
    ``teacher_alpha``/``teacher_beta`` default to the student's. Other arguments: see
    :class:`pesf_ext.losses.base.LogitPairLoss`. ``last_terms`` keys: 'student_ce', 'student_kl', 'teacher_ce',
    'teacher_kl'.

    .. code-block:: yaml

        criterion:
          key: 'WeightedSumLoss'
          kwargs:
            sub_terms:
              pesf:
                criterion:
                  key: 'PESFKDLoss'
                  kwargs:
                    student_module_path: '.'
                    student_module_io: 'output'
                    teacher_module_path: '.'
                    teacher_module_io: 'output'
                    temperature: 4.0
                    alpha: 0.1        # CE weight (paper: 1 - alpha)
                    beta: 0.9         # KL weight (paper: alpha)
                    teacher_kl: 'reverse'
                weight: 1.0
    """
    def __init__(self, student_module_path, student_module_io, teacher_module_path, teacher_module_io,
                 temperature, alpha=None, beta=None, reduction='batchmean', teacher_alpha=None, teacher_beta=None,
                 teacher_kl='reverse', logit_standardization=False, std='unbiased', eps=1e-7):
        super().__init__(student_module_path, student_module_io, teacher_module_path, teacher_module_io,
                         temperature, alpha, beta, reduction, logit_standardization, std, eps)
        check_choice('teacher_kl', teacher_kl, TEACHER_KL_CHOICES)
        if teacher_kl == 'shared' and teacher_beta is not None:
            raise ValueError("teacher_beta is unused when teacher_kl='shared' (no reverse KL); leave it None")
        self.teacher_kl = teacher_kl
        self.teacher_alpha = check_weight('teacher_alpha', self.alpha if teacher_alpha is None else teacher_alpha)
        self.teacher_beta = 0.0 if teacher_kl == 'shared' else \
            check_weight('teacher_beta', self.beta if teacher_beta is None else teacher_beta)

    def forward(self, student_io_dict, teacher_io_dict, targets=None, *args, **kwargs):
        z_s, z_ta = self.logits(student_io_dict, teacher_io_dict)
        kl_target = z_ta if self.teacher_kl == 'shared' else z_ta.detach()
        return self.weighted_sum([
            ('student_ce', self.alpha, lambda: self.cross_entropy(z_s, targets)),
            ('student_kl', self.beta, lambda: self.kl(kl_target, z_s)),
            ('teacher_ce', self.teacher_alpha, lambda: self.cross_entropy(z_ta, targets)),
            ('teacher_kl', self.teacher_beta, lambda: self.kl(z_s.detach(), z_ta)),
        ], reference=z_s)

    def extra_repr(self):
        return (f'{super().extra_repr()}, teacher_alpha={self.teacher_alpha}, teacher_beta={self.teacher_beta}, '
                f'teacher_kl={self.teacher_kl!r}')
