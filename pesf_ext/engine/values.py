"""Range checks of every number in a YAML, by the name of its key, before anything is built.

Rules (one table, applied wherever the key appears, under ``models``, ``train`` (and its stages), ``test``,
``speed`` and ``settings``; the ``datasets`` section is already built by torchdistill's ``!import_call`` when the
YAML is read, and its builders check their own arguments):

* every number is finite: ``.nan``, ``.inf`` and ``-.inf`` are refused anywhere;
* counts are integers: positive (``num_epochs``, ``batch_size``, ``bottleneck``, ...) or non-negative
  (``num_workers``, ``warmup_epochs``, ``milestones``, ...);
* probabilities lie in [0, 1] (``momentum``, ``dampening``, dropout rates, Adam's ``betas``);
* scales are > 0 (``lr``, ``temperature``, ``max_grad_norm``, ``gamma``) and weights >= 0 (``alpha``, ``beta``,
  ``weight``, ``*_weight``, ``weight_decay``, ``eps``).

A number written as a string (YAML 1.1 reads ``2e-5`` without a dot as text) is refused with the fix.
"""
import math

from .errors import ConfigError

POSITIVE_INTS = {'num_epochs', 'batch_size', 'bottleneck', 'grad_accum_step', 'log_freq', 'num_classes', 'step_size',
                 'num_samples', 'num_negative_samples', 'in_features', 'out_features', 'feature_dim', 'input_shape',
                 'crd_feature_dim', 'crd_num_samples', 'crd_num_negative_samples', 'T_max', 'T_0', 'prefetch_factor'}
NON_NEGATIVE_INTS = {'num_workers', 'warmup_epochs', 'milestones', 'scheduling_step', 'start_epoch'}
PROBABILITIES = {'momentum', 'dampening', 'dropout', 'drop_rate', 'dropout_rate', 'label_smoothing', 'betas'}
POSITIVE_NUMBERS = {'lr', 'temperature', 'max_grad_norm', 'gamma'}
NON_NEGATIVE_NUMBERS = {'alpha', 'beta', 'weight', 'teacher_alpha', 'teacher_beta', 'weight_decay', 'eps', 'eta_min',
                        'dist_factor', 'angle_factor'}
NOT_NULL = {'num_epochs', 'batch_size'}  # counts the run cannot do without (null elsewhere means "not used")
SKIPPED_SECTIONS = {'datasets', 'dependencies'}
# losses whose ``beta`` defaults to ``1 - alpha`` (torchdistill's KDLoss convention): alone, alpha is a share in [0, 1]
ONE_MINUS_ALPHA_LOSSES = {'KDLoss', 'PESFKDLoss', 'FTKDLoss', 'ZScoreKDLoss'}
STRING_HINT = ' (YAML 1.1 reads 2e-5 as a string; write 2.0e-5 or 0.00002)'


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _rule(name):
    """(what the value must be, test, integer?) for key ``name``, or None when no rule applies."""
    if name in POSITIVE_INTS:
        return 'a positive integer', lambda v: v > 0, True
    if name in NON_NEGATIVE_INTS:
        return 'an integer >= 0', lambda v: v >= 0, True
    if name in PROBABILITIES:
        return 'in [0, 1]', lambda v: 0 <= v <= 1, False
    if name in POSITIVE_NUMBERS:
        return '> 0', lambda v: v > 0, False
    if name in NON_NEGATIVE_NUMBERS or name.endswith('_weight'):
        return '>= 0', lambda v: v >= 0, False
    return None


def _describe(value):
    return repr(value) if isinstance(value, str) else str(value)


def check_value(key, name, value):
    """Checks one YAML value against the rule for its key ``name``; lists (``milestones``, ``betas``,
    ``input_shape``) are checked element by element."""
    if name == 'kwargs' and value is not None and not isinstance(value, dict):
        raise ConfigError(f'{key}: must be a mapping of argument names to values, got {_describe(value)}')
    if value is None:
        if name in NOT_NULL:
            raise ConfigError(f'{key}: must be {_rule(name)[0]}, got null')
        return
    rule = _rule(name)
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_value(f'{key}[{i}]', name, item)
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f'{key}: must be a finite number, got {value}')
    if rule is None:
        return
    what, ok, integer = rule
    if isinstance(value, bool) or not is_number(value):
        if integer:
            raise ConfigError(f'{key}: must be {what}, got {_describe(value)}')
        hint = STRING_HINT if isinstance(value, str) else ''
        raise ConfigError(f'{key}: must be a number ({what}), got {_describe(value)}{hint}')
    if integer and isinstance(value, float):
        raise ConfigError(f'{key}: must be {what}, got {value}')
    if not ok(value):
        raise ConfigError(f'{key}: must be {what}, got {value}')


def walk(node, key):
    """Yields (yaml key, key name, value) for every leaf under ``node`` (lists of numbers count as leaves)."""
    if isinstance(node, dict):
        for name, value in node.items():
            child = f'{key}.{name}' if key else str(name)
            if isinstance(value, (dict, list, tuple)) and not _is_number_list(value):
                yield from walk(value, child)
            else:
                yield child, str(name), value
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from walk(value, f'{key}[{i}]')
    elif isinstance(node, float):
        yield key, key.rsplit('.', 1)[-1], node


def _is_number_list(value):
    return isinstance(value, (list, tuple)) and bool(value) and all(is_number(v) or v is None for v in value)


def check_alpha_shares(config):
    """``alpha`` alone (no ``beta``) on a loss with ``beta = 1 - alpha`` must lie in [0, 1], else the KL weight
    would be negative."""
    from .config import criterion_terms
    train = config.get('train') or {}
    stages = [(f'train.{k}', v) for k, v in train.items() if k.startswith('stage')] or [('train', train)]
    for prefix, stage in stages:
        criterion = stage.get('criterion') or {}
        for term_key, loss_key, kwargs, _ in criterion_terms(criterion, f'{prefix}.criterion'):
            alpha = kwargs.get('alpha')
            if loss_key in ONE_MINUS_ALPHA_LOSSES and kwargs.get('beta') is None and is_number(alpha) \
                    and not 0 <= alpha <= 1:
                raise ConfigError(f'{term_key}.criterion.kwargs.alpha: must be in [0, 1] when beta is not given '
                                  f'(beta = 1 - alpha), got {alpha}')


def validate_values(config):
    """Applies the module's rules to every value of a loaded YAML; raises :class:`ConfigError` naming the key."""
    for section, node in config.items():
        if section in SKIPPED_SECTIONS:
            continue
        if isinstance(node, (dict, list, tuple)):
            for key, name, value in walk(node, str(section)):
                check_value(key, name, value)
        else:
            check_value(str(section), str(section), node)
    check_alpha_shares(config)
