"""A teacher (or student) bigger than one device: FSDP2 sharding and gradient checkpointing for the runner.

In a YAML (``speed``, beside ``amp``/``compile``), or on the command line (``--fsdp student teacher``,
``--gradient_checkpointing student teacher``)::

    speed:
      amp: 'bf16'
      fsdp: ['student', 'teacher']                    # torchrun: shard these instead of DistributedDataParallel
      gradient_checkpointing: ['student', 'teacher']  # recompute each block's activations in the backward

**FSDP2** (``torch.distributed.fsdp.fully_shard``, ZeRO-3): every listed model is sharded per transformer block
(the classes its ``_no_split_modules`` names, else the items of its ``layers``/``h`` ``ModuleList``), then as a
whole (the root, which holds the embeddings, final norm and output layer). Each rank keeps ``1/N`` of every weight,
gradient and Adam moment; a block's weights are all-gathered for its forward and backward and freed after, and
gradients are reduce-scattered (averaged over ranks, as DDP does). A frozen teacher is sharded without gradients
(its forward still runs under ``torch.no_grad``); a LoRA teacher (``LoRATeacher``) has its frozen base and its
adapters sharded in the same units (FSDP2 allows trainable and frozen parameters in one unit) and only the adapters
get gradients. The root is the Hugging Face model itself (under a PEFT model: its base model), since every path
calls it: the box's forward, evaluation and ``generate``.

``fully_shard`` replaces every parameter by a new ``nn.Parameter`` holding a ``DTensor`` shard, so the optimizer
that torchdistill built over the bare models would hold stale tensors: :func:`shard_box_models` points each of its
parameter groups at the new parameters by name (same groups, learning rates and scheduler). Gradient clipping
(``max_grad_norm``) works on DTensors: ``clip_grad_norm_`` reduces the shard norms over ranks.

Mixed precision: ``speed.amp: 'bf16'`` keeps autocast around the forward, as without FSDP; the sharded weights and
their all-gathers stay in fp32 (AdamW on bf16 weights would lose small updates, and evaluation stays fp32 as in every
other run). FSDP2's ``MixedPrecisionPolicy(param_dtype=bf16)`` would halve the all-gather traffic but make every
forward, evaluation included, a bf16 one. ``amp: 'fp16'`` (gradient scaling) is refused with FSDP.

Evaluation: a sharded model's forward needs every rank (each all-gathers its blocks), but the evaluation shards of
``N`` ranks may differ by one example, so by one batch: :func:`lockstep_batches` gives every rank the largest batch
count, the short ranks running a forward on a dummy batch whose results are not counted. Generation (ROUGE-L)
splits the prompts over ranks the same way (every rank as many ``generate`` calls, dummy ones thrown away) and
passes ``synced_gpus=True`` (a rank whose rows all ended keeps stepping until every rank's have).

Checkpoints hold full, unsharded state dicts (:func:`full_state_dict`, :func:`full_optimizer_state`) in the same
torchdistill format as a one-process run, and load back into sharded models (:func:`load_full_state`,
:func:`load_full_optimizer_state`) or into one process.

**Gradient checkpointing** (:func:`enable_gradient_checkpointing`): Hugging Face's own, non-reentrant
(``use_reentrant: False``), so only each block's input is kept for the backward and the block is run again there:
same loss and gradients, activation memory of one block instead of all. It applies to a model with trainable
parameters; a frozen teacher builds no graph and is left alone.
"""
import logging

import torch
from torch import distributed as dist
from torch import nn

from .errors import ConfigError

logger = logging.getLogger(__name__)
BLOCK_LIST_NAMES = ('layers', 'h')  # LLaMA/Qwen/Mistral: model.layers; GPT-2: transformer.h


def _dtensor_type():
    from torch.distributed.tensor import DTensor
    return DTensor


def is_sharded(model):
    """Whether ``model`` (or a module inside it) was sharded by ``fully_shard``."""
    from torch.distributed.fsdp import FSDPModule
    return model is not None and any(isinstance(module, FSDPModule) for module in model.modules())


def network_of(model):
    """The network whose forward every path calls: DDP and auxiliary wrappers removed, and under a PEFT model its
    base Hugging Face model (``PeftModel.forward`` and ``generate`` both call it)."""
    from .loop import inference_model
    network = inference_model(model)
    get_base_model = getattr(network, 'get_base_model', None)
    return get_base_model() if callable(get_base_model) else network


def transformer_blocks(network):
    """The repeated blocks of a network: modules whose class its ``_no_split_modules`` names (Hugging Face), else the
    items of its first ``ModuleList`` called ``layers`` or ``h``; [] when it has neither."""
    names = set(getattr(network, '_no_split_modules', None) or ())
    blocks = [module for module in network.modules() if type(module).__name__ in names]
    if blocks:
        return blocks
    for path, module in network.named_modules():
        if path.rsplit('.', 1)[-1] in BLOCK_LIST_NAMES and isinstance(module, nn.ModuleList):
            return list(module)
    return []


def shard_model(model, label, mesh):
    """``fully_shard`` on each transformer block of ``model``'s network, then on the network (in place, over the
    device ``mesh``); returns the number of blocks."""
    from torch.distributed.fsdp import fully_shard
    network = network_of(model)
    inside = {id(p) for p in network.parameters()}
    outside = [name for name, p in model.named_parameters() if id(p) not in inside]
    if outside:
        raise ConfigError(f'speed.fsdp: the {label} has parameters outside its network ({", ".join(outside[:3])}), '
                          'which FSDP would not shard; remove it from the list')
    blocks = transformer_blocks(network)
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(network, mesh=mesh)
    return len(blocks)


def _trains(model):
    return model is not None and any(p.requires_grad for p in model.parameters())


def check_sides(models, targets):
    """Both trained models sharded, or one: a trained model left to DDP beside a sharded one would mix plain
    tensors and DTensors in one optimizer (and in one gradient-norm clipping)."""
    trained = [name for name, model in models.items() if _trains(model)]
    left = [name for name in trained if name not in targets]
    if left and any(name in targets for name in trained):
        raise ConfigError(f'speed.fsdp: the {left[0]} trains too (its parameters are in the optimizer); list both '
                          f'student and teacher, or neither, since one optimizer cannot mix sharded and whole weights')


def repoint_optimizer(optimizer, old_names, models):
    """Replaces in ``optimizer``'s parameter groups each parameter ``fully_shard`` swapped out (``old_names``:
    id of the old parameter -> (side, name)) by the new one of the same name."""
    if optimizer is None:
        return
    if optimizer.state:
        raise RuntimeError('speed.fsdp: the optimizer already has state; sharding must happen before the first step')
    new = {side: dict(model.named_parameters()) for side, model in models.items() if model is not None}
    for group in optimizer.param_groups:
        group['params'] = [new[old_names[id(p)][0]][old_names[id(p)][1]] if id(p) in old_names else p
                           for p in group['params']]


def shard_box_models(box, targets, device, lockstep_evaluation=True):
    """Shards the ``speed.fsdp`` models of a torchdistill box in place (torchrun only) and points the box's
    optimizer at the sharded parameters. ``lockstep_evaluation``: whether the runner's evaluation keeps ranks in
    lockstep (the causal-LM runner's does; others could hang on uneven shards, so they refuse FSDP)."""
    if not targets:
        return ()
    if not (dist.is_available() and dist.is_initialized()):
        logger.info('speed.fsdp: a single process, nothing to shard')
        return ()
    if not lockstep_evaluation:
        raise ConfigError('speed.fsdp: supported by the causal-LM runner (tools/causal_lm.py) only')
    student_attr = 'student_model' if hasattr(box, 'student_model') else 'model'
    models = {'student': getattr(box, student_attr), 'teacher': getattr(box, 'teacher_model', None)}
    for name in targets:
        if models[name] is None:
            raise ConfigError(f'speed.fsdp: `{name}` given, but this config has no {name} model')
    check_sides(models, targets)
    old_names = {id(p): (side, name) for side, model in models.items() if model is not None
                 for name, p in model.named_parameters()}
    from torch.distributed.device_mesh import init_device_mesh
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))  # every rank holds a 1/N shard
    for name in targets:
        blocks = shard_model(models[name], name, mesh)
        logger.info('speed.fsdp: %s sharded over %d processes (%d blocks + root)', name, dist.get_world_size(),
                    blocks)
    repoint_optimizer(getattr(box, 'optimizer', None), old_names, models)
    return tuple(targets)


# ---- full (unsharded) state dicts ----

def to_full(tensor):
    """A DTensor's whole tensor (an all-gather: every rank must call it); any other tensor detached and cloned."""
    if isinstance(tensor, _dtensor_type()):
        return tensor.full_tensor().detach().cpu()
    return tensor.detach().clone()


def full_state_dict(model, trainable_only=False):
    """``model``'s state dict with whole tensors and the keys of the bare model, for a plain, DDP or FSDP model
    (``trainable_only``: the parameters that require a gradient only, e.g. a LoRA adapter).

    Under FSDP every rank must call it (it all-gathers); rank 0 gets the tensors on the CPU, the others ``{}``
    (``torch.distributed.checkpoint.state_dict.get_model_state_dict`` with ``full_state_dict=True,
    cpu_offload=True``). Export points call it on every rank and write on rank 0::

        state = full_state_dict(model)
        if is_main_process():
            model.save_pretrained(directory, state_dict=state)
    """
    from torchdistill.common.module_util import check_if_wrapped
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=trainable_only)
        return get_model_state_dict(model, options=options)
    model = model.module if check_if_wrapped(model) and hasattr(model, 'module') else model
    state = model.state_dict()
    if trainable_only:
        trainable = {name for name, p in model.named_parameters() if p.requires_grad}
        state = {key: value for key, value in state.items() if key in trainable}
    return state


def load_full_state(model, state, strict=True):
    """Loads a full (unsharded) state dict into ``model``: ``load_state_dict``, or for a sharded model
    ``set_model_state_dict(..., full_state_dict=True)`` (every rank passes the whole state; each keeps its shard)."""
    if not is_sharded(model):
        return model.load_state_dict(state, strict=strict)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    return set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=strict))


def full_optimizer_state(optimizer):
    """``optimizer.state_dict()`` with every DTensor state (Adam moments of sharded parameters) gathered whole: the
    format of a one-process run (state keyed by the parameter's index over the groups), which torchdistill's tools
    and ``optimizer.load_state_dict`` read. Every rank must call it; the other ranks' gathered copies are dropped.

    (``get_optimizer_state_dict`` would key the state by parameter name of one model; this optimizer spans student
    and teacher, and the index format is the one every other checkpoint of this project has.)"""
    state = optimizer.state_dict()
    dtensor = _dtensor_type()
    if not any(isinstance(v, dtensor) for entry in state['state'].values() for v in entry.values()):
        return state
    main = dist.get_rank() == 0
    gathered = {}
    for index, entry in state['state'].items():
        values = {key: to_full(value) if isinstance(value, dtensor) else value for key, value in entry.items()}
        gathered[index] = values if main else {}
    return {'state': gathered, 'param_groups': state['param_groups']}


def load_full_optimizer_state(optimizer, state):
    """Loads :func:`full_optimizer_state` output (or any one-process optimizer state) into ``optimizer``: a whole
    tensor of a sharded parameter's shape becomes a DTensor with that parameter's mesh and placements (each rank
    slices its own shard, no communication)."""
    from torch.distributed.tensor import distribute_tensor
    params = [p for group in optimizer.param_groups for p in group['params']]
    dtensor = _dtensor_type()
    if not any(isinstance(p, dtensor) for p in params):
        return optimizer.load_state_dict(state)

    def like(value, param):
        if isinstance(param, dtensor) and torch.is_tensor(value) and not isinstance(value, dtensor) \
                and value.shape == param.shape:
            return distribute_tensor(value.to(param.device), param.device_mesh, param.placements, src_data_rank=None)
        return value

    converted = {index: {key: like(value, params[index]) for key, value in entry.items()}
                 for index, entry in state['state'].items()}
    return optimizer.load_state_dict({'state': converted, 'param_groups': state['param_groups']})


# ---- evaluation in lockstep ----

class Lockstep:
    """Iterates ``(item, counted)`` over ``items`` (a sized iterable: a data loader, a list of prompt batches); when
    one of ``models`` is sharded, every rank gets as many items as the rank with most, the others ending with
    ``dummy()`` items (``counted`` False) whose results must be thrown away, so that every sharded forward (and each
    ``generate`` call) meets on all ranks. Without sharding it is ``items``, every one counted."""

    def __init__(self, items, models, device, dummy):
        self.items, self.dummy, self.extra = items, dummy, 0
        if dist.is_available() and dist.is_initialized() and any(is_sharded(model) for model in models):
            most = torch.tensor([len(items)], dtype=torch.int64, device=device)
            dist.all_reduce(most, op=dist.ReduceOp.MAX)
            self.extra = int(most.item()) - len(items)

    def __len__(self):
        return len(self.items) + self.extra

    def __iter__(self):
        for item in self.items:
            yield item, True
        for _ in range(self.extra):
            yield self.dummy(), False


def lockstep_batches(loader, models, device):
    """:class:`Lockstep` over an evaluation loader; a dummy batch is the dataset's first example."""
    return Lockstep(loader, models, device, lambda: loader.collate_fn([loader.dataset[0]]))


def generation_kwargs(model):
    """``generate`` keywords for a sharded model: ``synced_gpus=True`` (every rank steps until all have finished, so
    each forward's all-gathers meet)."""
    return {'synced_gpus': True} if is_sharded(model) and dist.is_initialized() else {}


# ---- gradient checkpointing ----

def _follow_grad_mode(module, args):
    """Forward pre-hook: a block runs "in training" whenever a backward will follow (grad enabled). Hugging Face
    checkpoints a block only in training mode, and a LoRA teacher keeps its frozen base, blocks included, in eval
    mode (no dropout; the blocks themselves hold none)."""
    module._pesf_training, module.training = module.training, module.training or torch.is_grad_enabled()


def _restore_mode(module, args, output):
    module.training = module._pesf_training


def enable_gradient_checkpointing(model, label):
    """Hugging Face's non-reentrant gradient checkpointing on ``model``'s network (a PEFT model's base); returns
    False (and does nothing) for a model without trainable parameters, which builds no graph.

    No input gradients are forced (Hugging Face adds a hook making the embeddings' output require grad, which
    reentrant checkpointing needs): non-reentrant checkpointing gives LoRA adapters their gradients without it, and
    frozen blocks before the first adapter then build no graph."""
    if not _trains(model):
        logger.info('speed.gradient_checkpointing: the %s trains no parameter (no graph); nothing to checkpoint', label)
        return False
    network = network_of(model)
    if not getattr(network, 'supports_gradient_checkpointing', False):
        raise ConfigError(f'speed.gradient_checkpointing: the {label} ({type(network).__name__}) does not support '
                          f'gradient checkpointing (Hugging Face models do); remove `{label}` from the list')
    kwargs = {'use_reentrant': False}
    if hasattr(network, 'activation_checkpointing_enable'):  # transformers >= 5.x; the old name warns
        network.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        network.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if getattr(network, '_require_grads_hook', None) is not None:
        network.disable_input_require_grads()
    for module in network.modules():
        if getattr(module, 'gradient_checkpointing', False) and module is not network:
            module.register_forward_pre_hook(_follow_grad_mode)
            module.register_forward_hook(_restore_mode)
    logger.info('speed.gradient_checkpointing: %s (%s), non-reentrant', label, type(network).__name__)
    return True


__all__ = ['shard_box_models', 'full_state_dict', 'load_full_state', 'full_optimizer_state',
           'load_full_optimizer_state', 'Lockstep', 'lockstep_batches', 'enable_gradient_checkpointing', 'is_sharded',
           'generation_kwargs', 'to_full']
