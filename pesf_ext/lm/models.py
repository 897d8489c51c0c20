"""Causal language models for the causal-LM runner, in the ``config_kwargs``/``tokenizer_kwargs``/``model_kwargs``
schema of the GLUE configs (torchdistill's Hugging Face example).

.. code-block:: yaml

    models:
      teacher_model:
        key: 'Qwen2.5-1.5B-Instruct'          # a label
        config_kwargs: {pretrained_model_name_or_path: 'Qwen/Qwen2.5-1.5B-Instruct'}
        tokenizer_kwargs: {pretrained_model_name_or_path: 'Qwen/Qwen2.5-1.5B-Instruct'}
        model_kwargs: {pretrained_model_name_or_path: 'Qwen/Qwen2.5-1.5B-Instruct'}  # dtype: see load_dtype
      student_model:
        key: 'gpt2-4l-random'
        config_kwargs: {model_type: 'gpt2', n_layer: 4, n_embd: 256, n_head: 4, n_positions: 256}  # no weights:
        tokenizer_kwargs: {pretrained_model_name_or_path: ...}                                     # built from
        model_kwargs: {}                                                                         # the config
        src_ckpt: null          # torchdistill checkpoint (e.g. a teacher trained by an earlier config)

Without ``pretrained_model_name_or_path`` in ``model_kwargs`` the model is built from its config with random
weights (``config_kwargs`` then needs ``model_type``; ``vocab_size`` defaults to the tokenizer's size).

Trained models get fp32 weights, a frozen teacher (and a LoRA teacher's frozen base) keeps the checkpoint's stored
dtype (:func:`load_dtype`); teacher and student must share their tokenizer's id -> token map, not its special-token
roles (:func:`shared_vocabulary`); :func:`export_hf` writes the student back as a Hugging Face folder.
"""
import logging
import os

from torchdistill.common.main_util import load_ckpt

from ..engine.config import training_stages
from ..engine.errors import ConfigError
from ..nlp.models import load_tokenizer, pretrained_error

logger = logging.getLogger(__name__)
ADAPTER_WRAPPERS = ('LoRATeacher', 'AdapterTeacher')


def build_config(model_config, yaml_key, tokenizer=None):
    from transformers import AutoConfig
    kwargs = dict(model_config.get('config_kwargs') or {})
    try:
        if kwargs.get('pretrained_model_name_or_path'):
            return AutoConfig.from_pretrained(**kwargs)
        if 'model_type' not in kwargs:
            raise ConfigError(f'{yaml_key}.config_kwargs: give pretrained_model_name_or_path, or model_type (and the '
                              'architecture sizes) to build the model from its config')
        if tokenizer is not None:
            kwargs.setdefault('vocab_size', len(tokenizer))
            for name in ('bos_token_id', 'eos_token_id', 'pad_token_id'):
                if getattr(tokenizer, name, None) is not None:
                    kwargs.setdefault(name, getattr(tokenizer, name))
        return AutoConfig.for_model(**kwargs)
    except OSError as error:
        raise pretrained_error(yaml_key, kwargs.get('pretrained_model_name_or_path'), error) from error
    except (ValueError, TypeError) as error:
        raise ConfigError(f'{yaml_key}.config_kwargs: {error}') from error


ROLES = ('trained', 'frozen', 'adapted')
HALF_DTYPES = ('float16', 'bfloat16')


def dtype_name(dtype):
    """'float32', 'bfloat16', ... of a ``torch.dtype`` or a string (None stays None)."""
    return None if dtype is None else str(dtype).replace('torch.', '')


def short_dtype(dtype):
    """'fp32', 'bf16', 'fp16' (else the dtype's name): the precision in a summary line."""
    name = dtype_name(dtype)
    return {'float32': 'fp32', 'bfloat16': 'bf16', 'float16': 'fp16'}.get(name, name)


def load_dtype(model_kwargs, role, stored, yaml_key):
    """The ``dtype`` to load a model in, by the part it plays in the run (``role``):

    * 'trained' (the student, an FT-KD teacher, a teacher trained alone): fp32 weights, hence fp32 AdamW moments;
      the forward runs in 16-bit under the YAML's ``speed.amp: 'bf16'`` autocast. AdamW on bf16 weights would
      round away every update smaller than about 2^-8 of a weight (most of them at lr 2e-5);
    * 'frozen' (a KD teacher) and 'adapted' (the frozen base under PESF-KD's LoRA adapters): the checkpoint's
      stored dtype (Qwen and Llama are bf16 on the hub: half the memory); PEFT keeps the adapters in fp32.

    An explicit ``model_kwargs.dtype`` (or ``torch_dtype``) is the user's choice and wins, with a warning when it puts
    a trained model's weights in 16 bits."""
    import torch
    explicit = model_kwargs.get('dtype', model_kwargs.get('torch_dtype'))
    if explicit is not None:
        chosen = stored if explicit == 'auto' else explicit
        if role == 'trained' and dtype_name(chosen) in HALF_DTYPES:
            logger.warning('%s.model_kwargs: dtype %s trains %s weights with %s AdamW moments (small updates are '
                           'rounded away); remove it to train in fp32 under speed.amp autocast', yaml_key,
                           dtype_name(chosen), dtype_name(chosen), dtype_name(chosen))
        return explicit
    return torch.float32 if role == 'trained' else 'auto'


def build_causal_lm(model_config, device, distributed, yaml_key, role='trained'):
    """``AutoModelForCausalLM`` from ``model_kwargs.pretrained_model_name_or_path`` (with ``config_kwargs``), or
    from the config alone (random weights); then ``src_ckpt`` (torchdistill format) if given. ``role`` ('trained',
    'frozen' or 'adapted', see :func:`model_roles`) sets the weights' dtype (:func:`load_dtype`). The model's
    ``stored_dtype`` attribute keeps the checkpoint's own dtype (None: built from a config), which
    :func:`export_hf` writes back."""
    from transformers import AutoModelForCausalLM
    if role not in ROLES:
        raise ValueError(f'role: one of {ROLES}, got {role!r}')
    model_kwargs = dict(model_config.get('model_kwargs') or {})
    name = model_kwargs.get('pretrained_model_name_or_path')
    tokenizer = None if name else load_tokenizer(model_config, yaml_key)
    config = build_config(model_config, yaml_key, tokenizer)
    stored = getattr(config, 'dtype', None) if name else None
    model_kwargs.pop('torch_dtype', None)
    model_kwargs['dtype'] = load_dtype(dict(model_config.get('model_kwargs') or {}), role, stored, yaml_key)
    if not name and model_kwargs['dtype'] == 'auto':
        model_kwargs.pop('dtype')  # a model built from its config: the config's dtype (fp32 unless it says)
    try:
        if name:
            model = AutoModelForCausalLM.from_pretrained(config=config, **model_kwargs)
        else:
            model = AutoModelForCausalLM.from_config(config, **model_kwargs)
    except OSError as error:
        raise pretrained_error(yaml_key, name, error) from error
    src_ckpt = model_config.get('src_ckpt')
    if src_ckpt:
        path = os.path.expanduser(src_ckpt)
        if not os.path.isfile(path):
            raise ConfigError(f'{yaml_key}.src_ckpt: file not found: {src_ckpt} (train it first with the config '
                              'that writes it as dst_ckpt)')
        load_ckpt(path, model=model, strict=True)
    model.stored_dtype = dtype_name(stored)
    logger.info('%s: %s weights (%s%s)', yaml_key, short_dtype(model.dtype), role,
                f', stored as {dtype_name(stored)}' if stored is not None else '')
    return model.to(device)


def model_roles(config):
    """The part each model of a causal-LM YAML plays, for :func:`load_dtype`: the student ('trained'), and the
    teacher: 'adapted' when a stage wraps it in adapters (``train.teacher.auxiliary_model_wrapper``: LoRATeacher,
    AdapterTeacher; its base stays frozen), 'trained' when a stage trains it whole (``requires_grad`` true with no
    adapters and an optimizer group for it: ``is_teacher: True``, or no ``module_wise_configs``), else 'frozen'.
    Returns ``{'models.teacher_model': ..., 'models.student_model' (or 'models.model'): 'trained'}``."""
    models = config.get('models') or {}
    roles = {f'models.{key}': 'trained' for key in ('student_model', 'model') if key in models}
    if 'teacher_model' not in models:
        return roles
    role = 'frozen'
    for _, stage in training_stages(config):
        teacher = stage.get('teacher') or {}
        groups = (stage.get('optimizer') or {}).get('module_wise_configs') or []
        if (teacher.get('auxiliary_model_wrapper') or {}).get('key') in ADAPTER_WRAPPERS:
            role = 'adapted' if role == 'frozen' else role
        elif teacher.get('requires_grad', True) and (not groups or any(g.get('is_teacher') for g in groups)):
            role = 'trained'
    roles['models.teacher_model'] = role
    return roles


def describe_precision(model):
    """What a model's weights are held in, e.g. 'fp32 weights' or 'bf16 base + fp32 LoRA' (PEFT adapters:
    parameters named ``lora_*``)."""
    dtypes = {'adapter': set(), 'base': set()}
    for name, parameter in model.named_parameters():
        dtypes['adapter' if '.lora_' in f'.{name}' else 'base'].add(short_dtype(parameter.dtype))
    base = '/'.join(sorted(dtypes['base']))
    if not dtypes['adapter']:
        return f'{base} weights'
    return f'{base} base + {"/".join(sorted(dtypes["adapter"]))} LoRA'


def export_hf(model, tokenizer, directory, state_dict=None, dtype=None):
    """Writes ``model`` as a Hugging Face folder (``save_pretrained``: config.json, model.safetensors,
    generation_config.json) with ``tokenizer``, which ``AutoModelForCausalLM.from_pretrained``, vLLM and
    lm-eval-harness read directly. Call it on the main process only.

    ``state_dict`` (e.g. a full state dict gathered from FSDP2 shards) replaces the model's own. Floating-point
    tensors are written in ``dtype`` (default: the model's ``stored_dtype``, i.e. the dtype of the checkpoint it
    was loaded from, so a bf16 hub model comes back bf16; fp32 for a model built from a config), and config.json's
    ``dtype`` says the dtype written. Returns ``directory``."""
    import torch
    dtype = getattr(torch, dtype_name(dtype or getattr(model, 'stored_dtype', None) or model.dtype))
    source = model.state_dict() if state_dict is None else state_dict
    seen, tensors = set(), {}
    for key, tensor in source.items():  # tied weights (embeddings / lm_head) once, as save_pretrained does
        if tensor.device.type != 'meta' and tensor.data_ptr() in seen and tensor.numel():
            continue
        seen.add(tensor.data_ptr())
        tensors[key] = tensor.detach().to('cpu', dtype) if tensor.is_floating_point() else tensor.detach().cpu()
    model.save_pretrained(directory, state_dict=tensors)
    previous = model.config.dtype
    model.config.dtype = dtype_name(dtype)  # save_pretrained wrote the parameters' dtype, not the tensors'
    try:
        model.config.save_pretrained(directory)
    finally:
        model.config.dtype = previous
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    return directory


def id_to_token(tokenizer):
    """id -> token string of every id of a Hugging Face tokenizer, added (special) tokens included."""
    return {index: token for token, index in tokenizer.get_vocab().items()}


def tokenizer_name(model_config):
    return (model_config.get('tokenizer_kwargs') or {}).get('pretrained_model_name_or_path')


def shared_vocabulary(teacher, student, teacher_name=None, student_name=None):
    """What token-level distillation needs of two tokenizers: the same id -> token map over every id the data
    (tokenized with the student's tokenizer) can hold, ``range(len(student))``. Special-token roles may differ:
    Qwen2.5-*-Instruct ends a turn with ``<|im_end|>`` (id 151645), the base models with ``<|endoftext|>`` (151643),
    over one vocabulary of 151,665 ids. Ids past the student's (extra teacher tokens) are dropped from the
    teacher's distribution, as its padded output rows are.

    Returns ``{'size': V, 'eos_id', 'eos_token'}`` (the student's end of text: the one end-of-response id of the
    run, for the data and for both models' generation), plus ``'teacher_eos_id'``/``'teacher_eos_token'`` and
    ``'teacher_extra_ids'`` when there is a teacher. Raises one :class:`ConfigError` line naming both
    ``tokenizer_kwargs`` keys and the first id whose token differs."""
    info = {'size': len(student), 'eos_id': student.eos_token_id, 'eos_token': student.eos_token}
    if teacher is None:
        return info
    teacher_map, student_map = id_to_token(teacher), id_to_token(student)
    for index in range(len(student)):
        if teacher_map.get(index) != student_map.get(index):
            raise ConfigError(
                f'models.teacher_model.tokenizer_kwargs / models.student_model.tokenizer_kwargs: the teacher tokenizer '
                f'`{teacher_name}` ({len(teacher)} tokens) and the student tokenizer `{student_name}` ({len(student)} '
                f'tokens) differ first at id {index} (teacher {teacher_map.get(index)!r}, student '
                f'{student_map.get(index)!r}); token-level distillation needs one shared vocabulary (pick a student '
                'of the same model family)')
    info.update(teacher_eos_id=teacher.eos_token_id, teacher_eos_token=teacher.eos_token,
                teacher_extra_ids=len(teacher) - len(student))
    return info


def describe_vocabulary(info):
    """One log line for :func:`shared_vocabulary`'s result."""
    line = f"shared vocabulary: {info['size']:,} ids; end of response: id {info['eos_id']} {info['eos_token']!r}" \
           " (the student tokenizer's eos, for the data and for both models' generation)"
    if 'teacher_eos_id' in info and info['teacher_eos_id'] != info['eos_id']:
        line += f"; the teacher tokenizer's own eos, id {info['teacher_eos_id']} {info['teacher_eos_token']!r}, is " \
                'not used'
    if info.get('teacher_extra_ids'):
        line += f"; the teacher tokenizer's {info['teacher_extra_ids']} ids past the student's are left out"
    return line


def check_shared_tokenizer(teacher_config, student_config):
    """Token-level KD compares distributions over one vocabulary: teacher and student must share the id -> token
    map (:func:`shared_vocabulary`). Returns ``(student tokenizer, vocabulary info)``; raises :class:`ConfigError`
    naming both tokenizers otherwise."""
    student = load_tokenizer(student_config, 'models.student_model')
    teacher = None if teacher_config is None else load_tokenizer(teacher_config, 'models.teacher_model')
    info = shared_vocabulary(teacher, student, teacher_config and tokenizer_name(teacher_config),
                             tokenizer_name(student_config))
    logger.info(describe_vocabulary(info))
    return student, info


def check_output_rows(models, vocab_size):
    """Every model's output layer must have a row per shared token id (more rows are padding, dropped by the
    losses and metrics: Qwen2.5-7B has 152,064 rows, 0.5B/1.5B 151,936, over 151,665 ids). ``models``: yaml key ->
    model. One :class:`ConfigError` line otherwise."""
    for key, model in models.items():
        rows = output_rows(model)
        if rows is not None and rows < vocab_size:
            raise ConfigError(f'{key}: its output layer has {rows:,} rows, fewer than the {vocab_size:,} ids of the '
                              'shared tokenizer (a different vocabulary: pick a model of the same family)')


def output_rows(model):
    """Rows of a causal LM's output layer (its logits' last dimension), or None when it has none."""
    head = model.get_output_embeddings() if hasattr(model, 'get_output_embeddings') else None
    return None if head is None else head.weight.shape[0]


__all__ = ['build_causal_lm', 'build_config', 'check_shared_tokenizer', 'shared_vocabulary', 'check_output_rows',
           'model_roles', 'load_dtype', 'describe_precision', 'export_hf']
