"""Shared plumbing of the middle-level losses (argument checks, weights, logit and feature look-up)."""
import torch
from torch import nn

from .functional import (
    REDUCTION_CHOICES, LogitStandardization, check_choice, cross_entropy, is_regression, softened_kl, squared_error,
    swap_label_correction
)

TARGET_CORRECTION_CHOICES = (None, 'swap')


def check_weight(name, value):
    """Raises ValueError naming ``name`` unless ``value`` is a number >= 0."""
    if value is None or value < 0:
        raise ValueError(f'{name} must be a number >= 0, got {value!r}')
    return value


def linear_warmup(epoch, warmup_epochs, who):
    """Warm-up factor :math:`w(e) = \\min(e / E_{warm}, 1)` (DKD's ramp; 1 when ``warmup_epochs`` = 0). ``epoch`` is
    the 1-based epoch a pre-epoch process gave to ``set_epoch``; None raises a RuntimeError naming ``who``."""
    if warmup_epochs == 0:
        return 1.0
    if epoch is None:
        raise RuntimeError(f'{who} needs set_epoch(epoch) before its first forward (a pre-epoch process calls it)')
    return min(epoch / warmup_epochs, 1.0)


def extract_logits(io_dict, module_path, module_io):
    """``io_dict[module_path][module_io]``; a Hugging Face ``ModelOutput`` gives its ``.logits``."""
    value = io_dict[module_path][module_io]
    if not isinstance(value, torch.Tensor) and hasattr(value, 'logits'):
        value = value.logits
    return value


class FeaturePairLoss(nn.Module):
    """Base class of the losses computed from one student and one teacher tensor that torchdistill's forward hooks
    recorded: ``io_dict[module_path][module_io]`` on each side (``module_io``: 'input' or 'output')."""
    def __init__(self, student_module_path, teacher_module_path, student_module_io='output',
                 teacher_module_io='output'):
        super().__init__()
        self.student_module_path, self.student_module_io = student_module_path, student_module_io
        self.teacher_module_path, self.teacher_module_io = teacher_module_path, teacher_module_io

    def feature_pair(self, student_io_dict, teacher_io_dict):
        """(student tensor, teacher tensor) of this loss's module pair."""
        return (student_io_dict[self.student_module_path][self.student_module_io],
                teacher_io_dict[self.teacher_module_path][self.teacher_module_io])


class LogitPairLoss(nn.Module):
    """Base class of the losses computed from one student and one teacher logit tensor.

    Weight convention (torchdistill's, as in its ``KDLoss``): ``alpha`` weights the cross-entropy and ``beta``
    the tau^2-scaled KL. When ``beta`` is None it is ``1 - alpha``; when both are None, ``alpha = 0`` and
    ``beta = 1``. **The PESF-KD paper's alpha (KL weight) is torchdistill's ``beta`` here.**

    :param student_module_path: student model's logit module path (e.g. '.').
    :param student_module_io: 'input' or 'output' of that module.
    :param teacher_module_path: teacher model's logit module path.
    :param teacher_module_io: 'input' or 'output' of that module.
    :param temperature: tau > 0 softening both distributions.
    :param alpha: cross-entropy weight (>= 0).
    :param beta: KL weight (>= 0), default ``1 - alpha``.
    :param reduction: 'batchmean' (CE: 'mean'), 'sum', 'mean' or 'none' (per-sample losses).
    :param logit_standardization: Z-score the logits before the temperature (Sun et al., CVPR 2024).
    :param std: 'unbiased' or 'population' std of the Z-score.
    :param eps: added to the std of the Z-score.
    :param target_correction: None, or 'swap': the label correction of the PESF-KD authors' released code
        (:func:`~pesf_ext.losses.functional.swap_label_correction`) on the logits a KL term is held to, i.e. the
        teacher's for the student; in online methods each network's target. Needs class logits and targets.

    Each forward stores the unweighted term values (KL terms already tau^2-scaled) as detached tensors in
    ``self.last_terms`` for logging; terms whose weight is 0 are skipped and absent.

    Regression heads (one output per sample, GLUE STS-B) have no class distribution: there the CE term becomes
    the squared error to the label and the KL term the squared error to the other network's prediction
    (:func:`~pesf_ext.losses.functional.squared_error`; the temperature does not apply), so every method keeps
    its gradient routing. Logit standardization needs at least two classes and raises otherwise.
    """
    def __init__(self, student_module_path, student_module_io, teacher_module_path, teacher_module_io,
                 temperature, alpha=None, beta=None, reduction='batchmean',
                 logit_standardization=False, std='unbiased', eps=1e-7, target_correction=None):
        super().__init__()
        check_choice('target_correction', target_correction, TARGET_CORRECTION_CHOICES)
        if temperature is None or temperature <= 0:
            raise ValueError(f'temperature must be > 0, got {temperature!r}')
        check_choice('reduction', reduction, REDUCTION_CHOICES)
        if alpha is None and beta is None:
            alpha, beta = 0.0, 1.0
        elif alpha is None:
            alpha = 0.0
        check_weight('alpha', alpha)
        if beta is None:
            beta = 1 - alpha
        self.student_module_path = student_module_path
        self.student_module_io = student_module_io
        self.teacher_module_path = teacher_module_path
        self.teacher_module_io = teacher_module_io
        self.temperature = temperature
        self.alpha = alpha
        self.beta = check_weight('beta', beta)
        self.reduction = reduction
        standardization = LogitStandardization(std, eps)  # validates std and eps even when unused
        self.standardization = standardization if logit_standardization else None
        self.target_correction = target_correction
        self.last_terms = dict()

    def logits(self, student_io_dict, teacher_io_dict):
        """Returns ``(z_s, z_t)`` from the io dicts filled by torchdistill's forward hooks."""
        return (extract_logits(student_io_dict, self.student_module_path, self.student_module_io),
                extract_logits(teacher_io_dict, self.teacher_module_path, self.teacher_module_io))

    def corrected(self, logits, targets):
        """``logits`` with this loss's ``target_correction`` applied (unchanged when it is None)."""
        if self.target_correction is None:
            return logits
        if targets is None or is_regression(logits):
            raise ValueError(f"{type(self).__name__}: target_correction='swap' needs class logits and targets")
        return swap_label_correction(logits, targets)

    def cross_entropy(self, logits, targets):
        """CE(y, z) with this loss's reduction; targets are required whenever a CE weight is > 0."""
        if targets is None:
            raise ValueError(f'{type(self).__name__} needs targets for its cross-entropy term(s)')
        if is_regression(logits):
            return squared_error(logits, targets, self.reduction)
        return cross_entropy(logits, targets, self.reduction)

    def kl(self, target_logits, input_logits):
        """tau^2 KL(p_target || p_input) with this loss's temperature, reduction and standardization; for a
        regression head, the squared error of the input's prediction to the target's."""
        if is_regression(input_logits):
            if self.standardization is not None:
                raise ValueError(f'{type(self).__name__}: logit standardization needs at least two classes; a '
                                 'regression head (one output) has no logit vector to standardize')
            return squared_error(input_logits, target_logits, self.reduction)
        return softened_kl(target_logits, input_logits, self.temperature, self.reduction, self.standardization)

    def weighted_sum(self, weighted_terms, reference):
        """``sum_i w_i * term_i()`` over (name, weight, thunk) triples, skipping ``w_i == 0``; fills ``last_terms``.

        ``reference`` (any input tensor) gives device and dtype of the zero returned when every weight is 0.
        """
        self.last_terms = dict()
        total = reference.new_zeros(())
        for name, weight, compute in weighted_terms:
            if weight == 0:
                continue
            value = compute()
            self.last_terms[name] = value.detach()
            total = total + weight * value
        return total

    def extra_repr(self):
        return (f'temperature={self.temperature}, alpha={self.alpha}, beta={self.beta}, '
                f'reduction={self.reduction!r}, standardization={self.standardization}, '
                f'target_correction={self.target_correction!r}')
