"""Loading and checking a YAML before hours of training are spent on it.

Every problem is reported as one :class:`ConfigError` whose message starts with the YAML key (or the file)
at fault and, for unknown names, lists the closest valid ones. torchdistill 1.x builds datasets while the YAML
is read (``!import_call``), so data files are checked then, by the dataset builders themselves; everything
else here runs before the models are built or a step is taken.
"""
import copy
import difflib
import inspect
import math
import os
import re

import torch

import yaml
from torchdistill.common import yaml_util
from torchdistill.common.main_util import import_dependencies
from torchdistill.core.interfaces import registry as proc_registry
from torchdistill.losses import registry as loss_registry
from torchdistill.models import registry as model_registry
from torchdistill.optim import registry as optim_registry

from ..adapters import inject_adapters
from .errors import ConfigError
from .models import is_known_model_key
from .values import validate_values

ONLINE_TEACHER_LOSSES = {'FTKDLoss', 'DMLLoss', 'KDCLLoss'}
ADAPTER_LOSSES = {'PESFKDLoss'}
PROCESS_REGISTRIES = {
    'pre_epoch_process': proc_registry.PRE_EPOCH_PROC_FUNC_DICT,
    'pre_forward_process': proc_registry.PRE_FORWARD_PROC_FUNC_DICT,
    'post_forward_process': proc_registry.POST_FORWARD_PROC_FUNC_DICT,
    'post_epoch_process': proc_registry.POST_EPOCH_PROC_FUNC_DICT,
}


def close_matches(name, candidates, n=5):
    matches = difflib.get_close_matches(str(name), list(candidates), n=n, cutoff=0.5)
    return f' Closest: {", ".join(matches)}.' if matches else ''


def load_config(path):
    """Reads a torchdistill YAML (with its ``!import_call`` tags) and imports its ``dependencies``."""
    if not os.path.isfile(path):
        raise ConfigError(f'--config: file not found: {path}')
    try:
        config = yaml_util.load_yaml_file(os.path.expanduser(path))
    except yaml.YAMLError as error:
        raise ConfigError(f'{path}: not valid YAML: {error}') from error
    except FileNotFoundError as error:  # e.g. a dataset whose files are missing, raised while the YAML is built
        raise ConfigError(f'{path} (datasets): {error}') from error
    except (OSError, RuntimeError) as error:  # a dataset built while the YAML is read: download failed, files corrupt
        raise ConfigError(f'{path} (datasets): could not build a dataset ({type(error).__name__}: '
                          f'{" ".join(str(error).split())[:200]}); without internet, put the data under '
                          f'{_dataset_roots(path)} first') from error
    if not isinstance(config, dict):
        raise ConfigError(f'{path}: expected a mapping at the top level')
    import_dependencies(config.get('dependencies'))
    return config


def _dataset_roots(path):
    """The ``root:`` values of a YAML's datasets, as written (for the message when one cannot be built)."""
    with open(os.path.expanduser(path)) as f:
        roots = re.findall(r'^\s*root:\s*(?:&\w+\s+)?([^*\s]\S*)', f.read(), re.MULTILINE)
    return ' / '.join(sorted(set(roots))) + " (datasets' kwargs.root)" if roots else "the datasets' kwargs.root"


def _check_key(yaml_key, key, registry_dicts, what):
    known = set().union(*registry_dicts)
    if key not in known:
        raise ConfigError(f'{yaml_key}: unknown {what} `{key}`.{close_matches(key, known)}')


def _check_ckpt(yaml_key, path):
    if path and not str(path).startswith(('http://', 'https://')) and not os.path.isfile(os.path.expanduser(path)):
        raise ConfigError(f'{yaml_key}: checkpoint file not found: {path}')


TOP_LEVEL_KEYS = {'dependencies', 'datasets', 'models', 'train', 'test', 'settings', 'speed'}
TRAIN_KEYS = {'log_freq', 'num_epochs', 'train_data_loader', 'val_data_loader', 'optimizer', 'scheduler', 'criterion',
              'teacher', 'student', 'model', 'pre_epoch_process', 'pre_forward_process', 'post_forward_process',
              'post_epoch_process', 'criterion_targets', 'epoch_metrics', 'anchor_epochs', 'rco'}


def check_known_keys(config):
    """Top-level sections and ``train`` (and stage) keys: a misspelt one would be silently ignored."""
    for key in config:
        if key not in TOP_LEVEL_KEYS:
            raise ConfigError(f'{key}: unknown top-level section.{close_matches(key, TOP_LEVEL_KEYS)} '
                              f'Known: {", ".join(sorted(TOP_LEVEL_KEYS))}.')
    train = config.get('train')
    if train is None:
        return
    if not isinstance(train, dict):
        raise ConfigError(f'train: must be a mapping, got {type(train).__name__}')
    stages = [(f'train.{k}', v) for k, v in train.items() if str(k).startswith('stage')]
    for prefix, block in [('train', train)] + stages:
        if not isinstance(block, dict):
            raise ConfigError(f'{prefix}: must be a mapping, got {type(block).__name__}')
        for key in block:
            if key not in TRAIN_KEYS and not (prefix == 'train' and str(key).startswith('stage')):
                raise ConfigError(f'{prefix}.{key}: unknown key.{close_matches(key, TRAIN_KEYS)}')


def _signature_names(fn):
    """Keyword names ``fn`` accepts, or None when it takes ``**kwargs`` (or has no readable signature)."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def check_arguments(yaml_key, fn, kwargs, what):
    """Every key of ``kwargs`` (a YAML ``kwargs`` mapping) is an argument of ``fn``; the constructor would raise a
    TypeError without the YAML key."""
    if not isinstance(kwargs, dict):
        return
    names = _signature_names(fn)
    if names is None:
        return
    for name in kwargs:
        if name not in names:
            raise ConfigError(f'{yaml_key}.{name}: not an argument of {what}.'
                              f'{close_matches(name, names - {"self", "params"})}')


UNEXPECTED_ARGUMENT = re.compile(r"(?:(\w+)\.__init__\(\)|(\w+)\(\)) got an unexpected keyword argument '(\w+)'")


def argument_error(error, node, prefix):
    """A ConfigError naming the YAML key of the argument a constructor refused (a loss or wrapper that forwards
    ``**kwargs`` to another class, which the signature check cannot see); ``error`` itself when it is not one."""
    match = UNEXPECTED_ARGUMENT.search(str(error))
    if not isinstance(error, TypeError) or match is None:
        return error
    from .values import walk
    owner, argument = match.group(1) or match.group(2), match.group(3)
    keys = [key for key, name, _ in walk(node, prefix) if name == argument]
    if not keys:
        return error
    return ConfigError(f'{keys[0]}: not an argument of {owner}')


def criterion_terms(criterion_config, yaml_key='train.criterion'):
    """Yields (yaml key, loss key, kwargs) for every mid-level term of a torchdistill criterion config."""
    for name, term in ((criterion_config.get('kwargs') or {}).get('sub_terms') or {}).items():
        sub = term.get('criterion', {})
        yield f'{yaml_key}.kwargs.sub_terms.{name}', sub.get('key'), sub.get('kwargs') or {}, term


def training_stages(config):
    """(YAML key, stage dict) of every training stage: ``train.stageN`` of a multi-stage YAML, else ``train``."""
    train = config.get('train') or {}
    return [(f'train.{k}', v) for k, v in train.items() if k.startswith('stage')] or ([('train', train)] if train else [])


def fill_taid_total_steps(config, world_size=1, max_steps_per_epoch=None):
    """TAID's schedule (``TokenKDLoss`` with ``divergence: 'taid'``) needs the number of training steps: where the
    YAML leaves ``taid.total_steps`` null it becomes epochs x steps per epoch of the stage's training data
    (ceil(samples / batch size / processes), floor with ``drop_last``; capped by ``--max_steps_per_epoch``)."""
    for prefix, stage in training_stages(config):
        criterion = stage.get('criterion') or {}
        terms = [kwargs for _, key, kwargs, _ in criterion_terms(criterion, f'{prefix}.criterion')
                 if key == 'TokenKDLoss' and kwargs.get('divergence') == 'taid']
        if not terms or not stage.get('train_data_loader'):
            continue
        loader = stage['train_data_loader']
        per_process = len(config['datasets'][loader['dataset_id']]) / max(world_size, 1)
        batch = loader['kwargs']['batch_size']
        steps = int(per_process // batch) if loader['kwargs'].get('drop_last') else math.ceil(per_process / batch)
        if max_steps_per_epoch is not None:
            steps = min(steps, max_steps_per_epoch)
        for kwargs in terms:
            taid = kwargs.get('taid') or {}
            kwargs['taid'] = taid
            if taid.get('total_steps') is None:
                taid['total_steps'] = max(steps * stage['num_epochs'], 1)


def fill_vocab_size(config, vocab_size):
    """Every ``TokenKDLoss`` term whose YAML leaves ``vocab_size`` null (or out) gets the shared tokenizer's size V,
    so its losses compare the first V logit columns of models whose output layers are padded past the tokenizer
    (as :func:`fill_taid_total_steps` fills TAID's steps). A value in the YAML is kept. Returns the terms' keys."""
    filled = []
    for prefix, stage in training_stages(config):
        criterion = stage.get('criterion') or {}
        for term_key, key, _, term in criterion_terms(criterion, f'{prefix}.criterion'):
            if key != 'TokenKDLoss':
                continue
            sub = term['criterion']
            if sub.get('kwargs') is None:
                sub['kwargs'] = {}
            if sub['kwargs'].get('vocab_size') is None:
                sub['kwargs']['vocab_size'] = int(vocab_size)
                filled.append(term_key)
    return filled


def _validate_stage(stage, key_prefix, has_teacher, needs_training):
    criterion = stage.get('criterion')
    if criterion is None:
        if needs_training:
            raise ConfigError(f'{key_prefix}.criterion: missing')
        return
    _check_key(f'{key_prefix}.criterion.key', criterion.get('key'), [loss_registry.HIGH_LEVEL_LOSS_DICT],
               'high-level loss')
    loss_keys = set()
    for term_key, loss_key, kwargs, term in criterion_terms(criterion, f'{key_prefix}.criterion'):
        registries = [loss_registry.MIDDLE_LEVEL_LOSS_DICT, loss_registry.LOW_LEVEL_LOSS_DICT, loss_registry.LOSS_DICT]
        _check_key(f'{term_key}.criterion.key', loss_key, registries, 'loss')
        loss_class = next(r[loss_key] for r in registries if loss_key in r)
        check_arguments(f'{term_key}.criterion.kwargs', loss_class, kwargs, loss_key)
        loss_keys.add(loss_key)
    for proc_key, registry in PROCESS_REGISTRIES.items():
        if stage.get(proc_key) is not None:
            _check_key(f'{key_prefix}.{proc_key}', stage[proc_key], [registry], 'process')
    for side in ('teacher', 'student'):
        side_config = stage.get(side) or {}
        wrapper = side_config.get('auxiliary_model_wrapper') or {}
        if wrapper.get('key') is not None:
            _check_key(f'{key_prefix}.{side}.auxiliary_model_wrapper.key', wrapper['key'],
                       [model_registry.AUXILIARY_MODEL_WRAPPER_DICT], 'auxiliary model wrapper')
        if side_config.get('forward_proc') is not None:
            _check_key(f'{key_prefix}.{side}.forward_proc', side_config['forward_proc'],
                       [proc_registry.FORWARD_PROC_FUNC_DICT], 'forward process')
        _check_ckpt(f'{key_prefix}.{side}.src_ckpt', side_config.get('src_ckpt'))
    optimizer = stage.get('optimizer') or {}
    if optimizer.get('key') is not None:
        _check_key(f'{key_prefix}.optimizer.key', optimizer['key'], [optim_registry.OPTIM_DICT], 'optimizer')
        optimizer_class = optim_registry.OPTIM_DICT[optimizer['key']]
        check_arguments(f'{key_prefix}.optimizer.kwargs', optimizer_class, optimizer.get('kwargs'), optimizer['key'])
        for i, entry in enumerate(optimizer.get('module_wise_configs') or optimizer.get('module_wise_kwargs') or []):
            if isinstance(entry, dict):
                check_arguments(f'{key_prefix}.optimizer.module_wise_configs[{i}].kwargs', optimizer_class,
                                entry.get('kwargs'), optimizer['key'])
    scheduler = stage.get('scheduler') or {}
    if scheduler.get('key') is not None:
        _check_key(f'{key_prefix}.scheduler.key', scheduler['key'], [optim_registry.SCHEDULER_DICT], 'scheduler')
        check_arguments(f'{key_prefix}.scheduler.kwargs', optim_registry.SCHEDULER_DICT[scheduler['key']],
                        scheduler.get('kwargs'), scheduler['key'])
    if has_teacher:
        _validate_teacher_side(stage, key_prefix, loss_keys)


def _validate_teacher_side(stage, key_prefix, loss_keys):
    teacher = stage.get('teacher') or {}
    wrapper = teacher.get('auxiliary_model_wrapper') or {}
    updatable = teacher.get('requires_grad', True)
    if loss_keys & (ONLINE_TEACHER_LOSSES | ADAPTER_LOSSES) and not updatable:
        method = sorted(loss_keys & (ONLINE_TEACHER_LOSSES | ADAPTER_LOSSES))[0]
        raise ConfigError(f'{key_prefix}.teacher.requires_grad: {method} trains the teacher side, but the teacher '
                          'is frozen (requires_grad: False); set it to True')
    if loss_keys & ADAPTER_LOSSES:
        if wrapper.get('key') != 'AdapterTeacher':
            raise ConfigError(f'{key_prefix}.teacher.auxiliary_model_wrapper: PESFKDLoss needs adapters on the '
                              "teacher (key: 'AdapterTeacher'); without them the teacher side has nothing to train")
        kwargs = wrapper.get('kwargs') or {}
        if not kwargs.get('adapters'):
            raise ConfigError(f'{key_prefix}.teacher.auxiliary_model_wrapper.kwargs.adapters: empty; PESF-KD '
                              'needs at least one adapter')
        if kwargs.get('freeze_base', True) is False:
            raise ConfigError(f'{key_prefix}.teacher.auxiliary_model_wrapper.kwargs.freeze_base: PESF-KD trains '
                              'adapters on a frozen teacher; set freeze_base: True (use FTKDLoss to fine-tune it)')


def validate_config(config, needs_training=True):
    """Static checks of a loaded YAML (see module docstring); raises :class:`ConfigError`."""
    check_known_keys(config)
    validate_values(config)
    models = config.get('models')
    if not isinstance(models, dict):
        raise ConfigError('models: missing')
    for name, model_config in models.items():
        if not isinstance(model_config, dict):
            continue
        key = model_config.get('key')
        text_model = 'model_kwargs' in model_config  # Hugging Face schema: the key is a label
        if not text_model and not is_known_model_key(key) and not model_config.get('repo_or_dir'):
            raise ConfigError(f'models.{name}.key: unknown model `{key}`.'
                              f'{close_matches(key, known_model_keys())}')
        _check_ckpt(f'models.{name}.src_ckpt', model_config.get('src_ckpt'))
    student_name = 'student_model' if 'student_model' in models else 'model'
    if student_name not in models:
        raise ConfigError('models.student_model: missing (or models.model for training without a teacher)')
    if needs_training and not models[student_name].get('dst_ckpt'):
        raise ConfigError(f'models.{student_name}.dst_ckpt: missing; where should the trained student be saved?')
    datasets = config.get('datasets') or {}
    train = config.get('train') or {}
    stages = [(f'train.{k}', v) for k, v in train.items() if k.startswith('stage')] or [('train', train)]
    for prefix, stage in stages:
        for loader in ('train_data_loader', 'val_data_loader'):
            dataset_id = (stage.get(loader) or {}).get('dataset_id')
            if dataset_id is not None and dataset_id not in datasets:
                raise ConfigError(f'{prefix}.{loader}.dataset_id: `{dataset_id}` is not in datasets.'
                                  f'{close_matches(dataset_id, datasets)}')
        if needs_training:
            _validate_stage(stage, prefix, 'teacher_model' in models, needs_training)
    test_loader = (config.get('test') or {}).get('test_data_loader') or {}
    if test_loader.get('dataset_id') not in datasets:
        raise ConfigError(f'test.test_data_loader.dataset_id: `{test_loader.get("dataset_id")}` is not in '
                          f'datasets.{close_matches(test_loader.get("dataset_id"), datasets)}')


def known_model_keys():
    from torchvision import models as tv_models
    return set(model_registry.MODEL_DICT) | {k for k in tv_models.__dict__ if k.islower() and not k.startswith('_')}


def _module_names(model):
    return {name for name, _ in model.named_modules() if name}


def _check_path(yaml_key, path, model, wrapped):
    names = _module_names(model)
    candidate = path[1:] if path.startswith('+') else path
    if candidate in names or candidate == '.':
        return
    if wrapped and candidate.startswith('model.') and candidate[len('model.'):] in names:
        return
    if wrapped and candidate.split('.')[0] not in names:
        return  # a module of the auxiliary wrapper itself (e.g. 'normalizer'); checked when torchdistill hooks it
    raise ConfigError(f'{yaml_key}: module path `{path}` is not in the model.{close_matches(candidate, names)}')


def validate_model_paths(config, teacher, student):
    """Checks forward-hook paths and adapter targets against the built models, listing the nearest real paths."""
    train = config.get('train') or {}
    stages = [(f'train.{k}', v) for k, v in train.items() if k.startswith('stage')] or [('train', train)]
    for prefix, stage in stages:
        _check_optimizer_paths(stage, prefix, teacher, student)
        for side, model in (('teacher', teacher), ('student', student)):
            side_config = stage.get(side) or {}
            if model is None or not side_config:
                continue
            wrapper = side_config.get('auxiliary_model_wrapper') or {}
            wrapped = wrapper.get('key') is not None
            hooks = side_config.get('forward_hook') or {}
            for io in ('input', 'output'):
                for i, path in enumerate(hooks.get(io) or []):
                    _check_path(f'{prefix}.{side}.forward_hook.{io}[{i}]', path, model, wrapped)
            if wrapper.get('key') == 'AdapterTeacher':
                _check_adapters(f'{prefix}.{side}.auxiliary_model_wrapper.kwargs.adapters', model,
                                wrapper.get('kwargs') or {})


def _check_optimizer_paths(stage, prefix, teacher, student):
    """``optimizer.module_wise_configs[i].module`` must name a module of its side (``'*'``: every module not listed,
    see :mod:`pesf_ext.engine.optimizer_groups`); torchdistill would fail with ``'NoneType' ... 'parameters'``."""
    optimizer = stage.get('optimizer') or {}
    list_key = 'module_wise_configs' if 'module_wise_configs' in optimizer else 'module_wise_kwargs'
    entries = optimizer.get(list_key) or []
    if not isinstance(entries, list):
        raise ConfigError(f'{prefix}.optimizer.{list_key}: must be a list of {{module, is_teacher, kwargs}} entries')
    for i, entry in enumerate(entries):
        key = f'{prefix}.optimizer.{list_key}[{i}]'
        if not isinstance(entry, dict) or not isinstance(entry.get('module'), str):
            raise ConfigError(f'{key}.module: missing (a module path such as layer1, or \'*\' for every module '
                              'not listed)')
        unknown = set(entry) - {'module', 'is_teacher', 'kwargs'}
        if unknown:
            raise ConfigError(f'{key}: unknown key(s) {sorted(unknown)}; an entry has module, is_teacher, kwargs')
        if entry['module'] == '*':
            continue
        side = 'teacher' if entry.get('is_teacher', False) else 'student'
        model = teacher if side == 'teacher' else student
        if model is None:
            raise ConfigError(f'{key}.is_teacher: there is no teacher model in this config')
        wrapped = ((stage.get(side) or {}).get('auxiliary_model_wrapper') or {}).get('key') is not None
        _check_path(f'{key}.module', entry['module'], model, wrapped)


def _check_adapters(yaml_key, teacher, kwargs):
    """Injects the adapters into a copy of the teacher (and runs it once when ``input_shape`` is given), so wrong
    paths, kinds, options or dimensions fail now with the YAML key, not inside torchdistill's set-up."""
    probe = copy.deepcopy(teacher)
    try:
        inject_adapters(probe, kwargs.get('adapters') or [], kwargs.get('input_shape'))
        if kwargs.get('input_shape'):
            device = next(probe.parameters()).device
            with torch.no_grad():
                probe.eval()(torch.zeros(*kwargs['input_shape'], device=device))
    except (ValueError, TypeError, RuntimeError) as error:
        raise ConfigError(f'{yaml_key}: {error}') from error
