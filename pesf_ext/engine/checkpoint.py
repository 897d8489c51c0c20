"""Checkpoints that survive crashes and resume exactly.

Two files per run, next to the YAML's ``dst_ckpt``:

* ``dst_ckpt`` — the best student in torchdistill's format (``model``, ``optimizer``, ``best_value``,
  ``lr_scheduler``, ``args``), so torchdistill's tools keep reading it; beside it ``<stem>_teacher.pt`` with what
  was trained on the teacher side (adapters, or the whole teacher for FT-KD and online KD);
* ``<stem>_last.pt`` — the full training state after the latest epoch: student, trainable teacher state,
  optimizer, scheduler, criterion buffers (e.g. CRD memory, TAID's t; also those of the sub-losses a
  high-level loss keeps in its ``term_dict``), epoch, best metric, and the RNG states of every
  process (``world_size`` and ``rng_per_rank``: one entry per rank, each with its python, numpy and torch CPU
  states, its current CUDA device's state and its training-data stream).

Keys are the same whatever the number of processes: the ``.module.`` segments that DistributedDataParallel wrappers
add (also inside auxiliary wrappers, e.g. torchdistill's ``Linear4CRD`` wraps its normalizer) are removed on save
and re-added on load, and files written before this rule, which kept them, still load.

Resuming (``-resume``) on as many processes as the run was saved with gives every rank its own states back, so the
run continues as if never interrupted. On another number of processes the weights, optimizer, scheduler and epoch
are restored, and each rank's random streams start afresh from (seed, resumed epoch, rank): correct, not
bit-identical to any uninterrupted run. Checkpoints from before per-rank states count as one process.

Step-wise state follows the number of steps an epoch takes: ``<stem>_last.pt`` records ``steps`` =
{``world_size``, ``steps_per_epoch`` (training steps of one rank per epoch, ``--max_steps_per_epoch`` included),
``total_steps`` (that times ``num_epochs``), ``stage_grad_count``}. When the resumed run's steps per epoch differ
(another number of processes), the counters of step-wise schedules are scaled by new / old steps per epoch, so the
fraction of training done is kept: a step-wise scheduler's ``last_epoch`` (and ``_step_count``), with the
learning rate it implies at that step (from the resumed run's base learning rates, ``-adjust_lr`` included),
TAID's ``step``, and torchdistill's ``stage_grad_count``. The schedule then ends at the last step of the resumed
run, as a run started from scratch with that many processes would. Epoch-wise schedulers need nothing. A step-wise
scheduler whose learning rate is not a function of its step count (e.g. ``ReduceLROnPlateau``,
``MultiplicativeLR``, ``SequentialLR``) or a checkpoint written before ``steps`` was recorded stops the resume with
one line: resume it with the number of processes it was saved with.

Every write goes to a temporary file in the same directory and is renamed over the target (``os.replace`` is
atomic on POSIX), so a crash mid-write leaves the previous checkpoint intact.
"""
import logging
import os
import random
import tempfile
import warnings

import numpy as np
import torch
from torchdistill.common.module_util import check_if_wrapped

from .distributed import check_visible_on_all_ranks, gather_to_main, get_rank, get_world_size, is_main_process
from .errors import ConfigError
from .fsdp import (full_optimizer_state, full_state_dict, is_sharded, load_full_optimizer_state, load_full_state,
                   to_full)
from .loop import inference_model
from .rng import fresh_streams

logger = logging.getLogger(__name__)


def unwrap(model):
    return model.module if check_if_wrapped(model) and hasattr(model, 'module') else model  # FSDP2 keeps its module


def checkpoint_paths(dst_ckpt):
    """Returns (best student, best teacher side, last full state) paths derived from ``dst_ckpt``."""
    stem, ext = os.path.splitext(dst_ckpt)
    ext = ext or '.pt'
    return dst_ckpt, f'{stem}_teacher{ext}', f'{stem}_last{ext}'


def atomic_save(obj, path):
    """``torch.save`` to a temp file in the target directory, then an atomic rename; only the main process writes."""
    if not is_main_process():
        return
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(prefix='.tmp_', suffix='.pt', dir=directory)
    try:
        with os.fdopen(fd, 'wb') as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


def _ddp_paths(model):
    return {name for name, module in model.named_modules() if check_if_wrapped(module)}


def clean_key(key, ddp_paths):
    """``key`` without the ``module`` segment that follows each DDP wrapper in ``ddp_paths`` (module paths)."""
    parts, kept, path = key.split('.'), [], []
    index = 0
    while index < len(parts):
        kept.append(parts[index])
        path.append(parts[index])
        if '.'.join(path) in ddp_paths and index + 1 < len(parts) and parts[index + 1] == 'module':
            path.append('module')
            index += 1
        index += 1
    return '.'.join(kept)


def clean_state_dict(model, state=None):
    """``state`` (default ``model.state_dict()``) with the keys a bare, unwrapped ``model`` would have."""
    model = unwrap(model)
    state = model.state_dict() if state is None else state
    paths = {path for path in _ddp_paths(model) if path}
    return {clean_key(key, paths): value for key, value in state.items()} if paths else dict(state)


def _without_module(key):
    return '.'.join(part for part in key.split('.') if part != 'module')


def to_model_keys(model, state):
    """Renames the keys of a saved ``state`` to ``model``'s own: clean keys (this format) get the ``.module.`` of
    the DDP wrappers ``model`` has now; keys of older files that kept such segments lose those it has not."""
    own = set(model.state_dict())
    paths = {path for path in _ddp_paths(model) if path}
    by_clean = {clean_key(key, paths): key for key in own}
    by_bare = {_without_module(key): key for key in own}
    renamed = {}
    for key, value in state.items():
        target = key if key in own else by_clean.get(key, by_bare.get(_without_module(key), key))
        renamed[target] = value
    return renamed


def trainable_state_dict(model):
    """State of the parts of ``model`` that training changes: trainable parameters plus the buffers of the modules
    that own them (e.g. BatchNorm statistics of a fine-tuned teacher). Frozen parts stay out: they are the
    pretrained weights, which the YAML already points to."""
    model = unwrap(model)
    state = {}
    for module_name, module in model.named_modules():
        own_params = list(module.named_parameters(recurse=False))
        if not any(p.requires_grad for _, p in own_params):
            continue
        prefix = f'{module_name}.' if module_name else ''
        for name, tensor in list(own_params) + list(module.named_buffers(recurse=False)):
            state[prefix + name] = to_full(tensor)  # FSDP: the whole tensor (every rank calls)
    return clean_state_dict(model, state)


def model_state(model):
    """The whole state dict of ``model`` with a bare model's keys: :func:`clean_state_dict`, or under FSDP the
    gathered full one (:func:`~pesf_ext.engine.fsdp.full_state_dict`: every rank calls, rank 0 gets it)."""
    return full_state_dict(model) if is_sharded(model) else clean_state_dict(model)


def load_trainable_state_dict(model, state):
    """Loads :func:`trainable_state_dict` output; every saved key must exist in ``model``."""
    model = unwrap(model)
    state = to_model_keys(model, state)
    missing = set(state) - set(model.state_dict())
    if missing:
        raise KeyError(f'teacher checkpoint has keys the model lacks: {sorted(missing)[:5]}')
    load_full_state(model, state, strict=False)  # FSDP: each rank keeps its shard


def rng_state():
    """This process's generator states; CUDA: its current device only (torchrun gives each process one GPU)."""
    return {
        'python': random.getstate(), 'numpy': np.random.get_state(), 'torch': torch.get_rng_state(),
        'cuda': torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None,
    }


def set_rng_state(state):
    random.setstate(state['python'])
    np.random.set_state(state['numpy'])
    torch.set_rng_state(state['torch'])
    cuda = state.get('cuda')
    if cuda is None or not torch.cuda.is_available():
        return
    if isinstance(cuda, (list, tuple)):  # older files: every device of the node; take this process's own
        device = torch.cuda.current_device()
        if device >= len(cuda):
            logger.warning('-resume: no saved CUDA RNG state for device %d; its generator is not restored', device)
            return
        cuda = cuda[device]
    torch.cuda.set_rng_state(cuda)


def saved_streams(state):
    """(world size, per-rank list of {'rng', 'data_rng'}) of a last checkpoint, older single-state files included."""
    if 'rng_per_rank' in state:
        return state['world_size'], state['rng_per_rank']
    return 1, [{'rng': state['rng'], 'data_rng': state.get('data_rng')}]


def restore_streams(box, state, seed):
    """Gives this rank its own saved states back, or (another number of processes) fresh ones; see the module
    docstring."""
    saved_world, per_rank = saved_streams(state)
    rank, world = get_rank(), get_world_size()
    data_stream = getattr(box, 'data_stream', None)
    if saved_world == world:
        own = per_rank[rank]
        set_rng_state(own['rng'])
        if own.get('data_rng') is not None and data_stream is not None:
            data_stream.load_state_dict(own['data_rng'])
        return
    logger.warning('-resume: saved with %d process(es), resumed with %d; weights, optimizer, scheduler and epoch '
                   'are restored, random streams start afresh from (seed, epoch, rank), so the run is not '
                   'bit-identical to an uninterrupted one', saved_world, world)
    data_state = fresh_streams(seed, state['epoch'] + 1, rank)
    if data_stream is not None:
        data_stream.load_state_dict(data_state)


def _teacher(box):
    return getattr(box, 'teacher_model', None)


def _student(box):
    return box.student_model if hasattr(box, 'student_model') else box.model


def save_best(box, student_model, best_value, args, dst_ckpt):
    """Best student in torchdistill's format, plus the trained teacher side when there is one.

    The student is saved bare (DDP and auxiliary wrappers such as CRD's ``Linear4CRD`` removed), so its keys are
    those of ``models.student_model`` and ``dst_ckpt`` loads into a freshly built student."""
    student_path, teacher_path, _ = checkpoint_paths(dst_ckpt)
    scheduler = box.lr_scheduler
    atomic_save({
        'model': model_state(inference_model(student_model)), 'optimizer': full_optimizer_state(box.optimizer),
        'best_value': best_value, 'lr_scheduler': scheduler.state_dict() if scheduler is not None else None,
        'args': args,
    }, student_path)
    teacher = _teacher(box)
    if teacher is not None and any(p.requires_grad for p in teacher.parameters()):
        atomic_save({'teacher': trainable_state_dict(teacher), 'best_value': best_value}, teacher_path)


def steps_per_epoch(box, max_steps_per_epoch=None):
    """Training steps one rank takes per epoch: its loader's length, capped by ``--max_steps_per_epoch``."""
    steps = len(box.train_data_loader)
    return steps if max_steps_per_epoch is None else min(steps, max_steps_per_epoch)


def step_record(box, world_size, max_steps_per_epoch=None):
    """What a resume on another number of processes needs to remap step-wise state (see the module docstring)."""
    per_epoch = steps_per_epoch(box, max_steps_per_epoch)
    return {'world_size': world_size, 'steps_per_epoch': per_epoch, 'total_steps': per_epoch * box.num_epochs,
            'stage_grad_count': getattr(box, 'stage_grad_count', None)}


def loss_terms(criterion):
    """{name: module} of the sub-losses a torchdistill high-level loss keeps in its plain ``term_dict`` (not
    registered as submodules, so ``criterion.state_dict()`` misses their buffers, e.g. TAID's t and step)."""
    return {name: term[0] for name, term in (getattr(criterion, 'term_dict', None) or {}).items()
            if isinstance(term, tuple) and isinstance(term[0], torch.nn.Module)}


def criterion_state_dict(criterion):
    """``criterion.state_dict()`` plus each ``term_dict`` sub-loss's state under ``term_dict.<name>.``."""
    state = dict(criterion.state_dict())
    for name, term in loss_terms(criterion).items():
        state.update({f'term_dict.{name}.{key}': value for key, value in term.state_dict().items()})
    return state


def load_criterion_state_dict(criterion, state):
    """Loads :func:`criterion_state_dict` output (files without ``term_dict.`` keys load as before)."""
    criterion.load_state_dict({k: v for k, v in state.items() if not k.startswith('term_dict.')})
    for name, term in loss_terms(criterion).items():
        prefix = f'term_dict.{name}.'
        own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if own:
            term.load_state_dict(own)


def save_last(box, epoch, best_value, args, dst_ckpt, timing=None):
    """Full training state after ``epoch`` (0-based), for ``--resume``; ``timing`` (steps and step seconds so far)
    lets a resumed run report the mean step time of the whole run."""
    _, _, last_path = checkpoint_paths(dst_ckpt)
    teacher = _teacher(box)
    data_stream = getattr(box, 'data_stream', None)
    per_rank = gather_to_main({'rng': rng_state(),
                               'data_rng': data_stream.state_dict() if data_stream is not None else None})
    student, optimizer = model_state(_student(box)), full_optimizer_state(box.optimizer)  # FSDP: every rank gathers
    teacher_state = trainable_state_dict(teacher) if teacher is not None else None
    if not is_main_process():
        return
    atomic_save({
        'epoch': epoch, 'best_value': best_value, 'args': args, 'timing': timing,
        'student': student, 'teacher': teacher_state, 'optimizer': optimizer,
        'lr_scheduler': box.lr_scheduler.state_dict() if box.lr_scheduler is not None else None,
        'criterion': criterion_state_dict(box.criterion) if isinstance(box.criterion, torch.nn.Module) else None,
        'grad_scaler': box.grad_scaler.state_dict() if getattr(box, 'grad_scaler', None) is not None else None,
        'world_size': len(per_rank), 'rng_per_rank': per_rank,
        'steps': step_record(box, len(per_rank), getattr(args, 'max_steps_per_epoch', None)),
    }, last_path)


def _taid_schedules(box):
    from ..losses.divergences import TAIDSchedule  # the losses package imports engine modules
    criterion = box.criterion
    if not isinstance(criterion, torch.nn.Module):
        return []
    roots = [criterion, *loss_terms(criterion).values()]
    return list({id(m): m for root in roots for m in root.modules() if isinstance(m, TAIDSchedule)}.values())


def _is_step_wise(box):
    return box.lr_scheduler is not None and (getattr(box, 'scheduling_step', 0) or 0) > 0


def implied_lrs(scheduler):
    """The learning rates ``scheduler`` gives at its current ``last_epoch`` from its ``base_lrs`` alone, or None
    when they depend on its history (chainable-only, metric-driven or composite schedulers)."""
    if hasattr(scheduler, '_get_closed_form_lr'):
        return list(scheduler._get_closed_form_lr())
    if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        with warnings.catch_warnings():  # get_lr outside step() warns; LambdaLR's is closed-form
            warnings.simplefilter('ignore')
            return list(scheduler.get_lr())
    return None


def remap_scheduler(box, ratio, base_lrs, reason):
    """Scales a step-wise scheduler's step counters by ``ratio`` and sets the learning rate they imply."""
    scheduler = box.lr_scheduler
    old = scheduler.last_epoch
    new = round(old * ratio)
    scheduler.last_epoch, scheduler.base_lrs = new, list(base_lrs)
    lrs = implied_lrs(scheduler)
    if lrs is None:
        raise ConfigError(f'train.scheduler: {reason}; the step-wise {type(scheduler).__name__} does not give its '
                          'learning rate from the step count, so its state cannot be remapped: resume with the number '
                          'of processes the run was saved with')
    scheduler._step_count = getattr(scheduler, '_step_count', old + 1) + new - old
    for group, lr, base in zip(box.optimizer.param_groups, lrs, base_lrs):
        group['lr'], group['initial_lr'] = lr, base
    scheduler._last_lr = [group['lr'] for group in box.optimizer.param_groups]
    return old, new


def remap_steps(box, state, base_lrs, max_steps_per_epoch=None):
    """Keeps the fraction of training done by step-wise state when an epoch takes another number of steps than
    when ``state`` was saved (module docstring). ``base_lrs``: the resumed run's own scheduler base rates."""
    record, taids = state.get('steps'), _taid_schedules(box)
    step_wise, multi_stage = _is_step_wise(box), hasattr(box, 'stage_end_epoch')
    saved_world, world = saved_streams(state)[0], get_world_size()
    if record is None:
        if saved_world != world and (step_wise or taids):
            raise ConfigError(f'-resume: the checkpoint was saved with {saved_world} process(es) by a version that '
                              f'did not record its steps per epoch, so step-wise schedules cannot be remapped to '
                              f'{world}: resume with {saved_world} process(es)')
        return
    new_steps = steps_per_epoch(box, max_steps_per_epoch)
    ratio = new_steps / record['steps_per_epoch']
    if record.get('stage_grad_count') is not None and not multi_stage:  # a new stage starts at 0
        box.stage_grad_count = round(record['stage_grad_count'] * ratio)
    if ratio == 1:
        return
    reason = (f'saved with {saved_world} process(es) at {record["steps_per_epoch"]} steps per epoch, resumed with '
              f'{world} at {new_steps}')
    if step_wise:
        old, new = remap_scheduler(box, ratio, base_lrs, reason)
        logger.warning('-resume: %s; step-wise scheduler moved from step %d to %d (lr %s)', reason, old, new,
                       ', '.join(f'{g["lr"]:.6g}' for g in box.optimizer.param_groups))
    for taid in taids:
        old = int(taid.step)
        taid.step.fill_(round(old * ratio))
        logger.warning('-resume: %s; TAID step moved from %d to %d of %s', reason, old, int(taid.step),
                       taid.total_steps)


def load_last(box, dst_ckpt, before_load=None, seed=None, max_steps_per_epoch=None):
    """Restores :func:`save_last`'s state into ``box``; returns (next epoch, best value, timing so far or None) or
    None if absent. ``before_load(box, next_epoch)`` runs first (a multi-stage box moves to that epoch's stage).
    ``seed`` (the run's ``--seed``) derives fresh random streams when the number of processes changed;
    ``max_steps_per_epoch`` (the run's ``--max_steps_per_epoch``) counts this run's steps per epoch, to remap
    step-wise schedules (:func:`remap_steps`). Every rank must call it: a file that rank 0 sees and another rank
    does not (no shared filesystem) stops every rank with one line."""
    _, _, last_path = checkpoint_paths(dst_ckpt)
    key = 'models.student_model.dst_ckpt' if hasattr(box, 'student_model') else 'models.model.dst_ckpt'
    if not check_visible_on_all_ranks(last_path, key):
        return None
    state = torch.load(last_path, map_location='cpu', weights_only=False)
    if before_load is not None:
        before_load(box, state['epoch'] + 1)
    student = unwrap(_student(box))
    load_full_state(student, to_model_keys(student, state['student']))
    if state['teacher'] is not None:
        load_trainable_state_dict(_teacher(box), state['teacher'])
    base_lrs = list(box.lr_scheduler.base_lrs) if box.lr_scheduler is not None else None
    load_full_optimizer_state(box.optimizer, state['optimizer'])
    if state['lr_scheduler'] is not None:
        box.lr_scheduler.load_state_dict(state['lr_scheduler'])
    if state['criterion'] is not None:
        load_criterion_state_dict(box.criterion, state['criterion'])
    remap_steps(box, state, base_lrs, max_steps_per_epoch)
    if state.get('grad_scaler') is not None and getattr(box, 'grad_scaler', None) is not None:
        box.grad_scaler.load_state_dict(state['grad_scaler'])  # fp16 mixed precision: the loss scale goes on
    restore_streams(box, state, seed)
    logger.info('Resumed from %s after epoch %d (best %.4f)', last_path, state['epoch'], state['best_value'])
    return state['epoch'] + 1, state['best_value'], state.get('timing')


def load_teacher_side(teacher, dst_ckpt):
    """Loads the trained teacher side (adapters or fine-tuned teacher) saved by :func:`save_best`, if present
    (every rank must call it: see :func:`check_visible_on_all_ranks`)."""
    _, teacher_path, _ = checkpoint_paths(dst_ckpt)
    if not check_visible_on_all_ranks(teacher_path, 'models.student_model.dst_ckpt'):
        return False
    load_trainable_state_dict(teacher, torch.load(teacher_path, map_location='cpu', weights_only=False)['teacher'])
    return True
