"""Every file a run reads goes through here, so that a missing, truncated or mismatched one stops the run with one
line naming the file and the YAML key (or option) that pointed to it, never with a library's traceback.

* :func:`read_checkpoint` -- ``torch.load`` of a checkpoint (``src_ckpt``, ``dst_ckpt`` for ``-test_only``, the
  ``-resume`` state, RCO anchors);
* :func:`load_state` / :func:`load_model_checkpoint` -- a state dict into a model; a checkpoint of another
  architecture is reported as counts of missing/unexpected/mis-shaped keys with a few examples;
* :func:`check_path` -- a file or directory named in the YAML;
* :func:`reading` -- around any other loading code (``-resume`` state, the saved teacher side, RCO anchors).

Hugging Face model/tokenizer directories: ``pesf_ext.nlp.models.pretrained_error``; GLUE files:
``pesf_ext.data.glue`` (both name the YAML key and the path the same way).

Nothing here writes: a run that stops on a bad input leaves every checkpoint on disk as it was.
"""
import contextlib
import os
import pickle
import re
import zipfile

import torch

from .errors import ConfigError

URL_PREFIXES = ('http://', 'https://')


def first_sentence(error, limit=160):
    text = ' '.join(str(error).split())
    text = text.split('. ')[0]
    return text if len(text) <= limit else text[:limit - 3] + '...'


def check_path(path, yaml_key, what='file', directory=False):
    """Raises :class:`ConfigError` unless ``path`` is an existing file (or directory)."""
    if path is None or str(path) == '':
        raise ConfigError(f'{yaml_key}: no {what} given')
    path = os.path.expanduser(str(path))
    exists = os.path.isdir(path) if directory else os.path.isfile(path)
    if not exists:
        kind = 'directory' if directory else 'file'
        other = ' (it is a directory)' if not directory and os.path.isdir(path) else \
            ' (it is a file)' if directory and os.path.isfile(path) else ''
        raise ConfigError(f'{yaml_key}: {what} {kind} not found: {path}{other}')
    return path


READ_ERRORS = (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, UnicodeDecodeError, ImportError, AttributeError)
STATE_DICT_ERROR = 'Error(s) in loading state_dict'


def _quoted_keys(text, label):
    match = re.search(label + r' key\(s\) in state_dict: ((?:"[^"]*"(?:, )?)+)', text)
    return re.findall(r'"([^"]*)"', match.group(1)) if match else []


def summarize_state_dict_error(text):
    """'132 missing keys (a, b, c, ...), 1 unexpected key (x)' from torch's load_state_dict message."""
    parts = []
    for label, name in (('Missing', 'missing'), ('Unexpected', 'unexpected')):
        keys = _quoted_keys(text, label)
        if keys:
            parts.append(f'{len(keys)} {name} key{"s" * (len(keys) != 1)} ({_examples(keys)})')
    shapes = re.findall(r'size mismatch for ([^:]+): copying a param with shape (torch.Size\([^)]*\)) from '
                        r'checkpoint, the shape in current model is (torch.Size\([^)]*\))', text)
    if shapes:
        key, theirs, ours = shapes[0]
        parts.append(f'{len(shapes)} shape{"s" * (len(shapes) != 1)} differ ({key}: {ours[11:-1]} in the model, '
                     f'{theirs[11:-1]} in the file)')
    return ', '.join(parts)


def describe_read_error(error):
    """What went wrong reading or loading a checkpoint, in a few words; None for an error that is not about the
    file (a bug, out of memory, ...)."""
    text = ' '.join(str(error).split())
    if isinstance(error, READ_ERRORS) or (isinstance(error, RuntimeError) and (
            'PytorchStreamReader' in text or 'zip archive' in text or 'storage' in text.lower())):
        return f'not a readable PyTorch file: truncated or corrupt? ({type(error).__name__}: {first_sentence(error)})'
    if isinstance(error, RuntimeError) and STATE_DICT_ERROR in text:
        summary = summarize_state_dict_error(text) or first_sentence(error)
        return f'does not fit the model: {summary}. Is it a checkpoint of another model or config?'
    if isinstance(error, ValueError) and 'parameter group' in text:
        return ('its optimizer state does not match train.optimizer (parameter groups or module_wise_configs '
                f'changed since it was saved?): {first_sentence(error)}')
    if isinstance(error, KeyError):
        return f'lacks {first_sentence(error)}: not a checkpoint this runner wrote, or from another config?'
    return None


@contextlib.contextmanager
def reading(path, yaml_key):
    """Turns an error raised while a checkpoint file is read or loaded into a model into one
    :class:`ConfigError` naming ``yaml_key`` and ``path`` (errors that are not about the file pass through)."""
    try:
        yield
    except ConfigError:
        raise
    except Exception as error:  # noqa: BLE001 (classified below; others re-raised)
        description = describe_read_error(error)
        if description is None:
            raise
        raise ConfigError(f'{yaml_key}: {path}: {description}') from error


def read_checkpoint(path, yaml_key, what='checkpoint'):
    """``torch.load(path)`` on the CPU; a missing, truncated or non-PyTorch file raises :class:`ConfigError`."""
    if isinstance(path, str) and path.startswith(URL_PREFIXES):
        try:
            return torch.hub.load_state_dict_from_url(path, map_location='cpu', progress=True)
        except Exception as error:  # noqa: BLE001 (network and format errors alike)
            raise ConfigError(f'{yaml_key}: could not download {what} {path}: {first_sentence(error)}') from error
    path = check_path(path, yaml_key, what)
    try:
        return torch.load(path, map_location='cpu', weights_only=False)
    except Exception as error:  # noqa: BLE001
        if isinstance(error, MemoryError):
            raise
        raise ConfigError(f'{yaml_key}: {path}: not a readable PyTorch {what} ({os.path.getsize(path):,} bytes): '
                          f'truncated or corrupt? ({type(error).__name__}: {first_sentence(error)})') from error


def _examples(keys, n=3):
    keys = list(keys)
    return ', '.join(keys[:n]) + (', ...' if len(keys) > n else '')


def mismatch_summary(model, state_dict):
    """'12 missing keys (a, b, c, ...), 1 unexpected key (x), 2 shapes differ (w: [3, 4] here, [5, 4] there)'."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [k for k in own if k in state_dict and hasattr(state_dict[k], 'shape')
              and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    parts = []
    if missing:
        parts.append(f'{len(missing)} missing key{"s" * (len(missing) != 1)} ({_examples(missing)})')
    if unexpected:
        parts.append(f'{len(unexpected)} unexpected key{"s" * (len(unexpected) != 1)} ({_examples(unexpected)})')
    if shapes:
        k = shapes[0]
        parts.append(f'{len(shapes)} shape{"s" * (len(shapes) != 1)} differ ({k}: {list(own[k].shape)} in the '
                     f'model, {list(state_dict[k].shape)} in the file)')
    return ', '.join(parts)


def load_state(model, state_dict, yaml_key, path, strict=True):
    """``model.load_state_dict(state_dict, strict)``; a mismatch raises :class:`ConfigError` naming the file."""
    if not isinstance(state_dict, dict):
        raise ConfigError(f'{yaml_key}: {path}: holds a {type(state_dict).__name__}, not a state dict')
    from .fsdp import load_full_state  # a model sharded by FSDP2 (speed.fsdp) takes the full state on every rank
    try:
        return load_full_state(model, state_dict, strict=strict)
    except (RuntimeError, KeyError, TypeError) as error:
        summary = mismatch_summary(model, state_dict) or first_sentence(error)
        raise ConfigError(f'{yaml_key}: {path}: does not fit {type(model).__name__}: {summary}. Is it a checkpoint '
                          'of another model or config?') from error


def load_model_checkpoint(path, model, yaml_key, strict=True):
    """torchdistill's ``load_ckpt(path, model=model)`` (the state under ``'model'``, else the whole file), through
    :func:`read_checkpoint` and :func:`load_state`."""
    checkpoint = read_checkpoint(path, yaml_key)
    state = checkpoint['model'] if isinstance(checkpoint, dict) and 'model' in checkpoint else checkpoint
    load_state(model, state, yaml_key, path, strict)
    return checkpoint
