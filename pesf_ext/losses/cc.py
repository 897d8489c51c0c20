"""Correlation congruence (Peng et al., ICCV 2019) as RepDistiller computes it."""
from torchdistill.losses.registry import register_mid_level_loss

from .base import FeaturePairLoss
from .functional import at_least_float32


@register_mid_level_loss
class CorrelationCongruenceLoss(FeaturePairLoss):
    """RepDistiller's ``Correlation``: with :math:`\\Delta_i = |e^s_i - e^t_i|` the absolute difference of sample
    i's student and teacher embeddings (linear maps of the pooled penultimate features, both trained),

    :math:`L_{CC} = \\frac{1}{N-1} \\sum_{i=1}^{N-1} \\langle \\Delta_i, \\Delta_{i+1} \\rangle`,

    the products of consecutive samples' differences in batch order. This is not the paper's eq. (kernel correlation
    matrices C_s, C_t over the batch and ||C_s - C_t||²: torchdistill's ``CCKDLoss``); RepDistiller's numbers, which
    the CRD and PESF-KD tables report, come from this form ("code emailed to me by the original author").

    Baoyun Peng, Xiao Jin, Jiaheng Liu, Shunfeng Zhou, Yichao Wu, Yu Liu, Dongsheng Li, Zhaoning Zhang:
    `"Correlation Congruence for Knowledge Distillation" <https://arxiv.org/abs/1904.01802>`_ @ ICCV 2019.
    """
    def forward(self, student_io_dict, teacher_io_dict, *args, **kwargs):
        e_s, e_t = self.feature_pair(student_io_dict, teacher_io_dict)
        if e_s.shape[0] < 2:
            raise ValueError(f'CorrelationCongruenceLoss needs at least 2 samples per batch, got {e_s.shape[0]}')
        delta = at_least_float32((e_s - e_t).abs().flatten(1))   # float32: fp16 sums of products overflow
        return (delta[:-1] * delta[1:]).sum(1).mean()
