"""Vanilla KD on any logit pair: classification (softened KL) and regression heads (squared error)."""
from torchdistill.losses.registry import register_mid_level_loss

from .base import LogitPairLoss


@register_mid_level_loss
class LogitKDLoss(LogitPairLoss):
    """Knowledge distillation (Hinton et al., 2014) with the teacher detached.

    .. math:: L = \\alpha \\cdot CE(y, z_s) + \\beta \\cdot \\tau^2 KL(p^\\tau_t \\| p^\\tau_s)

    For a classification head this equals torchdistill's ``KDLoss`` whenever both weights are used; it also
    reads Hugging Face outputs (``.logits`` of module path '.'), takes ``logit_standardization`` (Z-score KD),
    and distils a regression head (GLUE STS-B) as the BERT-KD literature does:
    :math:`\\alpha (\\hat{y}_s - y)^2 + \\beta (\\hat{y}_s - \\hat{y}_t)^2` (mean over the batch; TinyBERT,
    torchdistill's STS-B KD config). The PESF-KD authors' NLP code uses the MSE of the softened probabilities,
    which is identically 0 for a one-output head, so it gives no distillation signal on STS-B.

    Geoffrey Hinton, Oriol Vinyals, Jeff Dean: `"Distilling the Knowledge in a Neural Network"
    <https://arxiv.org/abs/1503.02531>`_ @ NIPS 2014 Deep Learning Workshop

    Arguments: see :class:`pesf_ext.losses.base.LogitPairLoss` (``alpha``: CE weight, ``beta``: KL weight).
    ``last_terms`` keys: 'student_ce', 'student_kl'.

    .. code-block:: yaml

        criterion:
          key: 'LogitKDLoss'
          kwargs:
            student_module_path: '.'
            student_module_io: 'output'
            teacher_module_path: '.'
            teacher_module_io: 'output'
            temperature: 4.0
            alpha: 0.5
            beta: 0.5
    """
    def forward(self, student_io_dict, teacher_io_dict, targets=None, *args, **kwargs):
        z_s, z_t = self.logits(student_io_dict, teacher_io_dict)
        return self.weighted_sum([
            ('student_ce', self.alpha, lambda: self.cross_entropy(z_s, targets)),
            ('student_kl', self.beta, lambda: self.kl(self.corrected(z_t.detach(), targets), z_s)),
        ], reference=z_s)
