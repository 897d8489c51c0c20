"""DIST: KD by the correlation of predictions (Huang et al., NeurIPS 2022), with the Z-score switch."""
from torchdistill.losses.registry import register_mid_level_loss

from .base import LogitPairLoss, check_weight
from .functional import soften


def pearson_distance(a, b, eps=1e-8):
    """:math:`1 - \\frac{1}{R} \\sum_r \\rho(a_r, b_r)`, the mean Pearson correlation of the rows of (R, C) tensors."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    rho = (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(eps)
    return 1 - rho.mean()


@register_mid_level_loss
class LogitDISTLoss(LogitPairLoss):
    """DIST with a CE term and optional logit standardization, teacher detached:

    .. math:: L = \\alpha \\cdot CE(y, z_s) + \\tau^2 [\\beta_{inter} (1 - \\bar\\rho_{rows}(P_s, P_t))
              + \\gamma_{intra} (1 - \\bar\\rho_{cols}(P_s, P_t))], \\quad P = \\mathrm{softmax}(z / \\tau)

    (rows: per sample over classes, inter-class relation; columns: per class over the batch, intra-class). With
    ``logit_standardization`` the logits are Z-scored before :math:`/\\tau`, the Z-score paper's plug-in applied to
    DIST. Without it and with ``alpha = 0`` this is torchdistill's ``DISTLoss``.

    Tao Huang, Shan You, Fei Wang, Chen Qian, Chang Xu: `"Knowledge Distillation from A Stronger Teacher"
    <https://arxiv.org/abs/2205.10536>`_ @ NeurIPS 2022. ``last_terms`` keys: 'student_ce', 'inter', 'intra'.
    """
    def __init__(self, student_module_path, student_module_io, teacher_module_path, teacher_module_io,
                 temperature=1.0, alpha=1.0, inter_weight=1.0, intra_weight=1.0, logit_standardization=False,
                 std='unbiased', eps=1e-7, target_correction=None):
        super().__init__(student_module_path, student_module_io, teacher_module_path, teacher_module_io,
                         temperature, alpha, 1.0, 'batchmean', logit_standardization, std, eps, target_correction)
        self.inter_weight = check_weight('inter_weight', inter_weight)
        self.intra_weight = check_weight('intra_weight', intra_weight)

    def forward(self, student_io_dict, teacher_io_dict, targets=None, *args, **kwargs):
        z_s, z_t = self.logits(student_io_dict, teacher_io_dict)
        p_s = soften(z_s, self.temperature, self.standardization).softmax(dim=1)
        p_t = soften(self.corrected(z_t.detach(), targets), self.temperature, self.standardization).softmax(dim=1)
        tau2 = self.temperature ** 2
        return self.weighted_sum([
            ('student_ce', self.alpha, lambda: self.cross_entropy(z_s, targets)),
            ('inter', self.inter_weight, lambda: tau2 * pearson_distance(p_s, p_t)),
            ('intra', self.intra_weight, lambda: tau2 * pearson_distance(p_s.t(), p_t.t())),
        ], reference=z_s)

    def extra_repr(self):
        return f'{super().extra_repr()}, inter_weight={self.inter_weight}, intra_weight={self.intra_weight}'
