"""Factor transfer (Kim et al., NeurIPS 2018), stage 2, as RepDistiller computes it."""
from torch.nn import functional as F
from torchdistill.losses.registry import register_mid_level_loss

from .base import FeaturePairLoss


def factor_map(factor, p):
    """RepDistiller's ``FactorTransfer.factor``: :math:`\\mathrm{norm}_2(\\mathrm{mean}_c(F^{p}))`, one (H·W) map per
    sample, L2-normalised."""
    return F.normalize(factor.pow(p).mean(1).flatten(1), dim=1)


@register_mid_level_loss
class FactorTransferLoss(FeaturePairLoss):
    """:math:`L_{FT} = \\mathrm{mean}_{n,hw} | \\phi(F_s) - \\phi(F_t) |^{q}` with :math:`\\phi` = :func:`factor_map`
    (``p`` = 2, ``q`` = 1 in RepDistiller), F_s the student translator's output and F_t the teacher paraphraser's
    factor (encoder output), the larger map average-pooled to the smaller one's size.

    The paper's loss (eq. 3, torchdistill's ``FTLoss``) normalises the whole flattened factor C·H·W instead of a
    channel-pooled squared map; RepDistiller's form (here) is the one behind the CRD / PESF-KD tables.

    Jangho Kim, SeongUk Park, Nojun Kwak: `"Paraphrasing Complex Network: Network Compression via Factor Transfer"
    <https://arxiv.org/abs/1802.04977>`_ @ NeurIPS 2018.
    """
    def __init__(self, student_module_path='translator', teacher_module_path='paraphraser', p=2, q=1,
                 student_module_io='output', teacher_module_io='output'):
        super().__init__(student_module_path, teacher_module_path, student_module_io, teacher_module_io)
        for name, value in (('p', p), ('q', q)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f'FactorTransferLoss: {name} must be an integer >= 1, got {value!r}')
        self.p, self.q = p, q

    def forward(self, student_io_dict, teacher_io_dict, *args, **kwargs):
        f_s, f_t = self.feature_pair(student_io_dict, teacher_io_dict)
        size = min(f_s.shape[2], f_t.shape[2])
        f_s, f_t = (f if f.shape[2] == size else F.adaptive_avg_pool2d(f, (size, size)) for f in (f_s, f_t))
        diff = factor_map(f_s, self.p) - factor_map(f_t, self.p)
        return diff.abs().mean() if self.q == 1 else diff.pow(self.q).mean()
