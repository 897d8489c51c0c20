"""Training-mode rule and the pre-epoch process that applies it, registered with torchdistill.

torchdistill's DistillationBox never calls ``teacher.train()``/``.eval()`` and its default pre-epoch process only
puts the student in train mode, so a freshly built "frozen" teacher would run in train mode and its BatchNorm
running statistics would drift. ``distillation_pre_epoch_process`` fixes that for every method at once:

.. code-block:: yaml

    train:
      pre_epoch_process: 'distillation_pre_epoch_process'
"""
import logging

from torch import nn
from torchdistill.core.interfaces.pre_epoch_proc import default_pre_epoch_process_with_teacher
from torchdistill.core.interfaces.registry import register_pre_epoch_proc_func

logger = logging.getLogger(__name__)


def set_train_mode_where_trainable(module, mode=True):
    """Puts the trainable parts of ``module`` in train mode and its frozen parts in eval mode.

    ``mode=False``: plain ``eval()``. ``mode=True``, top-down: a module with parameters none of which requires
    grad is put in eval mode with its whole subtree (BatchNorm statistics frozen, dropout off); a module with
    some trainable parameter is put in train mode and its children visited; a parameter-less module takes its
    parent's mode. So a frozen teacher is all eval, an :class:`~pesf_ext.adapters.AdapterTeacher` trains its
    adapters over a base in eval mode, and a fully trainable teacher (FT-KD, DML) trains everything.
    DataParallel/DistributedDataParallel wrappers are just modules with trainable parameters here.
    """
    if not mode:
        nn.Module.train(module, False)  # not module.eval(): AdapterTeacher.train calls this function
        return module
    apply_rule(module, parent_mode=True)
    return module


def apply_rule(module, parent_mode):
    requires_grad = [p.requires_grad for p in module.parameters()]
    if not requires_grad:
        nn.Module.train(module, parent_mode)
    elif not any(requires_grad):
        nn.Module.train(module, False)
    else:
        module.training = True
        for child in module.children():
            apply_rule(child, parent_mode=True)


def criterion_modules(criterion):
    """Modules of a torchdistill loss, including the sub-losses it keeps in a plain dict (``term_dict``)."""
    roots = [criterion] + [term[0] for term in getattr(criterion, 'term_dict', dict()).values()
                           if isinstance(term, tuple) and isinstance(term[0], nn.Module)]
    seen = dict()
    for root in roots:
        for module in root.modules():
            seen.setdefault(id(module), module)
    return list(seen.values())


@register_pre_epoch_proc_func
def distillation_pre_epoch_process(self, epoch=None, **kwargs):
    """Pre-epoch process of a DistillationBox: torchdistill's ``default_pre_epoch_process_with_teacher`` (I/O
    dicts cleared, student in train mode, DistributedSampler epoch), then the teacher's modes by
    :func:`set_train_mode_where_trainable`, then ``set_epoch(epoch + 1)`` on every loss module and student module
    that has it (1-based epoch number, as the DKD and CTKD authors count epochs for their warm-up and curriculum;
    skipped when ``epoch`` is None).
    """
    default_pre_epoch_process_with_teacher(self, epoch=epoch, **kwargs)
    set_train_mode_where_trainable(self.teacher_model)
    if epoch is not None:
        for module in [*criterion_modules(self.criterion), *self.student_model.modules()]:
            if callable(getattr(module, 'set_epoch', None)):
                module.set_epoch(epoch + 1)
    logger.debug('pre-epoch %s: teacher modules in train mode: %d / %d', epoch,
                 sum(m.training for m in self.teacher_model.modules()), len(list(self.teacher_model.modules())))


__all__ = ['set_train_mode_where_trainable', 'distillation_pre_epoch_process']
