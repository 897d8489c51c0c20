"""Checkpoints that survive crashes and resume exactly.

Two files per run, next to the YAML's ``dst_ckpt``:

* ``dst_ckpt`` — the best student in torchdistill's format (``model``, ``optimizer``, ``best_value``,
  ``lr_scheduler``, ``args``), so torchdistill's tools keep reading it; beside it ``<stem>_teacher.pt`` with what
  was trained on the teacher side (adapters, or the whole teacher for FT-KD and online KD);
* ``<stem>_last.pt`` — the full training state after the latest epoch: student, trainable teacher state,
  optimizer, scheduler, criterion buffers (e.g. CRD memory), epoch, best metric, and the RNG states of every
  process (``world_size`` and ``rng_per_rank``: one entry per rank, each with its python, numpy and torch CPU
  states, its current CUDA device's state and its training-data stream).

Keys are the same whatever the number of processes: the ``.module.`` segments that DistributedDataParallel wrappers
add (also inside auxiliary wrappers, e.g. torchdistill's ``Linear4CRD`` wraps its normalizer) are removed on save
and re-added on load, and files written before this rule, which kept them, still load.

Resuming (``-resume``) on as many processes as the run was saved with gives every rank its own states back, so the
run continues as if never interrupted. On another number of processes the weights, optimizer, scheduler and epoch
are restored, and each rank's random streams start afresh from (seed, resumed epoch, rank): correct, not
bit-identical to any uninterrupted run. Checkpoints from before per-rank states count as one process.

Every write goes to a temporary file in the same directory and is renamed over the target (``os.replace`` is
atomic on POSIX), so a crash mid-write leaves the previous checkpoint intact.
"""
import logging
import os
import random
import tempfile

import numpy as np
import torch
from torchdistill.common.module_util import check_if_wrapped

from .distributed import gather_to_main, get_rank, get_world_size, is_main_process
from .loop import inference_model
from .rng import fresh_streams

logger = logging.getLogger(__name__)


def unwrap(model):
    return model.module if check_if_wrapped(model) else model


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
            state[prefix + name] = tensor.detach().clone()
    return clean_state_dict(model, state)


def load_trainable_state_dict(model, state):
    """Loads :func:`trainable_state_dict` output; every saved key must exist in ``model``."""
    model = unwrap(model)
    state = to_model_keys(model, state)
    missing = set(state) - set(model.state_dict())
    if missing:
        raise KeyError(f'teacher checkpoint has keys the model lacks: {sorted(missing)[:5]}')
    model.load_state_dict(state, strict=False)


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
        'model': clean_state_dict(inference_model(student_model)), 'optimizer': box.optimizer.state_dict(),
        'best_value': best_value, 'lr_scheduler': scheduler.state_dict() if scheduler is not None else None,
        'args': args,
    }, student_path)
    teacher = _teacher(box)
    if teacher is not None and any(p.requires_grad for p in teacher.parameters()):
        atomic_save({'teacher': trainable_state_dict(teacher), 'best_value': best_value}, teacher_path)


def save_last(box, epoch, best_value, args, dst_ckpt, timing=None):
    """Full training state after ``epoch`` (0-based), for ``--resume``; ``timing`` (steps and step seconds so far)
    lets a resumed run report the mean step time of the whole run."""
    _, _, last_path = checkpoint_paths(dst_ckpt)
    teacher = _teacher(box)
    data_stream = getattr(box, 'data_stream', None)
    per_rank = gather_to_main({'rng': rng_state(),
                               'data_rng': data_stream.state_dict() if data_stream is not None else None})
    if not is_main_process():
        return
    atomic_save({
        'epoch': epoch, 'best_value': best_value, 'args': args, 'timing': timing,
        'student': clean_state_dict(_student(box)),
        'teacher': trainable_state_dict(teacher) if teacher is not None else None,
        'optimizer': box.optimizer.state_dict(),
        'lr_scheduler': box.lr_scheduler.state_dict() if box.lr_scheduler is not None else None,
        'criterion': box.criterion.state_dict() if isinstance(box.criterion, torch.nn.Module) else None,
        'grad_scaler': box.grad_scaler.state_dict() if getattr(box, 'grad_scaler', None) is not None else None,
        'world_size': len(per_rank), 'rng_per_rank': per_rank,
    }, last_path)


def load_last(box, dst_ckpt, before_load=None, seed=None):
    """Restores :func:`save_last`'s state into ``box``; returns (next epoch, best value, timing so far or None) or
    None if absent. ``before_load(box, next_epoch)`` runs first (a multi-stage box moves to that epoch's stage).
    ``seed`` (the run's ``--seed``) derives fresh random streams when the number of processes changed."""
    _, _, last_path = checkpoint_paths(dst_ckpt)
    if not os.path.isfile(last_path):
        return None
    state = torch.load(last_path, map_location='cpu', weights_only=False)
    if before_load is not None:
        before_load(box, state['epoch'] + 1)
    student = unwrap(_student(box))
    student.load_state_dict(to_model_keys(student, state['student']))
    if state['teacher'] is not None:
        load_trainable_state_dict(_teacher(box), state['teacher'])
    box.optimizer.load_state_dict(state['optimizer'])
    if state['lr_scheduler'] is not None:
        box.lr_scheduler.load_state_dict(state['lr_scheduler'])
    if state['criterion'] is not None:
        box.criterion.load_state_dict(state['criterion'])
    if state.get('grad_scaler') is not None and getattr(box, 'grad_scaler', None) is not None:
        box.grad_scaler.load_state_dict(state['grad_scaler'])  # fp16 mixed precision: the loss scale goes on
    restore_streams(box, state, seed)
    logger.info('Resumed from %s after epoch %d (best %.4f)', last_path, state['epoch'], state['best_value'])
    return state['epoch'] + 1, state['best_value'], state.get('timing')


def load_teacher_side(teacher, dst_ckpt):
    """Loads the trained teacher side (adapters or fine-tuned teacher) saved by :func:`save_best`, if present."""
    _, teacher_path, _ = checkpoint_paths(dst_ckpt)
    if not os.path.isfile(teacher_path):
        return False
    load_trainable_state_dict(teacher, torch.load(teacher_path, map_location='cpu', weights_only=False)['teacher'])
    return True
