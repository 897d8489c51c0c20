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
    check_lora_values(r, lora_alpha, lora_dropout)
    layers = None
    if last_layers is not None:
        total = model.config.num_hidden_layers
        if isinstance(last_layers, bool) or not isinstance(last_layers, int) or not 0 < last_layers <= total:
            raise ValueError(f'last_layers: must be an integer in [1, {total}], got {last_layers!r}')
        layers = list(range(total - last_layers, total))
    targets = target_modules or default_target_modules(model)
    targets = targets if isinstance(targets, str) else list(targets)  # a string is PEFT's regex (or 'all-linear')
    check_target_modules(model, targets)
    return LoraConfig(r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, bias='none', task_type='CAUSAL_LM',
                      target_modules=targets, layers_to_transform=layers,
                      fan_in_fan_out=model.config.model_type == 'gpt2')


def check_lora_values(r=16, lora_alpha=32, lora_dropout=0.0):
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f'r: must be an integer >= 1, got {r!r}')
    if isinstance(lora_alpha, bool) or not isinstance(lora_alpha, (int, float)) or not lora_alpha > 0:
        raise ValueError(f'lora_alpha: must be a number > 0, got {lora_alpha!r}')
    if isinstance(lora_dropout, bool) or not isinstance(lora_dropout, (int, float)) or not 0 <= lora_dropout < 1:
        raise ValueError(f'lora_dropout: must be in [0, 1), got {lora_dropout!r}')


def lora_wrappers(config):
    """(YAML key of its kwargs, side, kwargs) of every ``LoRATeacher`` wrapper of the training stages."""
    from ..engine.config import training_stages
    found = []
    for prefix, stage in training_stages(config):
        for side in ('teacher', 'student'):
            wrapper = (stage.get(side) or {}).get('auxiliary_model_wrapper') or {}
            if wrapper.get('key') == 'LoRATeacher':
                found.append((f'{prefix}.{side}.auxiliary_model_wrapper.kwargs', side, wrapper.get('kwargs') or {}))
    return found


def check_lora_kwargs(yaml_key, kwargs):
    """``LoRATeacher``'s YAML kwargs: known names (the nearest suggested) and values, before any model is built."""
    from ..engine.config import check_arguments
    from ..engine.errors import ConfigError
    if not isinstance(kwargs, dict):
        raise ConfigError(f'{yaml_key}: must be a mapping of LoRATeacher arguments, got {kwargs!r}')
    check_arguments(yaml_key, lora_config, kwargs, 'LoRATeacher')
    targets = kwargs.get('target_modules')
    if targets is not None and not isinstance(targets, str) and not (
            isinstance(targets, (list, tuple)) and targets and all(isinstance(t, str) for t in targets)):
        raise ConfigError(f'{yaml_key}.target_modules: a list of layer names (or null for the default), got '
                          f'{targets!r}')
    try:
        check_lora_values(**{k: v for k, v in kwargs.items() if k in ('r', 'lora_alpha', 'lora_dropout')})
    except ValueError as error:
        raise ConfigError(f'{yaml_key}.{error}') from error


def check_lora_on_model(yaml_key, model_config, kwargs):
    """Builds the module tree of a Hugging Face config on the meta device (no memory, no weights) and checks
    ``target_modules`` and ``last_layers`` against it; a :class:`ConfigError` naming ``yaml_key`` otherwise."""
    import torch
    from transformers import AutoModelForCausalLM
    from ..engine.errors import ConfigError
    with torch.device('meta'):
        skeleton = AutoModelForCausalLM.from_config(model_config)
    try:
        lora_config(skeleton, **kwargs)
    except ValueError as error:  # ours start with the argument's name ('target_modules: ...'), PEFT's do not
        named = str(error).split(':')[0] in ('r', 'lora_alpha', 'lora_dropout', 'target_modules', 'last_layers')
        raise ConfigError(f'{yaml_key}.{error}' if named else f'{yaml_key}: {error}') from error


def adaptable_layer_names(model):
    """{module name: type} of the layers LoRA can adapt (``nn.Linear``, ``nn.Embedding``, convolutions and
    transformers' ``Conv1D`` of GPT-2)."""
    from transformers.pytorch_utils import Conv1D
    kinds = (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d, Conv1D)
    return {name: type(module).__name__ for name, module in model.named_modules() if isinstance(module, kinds)}


def check_target_modules(model, target_modules):
    """Every entry of ``target_modules`` names adaptable layers of ``model`` as PEFT matches them (a module whose
    name is the entry or ends in '.' + entry; a string is a regular expression over full names, 'all-linear'
    every linear layer); a ValueError listing the model's linear layer names otherwise."""
    import re
    layers = adaptable_layer_names(model)
    linear = sorted({name.rsplit('.', 1)[-1] for name, kind in layers.items() if kind in ('Linear', 'Conv1D')})
    names = [name for name, _ in model.named_modules() if name]
    hint = f" the model's linear layers are named {', '.join(linear)}"
    if isinstance(target_modules, str):
        if target_modules != 'all-linear' and not any(re.fullmatch(target_modules, n) for n in names):
            raise ValueError(f'target_modules: the pattern {target_modules!r} (a string is a regular expression '
                             f'over full module names; a list names layers) matches no module;{hint}')
        return
    for target in target_modules:
        matched = [n for n in names if n == target or n.endswith(f'.{target}')]
        if not matched:
            raise ValueError(f'target_modules: no module is named {target!r};{hint}')
        other = [n for n in matched if n not in layers]
        if other:
            raise ValueError(f'target_modules: {target!r} names {other[0]} (not a linear layer), which LoRA cannot '
                             f'adapt;{hint}')


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

    def save_adapter(self, directory, state_dict=None):
        """Writes the PEFT adapter directory (``adapter_config.json`` + ``adapter_model.safetensors``);
        ``state_dict``: the adapter's whole tensors when the model is sharded
        (``pesf_ext.engine.fsdp.full_state_dict``)."""
        self.model.save_pretrained(directory, state_dict=state_dict)
        return directory


__all__ = ['LoRATeacher', 'default_target_modules', 'lora_config', 'check_target_modules', 'check_lora_values',
           'check_lora_kwargs', 'check_lora_on_model', 'lora_wrappers']
