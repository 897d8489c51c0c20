"""Multi-process training with torchrun on CUDA (NCCL) and CPU (gloo).

torchdistill 1.1.5's ``init_distributed_mode`` calls ``torch.cuda.set_device`` and hard-codes NCCL, and its
``wrap_model`` wraps with DistributedDataParallel only on CUDA. The functions here extend that to CPU without editing
torchdistill: processes are started by ``torchrun`` (which sets RANK, WORLD_SIZE, LOCAL_RANK), the backend follows
the device, and every model with trainable parameters that torchdistill left unwrapped is wrapped in DDP.
"""
import datetime
import inspect
import logging
import os
import socket
import traceback
from contextlib import contextmanager

import torch
from torch import distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Sampler
from torchdistill.common.main_util import setup_for_distributed
from torchdistill.common.module_util import check_if_wrapped
from torchdistill.models.wrapper import AuxiliaryModelWrapper

from .errors import ConfigError

logger = logging.getLogger(__name__)


def resolve_device(device_arg=None):
    """``--device`` default: cuda when available, else cpu."""
    if device_arg:
        return torch.device(device_arg)
    return torch.device('cuda' if torch.cuda.is_available() else 'cpu')


DIST_TIMEOUT_ENV = 'PESF_DIST_TIMEOUT_S'
DEFAULT_DIST_TIMEOUT_S = 1800.0  # 30 min: room for rank 0 to download or tokenize while the others wait
_timeout_s = None  # the process group's limit, once joined (for the error message)


def dist_timeout(timeout_s=None):
    """How long a collective (barrier, all-reduce, gather) waits for every rank before it fails, as a timedelta:
    ``timeout_s``, else the environment variable ``PESF_DIST_TIMEOUT_S`` (seconds), else 30 minutes::

        PESF_DIST_TIMEOUT_S=600 torchrun --nproc_per_node=8 tools/image_classification.py --config ...

    A rank that waits longer stops the run with one line naming it (:func:`collective_failure_message`) instead
    of hanging; a value that is not a positive number is a :class:`ConfigError` naming the variable."""
    raw = timeout_s if timeout_s is not None else os.environ.get(DIST_TIMEOUT_ENV, '').strip()
    if raw in (None, ''):
        return datetime.timedelta(seconds=DEFAULT_DIST_TIMEOUT_S)
    try:
        seconds = float(raw)
    except ValueError:
        seconds = float('nan')
    if not seconds > 0 or seconds == float('inf'):
        raise ConfigError(f'{DIST_TIMEOUT_ENV}: expected a number of seconds > 0, got {raw!r}')
    return datetime.timedelta(seconds=seconds)


def init_distributed(device, world_size=1, dist_url='env://', timeout_s=None):
    """Joins the process group that torchrun (or SLURM) describes; returns (distributed, world_size, device_ids, device).

    NCCL and one GPU per process (``LOCAL_RANK``) on CUDA, gloo on CPU. Without RANK/WORLD_SIZE in the
    environment the run is single-process. Collectives time out after :func:`dist_timeout` (``timeout_s``, else
    ``PESF_DIST_TIMEOUT_S``, else 30 minutes).
    """
    if 'RANK' in os.environ and 'WORLD_SIZE' in os.environ:
        rank, world_size = int(os.environ['RANK']), int(os.environ['WORLD_SIZE'])
        local_rank = int(os.environ.get('LOCAL_RANK', 0))
    elif 'SLURM_PROCID' in os.environ and world_size > 1:
        rank = int(os.environ['SLURM_PROCID'])
        local_rank = rank % max(torch.cuda.device_count(), 1)
    else:
        return False, 1, None, device
    if device.type == 'cuda':
        torch.cuda.set_device(local_rank)
        device, backend, device_ids = torch.device('cuda', local_rank), 'nccl', [local_rank]
    else:
        backend, device_ids = 'gloo', None
    global _timeout_s
    timeout = dist_timeout(timeout_s)
    dist.init_process_group(backend=backend, init_method=dist_url, world_size=world_size, rank=rank, timeout=timeout)
    _timeout_s = timeout.total_seconds()
    dist.barrier()
    setup_for_distributed(rank == 0)
    logger.info('distributed: rank %d / %d, backend %s, device %s', rank, world_size, backend, device)
    return True, world_size, device_ids, device


def collective_failure_message(error):
    """One line for an error that a collective raised (gloo's "Timed out waiting ..." when another rank never
    reached it, or lost its connection), naming this rank, the collective and where the code called it; None for
    any other error. NCCL's watchdog ends a timed-out rank by itself, with its own "[Rank N] ... timeout" lines."""
    frames = traceback.extract_tb(error.__traceback__) if error.__traceback__ else []
    in_torch_dist = [f for f in frames if f'{os.sep}torch{os.sep}distributed{os.sep}' in f.filename]
    in_backward = any(f'{os.sep}torch{os.sep}autograd{os.sep}' in f.filename for f in frames)
    text = ' '.join(str(error).split())
    lost = isinstance(error, getattr(dist, 'DistError', ())) or any(
        sign in text.lower() for sign in ('timed out', 'timeout', 'connection closed', 'connection reset'))
    if not isinstance(error, RuntimeError) or not lost or not (in_torch_dist or in_backward):
        return None
    c10d = [f.name for f in in_torch_dist if f.filename.endswith('distributed_c10d.py') and f.name != 'wrapper']
    what = c10d[-1] if c10d else ("DDP's gradient all-reduce in backward" if in_backward else in_torch_dist[-1].name)
    callers = [f for f in frames  # the code that called the collective, or this module's helper (e.g. barrier)
               if f'{os.sep}torch{os.sep}' not in f.filename and os.path.abspath(f.filename) != os.path.abspath(__file__)]
    where = f' called at {os.path.basename(callers[-1].filename)}:{callers[-1].lineno} ({callers[-1].name})' \
        if callers else ''
    rank = get_rank() if is_distributed() else os.environ.get('RANK', '?')
    world = get_world_size() if is_distributed() else os.environ.get('WORLD_SIZE', '?')
    limit = f' (limit {_timeout_s:g} s, {DIST_TIMEOUT_ENV})' if _timeout_s else ''
    cause = 'timed out' if 'timed out' in text.lower() or 'timeout' in text.lower() else 'failed'
    return (f'Distributed: rank {rank} of {world} {cause} waiting in {what}{where}{limit}: another rank stopped or '
            f'is stuck before reaching it (its own line or log says why); backend: {text[:300]}')


def has_trainable_params(module):
    return any(p.requires_grad for p in module.parameters())


class DistributedAuxiliaryModelWrapper(DistributedDataParallel, AuxiliaryModelWrapper):
    """DDP around an auxiliary model wrapper that torchdistill still recognises as one.

    torchdistill calls ``secondary_forward``/``post_epoch_process`` only on ``AuxiliaryModelWrapper`` instances;
    this keeps those calls reaching the wrapped module while gradients are synchronised by DDP.
    """

    def secondary_forward(self, *args, **kwargs):
        return self.module.secondary_forward(*args, **kwargs)

    def post_epoch_process(self, *args, **kwargs):
        return self.module.post_epoch_process(*args, **kwargs)


def _params_under_ddp(model):
    """Names of parameters that already sit inside a DDP module nested in ``model`` (e.g. Linear4CRD's normalizer)."""
    names = set()
    for module_name, module in model.named_modules():
        if module_name and check_if_wrapped(module):
            names.update(f'{module_name}.{name}' for name, _ in module.named_parameters())
    return names


def wrap_for_distributed(model, device_ids=None, broadcast_buffers=True):
    """Wraps ``model`` in DDP when it has trainable parameters and is not wrapped yet; frozen models stay bare.
    ``broadcast_buffers``: DDP's option (False when no buffer of the model can change, e.g. an adapted teacher's
    frozen BatchNorm statistics: nothing to send from rank 0 every forward).

    Parameters that an inner DDP already synchronises (torchdistill's ``Linear4CRD`` wraps its normalizer with
    ``wrap_if_distributed``) are excluded, so nothing is reduced twice; a model whose trainable parameters are all
    under such inner DDPs is left alone.
    """
    from .fsdp import is_sharded  # FSDP2 (speed.fsdp) synchronises a sharded model itself
    if check_if_wrapped(model) or is_sharded(model) or not has_trainable_params(model):
        return model
    already_synced = _params_under_ddp(model)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    if trainable <= already_synced:
        return model
    if already_synced:
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, sorted(already_synced))
    wrapper_cls = DistributedAuxiliaryModelWrapper if isinstance(model, AuxiliaryModelWrapper) \
        else DistributedDataParallel
    return wrapper_cls(model, device_ids=device_ids, **buffer_sync_kwargs(broadcast_buffers))


def buffer_sync_kwargs(broadcast_buffers):
    """DDP's keyword for (not) syncing buffers before every forward: ``forward_sync_buffers`` where this PyTorch has
    it (``broadcast_buffers`` is deprecated there; buffers are still synced once when wrapping), else
    ``broadcast_buffers``."""
    if broadcast_buffers:
        return {}
    if 'forward_sync_buffers' in inspect.signature(DistributedDataParallel.__init__).parameters:
        return {'forward_sync_buffers': False}
    return {'broadcast_buffers': False}


def wrap_box_models(box, device_ids=None, broadcast_buffers=None):
    """Applies :func:`wrap_for_distributed` to the student and (if any) the teacher of a torchdistill box;
    ``broadcast_buffers(model) -> bool`` decides DDP's option per model (None: always True)."""
    def wrap(model):
        broadcast = True if broadcast_buffers is None else broadcast_buffers(model)
        return wrap_for_distributed(model, device_ids, broadcast)

    if hasattr(box, 'student_model'):
        box.student_model = wrap(box.student_model)
        if box.teacher_model is not None:
            box.teacher_model = wrap(box.teacher_model)
    else:
        box.model = wrap(box.model)


def all_reduce_sum(values, device):
    """Sums a list of floats over all ranks (identity in a single process)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor.tolist()


def all_gather_cpu(tensors):
    """The list of CPU tensors of every rank, rank 0's first (the list itself in a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return tensors
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, tensors)
    return [tensor for rank_tensors in gathered for tensor in rank_tensors]


def is_distributed():
    return dist.is_available() and dist.is_initialized()


def get_rank():
    """This process's rank (0 in a single process)."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size():
    return dist.get_world_size() if is_distributed() else 1


def gather_to_main(obj):
    """The list of every rank's ``obj``, indexed by rank, on rank 0 (``[obj]`` in a single process; None on the
    other ranks). Every rank must call it."""
    if not is_distributed():
        return [obj]
    gathered = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered


class ShardSampler(Sampler):
    """Evaluation shard of one rank: dataset indices ``rank, rank + world, rank + 2 world, ...`` in order.

    torchdistill builds every loader of a distributed run with ``DistributedSampler``, which shuffles by default
    and pads the last shard with repeated examples so that all ranks have the same length: summed over ranks, a
    few examples would be scored twice. These shards do not pad (ranks may differ by one example), so every
    example is scored exactly once, and :func:`gather_in_order` puts per-example results back in dataset order."""

    def __init__(self, num_samples, rank, world_size):
        self.num_samples, self.rank, self.world_size = num_samples, rank, world_size

    def __iter__(self):
        return iter(range(self.rank, self.num_samples, self.world_size))

    def __len__(self):
        return len(range(self.rank, self.num_samples, self.world_size))


def shard_eval_loader(loader):
    """(loader, sharded): in a distributed run, ``loader`` rebuilt with :class:`ShardSampler` instead of its
    ``DistributedSampler`` (same dataset, batch size, collate function, workers) and True; a loader that already
    shards, or any loader in a single process, is returned as is (sharded: whether its data is split over ranks)."""
    if not is_distributed():
        return loader, False
    sampler = getattr(loader, 'sampler', None)
    if isinstance(sampler, ShardSampler):
        return loader, True
    if not isinstance(sampler, DistributedSampler):
        return loader, False  # every rank sees the whole set: nothing to combine
    if loader.batch_size is None:
        raise ConfigError('test.test_data_loader / train.val_data_loader: a batch_sampler cannot be used for '
                          'evaluation with torchrun (give kwargs.batch_size instead)')
    workers = loader.num_workers
    shards = ShardSampler(len(loader.dataset), dist.get_rank(), dist.get_world_size())
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=shards, num_workers=workers,
                      collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, drop_last=False,
                      timeout=loader.timeout, worker_init_fn=loader.worker_init_fn,
                      multiprocessing_context=loader.multiprocessing_context if workers else None,
                      generator=loader.generator, prefetch_factor=loader.prefetch_factor if workers else None,
                      persistent_workers=loader.persistent_workers if workers else False), True


def gather_in_order(tensor):
    """Concatenates the per-example rows of every rank's :class:`ShardSampler` shard back into dataset order
    (row i of rank r is example ``r + i * world``); the tensor itself in a single process. A rank whose shard is
    empty (fewer examples than processes) may give a tensor of any shape with no rows (e.g. ``torch.empty(0)``):
    the row shape and dtype come from the first rank that has rows."""
    if not is_distributed():
        return tensor
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, tensor)
    shaped = next((p for p in parts if len(p)), parts[0])
    out = torch.empty((sum(len(p) for p in parts),) + tuple(shaped.shape[1:]), dtype=shaped.dtype)
    for rank, part in enumerate(parts):
        if len(part):
            out[rank::len(parts)] = part
    return out


def is_main_process():
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def barrier():
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def get_local_rank():
    """This process's rank on its own machine: torchrun's ``LOCAL_RANK``, else SLURM's ``SLURM_LOCALID``, else the
    global rank (one machine); 0 in a single process."""
    for name in ('LOCAL_RANK', 'SLURM_LOCALID'):
        if name in os.environ:
            return int(os.environ[name])
    return get_rank()


@contextmanager
def main_process_first(local=True):
    """Runs the block on the first process of each machine (``local=True``: local rank 0) or of the whole run
    (``local=False``: global rank 0) while the others wait at a barrier, then on the others, which find that
    process's caches (tokenized data, downloads) instead of building them again at the same time::

        with main_process_first(local=True):
            datasets = build_datasets(...)   # node-local caches: each node's local rank 0 fills its own

    Every rank must enter it. A no-op in a single process."""
    if not is_distributed():
        yield
        return
    first = (get_local_rank() if local else get_rank()) == 0
    if not first:
        barrier()
    try:
        yield
    finally:
        if first:
            barrier()


def check_visible_on_all_ranks(path, yaml_key):
    """True if ``path`` (a file rank 0 may have written) exists. In a distributed run every rank looks after a
    barrier and the answers are gathered: when rank 0 sees the file and another rank does not, every rank stops
    with a :class:`ConfigError` naming the path, the ranks and their hosts (checkpoints are written by rank 0 and
    read by every rank, so ``yaml_key`` must be on a filesystem that all nodes share)."""
    exists = os.path.isfile(path)
    if not is_distributed():
        return exists
    barrier()
    exists = os.path.isfile(path)
    views = [None] * dist.get_world_size()
    dist.all_gather_object(views, (exists, socket.gethostname()))
    missing = [f'{rank} ({host})' for rank, (seen, host) in enumerate(views) if not seen]
    if views[0][0] and missing:
        raise ConfigError(f'{yaml_key}: {path} was written by rank 0 ({views[0][1]}) but rank(s) {", ".join(missing)} '
                          'cannot see it; checkpoints are read on every rank, so put them on a filesystem shared by '
                          'all nodes')
    return views[0][0]
