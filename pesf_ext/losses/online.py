"""Online (mutual / collaborative) distillation: both networks learn, each from the other."""
import torch
from torchdistill.losses.registry import register_mid_level_loss

from .base import LogitPairLoss, check_weight
from .functional import check_choice

KDCL_TARGET_CHOICES = ('naive', 'min_logit')


@register_mid_level_loss
class DMLLoss(LogitPairLoss):
    """Deep Mutual Learning for two networks ("student" and "teacher"), updated jointly by one backward.

    .. math:: L_s = \\alpha \\cdot CE(y, z_s) + \\beta \\cdot \\tau^2 KL(p^\\tau_t \\| p^\\tau_s)

    .. math:: L_t = \\alpha_t \\cdot CE(y, z_t) + \\beta_t \\cdot \\tau^2 KL(p^\\tau_s \\| p^\\tau_t)

    with :math:`z_t` detached in :math:`L_s` and :math:`z_s` detached in :math:`L_t`.

    Returns :math:`L_s + L_t`. The paper updates the two networks in turn; with disjoint parameters and the
    detaches above, one backward gives each network the gradient of its own term at the same step.
    The teacher must be updatable (``teacher.requires_grad: True``).

    Ying Zhang, Tao Xiang, Timothy M. Hospedales, Huchuan Lu: `"Deep Mutual Learning"
    <https://arxiv.org/abs/1706.00384>`_ @ CVPR 2018 (2018)

    Defaults: ``temperature=1``, ``alpha=1`` (CE), ``beta=1`` (KL); ``teacher_alpha``/``teacher_beta`` default to
    the student's. Other arguments: see :class:`pesf_ext.losses.base.LogitPairLoss`. ``last_terms`` keys:
    'student_ce', 'student_kl', 'teacher_ce', 'teacher_kl'.

    .. code-block:: yaml

        criterion:
          key: 'DMLLoss'
          kwargs:
            student_module_path: '.'
            student_module_io: 'output'
            teacher_module_path: '.'
            teacher_module_io: 'output'
            temperature: 1.0
            alpha: 1.0
            beta: 1.0
    """
    def __init__(self, student_module_path, student_module_io, teacher_module_path, teacher_module_io,
                 temperature=1.0, alpha=1.0, beta=1.0, reduction='batchmean', teacher_alpha=None, teacher_beta=None,
                 logit_standardization=False, std='unbiased', eps=1e-7, target_correction=None):
        super().__init__(student_module_path, student_module_io, teacher_module_path, teacher_module_io,
                         temperature, alpha, beta, reduction, logit_standardization, std, eps, target_correction)
        self.teacher_alpha = check_weight('teacher_alpha', self.alpha if teacher_alpha is None else teacher_alpha)
        self.teacher_beta = check_weight('teacher_beta', self.beta if teacher_beta is None else teacher_beta)

    def forward(self, student_io_dict, teacher_io_dict, targets=None, *args, **kwargs):
        z_s, z_t = self.logits(student_io_dict, teacher_io_dict)
        return self.weighted_sum([
            ('student_ce', self.alpha, lambda: self.cross_entropy(z_s, targets)),
            ('student_kl', self.beta, lambda: self.kl(self.corrected(z_t.detach(), targets), z_s)),
            ('teacher_ce', self.teacher_alpha, lambda: self.cross_entropy(z_t, targets)),
            ('teacher_kl', self.teacher_beta, lambda: self.kl(self.corrected(z_s.detach(), targets), z_t)),
        ], reference=z_s)

    def extra_repr(self):
        return f'{super().extra_repr()}, teacher_alpha={self.teacher_alpha}, teacher_beta={self.teacher_beta}'


@register_mid_level_loss
class KDCLLoss(LogitPairLoss):
    """Online KD via Collaborative Learning for two networks, each distilled from a detached ensemble target.

    .. math:: L = \\sum_{n \\in \\{s, t\\}} \\alpha \\cdot CE(y, z_n)
              + \\beta \\cdot \\tau^2 KL(p^\\tau_{ens} \\| p^\\tau_n)

    Ensemble logits :math:`z_{ens}` (detached):

    - ``target='naive'``: :math:`(z_s + z_t) / 2`;
    - ``target='min_logit'`` (KDCL-MinLogit): :math:`z'_n = z_n - z_{n,y}` (each network's logits minus its
      ground-truth logit, per sample), then :math:`z_{ens} = \\min(z'_s, z'_t)` element-wise.

    With ``logit_standardization`` the ensemble and each network's logits are Z-scored before the temperature.
    The teacher must be updatable (``teacher.requires_grad: True``).

    Qiushan Guo, Xinjiang Wang, Yichao Wu, Zhipeng Yu, Ding Liang, Xiaolin Hu, Ping Luo: "Online Knowledge
    Distillation via Collaborative Learning" @ CVPR 2020 (2020)

    Other arguments: see :class:`pesf_ext.losses.base.LogitPairLoss`. ``last_terms`` keys: 'student_ce',
    'student_kl', 'teacher_ce', 'teacher_kl'.

    .. code-block:: yaml

        criterion:
          key: 'KDCLLoss'
          kwargs:
            student_module_path: '.'
            student_module_io: 'output'
            teacher_module_path: '.'
            teacher_module_io: 'output'
            temperature: 2.0
            alpha: 1.0
            beta: 1.0
            target: 'min_logit'
    """
    def __init__(self, student_module_path, student_module_io, teacher_module_path, teacher_module_io,
                 temperature, alpha=1.0, beta=1.0, reduction='batchmean', target='naive',
                 logit_standardization=False, std='unbiased', eps=1e-7, target_correction=None):
        super().__init__(student_module_path, student_module_io, teacher_module_path, teacher_module_io,
                         temperature, alpha, beta, reduction, logit_standardization, std, eps, target_correction)
        check_choice('target', target, KDCL_TARGET_CHOICES)
        self.target = target

    def ensemble_logits(self, z_s, z_t, targets):
        """Detached ensemble target logits (see the class docstring)."""
        z_s, z_t = z_s.detach(), z_t.detach()
        if self.target == 'naive':
            return (z_s + z_t) / 2
        if targets is None:
            raise ValueError("KDCLLoss(target='min_logit') needs targets")
        index = targets.view(-1, 1)
        return torch.minimum(z_s - z_s.gather(1, index), z_t - z_t.gather(1, index))

    def forward(self, student_io_dict, teacher_io_dict, targets=None, *args, **kwargs):
        z_s, z_t = self.logits(student_io_dict, teacher_io_dict)
        z_ens = self.ensemble_logits(z_s, z_t, targets)
        return self.weighted_sum([
            ('student_ce', self.alpha, lambda: self.cross_entropy(z_s, targets)),
            ('student_kl', self.beta, lambda: self.kl(self.corrected(z_ens, targets), z_s)),
            ('teacher_ce', self.alpha, lambda: self.cross_entropy(z_t, targets)),
            ('teacher_kl', self.beta, lambda: self.kl(self.corrected(z_ens, targets), z_t)),
        ], reference=z_s)

    def extra_repr(self):
        return f'{super().extra_repr()}, target={self.target!r}'
