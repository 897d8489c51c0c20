"""Which parameters the optimizer trains: ``module: '*'`` for "every module not listed", and a check that no
trainable parameter is left out.

torchdistill builds one optimizer per stage. Without ``train.optimizer.module_wise_configs`` it trains every
parameter of the student (and of the teacher unless ``train.teacher.requires_grad: False``); with a non-empty list it
trains ONLY the listed modules. A list naming only the teacher's adapters (say, to give them their own lr) would
train the adapters and leave the student as initialised, silently. So, once the box is built, the runner checks the
real optimizer: every parameter of the student and the teacher (auxiliary wrappers included) that requires a
gradient must be in a parameter group, else the run stops with one line naming the modules left out. The teacher
is checked when the stage trains its side (some teacher parameter is in the optimizer, or the loss is PESF-KD, FT-KD
or online KD); a teacher that only gives targets is in effect frozen. In a multi-stage config the student is checked
in the last stage only: AB, FSP and FT pre-train part of the student in their first stage, by design.

An entry ``module: '*'`` (pesf_ext's, not torchdistill's) stands for every trainable parameter of that side
(``is_teacher``) that no other entry lists; without ``kwargs`` it gets the optimizer's ``kwargs``::

    optimizer:
      key: 'SGD'
      kwargs: {lr: 0.05, momentum: 0.9, weight_decay: 0.0005}    # the student's (and '*'s) settings
      module_wise_configs:
        - module: 'adapters'                                      # teacher adapters: their own lr
          is_teacher: True
          kwargs: {lr: 0.001, momentum: 0.9, weight_decay: 0.0005}
        - module: '*'                                             # every student module not listed above
          is_teacher: False
"""
import logging

from torchdistill.optim.registry import get_scheduler

from .errors import ConfigError

logger = logging.getLogger(__name__)
REST = '*'
BOX_ATTRIBUTE = '_pesf_rest_entries'


def stage_configs(train_config):
    """(yaml key prefix, stage config) for every stage of ``train`` (the whole ``train`` when single-stage)."""
    keys = [k for k in train_config if k.startswith('stage')]
    return [(f'train.{k}', train_config[k]) for k in sorted(keys)] or [('train', train_config)]


def take_rest_entries(train_config):
    """Removes the ``module: '*'`` entries from every stage's ``optimizer.module_wise_configs`` (torchdistill would
    look '*' up as a module path) and returns {stage prefix: [entries]}."""
    taken = {}
    for prefix, stage in stage_configs(train_config):
        optimizer = stage.get('optimizer') or {}
        list_key = 'module_wise_configs' if 'module_wise_configs' in optimizer else 'module_wise_kwargs'  # no teacher
        entries = optimizer.get(list_key)
        if not isinstance(entries, list):
            continue
        rest = [e for e in entries if isinstance(e, dict) and e.get('module') == REST]
        if not rest:
            continue
        if len(rest) == len(entries):
            raise ConfigError(f"{prefix}.optimizer.module_wise_configs: only `module: '*'` entries; without "
                              f'module_wise_configs every trainable parameter trains with {prefix}.optimizer.kwargs, '
                              'so remove the list (or list the modules that need their own settings)')
        sides = [bool(e.get('is_teacher', False)) for e in rest]
        if len(set(sides)) != len(sides):
            raise ConfigError(f"{prefix}.optimizer.module_wise_configs: `module: '*'` twice for the "
                              f"{'teacher' if sides[0] else 'student'}; one entry covers every module not listed")
        optimizer[list_key] = [e for e in entries if e not in rest]
        taken[prefix] = rest
    return taken


def _side_models(box):
    student = box.student_model if hasattr(box, 'student_model') else box.model
    return {'student': student, 'teacher': getattr(box, 'teacher_model', None)}


def _covered(optimizer):
    return {id(p) for group in optimizer.param_groups for p in group['params']}


def add_rest_groups(box, entries, stage_config, prefix):
    """Adds one parameter group per ``module: '*'`` entry with the trainable parameters of its side that are in no
    group yet; rebuilds the stage's scheduler so it schedules the new group too."""
    if not entries or getattr(box, 'optimizer', None) is None:
        return
    added = False
    for entry in entries:
        side = 'teacher' if entry.get('is_teacher', False) else 'student'
        model = _side_models(box)[side]
        covered = _covered(box.optimizer)
        params = [] if model is None else [p for p in model.parameters() if p.requires_grad and id(p) not in covered]
        if not params:
            logger.info("%s.optimizer.module_wise_configs: `module: '*'` (%s) adds no parameter", prefix, side)
            continue
        kwargs = dict(entry.get('kwargs') or {})
        if 'lr' in kwargs:
            kwargs['lr'] *= getattr(box, 'lr_factor', 1)
        box.optimizer.add_param_group({'params': params, **kwargs})
        logger.info("%s.optimizer.module_wise_configs: `module: '*'` trains %d more %s parameter tensors", prefix,
                    len(params), side)
        added = True
    scheduler_config = stage_config.get('scheduler')
    if added and getattr(box, 'lr_scheduler', None) is not None and scheduler_config:
        # built before the new group existed; a fresh one (nothing stepped yet) schedules every group
        box.lr_scheduler = get_scheduler(box.optimizer, scheduler_config['key'], **scheduler_config['kwargs'])


def _module_paths(model, missing):
    """The shortest module paths whose trainable parameters are all in ``missing`` (parameter names)."""
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    missing_set, paths = set(missing), []
    for name in missing:
        parts = name.split('.')
        path = '.'.join(parts[:-1]) or name  # the parameter's own module (or a parameter of the model itself)
        for depth in range(1, len(parts)):
            candidate = '.'.join(parts[:depth])
            if all(n in missing_set for n in trainable if n.startswith(candidate + '.')):
                path = candidate
                break
        if path not in paths:
            paths.append(path)
    return paths


def teacher_side_trains(box, stage_config):
    """Whether this stage trains the teacher side: some teacher parameter is in the optimizer, or the loss is one
    that trains it (PESF-KD's adapters, FT-KD, online KD)."""
    from .config import ADAPTER_LOSSES, ONLINE_TEACHER_LOSSES, criterion_terms
    teacher = getattr(box, 'teacher_model', None)
    if teacher is None:
        return False
    covered = _covered(box.optimizer)
    if any(id(p) in covered for p in teacher.parameters()):
        return True
    losses = {key for _, key, _, _ in criterion_terms(stage_config.get('criterion') or {})}
    return bool(losses & (ADAPTER_LOSSES | ONLINE_TEACHER_LOSSES))


def check_coverage(box, prefix='train', sides=('student', 'teacher')):
    """Raises :class:`ConfigError` when a parameter of one of ``sides`` requires a gradient but is in no parameter
    group of ``box.optimizer`` (it would get gradients and never change)."""
    if getattr(box, 'optimizer', None) is None:
        return
    from .checkpoint import unwrap
    covered = _covered(box.optimizer)
    for side, model in _side_models(box).items():
        if model is None or side not in sides:
            continue
        model = unwrap(model)
        missing = [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in covered]
        if not missing:
            continue
        paths = _module_paths(model, missing)
        named = ', '.join(f"'{p}'" for p in paths[:6]) + (f' and {len(paths) - 6} more' if len(paths) > 6 else '')
        modules = 'module' if len(paths) == 1 else 'modules'
        freeze = (f'{prefix}.teacher.requires_grad: False' if side == 'teacher' else
                  f'{prefix}.student.requires_grad: False')
        raise ConfigError(
            f'{prefix}.optimizer.module_wise_configs: {side} {modules} {named} {"has" if len(paths) == 1 else "have"} '
            f'trainable parameters in no optimizer group, so {"it" if len(paths) == 1 else "they"} would never '
            f"change: list {'it' if len(paths) == 1 else 'them'} there, add `- {{module: '*', is_teacher: "
            f"{side == 'teacher'}}}` to train every {side} module not listed with {prefix}.optimizer.kwargs, "
            f'or freeze the {side} ({freeze})')


def prepare_box(box, train_config, rest_entries):
    """After torchdistill built ``box``: adds the ``module: '*'`` groups of the current stage and checks coverage;
    a multi-stage box does the same each time it advances to the next stage."""
    stages = dict(stage_configs(train_config))
    multi = hasattr(box, 'stage_number')

    def finish():
        prefix = f'train.stage{box.stage_number}' if multi else 'train'
        add_rest_groups(box, rest_entries.get(prefix), stages[prefix], prefix)
        # earlier stages of a multi-stage recipe may pre-train part of the student on purpose (AB, FSP, FT)
        last = not multi or box.stage_number == len(stages)
        sides = (('student',) if last else ()) + (('teacher',) if teacher_side_trains(box, stages[prefix]) else ())
        check_coverage(box, prefix, sides)

    finish()
    if multi:
        advance = box.advance_to_next_stage

        def advance_and_finish():
            advance()
            finish()
        box.advance_to_next_stage = advance_and_finish
    return box
