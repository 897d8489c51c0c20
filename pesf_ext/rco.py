"""RCO: route-constrained optimization (Jin et al., ICCV 2019), a student taught by the teacher's own training route.

Xiao Jin, Baoyun Peng, Yichao Wu, Yu Liu, Jiaheng Liu, Ding Liang, Junjie Yan, Xiaolin Hu: `"Knowledge Distillation
via Route Constrained Optimization" <https://arxiv.org/abs/1904.09149>`_ @ ICCV 2019.

Two YAML switches, both read by the runners:

* in the teacher's own training config, ``train.anchor_epochs: [5, 10, 20]`` saves the model after each of those
  (1-based) epochs to ``<dst_ckpt stem>_ep<epoch>.pt`` (the anchors of the route);
* in the distillation config, ``train.pre_epoch_process: 'rco_pre_epoch_process'`` with
  ``train.rco: {anchors: [ep5.pt, ep10.pt, ep20.pt, final.pt], switch_epochs: [0, 8, 16, 24]}`` loads anchor i into
  the teacher at the start of (0-based) epoch ``switch_epochs[i]``, so the student follows the route from an early,
  easy teacher to the converged one. A resumed run loads the anchor its epoch is on.
"""
import logging
import os

import torch
from torchdistill.core.interfaces.registry import register_pre_epoch_proc_func

from .engine.checkpoint import atomic_save
from .engine.errors import ConfigError
from .engine.files import reading
from .engine.loop import inference_model
from .procs import distillation_pre_epoch_process

logger = logging.getLogger(__name__)


def anchor_path(dst_ckpt, epoch):
    """Where the anchor after (1-based) ``epoch`` of the run saving to ``dst_ckpt`` goes."""
    stem, ext = os.path.splitext(dst_ckpt)
    return f'{stem}_ep{epoch}{ext or ".pt"}'


def anchor_epochs(train_config, num_epochs):
    """``train.anchor_epochs``, checked: positive increasing integers up to ``num_epochs`` (empty when absent)."""
    epochs = train_config.get('anchor_epochs') or []
    if not isinstance(epochs, list) or any(type(e) is not int or not 1 <= e <= num_epochs for e in epochs) \
            or epochs != sorted(set(epochs)):
        raise ConfigError(f'train.anchor_epochs: must be increasing integers in [1, {num_epochs}] (the epochs after '
                          f'which the model is saved), got {epochs!r}')
    return epochs


def save_anchor(model, dst_ckpt, epoch):
    path = anchor_path(dst_ckpt, epoch)
    atomic_save({'model': inference_model(model).state_dict(), 'epoch': epoch}, path)
    logger.info('RCO anchor after epoch %d -> %s', epoch, path)


class RCOSchedule:
    """The ``train.rco`` block: ``anchors`` (checkpoint files) and the 0-based ``switch_epochs`` they start at."""
    def __init__(self, anchors, switch_epochs, num_epochs):
        if not isinstance(anchors, list) or not anchors:
            raise ConfigError(f'train.rco.anchors: must be a non-empty list of checkpoint files, got {anchors!r}')
        if not isinstance(switch_epochs, list) or len(switch_epochs) != len(anchors):
            raise ConfigError(f'train.rco.switch_epochs: must list one epoch per anchor ({len(anchors)}), got '
                              f'{switch_epochs!r}')
        if any(type(e) is not int for e in switch_epochs) or switch_epochs[0] != 0 or \
                switch_epochs != sorted(set(switch_epochs)) or switch_epochs[-1] >= num_epochs:
            raise ConfigError(f'train.rco.switch_epochs: must be increasing integers from 0 and below num_epochs '
                              f'({num_epochs}), got {switch_epochs!r}')
        for i, path in enumerate(anchors):
            if not os.path.isfile(str(path)):
                raise ConfigError(f'train.rco.anchors[{i}]: no such file {path!r} (train the teacher with '
                                  '`train.anchor_epochs` to save the route)')
        self.anchors, self.switch_epochs = [str(p) for p in anchors], switch_epochs
        self.current = None

    def index(self, epoch):
        return max(i for i, start in enumerate(self.switch_epochs) if start <= epoch)

    def apply(self, teacher, epoch):
        """Loads the anchor of ``epoch`` into ``teacher`` unless it is loaded already; returns its index."""
        index = self.index(epoch)
        if index != self.current:
            with reading(self.anchors[index], f'train.rco.anchors[{index}]'):  # truncated/mismatched: one line
                state = torch.load(self.anchors[index], map_location='cpu', weights_only=False)
                inference_model(teacher).load_state_dict(state.get('model', state))
            self.current = index
            logger.info('RCO: epoch %d learns from anchor %d/%d (%s)', epoch, index + 1, len(self.anchors),
                        self.anchors[index])
        return index


def rco_schedule(train_config, num_epochs):
    """The checked :class:`RCOSchedule` of ``train.rco``, or None."""
    block = train_config.get('rco')
    if block is None:
        if train_config.get('pre_epoch_process') == 'rco_pre_epoch_process':
            raise ConfigError('train.rco: rco_pre_epoch_process needs `train.rco: {anchors: [...], '
                              'switch_epochs: [...]}`')
        return None
    if train_config.get('pre_epoch_process') != 'rco_pre_epoch_process':
        raise ConfigError("train.rco: set `train.pre_epoch_process: 'rco_pre_epoch_process'` to use it")
    unknown = sorted(set(block) - {'anchors', 'switch_epochs'})
    if unknown:
        raise ConfigError(f'train.rco: unknown keys {unknown}; valid: anchors, switch_epochs')
    return RCOSchedule(block.get('anchors'), block.get('switch_epochs'), num_epochs)


@register_pre_epoch_proc_func
def rco_pre_epoch_process(self, epoch=None, **kwargs):
    """:func:`~pesf_ext.procs.distillation_pre_epoch_process`, then the RCO anchor of ``epoch`` into the teacher
    (``self.rco_schedule``, set by the runner from ``train.rco``)."""
    distillation_pre_epoch_process(self, epoch=epoch, **kwargs)
    if epoch is not None:
        self.rco_schedule.apply(self.teacher_model, epoch)


__all__ = ['anchor_path', 'anchor_epochs', 'save_anchor', 'RCOSchedule', 'rco_schedule', 'rco_pre_epoch_process']
