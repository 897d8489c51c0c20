"""MLKD: multi-level logit distillation (instance, batch and class level) over several temperatures, on a weak and
a strong view of each image.

Ying Jin, Jiaqi Wang, Dahua Lin: `"Multi-Level Logit Distillation" <https://openaccess.thecvf.com/content/CVPR2023/
html/Jin_Multi-Level_Logit_Distillation_CVPR_2023_paper.html>`_ @ CVPR 2023. The reference is the code the Z-score
authors ship (sunshangquan/logit-standardization-KD ``mdistiller/distillers/MLKD.py``); :class:`MLKDLoss` computes
what it computes, including three things that look unintended there (also listed in docs/baselines.md):

* the confidence masks multiply a loss already averaged over the batch, so they scale it by the masked fraction
  (about 1/2) instead of selecting samples;
* of the strong view's five KD terms, the last two (temperatures 2 and 6) are evaluated on the weak view
  (``strong_view_temperatures: 5`` evaluates all five on the strong view);
* the class- and batch-level terms of the strong view are computed there but not added to the loss.
"""
import torch
from torch.nn import functional as F
from torchdistill.core.interfaces.registry import register_forward_proc_func
from torchdistill.losses.registry import register_mid_level_loss

from .base import LogitPairLoss, check_weight
from .functional import at_least_float32, float32_matmul, softened_kl


@register_forward_proc_func
def forward_two_views(model, sample_batch, targets=None, supp_dict=None, **kwargs):
    """Forward proc for (N, 2, ...) batches of :class:`pesf_ext.data.TwoViews`: one forward per view (BatchNorm sees
    each view's batch alone, as MLKD's code), outputs concatenated to (2N, K): the weak view's rows first."""
    return torch.cat([model(sample_batch[:, 0]), model(sample_batch[:, 1])])


def softened_probabilities(logits, temperature):
    """softmax(z / T) in float32 (autocast off): the correlation terms below subtract two Gram matrices of these,
    whose small differences float16 / bfloat16 products and squares lose (measured: 2 % and 33 % off)."""
    with torch.autocast(logits.device.type, enabled=False):
        return F.softmax(at_least_float32(logits) / temperature, dim=1)


def class_correlation_loss(student_logits, teacher_logits, temperature):
    """MLKD's class-level term: :math:`\\|P_t^\\top P_t - P_s^\\top P_s\\|_F^2 / K`, P = softmax(z / T) (N × K),
    computed in float32."""
    p_s, p_t = softened_probabilities(student_logits, temperature), softened_probabilities(teacher_logits, temperature)
    gram = float32_matmul(p_t.t(), p_t) - float32_matmul(p_s.t(), p_s)
    return (gram ** 2).sum() / student_logits.shape[1]


def batch_correlation_loss(student_logits, teacher_logits, temperature):
    """MLKD's batch-level term: :math:`\\|P_t P_t^\\top - P_s P_s^\\top\\|_F^2 / N`, P = softmax(z / T) (N × K),
    computed in float32."""
    p_s, p_t = softened_probabilities(student_logits, temperature), softened_probabilities(teacher_logits, temperature)
    gram = float32_matmul(p_t, p_t.t()) - float32_matmul(p_s, p_s.t())
    return (gram ** 2).sum() / student_logits.shape[0]


def below_median_fraction(values):
    """Fraction of ``values`` at or below their median (numpy's linear-interpolation percentile 50, as the code)."""
    return (values <= torch.quantile(values, 0.5)).float().mean()


@register_mid_level_loss
class MLKDLoss(LogitPairLoss):
    """MLKD on (2N, K) logits of :func:`forward_two_views` (rows :math:`0..N-1` weak view w, then strong view s),
    temperatures :math:`\\mathcal{T}` = ``temperatures`` (reference: the base temperature, 3, 5, 2, 6):

    .. math::
        L = \\alpha [CE(y, z_s^w) + CE(y, z_s^s)]
          + \\beta \\, m \\sum_{T \\in \\mathcal{T}} KD_T(z_s^w, z_t^w)
          + \\beta \\sum_{T \\in \\mathcal{T}} KD_T(z_s^{v_T}, z_t^{v_T})
          + \\beta \\, c \\sum_{T} CC_T(z_s^w, z_t^w) + \\beta \\, m \\sum_{T} BC_T(z_s^w, z_t^w)

    :math:`KD_T = T^2 KL(p^T_t \\| p^T_s)` (batch mean; Z-scored logits with ``logit_standardization``), CC / BC the
    class / batch correlation terms (:func:`class_correlation_loss`, :func:`batch_correlation_loss`, never
    standardized), :math:`v_T` the strong view for the first ``strong_view_temperatures`` temperatures and the weak
    view after them, m the fraction of samples whose teacher confidence (max softmax of the weak view) is at or
    below the batch median, c the same fraction over the classes' summed probabilities. The teacher is detached.
    ``alpha``: CE weight, ``beta``: KD weight (Z-score repository defaults 1 and 9). ``last_terms`` keys:
    'student_ce', 'kd_weak', 'kd_strong', 'cc', 'bc'.
    """
    def __init__(self, student_module_path, student_module_io, teacher_module_path, teacher_module_io,
                 temperature=4.0, extra_temperatures=(3.0, 5.0, 2.0, 6.0), strong_view_temperatures=3, alpha=1.0,
                 beta=9.0, logit_standardization=False, std='unbiased', eps=1e-7):
        super().__init__(student_module_path, student_module_io, teacher_module_path, teacher_module_io,
                         temperature, alpha, beta, 'batchmean', logit_standardization, std, eps)
        self.temperatures = (float(temperature), *(float(t) for t in extra_temperatures))
        if any(t <= 0 for t in self.temperatures):
            raise ValueError(f'every temperature must be > 0, got {self.temperatures}')
        if not 0 <= strong_view_temperatures <= len(self.temperatures):
            raise ValueError(f'strong_view_temperatures must be in [0, {len(self.temperatures)}], got '
                             f'{strong_view_temperatures!r}')
        self.strong_view_temperatures = check_weight('strong_view_temperatures', strong_view_temperatures)

    def kd(self, z_s, z_t, temperature):
        return softened_kl(z_t, z_s, temperature, 'batchmean', self.standardization)

    def forward(self, student_io_dict, teacher_io_dict, targets=None, *args, **kwargs):
        z_s, z_t = self.logits(student_io_dict, teacher_io_dict)
        if z_s.shape[0] % 2 != 0 or z_s.shape[0] != z_t.shape[0]:
            raise ValueError(f'MLKDLoss needs the two views of forward_two_views: (2N, K) logits of both models, got '
                             f'{tuple(z_s.shape)} and {tuple(z_t.shape)}')
        s_weak, s_strong = z_s.chunk(2)
        t_weak, t_strong = z_t.detach().chunk(2)
        probs = softened_probabilities(t_weak, 1.0)   # float32: fp16 ties near 1 move the median masks
        sample_fraction = below_median_fraction(probs.max(dim=1).values)
        class_fraction = below_median_fraction(probs.sum(dim=0))
        temps = self.temperatures
        views = [(s_strong, t_strong) if i < self.strong_view_temperatures else (s_weak, t_weak)
                 for i in range(len(temps))]
        return self.weighted_sum([
            ('student_ce', self.alpha, lambda: self.cross_entropy(s_weak, targets) + self.cross_entropy(s_strong,
                                                                                                          targets)),
            ('kd_weak', self.beta, lambda: sample_fraction * sum(self.kd(s_weak, t_weak, t) for t in temps)),
            ('kd_strong', self.beta, lambda: sum(self.kd(s, t, temp) for (s, t), temp in zip(views, temps))),
            ('cc', self.beta, lambda: class_fraction * sum(class_correlation_loss(s_weak, t_weak, t) for t in temps)),
            ('bc', self.beta, lambda: sample_fraction * sum(batch_correlation_loss(s_weak, t_weak, t) for t in temps)),
        ], reference=z_s)

    def extra_repr(self):
        return (f'{super().extra_repr()}, temperatures={self.temperatures}, '
                f'strong_view_temperatures={self.strong_view_temperatures}')
