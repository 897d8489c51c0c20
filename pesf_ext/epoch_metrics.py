"""Per-epoch teacher-student measurements (PESF-KD Figs. 4-8, Z-score Fig. 5), as a torchdistill post-epoch process.

.. code-block:: yaml

    train:
      post_epoch_process: 'epoch_metrics_post_epoch_process'
      epoch_metrics:                     # optional settings, all keys optional
        temperature: 4.0                 # default: the first loss term's ``temperature`` (else 1)
        feature_modules: {teacher: 'fc', student: 'fc'}   # penultimate features = input of this module
        keep_samples: 1000               # per-sample logits/features of the last epoch kept for figures

After torchdistill's own post-epoch step (scheduler, auxiliary wrappers) it evaluates student and teacher on the
validation set and appends one JSON line per epoch to the runner's ``<run log stem>_epochs.jsonl``: accuracies,
sharpness gap (and its eq.-10 approximation), KL at the loss's temperature, top-1 agreement, probability loyalty,
minibatch CKA of logits and of penultimate features, mean per-sample logit std and mean of each side, the mean of
every loss term over the epoch, the learning rates, and the seconds the evaluation took. The same collector
(:func:`collect`) serves ``tools/analyze.py`` on checkpoints. Batches may be tensors or dicts of tensors
(Hugging Face models, outputs with ``.logits``).
"""
import contextlib
import json
import logging
import os
import time

import torch
from torch import nn
from torchdistill.common.module_util import get_module
from torchdistill.core.interfaces.post_epoch_proc import (default_post_epoch_process_with_teacher,
                                                         default_post_epoch_process_without_teacher)
from torchdistill.core.interfaces.registry import register_post_epoch_proc_func

from . import metrics
from .engine.distributed import all_reduce_sum, is_main_process
from .engine.errors import ConfigError
from .engine.loop import batch_len, inference_model, logits_of, move_to, split_batch
from .losses.functional import sharpness

logger = logging.getLogger(__name__)
OPTION_KEYS = {'temperature', 'feature_modules', 'keep_samples'}
PROCESS_NAME = 'epoch_metrics_post_epoch_process'


def default_feature_module(model):
    """Name of the last ``nn.Linear`` of ``model`` (its input is the penultimate feature: ``fc`` for ResNets,
    ``classifier`` for BERT classifiers), or None."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    return names[-1] if names else None


def check_options(options, nets):
    """Validates ``train.epoch_metrics`` against the models; returns {'temperature', 'feature_modules',
    'keep_samples'} with defaults filled. Raises :class:`ConfigError` naming the key at fault."""
    nets = {name: metrics_network(net) for name, net in nets.items()}
    options = dict(options or {})
    unknown = set(options) - OPTION_KEYS
    if unknown:
        raise ConfigError(f'train.epoch_metrics: unknown keys {sorted(unknown)}; known: {sorted(OPTION_KEYS)}')
    temperature = options.get('temperature')
    if temperature is not None and (not isinstance(temperature, (int, float)) or temperature <= 0):
        raise ConfigError(f'train.epoch_metrics.temperature: must be a number > 0, got {temperature!r}')
    feature_modules = dict(options.get('feature_modules') or {})
    for name, net in nets.items():
        path = feature_modules.get(name) or default_feature_module(net)
        if path is not None and get_module_or_none(net, path) is None:
            raise ConfigError(f'train.epoch_metrics.feature_modules.{name}: no module `{path}` in the {name}')
        feature_modules[name] = path
    keep = options.get('keep_samples', 1000)
    if not isinstance(keep, int) or keep < 0:
        raise ConfigError(f'train.epoch_metrics.keep_samples: must be an integer >= 0, got {keep!r}')
    return {'temperature': temperature, 'feature_modules': feature_modules, 'keep_samples': keep}


def get_module_or_none(model, path):
    names = dict(model.named_modules())
    return names.get(path) if path in names else (model if path in ('', '.') else None)


def loss_temperature(criterion):
    """The ``temperature`` of the first loss module that has one (torchdistill's KDLoss, pesf_ext losses)."""
    roots = [criterion] + [term[0] for term in getattr(criterion, 'term_dict', {}).values()
                           if isinstance(term, tuple) and isinstance(term[0], nn.Module)]
    for root in roots:
        for module in root.modules():
            value = getattr(module, 'temperature', None)
            if isinstance(value, (int, float)) and value > 0:
                return float(value)
    return 1.0


class FeatureTap:
    """Forward hook that keeps the flattened input of one module (the penultimate feature); ``fired`` says whether
    it ran since the last :meth:`reset`."""

    def __init__(self, module):
        self.value, self.fired = None, False
        self.handle = module.register_forward_hook(self._keep)

    def _keep(self, module, inputs, output):
        self.fired = True
        self.value = inputs[0].detach().flatten(1) if inputs and torch.is_tensor(inputs[0]) else None

    def reset(self):
        self.value, self.fired = None, False

    def remove(self):
        self.handle.remove()


def metrics_network(model):
    """The network the measurements run: DDP and auxiliary wrappers removed (:func:`inference_model`) and a
    ``torch.compile(model)`` wrapper too (its ``_orig_mod``), so feature taps sit on the modules that run."""
    while True:
        model = inference_model(model)
        inner = getattr(model, '_orig_mod', None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


@contextlib.contextmanager
def uncompiled(nets):
    """Runs ``nets`` eagerly: ``nn.Module.compile()`` (in place, speed.compile) keeps a compiled call per module,
    which was traced without this module's feature taps and, hooks not being guarded, may never call them."""
    saved = [(module, module._compiled_call_impl) for net in nets for module in net.modules()
             if getattr(module, '_compiled_call_impl', None) is not None]
    for module, _ in saved:
        module._compiled_call_impl = None
    try:
        yield
    finally:
        for module, compiled in saved:
            module._compiled_call_impl = compiled


def frozen(net, training_modes):
    """True when ``net`` cannot change between epochs by training: no parameter requires a gradient and no module
    was in training mode (BatchNorm statistics stay), as for a teacher torchdistill keeps frozen."""
    return not any(training_modes) and not any(p.requires_grad for p in net.parameters())


def ordered_loader(data_loader):
    """True when ``data_loader`` yields the same batches in the same order every pass (no shuffling sampler)."""
    sampler = getattr(data_loader, 'sampler', None)
    if isinstance(sampler, torch.utils.data.RandomSampler):
        return False
    return not getattr(sampler, 'shuffle', False)


def teacher_fingerprint(net, data_loader, feature_path, device):
    """What a cached teacher pass depends on: the module, each parameter/buffer and its in-place version counter
    (a loaded checkpoint, e.g. RCO's next anchor, bumps it), the loader and the feature module."""
    tensors = [(id(t), getattr(t, '_version', None)) for t in net.state_dict(keep_vars=True).values()]
    return id(net), tuple(tensors), id(data_loader), len(data_loader), feature_path, str(device)


@torch.inference_mode()
def collect(models, data_loader, device, temperature=1.0, feature_modules=None, keep_samples=0, teacher_cache=None):
    """Evaluates ``models`` ({'student': m} and optionally 'teacher') on ``data_loader``; returns (aggregates,
    samples). Aggregates are summed over ranks; ``samples`` holds up to ``keep_samples`` per-sample logits,
    penultimate features and labels (this rank's) for figures.

    Compiled networks run eagerly here (:func:`uncompiled`), and a feature tap that did not fire on a batch stops
    with a :class:`ConfigError` instead of a silent NaN CKA. ``teacher_cache`` (a dict the caller keeps between
    calls) holds a frozen teacher's logits and features of every batch (:func:`frozen`, :func:`ordered_loader`,
    :func:`teacher_fingerprint`): the next call reuses them instead of running the teacher again. A teacher that
    trains (PESF-KD's adapters, FT-KD, DML) or was in training mode is run every time.
    """
    nets = {name: metrics_network(model) for name, model in models.items()}
    modes = {name: [m.training for m in net.modules()] for name, net in nets.items()}
    paths = {name: (feature_modules or {}).get(name) for name in nets}
    cached, fill = None, None
    if teacher_cache is not None and 'teacher' in nets:
        key = teacher_fingerprint(nets['teacher'], data_loader, paths['teacher'], device)
        if frozen(nets['teacher'], modes['teacher']) and ordered_loader(data_loader):
            if teacher_cache.get('key') == key:
                cached = teacher_cache['batches']
            else:
                teacher_cache.clear()
                fill = []
        else:
            teacher_cache.clear()
    taps = {}
    for name, net in nets.items():
        net.eval()
        module = get_module_or_none(net, paths[name]) if paths[name] else None
        if module is not None and not (name == 'teacher' and cached is not None):
            taps[name] = FeatureTap(module)
    pair = 'teacher' in nets and 'student' in nets
    sums, kept = {'count': 0}, 0
    ckas = {'logits': metrics.MinibatchCKA(), 'features': metrics.MinibatchCKA()}
    samples = {'labels': []}
    features = {}
    try:
        with uncompiled(nets.values()):
            for index, batch in enumerate(data_loader):
                inputs, targets, _ = split_batch(batch)
                inputs, targets = move_to(inputs, device), move_to(targets, device)
                logits = {}
                for name, net in nets.items():
                    if name == 'teacher' and cached is not None:
                        logits[name], features[name] = cached[index]
                        continue
                    tap = taps.get(name)
                    if tap is not None:
                        tap.reset()
                    logits[name] = logits_of(net(**inputs) if isinstance(inputs, dict) else net(inputs)).float()
                    if tap is not None and not tap.fired:
                        raise ConfigError(f'train.epoch_metrics.feature_modules.{name}: `{paths[name]}` did not run '
                                          f'in the {name}\'s forward, so its features (CKA) cannot be measured')
                    features[name] = tap.value if tap is not None else None
                if fill is not None:
                    fill.append((logits['teacher'], features['teacher']))
                count = batch_len(targets)
                sums['count'] += count
                keep = min(count, keep_samples - kept)
                for name, z in logits.items():
                    _add(sums, f'{name}_top1', (z.argmax(dim=-1) == targets).sum())
                    mean, std = metrics.logit_mean_std(z)
                    _add(sums, f'{name}_logit_std', std.sum())
                    _add(sums, f'{name}_logit_mean', mean.sum())
                    _add(sums, f'{name}_sharpness', sharpness(z).sum())
                    if keep > 0:
                        samples.setdefault(f'{name}_logits', []).append(z[:keep].cpu())
                        if features.get(name) is not None:
                            samples.setdefault(f'{name}_features', []).append(features[name][:keep].float().cpu())
                if keep > 0:
                    samples['labels'].append(targets[:keep].cpu())
                    kept += keep
                if pair:
                    zt, zs = logits['teacher'], logits['student']
                    _add(sums, 'gap', (sharpness(zt) - sharpness(zs)).sum())
                    _add(sums, 'gap_approx', metrics.sharpness_gap_approx(zt, zs) * count)
                    _add(sums, 'kl', metrics.mean_kl(zt, zs, temperature) * count)
                    _add(sums, 'agreement', (zt.argmax(dim=-1) == zs.argmax(dim=-1)).sum())
                    _add(sums, 'pl', metrics.probability_loyalty_per_sample(zt, zs).sum())
                    ckas['logits'].update(zt, zs)
                    if features.get('teacher') is not None and features.get('student') is not None:
                        ckas['features'].update(features['teacher'], features['student'])
        if fill is not None:
            teacher_cache.update(key=key, batches=fill)
    finally:
        for tap in taps.values():
            tap.remove()
        for name, net in nets.items():
            for module, mode in zip(net.modules(), modes[name]):
                module.training = mode
    names = sorted(sums)
    cka_values = [ckas[k].xy for k in ('logits', 'features')] + [ckas[k].xx for k in ('logits', 'features')] + \
        [ckas[k].yy for k in ('logits', 'features')] + [ckas[k].batches for k in ('logits', 'features')]
    totals = all_reduce_sum([float(sums[n]) for n in names] + cka_values, device)
    reduced = dict(zip(names, totals[:len(names)]))
    count = max(reduced.pop('count'), 1.0)
    result = {}
    for name, value in reduced.items():
        result[name] = (100.0 if name.endswith('_top1') else 1.0) * value / count
    if pair:
        for i, kind in enumerate(('logits', 'features')):
            xy, xx, yy, batches = (totals[len(names) + i + 2 * j] for j in range(4))
            merged = metrics.MinibatchCKA()
            merged.xy, merged.xx, merged.yy, merged.batches = xy, xx, yy, batches
            result[f'cka_{kind}'] = merged.compute()
        result['temperature'] = temperature
    samples = {k: torch.cat(v) for k, v in samples.items() if v}
    return result, samples


def _add(sums, key, value):
    """Sums on the device (read once, after the last batch)."""
    value = value.double() if torch.is_tensor(value) else float(value)
    sums[key] = value if key not in sums else sums[key] + value


def records_paths(run_log, dst_ckpt):
    """(per-epoch JSON lines, last epoch's per-sample tensors): beside the run log, else beside ``dst_ckpt``."""
    base = run_log if run_log else dst_ckpt
    stem = os.path.splitext(os.path.expanduser(base))[0]
    return f'{stem}_epochs.jsonl', f'{stem}_epoch_samples.pt'


@register_post_epoch_proc_func
def epoch_metrics_post_epoch_process(self, metrics=None, epoch=None, epoch_stats=None, records_path=None,
                                     options=None, **kwargs):
    """torchdistill's default post-epoch process of this box, then the measurements of this module's docstring.

    The runner passes ``epoch``, ``epoch_stats`` (from its training loop), ``records_path`` and the checked
    ``options``; without ``records_path`` (another runner) only the default process runs."""
    learning_rates = [group['lr'] for group in self.optimizer.param_groups]  # the lrs this epoch trained with
    has_teacher = getattr(self, 'teacher_model', None) is not None
    if has_teacher:
        default_post_epoch_process_with_teacher(self, metrics=metrics, **kwargs)
    else:
        default_post_epoch_process_without_teacher(self, metrics=metrics, **kwargs)
    if records_path is None:
        return
    start = time.perf_counter()
    models = {'teacher': self.teacher_model, 'student': self.student_model} if has_teacher \
        else {'student': self.model}
    options = options or check_options(None, {n: metrics_network(m) for n, m in models.items()})
    temperature = options['temperature'] or loss_temperature(self.criterion)
    teacher_cache = self.__dict__.setdefault('epoch_metrics_teacher_cache', {})
    result, samples = collect(models, self.val_data_loader, self.device, temperature, options['feature_modules'],
                              options['keep_samples'], teacher_cache)
    seconds = time.perf_counter() - start
    stats = epoch_stats or {}
    record = {'epoch': epoch, **result, 'train_loss': stats.get('loss'), 'loss_terms': stats.get('loss_terms', {}),
              'learning_rates': learning_rates, 'train_seconds_per_step': stats.get('seconds_per_step'),
              'train_seconds': stats.get('step_seconds'), 'metrics_seconds': seconds}
    if is_main_process():
        with open(records_path[0], 'a') as f:
            f.write(json.dumps(record) + '\n')
        torch.save({'epoch': epoch, **samples}, records_path[1])
    logger.info('Epoch %s metrics (%.1f s, %.1f%% of the epoch\'s training time): %s', epoch, seconds,
                100.0 * seconds / max(stats.get('step_seconds') or 0.0, 1e-9),
                ', '.join(f'{k}={v:.4g}' for k, v in result.items() if isinstance(v, float)))
    return record


__all__ = ['collect', 'check_options', 'epoch_metrics_post_epoch_process', 'records_paths', 'PROCESS_NAME']
