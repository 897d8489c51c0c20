"""Training and evaluation loops shared by the image and text runners (torchdistill boxes do the math)."""
import logging
import math
import time
from collections.abc import Mapping

import torch
from torch import nn
from torchdistill.common.module_util import check_if_wrapped
from torchdistill.misc.log import MetricLogger, SmoothedValue
from torchdistill.models.wrapper import AuxiliaryModelWrapper

from ..losses.functional import is_regression, sharpness_gap
from .distributed import all_gather_cpu, all_reduce_sum

logger = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """Training stopped on a NaN/Inf loss, before the optimizer step and before any checkpoint was written."""


class LossTermRecorder:
    """Keeps the latest value of every sub-term of a torchdistill high-level loss (e.g. ``WeightedSumLoss``).

    Forward hooks on the term modules record their outputs, so a non-finite total can be reported term by term.
    """

    def __init__(self, criterion):
        self.values = {}
        self.sums, self.counts = {}, {}  # per-term sums over the epoch (:meth:`means`)
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
            self.sums[name] = self.sums.get(name, 0.0) + float(value.detach().float().mean())
            self.counts[name] = self.counts.get(name, 0) + 1

    def means(self):
        """Mean of every recorded term over the steps so far (unweighted, as each term module returned it)."""
        return {name: self.sums[name] / self.counts[name] for name in self.sums}

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


def train_one_epoch(box, device, epoch, log_freq, max_steps=None):
    """One epoch of ``box`` (torchdistill DistillationBox or TrainingBox); returns timing statistics.

    Every step checks the loss for NaN/Inf before ``backward``: the run stops with a message naming the step and
    each loss term, so no optimizer step and no checkpoint is made from a broken state.
    """
    recorder = LossTermRecorder(box.criterion)
    metric_logger = MetricLogger(delimiter='  ')
    metric_logger.add_meter('lr', SmoothedValue(window_size=1, fmt='{value:.6g}'))
    metric_logger.add_meter('img/s', SmoothedValue(window_size=10, fmt='{value:.1f}'))
    step_seconds, num_steps, num_samples, loss_sum = 0.0, 0, 0, 0.0
    try:
        for step, batch in enumerate(metric_logger.log_every(box.train_data_loader, log_freq, f'Epoch: [{epoch}]')):
            if max_steps is not None and step >= max_steps:
                break
            sample_batch, targets, supp_dict = split_batch(batch)
            _sync(device)
            start = time.perf_counter()
            sample_batch, targets = move_to(sample_batch, device), move_to(targets, device)
            loss = box.forward_process(sample_batch, targets, supp_dict)
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise NonFiniteLossError(
                    f'non-finite loss {loss_value} at epoch {epoch}, step {step}; terms: {recorder.describe()}. '
                    'Stopped before the optimizer step; existing checkpoints are untouched.')
            box.post_forward_process(loss=loss)
            _sync(device)
            elapsed = time.perf_counter() - start
            batch_size = batch_len(targets)
            step_seconds += elapsed
            num_steps += 1
            num_samples += batch_size
            loss_sum += loss_value
            metric_logger.update(loss=loss_value, lr=box.optimizer.param_groups[0]['lr'])
            metric_logger.meters['img/s'].update(batch_size / max(elapsed, 1e-9))
    finally:
        recorder.remove()
    return {'steps': num_steps, 'samples': num_samples, 'step_seconds': step_seconds,
            'seconds_per_step': step_seconds / max(num_steps, 1), 'loss': loss_sum / max(num_steps, 1),
            'loss_terms': recorder.means()}


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
    if check_if_wrapped(model):
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
    """
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
    flat = all_reduce_sum([v for name in nets for v in sums[name]] + [gap_sum, count], device)
    total = max(flat[-1], 1)
    if metric_fn is None:
        results = {name: {'top1': 100.0 * flat[2 * i] / total, 'top5': 100.0 * flat[2 * i + 1] / total}
                   for i, name in enumerate(nets)}
    else:
        gold = torch.cat(all_gather_cpu(labels)) if labels else torch.empty(0)
        results = {name: metric_fn(torch.cat(all_gather_cpu(collected[name])).numpy(), gold.numpy())
                   for name in nets}
    if 'teacher' in nets and 'student' in nets and not regression:
        results['sharpness_gap'] = flat[-2] / total
    for name, res in results.items():
        if isinstance(res, dict):
            logger.info('%s %s: %s', header, name, '  '.join(f'{k} {v:.4f}' for k, v in res.items()))
    return results
