"""Token-level distillation losses for causal language models (and any logit pair): one registered loss,
``TokenKDLoss``, with a switch for the divergence (forward KL, reverse KL, generalized JSD, skew KL, total variation,
TAID) and one for what happens on the teacher side (frozen, PESF-KD adapters, FT-KD). The math is in
:mod:`pesf_ext.losses.functional`."""
import functools

import torch
import torch.nn.functional as F
from torch import nn
from torchdistill.losses.registry import register_low_level_loss, register_mid_level_loss

from .base import LogitPairLoss, check_weight, extract_logits
from .functional import (
    at_least_float32, check_choice, check_chunk_tokens, chunked_token_means, cross_entropy_tokens, forward_kl,
    forward_kl_tokens, generalized_jsd, generalized_jsd_tokens, is_regression, reverse_kl, reverse_kl_tokens,
    skew_forward_kl, skew_forward_kl_tokens, skew_reverse_kl, skew_reverse_kl_tokens, taid_kl, taid_kl_tokens,
    taid_next_t, total_variation, total_variation_tokens
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
        """t as a Python float (reads the device where t lives; the loss itself uses the buffer ``t``)."""
        return float(self.t)

    def update(self, loss):
        """Advances t after a training step whose distillation loss was ``loss`` (a float or a 0-dim tensor).

        On the device: the buffers follow ``loss``'s device on the first call, the first call's "record only" and the
        linear/adaptive choice are ``torch.where``/Python branches on settings, so no step waits for the host."""
        if self.total_steps is None:
            raise RuntimeError('TokenKDLoss: taid.total_steps is not set (the causal-LM runner fills it from the '
                               'data; set it in the YAML otherwise)')
        loss = loss.detach() if isinstance(loss, torch.Tensor) else torch.tensor(float(loss), dtype=torch.float64)
        if self.t.device != loss.device:
            self.to(loss.device)
        loss = loss.to(torch.float64)
        progress = torch.clamp(self.step.to(torch.float64) / self.total_steps, max=1.0)
        if self.adaptive:
            t, momentum = taid_next_t(self.t, self.momentum, self.previous_loss, loss, progress, self.t_start,
                                      self.t_end, self.rate, self.momentum_decay)
        else:
            t, momentum = self.t_start + (self.t_end - self.t_start) * progress, self.momentum
        first = torch.isinf(self.previous_loss)  # the first call only records the loss
        self.t.copy_(torch.where(first, self.t, t))
        self.momentum.copy_(torch.where(first, self.momentum, momentum))
        self.previous_loss.copy_(loss)
        self.step += 1

    def extra_repr(self):
        return (f't={float(self.t):.4f}, t_start={self.t_start}, t_end={self.t_end}, rate={self.rate}, '
                f'momentum_decay={self.momentum_decay}, total_steps={self.total_steps}, adaptive={self.adaptive}')


def align_for_causal_lm(student_logits, teacher_logits, targets, causal_shift=None, ignore_index=IGNORE_INDEX,
                        vocab_size=None):
    """Returns ``(z_s, z_t, labels, mask)`` with position i of the logits predicting ``labels[i]``.

    Causal LM (``causal_shift`` True, or None with (B, T, V) logits): logits of positions 0..T-2 and labels 1..T-1
    (Hugging Face's shift), mask = labels != ``ignore_index`` (padding and prompt tokens out). Classification
    ((N, K) logits, (N,) targets): no shift, every position counts.

    ``vocab_size`` V (the shared tokenizer's number of ids; the causal-LM runner fills it): both sides keep their
    first V columns, ``z[..., :V]``, before any softmax. Output layers are often padded past the tokenizer
    (Qwen2.5-7B: 152,064 rows, Qwen2.5-0.5B: 151,936, over 151,665 ids); the padded rows hold no token, so every
    distribution, the divergence's and the CE's alike, is over the real token ids. The CE then differs from Hugging
    Face's full-row loss only by the probability the model puts on padded rows (none for a pretrained model), and
    the KD target and the CE share one support. None: the widths must be equal (classifiers).
    """
    if vocab_size is not None:
        for side, logits in (('student', student_logits), ('teacher', teacher_logits)):
            if logits.shape[-1] < vocab_size:
                raise ValueError(f'{side} logits have {logits.shape[-1]} columns, fewer than vocab_size {vocab_size}')
        student_logits, teacher_logits = student_logits[..., :vocab_size], teacher_logits[..., :vocab_size]
    if student_logits.shape[-1] != teacher_logits.shape[-1]:
        raise ValueError(f'student and teacher logits have different vocabularies/classes ({student_logits.shape[-1]} '
                         f'vs {teacher_logits.shape[-1]}): teacher and student must share a tokenizer (padded '
                         'output layers: set vocab_size)')
    causal = student_logits.dim() == 3 if causal_shift is None else causal_shift
    labels = targets
    if causal:
        student_logits, teacher_logits = student_logits[..., :-1, :], teacher_logits[..., :-1, :]
        labels = targets[..., 1:] if targets is not None else None
    mask = None
    if labels is not None and labels.shape == student_logits.shape[:-1] and not labels.is_floating_point():
        mask = labels != ignore_index
    return student_logits, teacher_logits, labels, mask


def token_cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, chunk_tokens=None):
    """Next-token CE averaged over the tokens whose label is not ``ignore_index`` (0 when there are none), in float32
    (float64 kept).
    ``chunk_tokens`` N: computed N tokens at a time, memory O(N x V) in forward and backward
    (:func:`~pesf_ext.losses.functional.chunked_token_means`)."""
    if chunk_tokens is not None:
        terms = [(1.0, lambda rows, chunk_labels: cross_entropy_tokens(rows[0], chunk_labels, ignore_index))]
        return chunked_token_means(terms, (logits,), labels != ignore_index, labels, chunk_tokens)[0]
    flat_labels = labels.reshape(-1)
    total = F.cross_entropy(at_least_float32(logits.reshape(-1, logits.shape[-1])), flat_labels,
                            ignore_index=ignore_index, reduction='sum')
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

    ``chunk_tokens`` N (or the YAML's ``speed.loss_chunk_tokens``): the CE N tokens at a time (see
    :func:`token_cross_entropy`).
    """
    def __init__(self, ignore_index=IGNORE_INDEX, chunk_tokens=None):
        super().__init__()
        self.ignore_index = ignore_index
        self.chunk_tokens = check_chunk_tokens(chunk_tokens)

    def forward(self, output, targets):
        logits = extract_logits({'.': {'output': output}}, '.', 'output')
        return token_cross_entropy(logits[..., :-1, :], targets[..., 1:], self.ignore_index, self.chunk_tokens)


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
    'teacher_ce', 'teacher_kl', and 'taid_t' with TAID. ``vocab_size`` V: every term compares the first V columns
    (output layers padded past the tokenizer, see :func:`align_for_causal_lm`); null in a causal-LM YAML is filled
    with the shared tokenizer's size by the runner, null elsewhere compares all columns. Other arguments: see
    :class:`~pesf_ext.losses.base.LogitPairLoss`.

    ``chunk_tokens`` N (or the YAML's ``speed.loss_chunk_tokens``, which sets it on every ``TokenKDLoss``): every
    term is computed N tokens at a time in one pass (:meth:`chunked_sum`), each chunk's gradient taken at once, so
    the loss holds O(N x V) floats at a time plus one gradient-sized tensor per differentiated side, instead of
    several (tokens x V) float32 tensors; same values, gradients and detach rules (a test compares them). Null: all
    tokens at once.

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
                 ignore_index=IGNORE_INDEX, vocab_size=None, chunk_tokens=None):
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
        self.chunk_tokens = check_chunk_tokens(chunk_tokens)  # the YAML's speed.loss_chunk_tokens sets it too
        if vocab_size is not None and (not isinstance(vocab_size, int) or vocab_size < 1):
            raise ValueError(f'vocab_size: must be an integer >= 1 or null, got {vocab_size!r}')
        self.vocab_size = vocab_size  # V: compare the first V columns (padded output layers); the LM runner fills it

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
        return taid_kl(z_t, z_s, self.taid.t.clone(), **kwargs)  # a copy: autograd keeps it; update() is in place

    def ce(self, logits, labels):
        if labels is None:
            raise ValueError(f'{type(self).__name__} needs targets (labels) for its cross-entropy term(s)')
        if labels.shape == logits.shape[:-1] and not labels.is_floating_point():
            return token_cross_entropy(logits, labels, self.ignore_index)
        return self.cross_entropy(logits, labels)  # regression heads and the like: the parent's rules

    def uses_chunks(self, z_s, labels):
        """Chunked terms (``chunk_tokens`` set) for class/token logits with integer labels per position, or without
        labels when no CE term is weighted; other cases (regression heads, soft labels) take the unchunked path."""
        if self.chunk_tokens is None or is_regression(z_s):
            return False
        if labels is None:
            return self.alpha == 0 and self.teacher_alpha == 0
        return labels.shape == z_s.shape[:-1] and not labels.is_floating_point()

    def divergence_tokens(self):
        """This loss's divergence per token, ``fn(teacher_rows, student_rows)`` (nothing detached here)."""
        functions = {'forward_kl': forward_kl_tokens, 'reverse_kl': reverse_kl_tokens, 'tv': total_variation_tokens,
                     'jsd': functools.partial(generalized_jsd_tokens, beta=self.jsd_beta),
                     'skew_forward_kl': functools.partial(skew_forward_kl_tokens, skew=self.skew),
                     'skew_reverse_kl': functools.partial(skew_reverse_kl_tokens, skew=self.skew)}
        function = functions.get(self.divergence) or functools.partial(taid_kl_tokens, t=self.taid.t.clone())
        return functools.partial(function, temperature=self.temperature, standardization=self.standardization)

    def chunked_sum(self, z_s, z_t, labels, mask):
        """The chunked twin of the unchunked terms: every weighted term in one pass over chunks of ``chunk_tokens``
        positions (:func:`~pesf_ext.losses.functional.chunked_token_means`), with forward's detach rules applied to
        each chunk's rows (``rows = (student, teacher)``); fills ``last_terms`` the same way."""
        divergence = self.divergence_tokens()
        teacher_kl = functools.partial(reverse_kl_tokens, temperature=self.temperature,
                                       standardization=self.standardization)
        ce = functools.partial(cross_entropy_tokens, ignore_index=self.ignore_index)
        full = self.teacher_update == 'full'
        named = [(name, weight, fn) for name, weight, fn in [
            ('student_ce', self.alpha, lambda rows, y: ce(rows[0], y)),
            ('student_div', self.beta, lambda rows, y: divergence(rows[1] if full else rows[1].detach(), rows[0])),
            ('teacher_ce', self.teacher_alpha, lambda rows, y: ce(rows[1], y)),
            ('teacher_kl', self.teacher_beta, lambda rows, y: teacher_kl(rows[1], rows[0].detach())),
        ] if weight != 0]
        self.last_terms = dict()
        if not named:
            return z_s.new_zeros(())
        teacher = z_t.detach() if self.teacher_update == 'frozen' else z_t
        total, means = chunked_token_means([(weight, fn) for _, weight, fn in named], (z_s, teacher), mask, labels,
                                           self.chunk_tokens)
        self.last_terms = {name: means[index] for index, (name, _, _) in enumerate(named)}
        return total

    def forward(self, student_io_dict, teacher_io_dict, targets=None, *args, **kwargs):
        z_s, z_t = self.logits(student_io_dict, teacher_io_dict)
        z_s, z_t, labels, mask = align_for_causal_lm(z_s, z_t, targets, self.causal_shift, self.ignore_index,
                                                     self.vocab_size)
        if self.uses_chunks(z_s, labels):
            total = self.chunked_sum(z_s, z_t, labels, mask)
        else:
            target = z_t if self.teacher_update == 'full' else z_t.detach()
            total = self.weighted_sum([
                ('student_ce', self.alpha, lambda: self.ce(z_s, labels)),
                ('student_div', self.beta, lambda: self.divergence_value(target, z_s, mask)),
                ('teacher_ce', self.teacher_alpha, lambda: self.ce(z_t, labels)),
                ('teacher_kl', self.teacher_beta, lambda: reverse_kl(z_t, z_s.detach(), mask, self.temperature,
                                                                     self.standardization)),
            ], reference=z_s)
        if self.taid is not None:
            self.last_terms['taid_t'] = self.taid.t.detach().clone()  # t used in this step, before its update
            if self.training and torch.is_grad_enabled() and 'student_div' in self.last_terms:
                self.taid.update(self.last_terms['student_div'])  # on the device: no host read
        return total

    def extra_repr(self):
        return (f'{super().extra_repr()}, divergence={self.divergence!r}, jsd_beta={self.jsd_beta}, skew={self.skew}, '
                f'teacher_update={self.teacher_update!r}, teacher_alpha={self.teacher_alpha}, '
                f'teacher_beta={self.teacher_beta}')


__all__ = ['TokenKDLoss', 'NextTokenLoss', 'TAIDSchedule', 'align_for_causal_lm', 'token_cross_entropy', 'DIVERGENCE_CHOICES']
