"""PESF-KD, Z-score KD and every other logit loss in a plain PyTorch training loop, without a torchdistill box.

.. code-block:: python

    import pesf_ext.plain as pk

    adapters = pk.add_adapters(teacher, [{'modules': ['layer3.8'], 'kind': 'bottleneck', 'bottleneck': 32}],
                               input_shape=[1, 3, 32, 32])     # teacher frozen, in eval mode; adapters trainable
    loss_fn = pk.pesfkd_loss(temperature=4.0, alpha=0.1, beta=0.9)
    optimizer = torch.optim.SGD([{'params': student.parameters(), 'lr': 0.05},
                                 {'params': adapters.parameters(), 'lr': 2e-5}], momentum=0.9)
    for x, y in loader:
        loss = loss_fn(student(x), teacher(x), y)   # the adapted teacher's forward, with grad
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

:func:`add_adapters` freezes every original teacher parameter, puts the teacher in eval mode (BatchNorm statistics
stay the pretrained ones) and hooks the adapters onto the matched modules (:func:`pesf_ext.adapters.inject_adapters`:
module-path patterns, zero-initialised last projection, state_dict keys unchanged). Autograd then differentiates
the frozen teacher only from the first adapter on, which is what keeps PESF-KD as cheap as KD.

:func:`logit_loss` turns any registered logit loss (``PESFKDLoss``, ``ZScoreKDLoss``, ``FTKDLoss``, ``DKDLoss``,
``LogitKDLoss``, ...) into a callable ``loss(student_logits, teacher_logits, targets)``; the loss decides what is
detached (PESF-KD: the adapted teacher's logits in the student's term, the student's in the adapters' term).
Weights follow torchdistill: ``alpha`` is the CE weight, ``beta`` the KL weight (the papers' alpha is ``beta``).
"""
from torch import nn
from torchdistill.losses.registry import get_mid_level_loss

from .adapters import count_parameters, inject_adapters, remove_adapters

__all__ = ['LogitLoss', 'add_adapters', 'logit_loss', 'pesfkd_loss', 'zscore_kd_loss', 'ftkd_loss', 'kd_loss',
           'remove_adapters', 'count_parameters']

PATH = '.'


def add_adapters(model, specs, input_shape=None, freeze=True):
    """Hooks adapters onto ``model`` and returns them (an ``nn.ModuleDict``: pass ``.parameters()`` to an optimizer).

    :param model: the pretrained teacher; with ``freeze`` every parameter gets ``requires_grad=False`` and the model
        is put in eval mode (call ``model.eval()`` again after any ``model.train()`` of yours).
    :param specs: ``[{'modules': [paths or globs], 'kind': 'bottleneck' | 'head' | 'lora' | 'scaled_parallel',
        **options}]``, as the YAML key ``adapters`` of ``AdapterTeacher``.
    :param input_shape: one input's shape with a batch of 1 (e.g. ``[1, 3, 32, 32]``) when a target is not a
        ``Linear``/``Conv2d``/norm layer whose sizes its type tells (a ResNet block, a timm stage); None otherwise.
    :param freeze: False keeps the base trainable (FT-KD with adapters; not PESF-KD).
    """
    if not specs:
        raise ValueError('add_adapters: specs is empty; give at least one {"modules": [...], "kind": ...}')
    if freeze:
        for param in model.parameters():
            param.requires_grad = False
        model.eval()
    adapters = inject_adapters(model, specs, input_shape)
    adapters.train()
    return adapters


class LogitLoss(nn.Module):
    """``loss(student_logits, teacher_logits, targets)`` around a torchdistill mid-level logit loss.

    ``self.criterion`` is the wrapped loss; ``self.terms`` its last unweighted terms (e.g. 'student_kl').
    """
    def __init__(self, key, **kwargs):
        super().__init__()
        config = {'key': key, 'kwargs': {'student_module_path': PATH, 'student_module_io': 'output',
                                         'teacher_module_path': PATH, 'teacher_module_io': 'output', **kwargs}}
        if kwargs.get('delta_module_path') is not None:
            raise ValueError(f"{key}: delta_module_path reads a hooked module's output, which needs a torchdistill "
                             'box; in a plain loop use teacher_kl="reverse" (the paper)')
        self.criterion = get_mid_level_loss(config)

    @property
    def terms(self):
        return getattr(self.criterion, 'last_terms', {})

    def set_epoch(self, epoch):
        """Forwards the 1-based epoch to losses with a warm-up (DKD, PESF-KD ``teacher_warmup_epochs``)."""
        if hasattr(self.criterion, 'set_epoch'):
            self.criterion.set_epoch(epoch)

    def forward(self, student_logits, teacher_logits, targets=None):
        return self.criterion({PATH: {'output': student_logits}}, {PATH: {'output': teacher_logits}}, targets)


def logit_loss(key, **kwargs):
    """Any registered logit loss by its YAML ``key`` with its YAML kwargs, e.g. ``logit_loss('DKDLoss', ...)``."""
    return LogitLoss(key, **kwargs)


def pesfkd_loss(temperature=4.0, alpha=0.1, beta=0.9, **kwargs):
    """PESF-KD (Rao et al., IEEE TMM 2023, eqs. 7 + 8): student KD on the adapted teacher (detached) plus the
    adapters' CE + reverse KL (student detached); the teacher's logits must come from the adapted teacher's forward
    with grad. Defaults: the paper's CIFAR-100 setting (alpha = 0.9 there is ``beta`` here)."""
    return LogitLoss('PESFKDLoss', temperature=temperature, alpha=alpha, beta=beta, **kwargs)


def zscore_kd_loss(temperature=2.0, alpha=0.1, beta=9.0, **kwargs):
    """KD on Z-scored logits (Sun et al., CVPR 2024, Alg. 2); teacher detached. Defaults: the paper's
    lambda_CE = 0.1, lambda_KD = 9, tau = 2."""
    return LogitLoss('ZScoreKDLoss', temperature=temperature, alpha=alpha, beta=beta, **kwargs)


def ftkd_loss(temperature=4.0, alpha=0.1, beta=0.9, **kwargs):
    """FT-KD (PESF-KD paper, IV-A): KD whose teacher logits are not detached, plus CE on the teacher; the whole
    teacher trains (give its parameters to the optimizer, paper lr 1e-3)."""
    return LogitLoss('FTKDLoss', temperature=temperature, alpha=alpha, beta=beta, **kwargs)


def kd_loss(temperature=4.0, alpha=0.1, beta=0.9, **kwargs):
    """Vanilla KD (Hinton et al., 2014), teacher detached; ``logit_standardization=True`` makes it Z-score KD."""
    return LogitLoss('LogitKDLoss', temperature=temperature, alpha=alpha, beta=beta, **kwargs)
