"""Decoupled KD: target-class and non-target-class KD weighted separately."""
import torch
from torchdistill.losses.registry import register_mid_level_loss

from .base import LogitPairLoss, check_weight, linear_warmup
from .functional import kl_divergence, soften


def binary_log_probs(log_probs, target_index):
    """Log of (p_gt, 1 - p_gt) per sample, shape (N, 2); 1 - p_gt as a log-sum-exp of the non-target classes.
    ``target_index``: the ground-truth class of each sample, shape (N, 1). Gather/scatter keep every shape fixed
    (no data-dependent ``masked_select``, which makes a GPU wait for the host)."""
    target_log_prob = log_probs.gather(1, target_index)
    non_target_log_prob = log_probs.scatter(1, target_index, float('-inf')).logsumexp(dim=1, keepdim=True)
    return torch.cat([target_log_prob, non_target_log_prob], dim=1)


def non_target_columns(target_index, num_classes):
    """Indices of the K - 1 non-target classes of each sample in increasing order, shape (N, K - 1)."""
    columns = torch.arange(num_classes - 1, device=target_index.device).expand(target_index.shape[0], -1)
    return columns + (columns >= target_index).long()


def non_target_log_probs(softened_logits, target_index):
    """Log-softmax over the K - 1 non-target classes (the ground-truth column removed), shape (N, K - 1)."""
    columns = non_target_columns(target_index, softened_logits.shape[1])
    return softened_logits.gather(1, columns).log_softmax(dim=1)


@register_mid_level_loss
class DKDLoss(LogitPairLoss):
    """Decoupled Knowledge Distillation, teacher detached.

    .. math:: L = w_{CE} \\cdot CE(y, z_s) + w(e) \\cdot (\\alpha \\cdot TCKD + \\beta \\cdot NCKD)

    - TCKD = :math:`\\tau^2 KL(b^\\tau_t \\| b^\\tau_s)`, :math:`b = (p_{gt}, 1 - p_{gt})` the binary
      target / non-target distribution of :math:`\\mathrm{softmax}(z/\\tau)`;
    - NCKD = :math:`\\tau^2 KL(\\hat{p}^\\tau_t \\| \\hat{p}^\\tau_s)`, :math:`\\hat{p}` the softmax over the
      non-target classes only. The ground-truth column is removed (exact renormalisation); the authors' code
      subtracts 1000 from it instead, which is the same up to float underflow;
    - warm-up :math:`w(e) = \\min(e / E_{warm}, 1)` when ``warmup_epochs`` :math:`E_{warm} > 0`, else 1. The
      epoch :math:`e` is given by :meth:`set_epoch` (the authors count epochs from 1, so :math:`w = 1/E_{warm}`
      in the first epoch); with ``warmup_epochs > 0`` forward raises until ``set_epoch`` was called.

    Both KLs use 'batchmean'. ``logit_standardization`` Z-scores the logits before the temperature (Sun et al.,
    CVPR 2024, used with DKD in their experiments).

    Borui Zhao, Quan Cui, Renjie Song, Yiyu Qiu, Jiajun Liang: `"Decoupled Knowledge Distillation"
    <https://arxiv.org/abs/2203.08679>`_ @ CVPR 2022 (2022)

    ``alpha`` / ``beta`` here weight TCKD / NCKD (as in the paper), not CE / KL; ``ce_weight`` weights the CE.
    ``last_terms`` keys: 'student_ce', 'tckd', 'nckd' (unweighted; the warm-up factor is not included).

    .. code-block:: yaml

        criterion:
          key: 'DKDLoss'
          kwargs:
            student_module_path: '.'
            student_module_io: 'output'
            teacher_module_path: '.'
            teacher_module_io: 'output'
            ce_weight: 1.0
            alpha: 1.0
            beta: 8.0
            temperature: 4.0
            warmup_epochs: 20
    """
    def __init__(self, student_module_path, student_module_io, teacher_module_path, teacher_module_io,
                 ce_weight=1.0, alpha=1.0, beta=8.0, temperature=4.0, warmup_epochs=0,
                 logit_standardization=False, std='unbiased', eps=1e-7, target_correction=None):
        super().__init__(student_module_path, student_module_io, teacher_module_path, teacher_module_io,
                         temperature, alpha, beta, 'batchmean', logit_standardization, std, eps, target_correction)
        self.ce_weight = check_weight('ce_weight', ce_weight)
        self.warmup_epochs = check_weight('warmup_epochs', warmup_epochs)
        self.epoch = None

    def set_epoch(self, epoch):
        """Sets the epoch :math:`e` of the warm-up factor (called by a pre-epoch process)."""
        self.epoch = epoch

    def warmup_factor(self):
        return linear_warmup(self.epoch, self.warmup_epochs, 'DKDLoss with warmup_epochs > 0')

    def forward(self, student_io_dict, teacher_io_dict, targets=None, *args, **kwargs):
        z_s, z_t = self.logits(student_io_dict, teacher_io_dict)
        if targets is None:
            raise ValueError('DKDLoss needs targets')
        kd_factor = self.warmup_factor()
        target_index = targets.view(-1, 1)
        soft_s = soften(z_s, self.temperature, self.standardization)
        soft_t = soften(self.corrected(z_t.detach(), targets), self.temperature, self.standardization)
        tau2 = self.temperature ** 2
        return self.weighted_sum([
            ('student_ce', self.ce_weight, lambda: self.cross_entropy(z_s, targets)),
            ('tckd', kd_factor * self.alpha, lambda: tau2 * kl_divergence(
                binary_log_probs(soft_t.log_softmax(dim=1), target_index),
                binary_log_probs(soft_s.log_softmax(dim=1), target_index))),
            ('nckd', kd_factor * self.beta, lambda: tau2 * kl_divergence(
                non_target_log_probs(soft_t, target_index), non_target_log_probs(soft_s, target_index))),
        ], reference=z_s)

    def extra_repr(self):
        return f'{super().extra_repr()}, ce_weight={self.ce_weight}, warmup_epochs={self.warmup_epochs}'
