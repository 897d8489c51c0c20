"""Flow of solution procedure (Yim et al., CVPR 2017) as RepDistiller computes it."""
from torch import nn
from torch.nn import functional as F
from torchdistill.losses.registry import register_mid_level_loss

from .functional import float32_matmul


def fsp_matrix(bottom, top):
    """:math:`G_{ij} = \\frac{1}{HW} \\sum_{hw} top_{i,hw} \\, bottom_{j,hw}` per sample, (N, C_top, C_bottom); the
    larger map is average-pooled to the smaller one's size first (RepDistiller). The product is computed in float32:
    under fp16 autocast its sums over H·W overflow 65,504."""
    size = min(bottom.shape[2], top.shape[2])
    bottom, top = (f if f.shape[2] == size else F.adaptive_avg_pool2d(f, (size, size)) for f in (bottom, top))
    return float32_matmul(top.flatten(2), bottom.flatten(2).transpose(1, 2)) / bottom.shape[2] / bottom.shape[3]


@register_mid_level_loss
class FSPMatrixLoss(nn.Module):
    """:math:`L_{FSP} = \\sum_k \\mathrm{mean}_{n,i,j} (G^s_k - G^t_k)^2`, G_k the FSP matrix of the consecutive
    feature maps k and k+1 of ``student_paths`` / ``teacher_paths`` (RepDistiller: the stem output and every stage
    output). The paper's eq. 2 is the same up to a constant (λ_i equal, squared L2 over the matrix, / N).

    torchdistill's ``FSPLoss`` pairs a block's input with its output, max-pools to match sizes and sums the
    (unsquared) L2 norms of the matrix columns; RepDistiller's form (here) is the one behind the CRD / PESF-KD tables.

    Junho Yim, Donggyu Joo, Jihoon Bae, Junmo Kim: `"A Gift from Knowledge Distillation: Fast Optimization, Network
    Minimization and Transfer Learning" <https://openaccess.thecvf.com/content_cvpr_2017/html/Yim_A_Gift_From_CVPR_2017_paper.html>`_
    @ CVPR 2017.
    """
    def __init__(self, student_paths, teacher_paths, io='output'):
        super().__init__()
        if not isinstance(student_paths, list) or not isinstance(teacher_paths, list) or len(student_paths) < 2 \
                or len(student_paths) != len(teacher_paths):
            raise ValueError('FSPMatrixLoss: student_paths and teacher_paths must be lists of the same length >= 2, '
                             f'got {student_paths!r} and {teacher_paths!r}')
        self.student_paths, self.teacher_paths, self.io = student_paths, teacher_paths, io

    def forward(self, student_io_dict, teacher_io_dict, *args, **kwargs):
        g_s = [student_io_dict[p][self.io] for p in self.student_paths]
        g_t = [teacher_io_dict[p][self.io] for p in self.teacher_paths]
        loss = 0
        for k in range(len(g_s) - 1):
            s, t = fsp_matrix(g_s[k], g_s[k + 1]), fsp_matrix(g_t[k], g_t[k + 1])
            if s.shape != t.shape:
                raise ValueError(f'FSPMatrixLoss: FSP matrices of pair {k + 1} differ in shape, student '
                                 f'{tuple(s.shape)} vs teacher {tuple(t.shape)}: FSP needs equal channels at every path')
            loss = loss + (s - t).pow(2).mean()
        return loss
