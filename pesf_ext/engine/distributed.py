"""Multi-process training with torchrun on CUDA (NCCL) and CPU (gloo).

torchdistill 1.1.5's ``init_distributed_mode`` calls ``torch.cuda.set_device`` and hard-codes NCCL, and its
``wrap_model`` wraps with DistributedDataParallel only on CUDA. These helpers extend that to CPU without editing
torchdistill: processes are started by ``torchrun`` (which sets RANK, WORLD_SIZE, LOCAL_RANK), the backend follows
the device, and every model with trainable parameters that torchdistill left unwrapped is wrapped in DDP.
"""
import logging
import os

import torch
from torch import distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torchdistill.common.main_util import setup_for_distributed
from torchdistill.common.module_util import check_if_wrapped
from torchdistill.models.wrapper import AuxiliaryModelWrapper

logger = logging.getLogger(__name__)


def resolve_device(device_arg=None):
    """``--device`` default: cuda when available, else cpu."""
    if device_arg:
        return torch.device(device_arg)
    return torch.device('cuda' if torch.cuda.is_available() else 'cpu')


def init_distributed(device, world_size=1, dist_url='env://'):
    """Joins the process group that torchrun (or SLURM) describes; returns (distributed, world_size, device_ids, device).

    NCCL and one GPU per process (``LOCAL_RANK``) on CUDA, gloo on CPU. Without RANK/WORLD_SIZE in the
    environment the run is single-process.
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
    dist.init_process_group(backend=backend, init_method=dist_url, world_size=world_size, rank=rank)
    dist.barrier()
    setup_for_distributed(rank == 0)
    logger.info('distributed: rank %d / %d, backend %s, device %s', rank, world_size, backend, device)
    return True, world_size, device_ids, device


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


def wrap_for_distributed(model, device_ids=None):
    """Wraps ``model`` in DDP when it has trainable parameters and is not wrapped yet; frozen models stay bare.

    Parameters that an inner DDP already synchronises (torchdistill's ``Linear4CRD`` wraps its normalizer with
    ``wrap_if_distributed``) are excluded, so nothing is reduced twice; a model whose trainable parameters are all
    under such inner DDPs is left alone.
    """
    if check_if_wrapped(model) or not has_trainable_params(model):
        return model
    already_synced = _params_under_ddp(model)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    if trainable <= already_synced:
        return model
    if already_synced:
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, sorted(already_synced))
    wrapper_cls = DistributedAuxiliaryModelWrapper if isinstance(model, AuxiliaryModelWrapper) \
        else DistributedDataParallel
    return wrapper_cls(model, device_ids=device_ids)


def wrap_box_models(box, device_ids=None):
    """Applies :func:`wrap_for_distributed` to the student and (if any) the teacher of a torchdistill box."""
    if hasattr(box, 'student_model'):
        box.student_model = wrap_for_distributed(box.student_model, device_ids)
        if box.teacher_model is not None:
            box.teacher_model = wrap_for_distributed(box.teacher_model, device_ids)
    else:
        box.model = wrap_for_distributed(box.model, device_ids)


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


def is_main_process():
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def barrier():
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
