"""Causal language models for the causal-LM runner, in the ``config_kwargs``/``tokenizer_kwargs``/``model_kwargs``
schema of the GLUE configs (torchdistill's Hugging Face example).

.. code-block:: yaml

    models:
      teacher_model:
        key: 'Qwen2.5-1.5B-Instruct'          # a label
        config_kwargs: {pretrained_model_name_or_path: 'Qwen/Qwen2.5-1.5B-Instruct'}
        tokenizer_kwargs: {pretrained_model_name_or_path: 'Qwen/Qwen2.5-1.5B-Instruct'}
        model_kwargs: {pretrained_model_name_or_path: 'Qwen/Qwen2.5-1.5B-Instruct', torch_dtype: 'bfloat16'}
      student_model:
        key: 'gpt2-4l-random'
        config_kwargs: {model_type: 'gpt2', n_layer: 4, n_embd: 256, n_head: 4, n_positions: 256}  # no weights:
        tokenizer_kwargs: {pretrained_model_name_or_path: ...}                                     # built from
        model_kwargs: {}                                                                         # the config
        src_ckpt: null          # torchdistill checkpoint (e.g. a teacher trained by an earlier config)

Without ``pretrained_model_name_or_path`` in ``model_kwargs`` the model is built from its config with random
weights (``config_kwargs`` then needs ``model_type``; ``vocab_size`` defaults to the tokenizer's size).
"""
import logging
import os

from torchdistill.common.main_util import load_ckpt

from ..engine.errors import ConfigError
from ..nlp.models import load_tokenizer, pretrained_error

logger = logging.getLogger(__name__)


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


def build_causal_lm(model_config, device, distributed, yaml_key):
    """``AutoModelForCausalLM`` from ``model_kwargs.pretrained_model_name_or_path`` (with ``config_kwargs``), or
    from the config alone (random weights); then ``src_ckpt`` (torchdistill format) if given."""
    from transformers import AutoModelForCausalLM
    model_kwargs = dict(model_config.get('model_kwargs') or {})
    name = model_kwargs.get('pretrained_model_name_or_path')
    tokenizer = None if name else load_tokenizer(model_config, yaml_key)
    config = build_config(model_config, yaml_key, tokenizer)
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
    return model.to(device)


def tokenizer_fingerprint(tokenizer):
    """What two tokenizers must agree on for token-level distillation: vocabulary and special tokens."""
    return (tokenizer.get_vocab(), tokenizer.eos_token, tokenizer.bos_token, tokenizer.unk_token)


def check_shared_tokenizer(teacher_config, student_config):
    """Token-level KD compares distributions over one vocabulary: teacher and student must share a tokenizer.
    Returns the student's tokenizer; raises :class:`ConfigError` naming both otherwise."""
    student = load_tokenizer(student_config, 'models.student_model')
    if teacher_config is None:
        return student
    teacher = load_tokenizer(teacher_config, 'models.teacher_model')
    if tokenizer_fingerprint(teacher) != tokenizer_fingerprint(student):
        names = [(c.get('tokenizer_kwargs') or {}).get('pretrained_model_name_or_path') for c in (teacher_config,
                                                                                                  student_config)]
        raise ConfigError(f'models.teacher_model.tokenizer_kwargs / models.student_model.tokenizer_kwargs: the '
                          f'teacher tokenizer `{names[0]}` ({len(teacher)} tokens) and the student tokenizer '
                          f'`{names[1]}` ({len(student)} tokens) differ; token-level distillation needs one shared '
                          'vocabulary (pick a student of the same model family)')
    return student


__all__ = ['build_causal_lm', 'build_config', 'check_shared_tokenizer']
