"""CTKD: curriculum temperature for KD, a temperature learned adversarially through gradient reversal.

Zheng Li, Xiang Li, Lingfeng Yang, Borui Zhao, Renjie Song, Lei Luo, Jun Li, Jian Yang: `"Curriculum Temperature
for Knowledge Distillation" <https://arxiv.org/abs/2211.16231>`_ @ AAAI 2023. Facts from the CTKD code that the
Z-score authors ship (sunshangquan/logit-standardization-KD, ``CTKD/``): a global temperature parameter (init 1),
:math:`\\tau = \\tau_{start} + \\tau_{range} \\cdot \\sigma(GRL_\\lambda(t))` with 1 and 20, the reversal weight
:math:`\\lambda_e` following a cosine from 0 to -1 over the first 10 epochs, the parameter in the student's SGD.

The temperature parameter is a model parameter, so it lives in a student-side torchdistill auxiliary wrapper
(:class:`CurriculumTemperature`, its ``temperature`` module is hooked) and trains in the student's optimizer, as
torchdistill does for every loss with parameters (VID, CRD); :class:`CTKDLoss` reads it from the student's I/O dict.
"""
import math

import torch
from torch import nn
from torchdistill.losses.registry import register_mid_level_loss
from torchdistill.models.registry import register_auxiliary_model_wrapper
from torchdistill.models.wrapper import AuxiliaryModelWrapper

from .base import LogitPairLoss
from .functional import softened_kl


class GradientReversal(torch.autograd.Function):
    """Identity forward; backward multiplies the incoming gradient by ``weight`` (Ganin & Lempitsky, 2015).

    CTKD passes a weight :math:`\\lambda \\le 0`, so the temperature climbs the distillation loss the student descends.
    """
    @staticmethod
    def forward(ctx, x, weight):
        ctx.weight = weight
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return ctx.weight * grad, None


def cosine_curriculum(epoch, start=0.0, end=-1.0, num_epochs=10):
    """CTKD's reversal weight at ``epoch`` (1-based, as the authors count):

    .. math:: \\lambda_e = end + (start - end) \\cdot \\frac{1 + \\cos(\\pi \\min(e, E) / E)}{2}

    ``start`` at epoch 0, ``end`` from epoch ``num_epochs`` = E on.
    """
    if num_epochs <= 0:
        raise ValueError(f'num_epochs must be > 0, got {num_epochs}')
    progress = min(max(epoch, 0), num_epochs) / num_epochs
    return end + (start - end) * (1.0 + math.cos(math.pi * progress)) / 2.0


class GlobalTemperature(nn.Module):
    """:math:`\\tau = \\tau_{start} + \\tau_{range} \\cdot \\sigma(GRL_\\lambda(t))`, one learnable scalar t.

    Its forward ignores its input (it is called on the student's output so torchdistill's hook can record it) and
    returns a (1,) tensor. ``reversal_weight`` is :math:`\\lambda`, set each epoch by :meth:`set_epoch`.
    """
    def __init__(self, init=1.0, t_start=1.0, t_range=20.0, curriculum_start=0.0, curriculum_end=-1.0,
                 curriculum_epochs=10):
        super().__init__()
        if t_start <= 0 or t_range < 0:
            raise ValueError(f't_start must be > 0 and t_range >= 0, got {t_start} and {t_range}')
        self.param = nn.Parameter(torch.tensor([float(init)]))
        self.t_start, self.t_range = t_start, t_range
        self.curriculum = (curriculum_start, curriculum_end, curriculum_epochs)
        cosine_curriculum(0, *self.curriculum)      # validates curriculum_epochs
        self.reversal_weight = curriculum_start

    def set_epoch(self, epoch):
        self.reversal_weight = cosine_curriculum(epoch, *self.curriculum)

    def forward(self, *args, **kwargs):
        return self.t_start + self.t_range * torch.sigmoid(GradientReversal.apply(self.param, self.reversal_weight))

    def extra_repr(self):
        return f't_start={self.t_start}, t_range={self.t_range}, curriculum={self.curriculum}'


@register_auxiliary_model_wrapper
class CurriculumTemperature(AuxiliaryModelWrapper):
    """Student wrapper holding CTKD's learnable temperature: ``model`` is the student, ``temperature`` a
    :class:`GlobalTemperature` evaluated after each forward (hook ``temperature``'s output for :class:`CTKDLoss`).

    .. code-block:: yaml

        student:
          auxiliary_model_wrapper:
            key: 'CurriculumTemperature'
            kwargs: {init: 1.0, t_start: 1.0, t_range: 20.0, curriculum_epochs: 10}
          forward_hook:
            output: ['temperature']
    """
    def __init__(self, student_model, device, device_ids=None, distributed=False, **temperature_kwargs):
        super().__init__()
        self.model = student_model
        self.temperature = GlobalTemperature(**temperature_kwargs)
        self.to(device)

    def forward(self, *args, **kwargs):
        output = self.model(*args, **kwargs)
        self.temperature(output)
        return output


@register_mid_level_loss
class CTKDLoss(LogitPairLoss):
    """KD at CTKD's learned temperature :math:`\\tau` (a tensor that carries the reversed gradient):

    .. math:: L = \\alpha \\cdot CE(y, z_s) + \\beta \\cdot \\tau^2 KL(p^\\tau_t \\| p^\\tau_s)

    The student descends L; the temperature, through the gradient reversal, ascends it once the curriculum weight
    is below 0. ``logit_standardization: True`` is the Z-score authors' CTKD (their ``DistillKL`` Z-scores both
    logits, unbiased std). ``temperature_module_path`` / ``io``: where the student's I/O dict holds :math:`\\tau`.
    Other arguments: :class:`pesf_ext.losses.base.LogitPairLoss` (``temperature`` is not one: it is learned).
    ``last_terms`` keys: 'student_ce', 'student_kl', 'temperature'.
    """
    def __init__(self, student_module_path, student_module_io, teacher_module_path, teacher_module_io,
                 temperature_module_path='temperature', temperature_module_io='output', alpha=None, beta=None,
                 reduction='batchmean', logit_standardization=False, std='unbiased', eps=1e-7,
                 target_correction=None):
        super().__init__(student_module_path, student_module_io, teacher_module_path, teacher_module_io, 1.0,
                         alpha, beta, reduction, logit_standardization, std, eps, target_correction)
        self.temperature_module_path = temperature_module_path
        self.temperature_module_io = temperature_module_io

    def forward(self, student_io_dict, teacher_io_dict, targets=None, *args, **kwargs):
        z_s, z_t = self.logits(student_io_dict, teacher_io_dict)
        tau = student_io_dict[self.temperature_module_path][self.temperature_module_io]
        value = self.weighted_sum([
            ('student_ce', self.alpha, lambda: self.cross_entropy(z_s, targets)),
            ('student_kl', self.beta, lambda: softened_kl(self.corrected(z_t.detach(), targets), z_s, tau,
                                                          self.reduction, self.standardization).squeeze()),
        ], reference=z_s)
        self.last_terms['temperature'] = tau.detach().squeeze()
        return value

    def extra_repr(self):
        return f'{super().extra_repr()}, temperature_module_path={self.temperature_module_path!r}'
