"""Dotted command-line overrides of a loaded YAML, shared by every runner and tool::

    --set train.num_epochs=5 train.criterion.kwargs.sub_terms.pesfkd.criterion.kwargs.temperature=2.0
    --set train.optimizer.module_wise_configs.6.kwargs.lr=1e-4     # list items by index
    --set +train.post_epoch_process=epoch_metrics_post_epoch_process   # '+': add a key the YAML lacks

Values are read as YAML (``5`` int, ``2.0`` float, ``[15, 25]`` list, ``null``, ``'text'``). Each override is
checked before anything runs: the path must exist (a leading ``+`` allows a new last key under an existing
mapping), and the new value must have the type of the old one (an int is accepted for a float, a number written
as YAML 1.1 reads it, e.g. ``2e-5``, too; anything replaces a null). Objects that torchdistill builds while the
YAML is read (``!import_call`` datasets and transforms) cannot be overridden: edit the YAML for those.
"""
import yaml

from .errors import ConfigError

PLAIN_TYPES = (dict, list, str, bool, int, float)


def parse_override(text):
    """'a.b.c=value' -> (['a', 'b', 'c'], value, adds) with ``adds`` True for a leading '+'."""
    if '=' not in text:
        raise ConfigError(f'--set {text}: expected KEY=VALUE, e.g. train.num_epochs=5')
    key, raw = text.split('=', 1)
    adds = key.startswith('+')
    key = key.lstrip('+').strip()
    parts = key.split('.')
    if not key or any(not part for part in parts):
        raise ConfigError(f'--set {text}: empty key component in `{key}`')
    try:
        value = yaml.safe_load(raw) if raw.strip() else ''
    except yaml.YAMLError as error:
        raise ConfigError(f'--set {key}: value `{raw}` is not valid YAML ({error}); quote a string that holds one of '
                          f"YAML's special characters (? : # [ ] {{ }} , & * !), e.g. ['layer3.?']") from error
    return parts, value, adds


def _child(node, part, key_so_far):
    if isinstance(node, dict):
        if part not in node:
            raise ConfigError(f'--set {key_so_far}: no such key in the YAML.{_near(part, node)}')
        return node[part]
    if isinstance(node, list):
        if not part.lstrip('-').isdigit() or not -len(node) <= int(part) < len(node):
            raise ConfigError(f'--set {key_so_far}: `{part}` is not an index of this {len(node)}-item list')
        return node[int(part)]
    raise ConfigError(f'--set {key_so_far}: the YAML value above it is a {type(node).__name__}, not a mapping or '
                      'list' + ('' if isinstance(node, PLAIN_TYPES) or node is None else
                               ' (built while the YAML is read, e.g. by !import_call: edit the YAML instead)'))


def _near(part, mapping):
    import difflib
    matches = difflib.get_close_matches(part, [str(k) for k in mapping], n=3, cutoff=0.5)
    return f' Closest: {", ".join(matches)}.' if matches else f' Keys there: {", ".join(map(str, mapping))}.'


def _checked(key, old, new):
    """``new`` converted to ``old``'s type, or a ConfigError naming ``key``."""
    if old is None or new is None:
        return new
    if not isinstance(old, PLAIN_TYPES):
        raise ConfigError(f'--set {key}: the value is a {type(old).__name__} built while the YAML is read '
                          '(!import_call); edit the YAML instead')
    if isinstance(old, bool) or isinstance(new, bool):
        if isinstance(old, bool) and isinstance(new, bool):
            return new
    elif isinstance(old, float) and isinstance(new, (int, float)):
        return float(new)
    elif isinstance(old, (int, float)) and isinstance(new, str):
        try:
            number = float(new)
        except ValueError:
            pass
        else:
            if isinstance(old, float):
                return number
    elif isinstance(new, type(old)):
        return new
    raise ConfigError(f'--set {key}: expected {type(old).__name__} like the YAML value {old!r}, '
                      f'got {type(new).__name__} {new!r}')


def apply_overrides(config, overrides):
    """Applies ``overrides`` (list of 'KEY=VALUE' strings) to ``config`` in place, all checked first; returns the
    list of (key, old, new) applied."""
    planned = []
    for text in overrides or []:
        parts, value, adds = parse_override(text)
        node = config
        for i, part in enumerate(parts[:-1]):
            node = _child(node, part, '.'.join(parts[:i + 1]))
        key, last = '.'.join(parts), parts[-1]
        if adds and isinstance(node, dict):
            value = _checked(key, node.get(last), value)
        else:
            if adds:
                raise ConfigError(f'--set +{key}: a new key can only be added under a mapping')
            value = _checked(key, _child(node, last, key), value)
        planned.append((node, last, key, value))
    applied = []
    for node, last, key, value in planned:
        index = int(last) if isinstance(node, list) else last
        applied.append((key, node[index] if isinstance(node, list) or last in node else None, value))
        node[index] = value
    return applied


__all__ = ['apply_overrides', 'parse_override']
