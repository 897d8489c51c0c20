"""Host synchronisations per training step: at most one (the NaN/Inf check) outside logging steps.

Every read of a device value on the host (``item``, ``float``, ``bool``, ``tolist``), every
``torch.cuda.synchronize`` / the loop's ``_sync`` and every op whose output shape depends on the data
(``masked_select``, ``nonzero``) makes a GPU wait for the host. They are counted on CPU over one short epoch of the
runner's own loop; the same code path runs on CUDA.
"""
import collections

import pytest
import torch

from conftest import calibrate_batch_norm
from pesf_ext.engine import loop, runner
from pesf_ext.engine.config import load_config
from pesf_ext.engine.models import build_model
from pesf_ext.losses.dkd import binary_log_probs, non_target_log_probs

CPU = torch.device('cpu')
BATCH_SIZE, NUM_TRAIN = 8, 128  # 16 steps


def build_box(config_path):
    config = load_config(config_path)
    config['train']['train_data_loader']['kwargs']['batch_size'] = BATCH_SIZE
    models = config['models']
    torch.manual_seed(0)
    teacher = build_model({**models['teacher_model'], 'src_ckpt': None}, CPU, False, 'models.teacher_model')
    images = torch.stack([image for image, _ in config['datasets']['fashion_mnist/train']])
    calibrate_batch_norm(teacher, images.split(64))
    student = build_model({**models['student_model'], 'src_ckpt': None}, CPU, False, 'models.student_model')
    box = runner.build_box(teacher, student, config, CPU, None, False, 1)
    box.pre_epoch_process(epoch=0)
    return box


class SyncCounter:
    """Counts host reads and synchronisations; ``marks`` holds the count at each step's forward."""

    PATCHED_TENSOR_METHODS = ('item', '__float__', '__bool__', 'tolist', 'masked_select', 'nonzero')

    def __init__(self, monkeypatch, box):
        self.count, self.by_name, self.marks, self.losses = 0, collections.Counter(), [], []
        for name in self.PATCHED_TENSOR_METHODS:
            monkeypatch.setattr(torch.Tensor, name, self.counting(name, getattr(torch.Tensor, name)))
        for name in ('masked_select', 'nonzero'):
            monkeypatch.setattr(torch, name, self.counting(f'torch.{name}', getattr(torch, name)))
        monkeypatch.setattr(torch.cuda, 'synchronize', self.counting('cuda.synchronize', torch.cuda.synchronize))
        monkeypatch.setattr(loop, '_sync', self.counting('_sync', loop._sync))
        forward_process = box.forward_process

        def marked_forward_process(*args, **kwargs):
            self.marks.append(self.count)
            loss = forward_process(*args, **kwargs)
            self.losses.append(loss.detach().clone())  # clone/detach: no host read
            return loss

        box.forward_process = marked_forward_process
        box.train_data_loader = UncountedLoader(box.train_data_loader, self)

    def counting(self, name, function):
        def counted(*args, **kwargs):
            if not self.inside:
                self.inside = True
                try:
                    self.count += 1
                    self.by_name[name] += 1
                    return function(*args, **kwargs)
                finally:
                    self.inside = False
            return function(*args, **kwargs)  # a call made by a counted call is not counted again
        return counted

    inside = False


class UncountedLoader:
    """The box's loader, whose CPU-side work (transforms on CPU tensors, before any device copy) is not counted."""

    def __init__(self, loader, counter):
        self.loader, self.counter = loader, counter

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        iterator = iter(self.loader)
        while True:
            self.counter.inside = True
            try:
                batch = next(iterator)
            except StopIteration:
                return
            finally:
                self.counter.inside = False
            yield batch


@pytest.mark.parametrize('name, terms', [
    ('resnet56_resnet20_pesfkd.yaml', {'pesfkd', 'pesfkd.student_ce', 'pesfkd.student_kl', 'pesfkd.teacher_kl'}),
    ('resnet56_resnet20_dkd.yaml', {'dkd', 'dkd.student_ce', 'dkd.tckd', 'dkd.nckd'}),
])
def test_at_most_one_host_sync_per_non_logging_step(small_config, monkeypatch, name, terms):
    box = build_box(small_config(name, num_train_samples=NUM_TRAIN))
    counter = SyncCounter(monkeypatch, box)
    stats = loop.train_one_epoch(box, CPU, 0, log_freq=1000)
    final = counter.count
    monkeypatch.undo()
    assert stats['steps'] == NUM_TRAIN // BATCH_SIZE == len(counter.marks)
    # step 0 is a logging step (torchdistill's log_every prints it); the last one is followed by the epoch's reads
    per_step = [b - a for a, b in zip(counter.marks[1:-1], counter.marks[2:])]
    assert per_step and max(per_step) <= 1, (per_step, counter.by_name)
    assert final - counter.marks[0] <= len(per_step) + 24, counter.by_name  # logging step 0 and the epoch end: few
    # the device-side sums give what per-step reads gave
    assert stats['loss'] == pytest.approx(torch.stack(counter.losses).double().mean().item(), rel=1e-9)
    assert set(stats['loss_terms']) >= terms


def old_binary_log_probs(log_probs, target_mask):  # the masked_select formula this file's fix replaced
    target_log_prob = log_probs.masked_select(target_mask).view(-1, 1)
    non_target_log_prob = log_probs.masked_fill(target_mask, float('-inf')).logsumexp(dim=1, keepdim=True)
    return torch.cat([target_log_prob, non_target_log_prob], dim=1)


def old_non_target_log_probs(softened_logits, target_mask):
    num_samples, num_classes = softened_logits.shape
    return softened_logits.masked_select(~target_mask).view(num_samples, num_classes - 1).log_softmax(dim=1)


@pytest.mark.parametrize('num_classes', [2, 3, 10])
def test_dkd_gather_masks_equal_the_masked_select_formula_in_value_and_gradient(num_classes):
    torch.manual_seed(num_classes)
    logits = torch.randn(12, num_classes, dtype=torch.float64) * 3
    targets = torch.randint(0, num_classes, (12,))
    targets[:num_classes] = torch.arange(num_classes)  # every class is the target somewhere (first, last column)
    mask = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, targets.view(-1, 1), True)
    weights = torch.randn(12, 2, dtype=torch.float64), torch.randn(12, num_classes - 1, dtype=torch.float64)
    results = []
    for binary, non_target, index in ((old_binary_log_probs, old_non_target_log_probs, mask),
                                      (binary_log_probs, non_target_log_probs, targets.view(-1, 1))):
        z = logits.clone().requires_grad_()
        b, n = binary(z.log_softmax(dim=1), index), non_target(z, index)
        ((b * weights[0]).sum() + (n * weights[1]).sum()).backward()
        results.append((b.detach(), n.detach(), z.grad))
    for old, new in zip(*results):
        assert torch.equal(old, new)
