"""Token-level distillation losses for causal language models (and any logit pair): one registered loss,
``TokenKDLoss``, with a switch for the divergence (forward KL, reverse KL, generalized JSD, skew KL, total variation,
TAID) and one for what happens on the teacher side (frozen, PESF-KD adapters, FT-KD). The math is in
:mod:`pesf_ext.losses.functional`."""
import torch
import torch.nn.functional as F
from torch import nn
from torchdistill.losses.registry import register_low_level_loss, register_mid_level_loss

from .base import LogitPairLoss, check_weight, extract_logits
from .functional import (
    check_choice, forward_kl, generalized_jsd, reverse_kl, skew_forward_kl, skew_reverse_kl, taid_kl, taid_next_t,
    total_variation
)

DIVERGENCE_CHOICES = ('forward_kl', 'reverse_kl', 'jsd', 'skew_forward_kl', 'skew_reverse_kl', 'tv', 'taid')
TEACHER_UPDATE_CHOICES = ('frozen', 'adapters', 'full')
IGNORE_INDEX = -100


class TAIDSchedule(nn.Module):
    """State of TAID's interpolation parameter t (Shing et al., ICLR 2025): buffers ``t``, ``momentum``,
    ``previous_loss`` and ``step`` (so they travel with the criterion's state in checkpoints and ``-resume``).

    :meth:`update` is :func:`~pesf_ext.losses.functional.taid_next_t` after each training step's loss, with
    ``progress = step / total_steps`` (steps done before this one, as the authors' Lightning ``global_step``); the
    first call only records the loss, as theirs does. ``adaptive=False`` follows the linear schedule only.
    """
    def __init__(self, t_start=0.4, t_end=1.0, rate=5e-4, momentum_decay=0.99, total_steps=None, adaptive=True):
        super().__init__()
        if not 0.0 <= t_start < 1.0 or not 0.0 < t_end <= 1.0 or t_start > t_end:
            raise ValueError(f'taid: need 0 <= t_start < 1, 0 < t_end <= 1 and t_start <= t_end, got t_start='
                             f'{t_start!r}, t_end={t_end!r}')
        if not 0.0 <= rate <= 1.0 or not 0.0 <= momentum_decay < 1.0:
            raise ValueError(f'taid: need rate in [0, 1] and momentum_decay in [0, 1), got {rate!r}, {momentum_decay!r}')
        if total_steps is not None and (not isinstance(total_steps, int) or total_steps < 1):
            raise ValueError(f'taid.total_steps: must be an integer >= 1 or null, got {total_steps!r}')
        self.t_start, self.t_end, self.rate, self.momentum_decay = t_start, t_end, rate, momentum_decay
        self.total_steps, self.adaptive = total_steps, adaptive
        self.register_buffer('t', torch.tensor(float(t_start), dtype=torch.float64))
        self.register_buffer('momentum', torch.zeros((), dtype=torch.float64))
        self.register_buffer('previous_loss', torch.tensor(float('inf'), dtype=torch.float64))
        self.register_buffer('step', torch.zeros((), dtype=torch.long))

    def value(self):
        return float(self.t)

    def update(self, loss):
        """Advances t after a training step whose distillation loss was ``loss`` (a float)."""
        if self.total_steps is None:
            raise RuntimeError('TokenKDLoss: taid.total_steps is not set (the causal-LM runner fills it from the '
                               'data; set it in the YAML otherwise)')
        progress = min(int(self.step) / self.total_steps, 1.0)
        if torch.isinf(self.previous_loss):
            pass
        elif self.adaptive:
            t, momentum = taid_next_t(float(self.t), float(self.momentum), float(self.previous_loss), loss, progress,
                                      self.t_start, self.t_end, self.rate, self.momentum_decay)
            self.t.fill_(t)
            self.momentum.fill_(momentum)
        else:
            self.t.fill_(self.t_start + (self.t_end - self.t_start) * progress)
        self.previous_loss.fill_(loss)
        self.step += 1

    def extra_repr(self):
        return (f't={float(self.t):.4f}, t_start={self.t_start}, t_end={self.t_end}, rate={self.rate}, '
                f'momentum_decay={self.momentum_decay}, total_steps={self.total_steps}, adaptive={self.adaptive}')


def align_for_causal_lm(student_logits, teacher_logits, targets, causal_shift=None, ignore_index=IGNORE_INDEX):
    """Returns ``(z_s, z_t, labels, mask)`` with position i of the logits predicting ``labels[i]``.

    Causal LM (``causal_shift`` True, or None with (B, T, V) logits): logits of positions 0..T-2 and labels 1..T-1
    (Hugging Face's shift), mask = labels != ``ignore_index`` (padding and prompt tokens out). Classification
    ((N, K) logits, (N,) targets): no shift, every position counts.
    """
    if student_logits.shape[-1] != teacher_logits.shape[-1]:
        raise ValueError(f'student and teacher logits have different vocabularies/classes ({student_logits.shape[-1]} '
                         f'vs {teacher_logits.shape[-1]}): teacher and student must share a tokenizer')
    causal = student_logits.dim() == 3 if causal_shift is None else causal_shift
    labels = targets
    if causal:
        student_logits, teacher_logits = student_logits[..., :-1, :], teacher_logits[..., :-1, :]
        labels = targets[..., 1:] if targets is not None else None
    mask = None
    if labels is not None and labels.shape == student_logits.shape[:-1] and not labels.is_floating_point():
        mask = labels != ignore_index
    return student_logits, teacher_logits, labels, mask


def token_cross_entropy(logits, labels, ignore_index=IGNORE_INDEX):
    """Next-token CE averaged over the tokens whose label is not ``ignore_index`` (0 when there are none)."""
    flat_labels = labels.reshape(-1)
    total = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), flat_labels, ignore_index=ignore_index,
                            reduction='sum')
    return total / (flat_labels != ignore_index).sum().clamp_min(1)


@register_low_level_loss
class NextTokenLoss(nn.Module):
    """The causal-LM loss of one network (training without a teacher, e.g. the offline teacher): next-token CE
    over the tokens whose label is not -100, logits and labels shifted by one position (Hugging Face's
    ``ForCausalLMLoss``, token-weighted). Pairs with torchdistill's ``SimpleLossWrapper`` on module path '.':

    .. code-block:: yaml

        lm:
          criterion: {key: 'NextTokenLoss', kwargs: {}}
          criterion_wrapper:
            key: 'SimpleLossWrapper'
            kwargs:
              input: {is_from_teacher: False, module_path: '.', io: 'output'}
              target: {uses_label: True}
          weight: 1.0
    """
    def __init__(self, ignore_index=IGNORE_INDEX):
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, output, targets):
        logits = extract_logits({'.': {'output': output}}, '.', 'output')
        return token_cross_entropy(logits[..., :-1, :], targets[..., 1:], self.ignore_index)


@register_mid_level_loss
class TokenKDLoss(LogitPairLoss):
    """Distillation with a choice of divergence D, at token level for causal LMs and per sample for classifiers.

    .. math:: L_s = \\alpha \\cdot CE(y, z_s) + \\beta \\cdot D(z_t, z_s)

    averaged over the tokens whose label is not -100 (prompt and padding excluded; every counted token weighs the
    same, whatever its sequence's length), with logits and labels shifted by one position for a causal LM (see
    :func:`align_for_causal_lm`). ``divergence`` (all :math:`\\tau^2`-scaled, on Z-scored logits with
    ``logit_standardization``):

    * 'forward_kl': :math:`KL(p_t \\| p_s)` (Hinton et al.; token-level KD);
    * 'reverse_kl': :math:`KL(p_s \\| p_t)` (MiniLLM, token level);
    * 'jsd': generalized JSD with ``jsd_beta`` (GKD/TRL convention: 0 forward KL, 1 reverse KL, 0.5 JSD);
    * 'skew_forward_kl' / 'skew_reverse_kl': DistiLLM's skew KLs with ``skew`` = lambda (default 0.1);
    * 'tv': total variation;
    * 'taid': TAID, forward KL to :math:`\\mathrm{softmax}((1 - t)\\,\\mathrm{sg}(z_s) + t z_t)`, t following
      :class:`TAIDSchedule` (``taid``: its kwargs; ``total_steps`` is filled by the causal-LM runner).

    ``teacher_update``:

    * 'frozen': teacher logits detached (KD);
    * 'adapters': PESF-KD (Rao et al., eqs. 7-8) at token level. The student learns from the adapted teacher,
      detached; the teacher's adapters (e.g. LoRA) learn
      :math:`L_{ta} = \\alpha_t CE(y, z_{ta}) + \\beta_t \\tau^2 KL(p_s \\| p_{ta})` with the student detached (the
      reverse KL from the student to the adapted teacher, and the teacher's own next-token CE);
    * 'full': FT-KD: the student's divergence is not detached on the teacher side, so its gradient reaches the
      teacher too, plus :math:`\\alpha_t CE(y, z_t)`.

    ``alpha`` is the CE weight, ``beta`` (default ``1 - alpha``) the divergence weight (torchdistill's convention);
    ``teacher_alpha``/``teacher_beta`` default to them. ``last_terms`` keys: 'student_ce', 'student_div',
    'teacher_ce', 'teacher_kl', and 'taid_t' with TAID. Other arguments: see :class:`~pesf_ext.losses.base.
    LogitPairLoss`.

    .. code-block:: yaml

        criterion:
          key: 'WeightedSumLoss'
          kwargs:
            sub_terms:
              kd:
                criterion:
                  key: 'TokenKDLoss'
                  kwargs:
                    student_module_path: '.'
                    student_module_io: 'output'
                    teacher_module_path: '.'
                    teacher_module_io: 'output'
                    temperature: 1.0
                    alpha: 0.5
                    beta: 0.5
                    divergence: 'jsd'
                    jsd_beta: 0.5
                    teacher_update: 'frozen'
                weight: 1.0
    """
    def __init__(self, student_module_path='.', student_module_io='output', teacher_module_path='.',
                 teacher_module_io='output', temperature=1.0, alpha=None, beta=None, divergence='forward_kl',
                 jsd_beta=0.5, skew=0.1, taid=None, teacher_update='frozen', teacher_alpha=None, teacher_beta=None,
                 logit_standardization=False, std='unbiased', eps=1e-7, causal_shift=None,
                 ignore_index=IGNORE_INDEX):
        super().__init__(student_module_path, student_module_io, teacher_module_path, teacher_module_io,
                         temperature, alpha, beta, 'batchmean', logit_standardization, std, eps)
        check_choice('divergence', divergence, DIVERGENCE_CHOICES)
        check_choice('teacher_update', teacher_update, TEACHER_UPDATE_CHOICES)
        if not 0.0 <= jsd_beta <= 1.0:
            raise ValueError(f'jsd_beta must be in [0, 1], got {jsd_beta!r}')
        if not 0.0 <= skew <= 1.0:
            raise ValueError(f'skew must be in [0, 1], got {skew!r}')
        if taid is not None and divergence != 'taid':
            raise ValueError("taid: options of divergence 'taid' only; remove them or set divergence: 'taid'")
        if teacher_update != 'adapters' and teacher_beta is not None:
            raise ValueError("teacher_beta weighs the adapters' reverse KL of teacher_update 'adapters' only")
        if teacher_update == 'frozen' and teacher_alpha is not None:
            raise ValueError("teacher_alpha weighs the teacher's CE, which a frozen teacher does not have")
        self.divergence, self.jsd_beta, self.skew = divergence, jsd_beta, skew
        self.taid = TAIDSchedule(**(taid or {})) if divergence == 'taid' else None
        self.teacher_update = teacher_update
        self.teacher_alpha = 0.0 if teacher_update == 'frozen' else \
            check_weight('teacher_alpha', self.alpha if teacher_alpha is None else teacher_alpha)
        self.teacher_beta = 0.0 if teacher_update != 'adapters' else \
            check_weight('teacher_beta', self.beta if teacher_beta is None else teacher_beta)
        self.causal_shift, self.ignore_index = causal_shift, ignore_index

    def divergence_value(self, z_t, z_s, mask):
        """:math:`D(z_t, z_s)` of this loss (nothing detached here)."""
        kwargs = dict(mask=mask, temperature=self.temperature, standardization=self.standardization)
        if self.divergence == 'forward_kl':
            return forward_kl(z_t, z_s, **kwargs)
        if self.divergence == 'reverse_kl':
            return reverse_kl(z_t, z_s, **kwargs)
        if self.divergence == 'jsd':
            return generalized_jsd(z_t, z_s, self.jsd_beta, **kwargs)
        if self.divergence == 'skew_forward_kl':
            return skew_forward_kl(z_t, z_s, self.skew, **kwargs)
        if self.divergence == 'skew_reverse_kl':
            return skew_reverse_kl(z_t, z_s, self.skew, **kwargs)
        if self.divergence == 'tv':
            return total_variation(z_t, z_s, **kwargs)
        return taid_kl(z_t, z_s, self.taid.value(), **kwargs)

    def ce(self, logits, labels):
        if labels is None:
            raise ValueError(f'{type(self).__name__} needs targets (labels) for its cross-entropy term(s)')
        if labels.shape == logits.shape[:-1] and not labels.is_floating_point():
            return token_cross_entropy(logits, labels, self.ignore_index)
        return self.cross_entropy(logits, labels)  # regression heads and the like: the parent's rules

    def forward(self, student_io_dict, teacher_io_dict, targets=None, *args, **kwargs):
        z_s, z_t = self.logits(student_io_dict, teacher_io_dict)
        z_s, z_t, labels, mask = align_for_causal_lm(z_s, z_t, targets, self.causal_shift, self.ignore_index)
        target = z_t if self.teacher_update == 'full' else z_t.detach()
        total = self.weighted_sum([
            ('student_ce', self.alpha, lambda: self.ce(z_s, labels)),
            ('student_div', self.beta, lambda: self.divergence_value(target, z_s, mask)),
            ('teacher_ce', self.teacher_alpha, lambda: self.ce(z_t, labels)),
            ('teacher_kl', self.teacher_beta, lambda: reverse_kl(z_t, z_s.detach(), mask, self.temperature,
                                                                 self.standardization)),
        ], reference=z_s)
        if self.taid is not None:
            self.last_terms['taid_t'] = torch.tensor(self.taid.value())
            if self.training and torch.is_grad_enabled() and 'student_div' in self.last_terms:
                self.taid.update(float(self.last_terms['student_div']))
        return total

    def extra_repr(self):
        return (f'{super().extra_repr()}, divergence={self.divergence!r}, jsd_beta={self.jsd_beta}, skew={self.skew}, '
                f'teacher_update={self.teacher_update!r}, teacher_alpha={self.teacher_alpha}, '
                f'teacher_beta={self.teacher_beta}')


__all__ = ['TokenKDLoss', 'NextTokenLoss', 'TAIDSchedule', 'align_for_causal_lm', 'token_cross_entropy', 'DIVERGENCE_CHOICES']
