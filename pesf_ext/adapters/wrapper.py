"""``AdapterTeacher``: torchdistill auxiliary model wrapper that turns a pretrained teacher into a PESF-KD teacher.

Adapters are injected into the teacher (:func:`~pesf_ext.adapters.inject.inject_adapters`), every original
parameter is frozen and the frozen base runs in eval mode (BatchNorm statistics fixed, dropout off) while the
adapters train online with the student. Frozen parameters and an input that needs no grad build no autograd graph,
so only the part after the first adapter is differentiated: PESF-KD costs about as much as vanilla KD.

.. code-block:: yaml

    train:
      teacher:
        auxiliary_model_wrapper:
          key: 'AdapterTeacher'
          kwargs:
            adapters:
              - modules: ['fc']
                kind: 'head'
                bottleneck: 32
            input_shape: [1, 3, 32, 32]   # shape probe (optional)
            freeze_base: True
            wrapper:                      # optional: one inner torchdistill wrapper, e.g. for CRD
              key: 'Linear4CRD'
              kwargs: {input_module_path: 'model.avgpool', linear_kwargs: {in_features: 64, out_features: 128}}
        requires_grad: True               # torchdistill runs an updatable teacher's forward with grad
      optimizer:
        module_wise_configs:
          - {module: 'adapters', is_teacher: True, kwargs: {lr: 0.01}}
"""
import logging

from torchdistill.models.registry import get_auxiliary_model_wrapper, register_auxiliary_model_wrapper
from torchdistill.models.wrapper import AuxiliaryModelWrapper

from ..procs import set_train_mode_where_trainable
from .inject import inject_adapters, trainable_report

logger = logging.getLogger(__name__)


@register_auxiliary_model_wrapper
class AdapterTeacher(AuxiliaryModelWrapper):
    """Teacher with adapters (trainable) on a frozen base ``self.model``; ``self.adapters`` holds the adapters.

    Module paths resolve through the wrapper: a name that is not the wrapper's own falls back to the inner wrapper
    (e.g. Linear4CRD's 'normalizer') and then to the base model, so forward-hook and ``module_wise_configs`` paths
    may be written 'layer3' or 'model.layer3', and 'adapters' selects the adapters.

    :param teacher_model: pretrained teacher (adapted in place through forward hooks; its state_dict keys unchanged).
    :param adapters: adapter specs of :func:`~pesf_ext.adapters.inject.inject_adapters`.
    :param device: target device.
    :param device_ids: device IDs (passed on to the inner wrapper).
    :param distributed: distributed mode (passed on to the inner wrapper).
    :param input_shape: dummy input shape for the shape probe, e.g. [1, 3, 32, 32].
    :param freeze_base: freeze every original teacher parameter (PESF-KD); False trains the base too.
    :param wrapper: optional ``{'key': ..., 'kwargs': {...}}`` of one torchdistill auxiliary wrapper built around
        the adapted base and delegated to (forward, secondary_forward, post_epoch_process).
    """
    def __init__(self, teacher_model, adapters, device, device_ids=None, distributed=False, input_shape=None,
                 freeze_base=True, wrapper=None):
        super().__init__()
        if freeze_base:
            for param in teacher_model.parameters():
                param.requires_grad = False
        self.model = teacher_model
        self.adapters = inject_adapters(teacher_model, adapters, input_shape)
        self.inner = None
        if wrapper is not None:
            self.inner = get_auxiliary_model_wrapper(wrapper['key'], teacher_model=self.model, device=device,
                                                     device_ids=device_ids, distributed=distributed,
                                                     **(wrapper.get('kwargs') or dict()))
            if getattr(self.inner, 'is_teacher', False):
                # e.g. Linear4CRD runs a teacher's forward under torch.no_grad(), which would cut the adapters off
                self.inner.is_teacher = False
                logger.info('%s: is_teacher set to False so that its forward keeps the adapters differentiable',
                            type(self.inner).__name__)
        self.to(device)
        self.train()
        logger.info(trainable_report(self, 'teacher'))

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name.startswith('_'):
                raise
            modules = self.__dict__.get('_modules', dict())
            for fallback in (modules.get('inner'), modules.get('model')):
                if fallback is not None and hasattr(fallback, name):
                    return getattr(fallback, name)
            raise

    def forward(self, *args, **kwargs):
        return (self.model if self.inner is None else self.inner)(*args, **kwargs)

    def secondary_forward(self, *args, **kwargs):
        if self.inner is not None:
            return self.inner.secondary_forward(*args, **kwargs)

    def post_epoch_process(self, *args, **kwargs):
        if self.inner is not None:
            return self.inner.post_epoch_process(*args, **kwargs)

    def train(self, mode=True):
        """Train mode for the trainable parts only (adapters, inner wrapper's heads); the frozen base stays in eval."""
        set_train_mode_where_trainable(self, mode)
        return self

    def load_state_dict(self, state_dict, strict=True, assign=False):
        """Loads a full wrapper state_dict, or a plain base-model state_dict (e.g. ``train.teacher.src_ckpt``)
        into the base; which one is decided by which key set ``state_dict`` overlaps more."""
        base_keys = set(self.model.state_dict())
        own_keys = set(self.state_dict())
        if len(base_keys.intersection(state_dict)) > len(own_keys.intersection(state_dict)):
            return self.model.load_state_dict(state_dict, strict=strict, assign=assign)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def adapter_state_dict(self):
        """The adapters' state: what a checkpoint of the adapted teacher needs besides the pretrained base."""
        return self.adapters.state_dict()

    def load_adapter_state_dict(self, state_dict, strict=True):
        return self.adapters.load_state_dict(state_dict, strict=strict)


__all__ = ['AdapterTeacher']
