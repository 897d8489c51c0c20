"""Training and evaluation loops shared by the image and text runners (torchdistill boxes do the math)."""
import logging
import time
from collections.abc import Mapping

import torch
from torch import nn
from torchdistill.common.module_util import check_if_wrapped
from torchdistill.misc.log import MetricLogger, SmoothedValue
from torchdistill.models.wrapper import AuxiliaryModelWrapper

from ..losses.functional import is_regression, sharpness_gap
from .distributed import all_reduce_sum, gather_in_order, shard_eval_loader

logger = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """Training stopped on a NaN/Inf loss, before the optimizer step and before any checkpoint was written."""


class LossTermRecorder:
    """Keeps the latest value of every sub-term of a torchdistill high-level loss (e.g. ``WeightedSumLoss``).

    Forward hooks on the term modules record their outputs, so a non-finite total can be reported term by term.
    Values and per-epoch sums stay on the loss's device as detached tensors: recording costs no host
    synchronisation; :meth:`means` and :meth:`describe` read them (one transfer each).
    """

    def __init__(self, criterion):
        self.values = {}
        self.sums, self.counts = {}, {}  # per-term sums over the epoch (:meth:`means`), device tensors
        self.handles = []
        for name, (term, factor) in getattr(criterion, 'term_dict', {}).items():
            if isinstance(term, nn.Module):
                self.handles.append(term.register_forward_hook(self._hook(name, factor)))

    def _hook(self, name, factor):
        def record(module, inputs, output):
            if torch.is_tensor(output):
                self._keep(name, factor, output.detach())
                for sub_name, value in getattr(module, 'last_terms', {}).items():
                    self._keep(f'{name}.{sub_name}', None, value)
        return record

    def _keep(self, name, factor, value):
        self.values[name] = (factor, value)
        if torch.is_tensor(value) and value.numel() > 0:
            mean = value.detach().double().mean()
            self.sums[name] = mean if name not in self.sums else self.sums[name] + mean
            self.counts[name] = self.counts.get(name, 0) + 1

    def means(self):
        """Mean of every recorded term over the steps so far (unweighted, as each term module returned it)."""
        if not self.sums:
            return {}
        names = list(self.sums)
        values = torch.stack([self.sums[name].cpu() for name in names]).tolist()
        return {name: value / self.counts[name] for name, value in zip(names, values)}

    def describe(self):
        parts = []
        for name, (factor, value) in self.values.items():
            value = float(value.float().mean()) if torch.is_tensor(value) else float(value)
            parts.append(f'{name}={value:.6g}' + (f' (weight {factor})' if factor is not None else ''))
        return ', '.join(parts) if parts else 'no sub-terms recorded'

    def remove(self):
        for handle in self.handles:
            handle.remove()


def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


class StepTimer:
    """Seconds spent in training steps, without a host synchronisation per step.

    On CUDA each step is bracketed by two CUDA events recorded on the current stream (no wait); their elapsed
    times are read by :meth:`seconds`, which waits for the last event only. Elsewhere (CPU, where every kernel
    returns when done) ``time.perf_counter`` around the step is exact.
    """

    def __init__(self, device):
        self.cuda = device.type == 'cuda'
        self.done, self.pending, self._start = 0.0, [], None

    def start(self):
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._start = time.perf_counter()

    def stop(self):
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self.pending.append((self._start, end))
        else:
            self.done += time.perf_counter() - self._start

    def seconds(self):
        """Total step seconds so far (on CUDA: waits for the last recorded step to finish)."""
        if self.pending:
            self.pending[-1][1].synchronize()
            self.done += sum(start.elapsed_time(end) for start, end in self.pending) / 1000.0
            self.pending = []
        return self.done


class TrainStep:
    """The runner's training step, shared by :func:`train_one_epoch` and ``tools/benchmark.py``.

    Per step: move the batch (and the supplementary dict, e.g. CRD's contrast indices) to the device with
    ``non_blocking``, the box's ``forward_process``, ONE host read, ``torch.isfinite(loss)``, so that a NaN/Inf
    stops the run before the box's ``post_forward_process`` (backward, optimizer step) with a message naming the
    step and each loss term, then ``post_forward_process``. The loss and each term are summed on the device;
    :meth:`stats` reads them (at logging steps and the epoch's end).
    """

    def __init__(self, box, device, epoch=0):
        self.box, self.device, self.epoch = box, device, epoch
        self.recorder = LossTermRecorder(box.criterion)
        self.timer = StepTimer(device)
        self.loss_sum, self.steps, self.samples = None, 0, 0

    def __call__(self, step, batch):
        sample_batch, targets, supp_dict = split_batch(batch)
        self.timer.start()
        sample_batch, targets = move_to(sample_batch, self.device), move_to(targets, self.device)
        supp_dict = move_to(supp_dict, self.device)
        loss = self.box.forward_process(sample_batch, targets, supp_dict)
        if not torch.isfinite(loss.detach()).all().item():  # the one host synchronisation of a step
            raise NonFiniteLossError(
                f'non-finite loss {float(loss.detach().float().mean())} at epoch {self.epoch}, step {step}; '
                f'terms: {self.recorder.describe()}. '
                'Stopped before the optimizer step; existing checkpoints are untouched.')
        self.box.post_forward_process(loss=loss)
        self.timer.stop()
        value = loss.detach().double().mean()
        self.loss_sum = value if self.loss_sum is None else self.loss_sum + value
        self.steps += 1
        self.samples += batch_len(targets)

    def stats(self):
        """{'steps', 'samples', 'step_seconds', 'seconds_per_step', 'loss' (mean), 'loss_terms' (means)}; reads the
        device (one synchronisation)."""
        seconds = self.timer.seconds()
        loss = self.loss_sum.item() / self.steps if self.steps else 0.0
        return {'steps': self.steps, 'samples': self.samples, 'step_seconds': seconds,
                'seconds_per_step': seconds / max(self.steps, 1), 'loss': loss, 'loss_terms': self.recorder.means()}

    def close(self):
        self.recorder.remove()


def train_one_epoch(box, device, epoch, log_freq, max_steps=None):
    """One epoch of ``box`` (torchdistill DistillationBox or TrainingBox); returns timing statistics.

    Every step checks the loss for NaN/Inf before ``backward``: the run stops with a message naming the step and
    each loss term, so no optimizer step and no checkpoint is made from a broken state. That check is the only
    host synchronisation of a step; the loss, the terms and the step times are read every ``log_freq`` steps
    (the logged loss is the mean since the previous log line) and at the end of the epoch.
    """
    run_step = TrainStep(box, device, epoch)
    metric_logger = MetricLogger(delimiter='  ')
    metric_logger.add_meter('lr', SmoothedValue(window_size=1, fmt='{value:.6g}'))
    metric_logger.add_meter('img/s', SmoothedValue(window_size=10, fmt='{value:.1f}'))
    logged = {'steps': 0, 'samples': 0, 'loss': 0.0, 'seconds': 0.0}
    try:
        for step, batch in enumerate(metric_logger.log_every(box.train_data_loader, log_freq, f'Epoch: [{epoch}]')):
            if max_steps is not None and step >= max_steps:
                break
            run_step(step, batch)
            if step % log_freq == 0:  # the steps torchdistill's log_every prints
                loss_total = run_step.loss_sum.item()
                seconds = run_step.timer.seconds()
                steps = run_step.steps - logged['steps']
                metric_logger.meters['loss'].update((loss_total - logged['loss']) / steps, n=steps)
                metric_logger.update(lr=box.optimizer.param_groups[0]['lr'])
                metric_logger.meters['img/s'].update((run_step.samples - logged['samples'])
                                                     / max(seconds - logged['seconds'], 1e-9))
                logged = {'steps': run_step.steps, 'samples': run_step.samples, 'loss': loss_total,
                          'seconds': seconds}
    finally:
        run_step.close()
    return run_step.stats()


def split_batch(batch):
    """(sample_batch, targets, supp_dict) of a loader's batch: torchdistill's (x, y[, supp_dict]) tuples, or a
    tokenized text batch (a mapping with 'labels', as Hugging Face's DataCollatorWithPadding makes): its labels
    become the targets and the rest is passed to the model as keyword arguments."""
    if isinstance(batch, Mapping):
        inputs = {k: v for k, v in batch.items() if k not in ('labels', 'label')}
        return inputs, batch.get('labels', batch.get('label')), {}
    sample_batch, targets = batch[0], batch[1]
    return sample_batch, targets, batch[2] if len(batch) > 2 else {}


def move_to(obj, device):
    if torch.is_tensor(obj):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, Mapping):
        return {k: move_to(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(move_to(v, device) for v in obj)
    return obj


def batch_len(targets):
    return targets.shape[0] if torch.is_tensor(targets) else len(targets)


WRAPPED_NETWORK_NAMES = ('model', 'student_model', 'teacher_model')  # Linear4CRD: model; VID, DAB: student_model


def inference_model(model):
    """The network to evaluate: DDP and auxiliary wrappers removed (their forward may need a supp_dict, as
    torchdistill's ``Linear4CRD`` does), adapter hooks kept (they live on the base model's modules)."""
    if check_if_wrapped(model) and hasattr(model, 'module'):  # DDP; torchdistill counts FSDP2 modules too (no .module)
        model = model.module
    if isinstance(model, AuxiliaryModelWrapper):  # torchdistill's wrappers keep the network as one of these
        inner = next((getattr(model, name) for name in WRAPPED_NETWORK_NAMES
                      if isinstance(getattr(model, name, None), nn.Module)), None)
        if inner is not None:
            return inference_model(inner)
    return model


def logits_of(output):
    return output.logits if hasattr(output, 'logits') else output


def run_models(nets, sample_batch):
    return {name: logits_of(net(**sample_batch) if isinstance(sample_batch, Mapping) else net(sample_batch))
            for name, net in nets.items()}


@torch.inference_mode()
def evaluate(models, data_loader, device, header='Test:', log_freq=1000, metric_fn=None):
    """Metrics of each model in ``models`` (name -> module) on the same batches, plus the mean sharpness gap
    S(z_teacher) - S(z_student) when both 'teacher' and 'student' are given (classification heads only).

    Without ``metric_fn``: top-1/top-5 accuracy in %, accumulated batch by batch. With ``metric_fn(logits, labels)
    -> {name: value}`` (e.g. GLUE's F1, Matthews, Pearson/Spearman, which need every prediction at once): logits
    and labels are gathered over the whole set (and over ranks) first. Every rank returns the same numbers. Models
    are put in eval mode; the next pre-epoch process restores their training modes.

    With torchrun, each rank scores the shard ``rank::world_size`` of the set (:func:`shard_eval_loader` replaces
    the ``DistributedSampler`` that torchdistill gives every loader: it pads the last shard with repeats), so each
    example counts exactly once: counts are summed over ranks, and logits and labels for ``metric_fn`` are put back
    in dataset order. Accuracies and ``metric_fn`` results equal the single-process ones; the sharpness gap is a
    float sum in another order (equal to about 1e-7 relative).
    """
    data_loader, sharded = shard_eval_loader(data_loader)
    nets = {name: inference_model(model) for name, model in models.items()}
    for net in nets.values():
        net.eval()
    sums = {name: [0.0, 0.0] for name in nets}
    collected = {name: [] for name in nets}
    labels = []
    gap_sum, count, regression = 0.0, 0, False
    metric_logger = MetricLogger(delimiter='  ')
    for batch in metric_logger.log_every(data_loader, log_freq, header):
        sample_batch, targets, _ = split_batch(batch)
        if isinstance(sample_batch, Mapping):  # a text batch that keeps its labels: the model's own loss is not needed
            sample_batch = {k: v for k, v in sample_batch.items() if k != 'labels'}
        sample_batch, targets = move_to(sample_batch, device), move_to(targets, device)
        logits = run_models(nets, sample_batch)
        for name, z in logits.items():
            if metric_fn is not None:
                collected[name].append(z.float().cpu())
                continue
            top5 = z.topk(min(5, z.shape[1]), dim=1).indices
            correct = top5.eq(targets[:, None])
            sums[name][0] += correct[:, 0].sum().item()
            sums[name][1] += correct.any(dim=1).sum().item()
        labels.append(targets.cpu())
        regression = regression or any(is_regression(z) for z in logits.values())
        if 'teacher' in logits and 'student' in logits and not regression:
            gap_sum += sharpness_gap(logits['teacher'].float(), logits['student'].float()).sum().item()
        count += batch_len(targets)
    flat = [v for name in nets for v in sums[name]] + [float(regression), gap_sum, count]
    flat = all_reduce_sum(flat, device) if sharded else flat
    total, regression = max(flat[-1], 1), flat[-3] > 0  # a rank with an empty shard learns it from the others
    if metric_fn is None:
        results = {name: {'top1': 100.0 * flat[2 * i] / total, 'top5': 100.0 * flat[2 * i + 1] / total}
                   for i, name in enumerate(nets)}
    else:
        def whole_set(parts):  # this rank's rows, then (torchrun) every rank's in dataset order
            rows = torch.cat(parts) if parts else torch.empty(0)
            return gather_in_order(rows) if sharded else rows
        gold = whole_set(labels)
        results = {name: metric_fn(whole_set(collected[name]).numpy(), gold.numpy()) for name in nets}
    if 'teacher' in nets and 'student' in nets and not regression:
        results['sharpness_gap'] = flat[-2] / total
    for name, res in results.items():
        if isinstance(res, dict):
            logger.info('%s %s: %s', header, name, '  '.join(f'{k} {v:.4f}' for k, v in res.items()))
    return results
