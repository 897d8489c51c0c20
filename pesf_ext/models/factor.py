"""FT's teacher side: a paraphraser trained in stage 1 and read in stage 2 (Kim et al., NeurIPS 2018)."""
import weakref

import torch
from torchdistill.models.registry import register_auxiliary_model_wrapper
from torchdistill.models.wrapper import AuxiliaryModelWrapper, Paraphraser4FactorTransfer

_PARAPHRASERS = weakref.WeakKeyDictionary()   # teacher network -> (paraphraser kwargs, paraphraser), one per run


@register_auxiliary_model_wrapper
class ParaphraserTeacher(AuxiliaryModelWrapper):
    """Teacher wrapper: ``model`` is the teacher (run without grad); ``paraphraser`` (torchdistill's
    ``Paraphraser4FactorTransfer``, built from ``paraphraser_kwargs``) reads the output of ``input_module_path``.

    * ``uses_decoder: True`` (stage 1): encoder and decoder with grad, the output is the reconstruction, trained
      by MSE against the teacher's feature.
    * ``uses_decoder: False`` (stage 2): the encoder only, under ``no_grad``: the factor F_t is a fixed target.

    The wrappers of both stages, built on the same teacher network, share one paraphraser in memory, so stage 2
    reads what stage 1 trained (torchdistill's ``Teacher4FactorTransfer`` passes it through a checkpoint file, which
    a later run or another seed with the same file name would load before its own stage 1). Its parameters stay
    ``requires_grad`` (the runner's checkpoints keep trainable parts, so a resumed stage 2 gets it back); stage 2
    leaves it out of the optimizer and computes no gradient for it.
    """
    def __init__(self, teacher_model, device, device_ids=None, distributed=False, input_module_path=None,
                 paraphraser_kwargs=None, uses_decoder=True, **kwargs):
        super().__init__()
        if not input_module_path:
            raise ValueError(f'ParaphraserTeacher: input_module_path is required, got {input_module_path!r}')
        if not isinstance(paraphraser_kwargs, dict):
            raise ValueError(f'ParaphraserTeacher: paraphraser_kwargs must be a dict, got {paraphraser_kwargs!r}')
        self.model = teacher_model
        self.input_module_path = input_module_path
        built_with, paraphraser = _PARAPHRASERS.get(teacher_model, (None, None))
        if paraphraser is None:
            paraphraser = Paraphraser4FactorTransfer(**paraphraser_kwargs).to(device)
            _PARAPHRASERS[teacher_model] = (dict(paraphraser_kwargs), paraphraser)
        elif built_with != paraphraser_kwargs:
            raise ValueError(f'ParaphraserTeacher: paraphraser_kwargs {paraphraser_kwargs!r} differ from the earlier '
                             f"stage's {built_with!r}")
        self.paraphraser = paraphraser
        self.uses_decoder = bool(uses_decoder)

    def forward(self, *args, **kwargs):
        with torch.no_grad():
            return self.model(*args, **kwargs)

    def secondary_forward(self, io_dict):
        self.paraphraser.uses_decoder = self.uses_decoder
        feature = io_dict[self.input_module_path]['output']
        if self.uses_decoder:
            self.paraphraser(feature)
        else:
            with torch.no_grad():
                self.paraphraser(feature)
