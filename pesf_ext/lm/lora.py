"""``LoRATeacher``: PESF-KD's adapters on a frozen causal-LM teacher, built with Hugging Face PEFT.

LoRA (Hu et al., ICLR 2022) adds :math:`\\Delta W = \\frac{\\alpha}{r} B A` beside each targeted linear layer, with B
zero-initialised, so the adapted teacher starts exactly as the pretrained one (the role of eq. 6's zero-initialised
:math:`W_{up}` in PESF-KD). Every base weight is frozen; frozen weights applied to inputs that need no gradient
build no autograd graph, so only the part after the first adapted layer is differentiated (LoRA on the last layers
only is cheaper still). The trained adapters save as a PEFT adapter directory that
``PeftModel.from_pretrained(base_model, directory)`` loads.

.. code-block:: yaml

    train:
      teacher:
        forward_proc: 'forward_batch_as_kwargs'
        auxiliary_model_wrapper:
          key: 'LoRATeacher'
          kwargs:
            r: 16
            lora_alpha: 32
            target_modules: null     # default by architecture (LLaMA/Qwen: q,k,v,o,gate,up,down; GPT-2: c_attn,c_proj,c_fc)
            last_layers: null        # e.g. 2: adapt the last two transformer blocks only
        requires_grad: True          # torchdistill then runs the teacher's forward with grad
      optimizer:
        module_wise_configs:
          - {module: 'model', is_teacher: True, kwargs: {lr: 0.0001}}   # only the LoRA weights require grad
"""
import logging

from torch import nn
from torchdistill.models.registry import register_auxiliary_model_wrapper
from torchdistill.models.wrapper import AuxiliaryModelWrapper

from ..adapters.inject import count_parameters

logger = logging.getLogger(__name__)
LLAMA_TARGETS = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj']
DEFAULT_TARGETS = {'llama': LLAMA_TARGETS, 'qwen2': LLAMA_TARGETS, 'qwen3': LLAMA_TARGETS, 'mistral': LLAMA_TARGETS,
                   'gemma': LLAMA_TARGETS, 'gemma2': LLAMA_TARGETS, 'phi3': ['qkv_proj', 'o_proj', 'gate_up_proj',
                                                                          'down_proj'],
                   'gpt2': ['c_attn', 'c_proj', 'c_fc'], 'gpt_neox': ['query_key_value', 'dense', 'dense_h_to_4h',
                                                                     'dense_4h_to_h']}


def default_target_modules(model):
    """LoRA target module names for a Hugging Face causal LM's architecture (``config.model_type``)."""
    model_type = getattr(model.config, 'model_type', None)
    if model_type not in DEFAULT_TARGETS:
        raise ValueError(f'target_modules: no default for model_type {model_type!r}; list the linear layers to '
                         f'adapt (known defaults: {sorted(DEFAULT_TARGETS)})')
    return list(DEFAULT_TARGETS[model_type])


def lora_config(model, r=16, lora_alpha=32, lora_dropout=0.0, target_modules=None, last_layers=None):
    """The ``peft.LoraConfig`` of :class:`LoRATeacher` (``last_layers``: adapt only the last L blocks)."""
    from peft import LoraConfig
    if not isinstance(r, int) or r < 1:
        raise ValueError(f'r: must be an integer >= 1, got {r!r}')
    layers = None
    if last_layers is not None:
        total = model.config.num_hidden_layers
        if not isinstance(last_layers, int) or not 0 < last_layers <= total:
            raise ValueError(f'last_layers: must be an integer in [1, {total}], got {last_layers!r}')
        layers = list(range(total - last_layers, total))
    return LoraConfig(r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, bias='none', task_type='CAUSAL_LM',
                      target_modules=list(target_modules or default_target_modules(model)),
                      layers_to_transform=layers, fan_in_fan_out=model.config.model_type == 'gpt2')


def switch_off_dropout(model):
    """Sets every dropout probability of ``model`` to 0 (``nn.Dropout`` modules and the float ``attention_dropout``
    / ``dropout`` attributes Hugging Face attention layers read in train mode). The frozen teacher must give the
    pretrained model's targets even when its adapters, and so the modules holding them, are in train mode (the
    runner's pre-epoch rule puts every module with a trainable parameter in train mode)."""
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.p = 0.0
        for attribute in ('attention_dropout', 'dropout'):
            if isinstance(getattr(module, attribute, None), float):
                setattr(module, attribute, 0.0)
    return model


@register_auxiliary_model_wrapper
class LoRATeacher(AuxiliaryModelWrapper):
    """A causal-LM teacher with LoRA adapters (trainable) on its frozen weights: ``self.model`` is the
    ``peft.PeftModel``. Its frozen parts run in eval mode (no dropout), the adapters in the box's mode.

    :param teacher_model: a Hugging Face causal LM (adapted in place by PEFT).
    :param r: LoRA rank. :param lora_alpha: LoRA scaling numerator (:math:`\\alpha / r` scales BA).
    :param lora_dropout: dropout on the adapters' input (default 0: the teacher's targets stay deterministic).
    :param target_modules: names of the linear layers to adapt (default by architecture).
    :param last_layers: adapt only the last L transformer blocks (None: every block).
    """
    def __init__(self, teacher_model, device, device_ids=None, distributed=False, r=16, lora_alpha=32,
                 lora_dropout=0.0, target_modules=None, last_layers=None):
        super().__init__()
        from peft import get_peft_model
        config = lora_config(teacher_model, r, lora_alpha, lora_dropout, target_modules, last_layers)
        self.model = get_peft_model(teacher_model, config)
        switch_off_dropout(self.model.get_base_model())
        self.to(device)
        self.train()
        trainable, total = count_parameters(self)
        logger.info('teacher: LoRA r=%d on %s%s: %s trainable / %s total parameters', r, ','.join(
            sorted(config.target_modules)), f' (last {last_layers} blocks)' if last_layers else '',
            f'{trainable:,}', f'{total:,}')

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def train(self, mode=True):
        """Train mode for the LoRA modules only (``lora_A``, ``lora_B``, ``lora_dropout``); the frozen base, its
        dropout layers included, stays in eval mode, so the adapted teacher's targets are those of the pretrained
        model plus the adapters."""
        nn.Module.train(self, False)
        if mode:
            for name, module in self.named_modules():
                if '.lora_' in f'.{name}':
                    module.training = True
        return self

    def save_adapter(self, directory):
        """Writes the PEFT adapter directory (``adapter_config.json`` + ``adapter_model.safetensors``)."""
        self.model.save_pretrained(directory)
        return directory


__all__ = ['LoRATeacher', 'default_target_modules', 'lora_config']
