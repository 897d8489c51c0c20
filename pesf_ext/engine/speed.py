"""Speed switches for a torchdistill box: mixed precision, channels_last, ``torch.compile``, no-grad frozen teacher.

In a YAML (top level, beside ``models``/``train``), every key optional::

    speed:
      amp: 'bf16'                  # or 'fp16' (gradient scaling) or null (fp32, the default)
      channels_last: True
      compile: ['student', 'teacher']
      compile_backend: 'inductor'  # any torch.compile backend
      compile_mode: null           # e.g. 'max-autotune'
      teacher_no_grad: True        # default
      deterministic: False         # True: deterministic algorithms (pesf_ext.engine.rng.apply_determinism)
      loss_chunk_tokens: 1024      # token-level losses N tokens at a time (memory O(N x vocabulary)); null: off
      fsdp: ['student', 'teacher']                    # torchrun: FSDP2 sharding instead of DDP (pesf_ext.engine.fsdp)
      gradient_checkpointing: ['student', 'teacher']  # recompute block activations in the backward (same module)

or on the command line of the runners and ``tools/benchmark.py`` (which win over the YAML)::

    --amp bf16 -channels_last --compile student teacher --compile_backend inductor

What each does to the box built by torchdistill (:func:`apply_speed`):

* ``amp``: the box's ``forward_process`` (teacher and student forward, loss) runs under
  ``torch.autocast(device_type, dtype)``; backward and the optimizer step stay outside it, as PyTorch's AMP recipe
  says. With ``fp16`` a ``torch.amp.GradScaler`` scales the loss before ``backward`` and unscales before gradient
  clipping and the optimizer step (steps with inf/NaN gradients are skipped, the scale adapts); bf16 has fp32's
  range and needs no scaling. The loss itself (``box.criterion``) runs outside autocast on float32 copies of the
  fp16/bf16 outputs and features it is given (:func:`float32_criterion`): the models get the speed, the loss
  keeps fp32's precision and range (torchdistill's RKD distances cancel to NaN in fp16 otherwise, and PKT's
  cosine products lose digits in bf16). Evaluation stays in fp32.
* ``channels_last``: student and teacher weights and the training images use the NHWC memory format, which the
  tensor cores' convolution kernels prefer (``torch.channels_last``).
* ``compile``: ``nn.Module.compile`` in place, so module paths, forward hooks and ``state_dict`` keys are unchanged
  (``torch.compile(model)`` would prefix every key with ``_orig_mod.`` and break checkpoints).
* ``teacher_no_grad``: when the teacher is "updatable" for torchdistill (``requires_grad: True``) but none of its
  parameters requires a gradient, its forward runs under ``torch.no_grad()`` as a frozen teacher's does. When an
  adapter (PESF-KD) or the whole teacher (FT-KD, DML, KDCL) trains, the graph is kept. ``torch.inference_mode`` is
  not used: its outputs cannot be saved for backward, which a loss multiplying by teacher logits or features needs.

Why not Hugging Face ``accelerate`` (which torchdistill's boxes accept as ``accelerator``): its ``prepare`` also
wraps the models for distributed training and re-shards the data loaders, which the runner already does itself
(torchrun on CPU and GPU), and for fp16 torchdistill then casts a frozen teacher to pure fp16 (``teacher.half()``),
not autocast. The box's own ``forward_process``/``post_forward_process`` are the narrower hook.
"""
import collections.abc
import contextlib
import dataclasses
import functools
import logging

import torch
from torch.nn.utils import clip_grad_norm_
from torch.optim.lr_scheduler import CosineAnnealingWarmRestarts, ReduceLROnPlateau

from ..procs import criterion_modules
from .errors import ConfigError
from .fsdp import enable_gradient_checkpointing

logger = logging.getLogger(__name__)
AMP_DTYPES = {'bf16': torch.bfloat16, 'fp16': torch.float16}
COMPILE_TARGETS = ('student', 'teacher')
DEFAULT_POST_FORWARD_PROCESS = 'default_post_forward_process'


@dataclasses.dataclass
class SpeedOptions:
    amp: str = None
    channels_last: bool = False
    compile: tuple = ()
    compile_backend: str = 'inductor'
    compile_mode: str = None
    teacher_no_grad: bool = True
    deterministic: bool = False
    tf32: bool = True
    sync_batchnorm: bool = False
    persistent_workers: bool = False
    fsdp: tuple = ()  # pesf_ext.engine.fsdp: shard these models with FSDP2 under torchrun
    gradient_checkpointing: tuple = ()  # pesf_ext.engine.fsdp.enable_gradient_checkpointing
    loss_chunk_tokens: int = None  # TokenKDLoss / NextTokenLoss chunk_tokens (set_loss_chunk_tokens)

    def describe(self):
        parts = [f'amp={self.amp or "off (fp32)"}', f'channels_last={self.channels_last}',
                 f'compile={",".join(self.compile) or "off"}', f'teacher_no_grad={self.teacher_no_grad}']
        if self.compile:
            parts.append(f'compile_backend={self.compile_backend}')
        for name in ('fsdp', 'gradient_checkpointing'):
            if getattr(self, name):
                parts.append(f'{name}={",".join(getattr(self, name))}')
        if self.loss_chunk_tokens is not None:
            parts.append(f'loss_chunk_tokens={self.loss_chunk_tokens}')
        return ', '.join(parts)


def add_speed_args(parser):
    """The command-line switches (``None`` = take the YAML's ``speed`` value)."""
    group = parser.add_argument_group('speed (override the YAML key `speed`)')
    group.add_argument('--amp', choices=sorted(AMP_DTYPES), help='mixed precision: bf16, or fp16 with grad scaling')
    group.add_argument('-channels_last', action='store_const', const=True, default=None,
                       help='channels_last memory format for models and images')
    group.add_argument('--compile', nargs='+', choices=COMPILE_TARGETS, help='torch.compile these models')
    group.add_argument('--compile_backend', help='torch.compile backend (default inductor)')
    group.add_argument('--compile_mode', help='torch.compile mode (e.g. max-autotune)')
    group.add_argument('--fsdp', nargs='+', choices=COMPILE_TARGETS,
                       help='with torchrun: shard these models with FSDP2 (per transformer block) instead of DDP')
    group.add_argument('--gradient_checkpointing', nargs='+', choices=COMPILE_TARGETS,
                       help='recompute these models\' block activations in the backward (Hugging Face models)')
    group.add_argument('-deterministic', action='store_const', const=True, default=None,
                       help='deterministic algorithms, cudnn.benchmark off (same seed, same GPU: same result)')
    group.add_argument('-no_tf32', dest='tf32', action='store_const', const=False, default=None,
                       help='full fp32 matmuls and convolutions on CUDA (TF32 is on by default)')
    group.add_argument('-sync_batchnorm', action='store_const', const=True, default=None,
                       help='with torchrun on CUDA: BatchNorm statistics over all processes (SyncBatchNorm)')
    group.add_argument('-persistent_workers', action='store_const', const=True, default=None,
                       help='keep data loader workers alive across epochs (when num_workers > 0)')
    return parser


SWITCH_FLAGS = {'tf32': '-no_tf32', 'sync_batchnorm': '-sync_batchnorm', 'persistent_workers': '-persistent_workers'}


def speed_options(config, args=None):
    """Reads ``speed`` from the YAML, then the command line; raises :class:`ConfigError` naming the key."""
    section = config.get('speed')
    if section is None:
        section = {}
    if not isinstance(section, dict):
        raise ConfigError(f'speed: expected a mapping (amp, channels_last, compile, ...), got {section!r}')
    known = {field.name for field in dataclasses.fields(SpeedOptions)}
    unknown = sorted(set(section) - known)
    if unknown:
        raise ConfigError(f'speed.{unknown[0]}: unknown switch; known: {", ".join(sorted(known))}')
    values = dict(section)
    sources = {name: f'speed.{name}' for name in values}
    for name in ('amp', 'channels_last', 'compile', 'compile_backend', 'compile_mode', 'deterministic', 'fsdp',
                 'gradient_checkpointing'):
        value = getattr(args, name, None) if args is not None else None
        if value is not None:
            values[name] = value
            sources[name] = f'-{name}' if name in ('channels_last', 'deterministic') else f'--{name}'
    for name, flag in SWITCH_FLAGS.items():
        value = getattr(args, name, None) if args is not None else None
        if value is not None:
            values[name], sources[name] = value, flag
    for name in SWITCH_FLAGS:
        if name in values and not isinstance(values[name], bool):
            raise ConfigError(f'{sources[name]}: must be True or False, got {values[name]!r}')
    amp = values.get('amp')
    if amp is not None and amp not in AMP_DTYPES:
        raise ConfigError(f'{sources["amp"]}: must be one of {", ".join(sorted(AMP_DTYPES))} or null, got {amp!r}')
    for name in ('channels_last', 'teacher_no_grad', 'deterministic'):
        if name in values and not isinstance(values[name], bool):
            raise ConfigError(f'{sources[name]}: must be True or False, got {values[name]!r}')
    for name in ('compile', 'fsdp', 'gradient_checkpointing'):
        values[name] = model_targets(values.get(name), sources.get(name))
    for name in ('compile_backend', 'compile_mode'):
        if values.get(name) is not None and not isinstance(values[name], str):
            raise ConfigError(f'{sources[name]}: must be a string, got {values[name]!r}')
    if values.get('compile_backend') is None:
        values.pop('compile_backend', None)
    chunk = values.get('loss_chunk_tokens')
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise ConfigError(f'speed.loss_chunk_tokens: must be an integer >= 1 (tokens per chunk) or null (off), '
                          f'got {chunk!r}')
    return SpeedOptions(**values)


def model_targets(value, source):
    """A list of models (``compile``, ``fsdp``, ``gradient_checkpointing``) as a tuple; each must be a model name."""
    targets = value or ()
    if not isinstance(targets, (str, list, tuple)):
        raise ConfigError(f'{source}: a list of models ({", ".join(COMPILE_TARGETS)}), got {value!r}')
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    for target in targets:
        if target not in COMPILE_TARGETS:
            raise ConfigError(f'{source}: unknown model `{target}`; choose from {", ".join(COMPILE_TARGETS)}')
    return targets


def check_speed_fits(options, config):
    """Checks that need the whole YAML: fp16's gradient scaling replaces torchdistill's post-forward process (and
    does not run on FSDP's sharded gradients)."""
    if options.fsdp and options.amp == 'fp16':
        raise ConfigError('speed.fsdp: cannot be combined with speed.amp: fp16 (gradient scaling); use amp: bf16')
    if options.amp != 'fp16':
        return
    train = config.get('train') or {}
    stages = [(f'train.{k}', v) for k, v in train.items() if k.startswith('stage')] or [('train', train)]
    for prefix, stage in stages:
        process = stage.get('post_forward_process')
        if process not in (None, DEFAULT_POST_FORWARD_PROCESS):
            raise ConfigError(f'{prefix}.post_forward_process: `{process}` cannot be combined with speed.amp: fp16, '
                              'whose gradient scaling replaces the post-forward process; use amp: bf16')


def _models(box):
    student = box.student_model if hasattr(box, 'student_model') else box.model
    return {'student': student, 'teacher': getattr(box, 'teacher_model', None)}


def to_channels_last(batch):
    if torch.is_tensor(batch) and batch.dim() == 4:
        return batch.contiguous(memory_format=torch.channels_last)
    return batch


def scaled_post_forward_process(box, loss, metrics=None, **kwargs):
    """torchdistill's ``default_post_forward_process`` with a ``GradScaler``: scaled backward, unscale before
    clipping, ``scaler.step`` (skips a step whose gradients overflowed) and ``scaler.update``."""
    scaler = box.grad_scaler
    box.stage_grad_count += 1
    if box.grad_accum_step > 1:
        loss = loss / box.grad_accum_step
    scaler.scale(loss).backward()
    if box.stage_grad_count % box.grad_accum_step == 0:
        if box.max_grad_norm is not None:
            scaler.unscale_(box.optimizer)
            clip_grad_norm_([p for group in box.optimizer.param_groups for p in group['params']], box.max_grad_norm)
        scaler.step(box.optimizer)
        scaler.update()
        box.optimizer.zero_grad()
    if box.lr_scheduler is not None and box.scheduling_step > 0 \
            and box.stage_grad_count % box.scheduling_step == 0 and box.stage_grad_count % box.grad_accum_step == 0:
        if isinstance(box.lr_scheduler, ReduceLROnPlateau):
            box.lr_scheduler.step(metrics)
        elif isinstance(box.lr_scheduler, CosineAnnealingWarmRestarts):
            box.lr_scheduler.step(int(box.stage_grad_count / box.scheduling_step))
        else:
            box.lr_scheduler.step()


def loader_entries(train_config):
    """(YAML key, entry) of every training and validation loader of ``train`` (multi-stage: of every stage)."""
    stages = [(f'train.{k}', v) for k, v in train_config.items() if k.startswith('stage') and isinstance(v, dict)]
    for prefix, stage in stages or [('train', train_config)]:
        for name in ('train_data_loader', 'val_data_loader'):
            if isinstance(stage.get(name), dict):
                yield f'{prefix}.{name}', stage[name]


def apply_loader_switches(options, config):
    """``persistent_workers``: sets ``persistent_workers: True`` in the ``kwargs`` of every training/validation
    loader with ``num_workers > 0`` (before the box builds them); a value the YAML gives itself is kept."""
    if not options.persistent_workers:
        return
    for key, entry in loader_entries(config.get('train') or {}):
        kwargs = entry.get('kwargs')
        if isinstance(kwargs, dict) and (kwargs.get('num_workers') or 0) > 0:
            kwargs.setdefault('persistent_workers', True)
            logger.info('speed: %s.kwargs.persistent_workers = %s', key, kwargs['persistent_workers'])


def apply_tf32(options, device):
    """TF32 tensor-core matmuls and convolutions on CUDA (``speed.tf32``, on by default; off: full fp32)."""
    if device.type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = options.tf32
        torch.backends.cudnn.allow_tf32 = options.tf32


def _is_batch_norm(module):
    return isinstance(module, torch.nn.modules.batchnorm._BatchNorm)


def buffers_frozen(model):
    """True when no buffer of ``model`` can change in training: every module holding a buffer is in eval mode and
    has parameters, none of which requires a gradient (the pre-epoch process keeps such modules in eval mode), as
    in a teacher with adapters. DDP then need not broadcast the buffers from rank 0 before every forward."""
    for module in model.modules():
        if next(module.buffers(recurse=False), None) is None:
            continue
        params = list(module.parameters())
        if module.training or not params or any(p.requires_grad for p in params):
            return False
    return True


def convert_sync_batchnorm(model, name):
    """``nn.SyncBatchNorm.convert_sync_batchnorm`` in place (parameters keep their identity, so the optimizer is
    untouched); refuses when a BatchNorm module carries hooks (a loss reading its input or output would lose them)."""
    for path, module in model.named_modules():
        if _is_batch_norm(module) and (module._forward_hooks or module._forward_pre_hooks):
            raise ConfigError(f'speed.sync_batchnorm: the {name}\'s BatchNorm `{path}` has forward hooks (a loss reads '
                              'it), which the conversion would drop')
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


def prepare_for_wrapping(box, options, device, distributed):
    """The switches that must act on the bare models, before DDP wraps them: ``channels_last`` (DDP's gradient
    buckets take the parameters' memory layout when built) and ``sync_batchnorm`` (the student and a teacher
    whose BatchNorm layers train become ``SyncBatchNorm``; under torchrun on CUDA only)."""
    models = _models(box)
    if options.channels_last:
        for model in models.values():
            if model is not None:
                model.to(memory_format=torch.channels_last)
    if not options.sync_batchnorm:
        return
    if not distributed:
        logger.info('speed.sync_batchnorm: a single process, nothing to synchronise')
        return
    if device.type != 'cuda':
        raise ConfigError('speed.sync_batchnorm: needs CUDA (NCCL); PyTorch\'s SyncBatchNorm does not run on CPU')
    student_attr = 'student_model' if hasattr(box, 'student_model') else 'model'
    setattr(box, student_attr, convert_sync_batchnorm(getattr(box, student_attr), 'student'))
    teacher = models['teacher']
    if teacher is not None and any(p.requires_grad for m in teacher.modules() if _is_batch_norm(m)
                                   for p in m.parameters()):
        box.teacher_model = convert_sync_batchnorm(teacher, 'teacher')


def upcast(obj):
    """``obj`` with every fp16/bf16 tensor in it cast to float32 (differentiably), through dicts, lists and tuples;
    other mappings (Hugging Face model outputs) are updated in place, since they are made anew each step."""
    if torch.is_tensor(obj):
        return obj.float() if obj.dtype in (torch.float16, torch.bfloat16) else obj
    if type(obj) is dict:
        return {key: upcast(value) for key, value in obj.items()}
    if isinstance(obj, collections.abc.MutableMapping):
        for key in list(obj.keys()):
            obj[key] = upcast(obj[key])
        return obj
    if isinstance(obj, list):
        return [upcast(value) for value in obj]
    if isinstance(obj, tuple):
        values = [upcast(value) for value in obj]
        return type(obj)(*values) if hasattr(obj, '_fields') else tuple(values)
    return obj


@contextlib.contextmanager
def float32_criterion(box, device_type, upcast_inputs=True):
    """Within the block, ``box.criterion`` (whichever the current stage uses) runs with autocast off on float32
    copies of its inputs. Autocast already keeps softmax and KL in fp32, but not the products inside feature
    losses (Gram matrices, pairwise distances, cosine similarities), which overflow or cancel in fp16/bf16.

    ``upcast_inputs=False`` (``speed.loss_chunk_tokens`` on): autocast off, inputs as the models gave them. The
    chunked token losses upcast one chunk at a time; a float32 copy of whole ``[tokens, vocabulary]`` logits here
    would be the very tensor chunking avoids (2.5 GB per side at 4,096 tokens x 151,936 ids)."""
    criterion = box.criterion
    forward = criterion.forward
    cast = upcast if upcast_inputs else (lambda obj: obj)

    @functools.wraps(forward)
    def forward_in_float32(*args, **kwargs):
        with torch.autocast(device_type, enabled=False):
            return forward(*cast(args), **cast(kwargs))

    criterion.forward = forward_in_float32
    try:
        yield
    finally:
        del criterion.forward  # back to the class's forward


def teacher_needs_graph(box):
    teacher = getattr(box, 'teacher_model', None)
    return teacher is not None and any(p.requires_grad for p in teacher.parameters())


def set_loss_chunk_tokens(criterion, chunk_tokens):
    """Sets ``chunk_tokens`` on every loss of ``criterion`` that has one (``TokenKDLoss``, ``NextTokenLoss``; sub-terms
    of torchdistill's ``WeightedSumLoss`` included); returns how many."""
    losses = [module for module in criterion_modules(criterion) if hasattr(module, 'chunk_tokens')]
    for loss in losses:
        loss.chunk_tokens = chunk_tokens
    return len(losses)


def chunked_loss_forward_process(box, forward_process, chunk_tokens):
    """``forward_process`` that first gives the current stage's criterion ``speed.loss_chunk_tokens`` (a multi-stage
    box builds a new criterion per stage)."""
    @functools.wraps(forward_process)
    def forward_process_with_chunks(*args, **kwargs):
        set_loss_chunk_tokens(box.criterion, chunk_tokens)
        return forward_process(*args, **kwargs)
    return forward_process_with_chunks


def apply_speed(box, options, device):
    """Applies ``options`` to a built torchdistill ``DistillationBox``/``TrainingBox`` in place; returns the box."""
    models = _models(box)
    forward_process = box.forward_process
    apply_tf32(options, device)
    if options.channels_last:  # the runner converts before DDP wrapping (prepare_for_wrapping); a no-op then
        for model in models.values():
            if model is not None:
                model.to(memory_format=torch.channels_last)  # parameters keep their identity (optimizer intact)
    if options.teacher_no_grad and models['teacher'] is not None and getattr(box, 'teacher_updatable', False) \
            and not teacher_needs_graph(box):
        get_teacher_output = box.get_teacher_output

        @functools.wraps(get_teacher_output)
        def teacher_output_without_graph(*args, **kwargs):
            with torch.no_grad():
                return get_teacher_output(*args, **kwargs)

        box.get_teacher_output = teacher_output_without_graph
        logger.info('speed: the teacher has no trainable parameter; its forward runs under torch.no_grad()')
    dtype = AMP_DTYPES.get(options.amp)

    @functools.wraps(forward_process)
    def fast_forward_process(sample_batch, targets=None, supp_dict=None, **kwargs):
        if options.channels_last:
            sample_batch = to_channels_last(sample_batch)
        if dtype is None:
            return forward_process(sample_batch, targets, supp_dict, **kwargs)
        with torch.autocast(device.type, dtype=dtype), \
                float32_criterion(box, device.type, upcast_inputs=options.loss_chunk_tokens is None):
            loss = forward_process(sample_batch, targets, supp_dict, **kwargs)
        return loss.float()

    if options.channels_last or dtype is not None:
        box.forward_process = fast_forward_process
    if options.loss_chunk_tokens is not None:
        if not set_loss_chunk_tokens(box.criterion, options.loss_chunk_tokens):
            logger.warning('speed.loss_chunk_tokens: the criterion has no TokenKDLoss or NextTokenLoss; '
                           'nothing chunked')
        box.forward_process = chunked_loss_forward_process(box, box.forward_process, options.loss_chunk_tokens)
    if options.amp == 'fp16':
        box.grad_scaler = torch.amp.GradScaler(device.type)
        box.post_forward_process = functools.partial(scaled_post_forward_process, box)
    for name in options.gradient_checkpointing:  # a trained model's blocks recompute in the backward (fsdp.py)
        if models[name] is None:
            raise ConfigError(f'speed.gradient_checkpointing: `{name}` given, but this config has no {name} model')
        enable_gradient_checkpointing(models[name], name)
    for name in options.compile:
        if models[name] is None:
            raise ConfigError(f'speed.compile: `{name}` given, but this config has no {name} model')
        models[name].compile(backend=options.compile_backend, mode=options.compile_mode)
    logger.info('speed: %s', options.describe())
    return box
