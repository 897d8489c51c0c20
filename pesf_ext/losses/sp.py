"""Similarity-preserving KD (Tung & Mori, ICCV 2019) with the paper's L2 row normalisation."""
from torch.nn import functional as F
from torchdistill.losses.registry import register_mid_level_loss

from .base import FeaturePairLoss
from .functional import float32_matmul


def similarity_matrix(features):
    """:math:`\\tilde{G} = \\mathrm{rownorm}_2(Q Q^\\top)`, Q the (N, ·) flattened features (SP eq. 1–2); the
    product in float32 (under fp16 autocast a layer3 Gram entry overflows)."""
    flat = features.flatten(1)
    return F.normalize(float32_matmul(flat, flat.t()), p=2, dim=1)


@register_mid_level_loss
class SimilarityPreservingLoss(FeaturePairLoss):
    """:math:`L_{SP} = \\frac{1}{N^2} \\| \\tilde{G}_s - \\tilde{G}_t \\|_F^2` (Tung & Mori, eq. 3, one layer pair).

    torchdistill's ``SPKDLoss`` calls ``normalize(G, 1)``, whose second positional argument is the norm's order,
    so it normalises the rows by their L1 norm; the paper and RepDistiller use L2, as here.

    Frederick Tung, Greg Mori: `"Similarity-Preserving Knowledge Distillation"
    <https://arxiv.org/abs/1907.09682>`_ @ ICCV 2019.
    """
    def forward(self, student_io_dict, teacher_io_dict, *args, **kwargs):
        f_s, f_t = self.feature_pair(student_io_dict, teacher_io_dict)
        return ((similarity_matrix(f_s) - similarity_matrix(f_t.detach())) ** 2).sum() / f_s.shape[0] ** 2
