"""Host synchronisations per training step: at most one (the NaN/Inf check) outside logging steps.

Every read of a device value on the host (``item``, ``float``, ``bool``, ``tolist``), every
``torch.cuda.synchronize`` / the loop's ``_sync`` and every op whose output shape depends on the data
(``masked_select``, ``nonzero``) makes a GPU wait for the host. They are counted on CPU over one short epoch of the
runner's own loop; the same code path runs on CUDA.
"""
import collections
import math
import sys

import pytest
import torch

from conftest import calibrate_batch_norm
from pesf_ext.engine import loop, runner
from pesf_ext.engine.config import load_config
from pesf_ext.engine.models import build_model
from pesf_ext.losses.dkd import binary_log_probs, non_target_log_probs
from test_lm_configs import tiny_dirs  # noqa: F401  (a module-scoped fixture: tiny GPT-2s and their tokenizer)

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
        self.box = box
        for name in self.PATCHED_TENSOR_METHODS:
            monkeypatch.setattr(torch.Tensor, name, self.counting(name, getattr(torch.Tensor, name)))
        for name in ('masked_select', 'nonzero'):
            monkeypatch.setattr(torch, name, self.counting(f'torch.{name}', getattr(torch, name)))
        monkeypatch.setattr(torch.Tensor, '__getitem__', self.counting_bool_index(torch.Tensor.__getitem__))
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

    hf_mask_reads = 0

    @staticmethod
    def from_hf_mask():
        """A read made by transformers' SDPA mask builder (``_ignore_causal_mask_sdpa``: is the padding mask all
        ones, so that SDPA may run with ``is_causal`` and a flash kernel?), counted apart: it is the model's, once per
        forward given an ``attention_mask``."""
        frame = sys._getframe(2)
        while frame is not None:
            if frame.f_code.co_name == '_ignore_causal_mask_sdpa':
                return True
            frame = frame.f_back
        return False

    def host_counters(self):
        """Ids of the optimizers' ``state['step']`` tensors: torch keeps them on the host (CPU) unless an optimizer
        is ``capturable`` or ``fused``, so AdamW's per-parameter ``step.item()`` reads no device."""
        optimizer = getattr(self.box, 'optimizer', None)
        states = optimizer.state.values() if optimizer is not None else ()
        return {id(state['step']) for state in states if isinstance(state.get('step'), torch.Tensor)}

    def counting_bool_index(self, getitem):
        """``tensor[mask]`` with a boolean tensor: the result's size is the number of True values, read on the host."""
        counted = self.counting('bool index', getitem)

        def index(tensor, key):
            keys = key if isinstance(key, tuple) else (key,)
            if any(isinstance(k, torch.Tensor) and k.dtype == torch.bool for k in keys):
                return counted(tensor, key)
            return getitem(tensor, key)
        return index

    def counting(self, name, function):
        def counted(*args, **kwargs):
            if args and isinstance(args[0], torch.Tensor) and id(args[0]) in self.host_counters():
                return function(*args, **kwargs)
            if not self.inside and self.from_hf_mask():
                self.hf_mask_reads += 1
                return function(*args, **kwargs)
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


# ---- causal LMs: the token-level divergences, TAID's schedule and the runner's step ----

def old_token_mean(token_values, z_t, z_s, mask):  # the boolean-indexing formula the masked rows replaced
    rows_t, rows_s = z_t[mask], z_s[mask]
    values = token_values(rows_t, rows_s)
    return values.sum() / max(values.shape[0], 1)


@pytest.mark.parametrize('name', ['forward_kl_tokens', 'reverse_kl_tokens', 'generalized_jsd_tokens',
                                  'skew_forward_kl_tokens', 'skew_reverse_kl_tokens', 'total_variation_tokens',
                                  'taid_kl_tokens'])
def test_masked_token_mean_equals_boolean_indexing_in_value_and_gradient(name):
    import functools
    from pesf_ext.losses import functional
    torch.manual_seed(0)
    z_t, z_s = torch.randn(2, 7, 11, dtype=torch.float64) * 3, torch.randn(2, 7, 11, dtype=torch.float64) * 3
    mask = torch.rand(2, 7) > 0.4
    mask[0, 0], mask[1, -1] = True, False
    z_t[~mask], z_s[~mask] = float('inf'), float('nan')   # whatever masked rows hold, they add nothing
    token_values = getattr(functional, name)
    if name == 'taid_kl_tokens':
        token_values = functools.partial(token_values, t=torch.tensor(0.6, dtype=torch.float64))
    results = []
    for mean in (old_token_mean, functional.token_mean):
        t, s = z_t.clone().requires_grad_(), z_s.clone().requires_grad_()
        value = mean(functools.partial(token_values, temperature=2.0), t, s, mask)
        value.backward()
        results.append((value.detach(), t.grad, s.grad))
    (old, old_t, old_s), (new, new_t, new_s) = results
    torch.testing.assert_close(new, old, rtol=1e-13, atol=0)
    torch.testing.assert_close(new_s, old_s, rtol=1e-12, atol=1e-15)
    if name != 'taid_kl_tokens':   # TAID's target detaches the student only; the teacher gets a gradient too
        torch.testing.assert_close(new_t, old_t, rtol=1e-12, atol=1e-15)
    assert torch.isfinite(new_s).all() and new_s[~mask].abs().max() == 0 and new_s[mask].abs().sum() > 0
    empty = functional.token_mean(token_values, z_t, z_s, torch.zeros(2, 7, dtype=torch.bool))
    assert empty.item() == 0.0


def old_taid_trajectory(losses, t_start, t_end, rate, decay, total_steps):  # the float update the device one replaced
    t, momentum, previous, ts = t_start, 0.0, None, []
    for step, loss in enumerate(losses):
        ts.append(t)
        if previous is not None:
            change = (previous - loss) / (previous + 1e-15)
            momentum = decay * momentum + (1 - decay) * change
            linear = t_start + (t_end - t_start) * min(step / total_steps, 1.0)
            t = min(t_end, max(linear, t + rate / (1 + math.exp(-momentum)) * (1 - t)))
        previous = loss
    return ts + [t]


def test_taid_t_updates_on_the_device_along_the_float_trajectory(monkeypatch):
    from pesf_ext.losses.divergences import TokenKDLoss
    options = dict(t_start=0.3, t_end=0.9, rate=0.2, momentum_decay=0.8, total_steps=6)
    loss = TokenKDLoss(divergence='taid', alpha=0.5, taid=options)
    torch.manual_seed(1)
    z_t, labels = torch.randn(2, 6, 9), torch.randint(0, 9, (2, 6))
    labels[0, :2] = -100
    z_s = torch.randn(2, 6, 9, requires_grad=True)
    optimizer = torch.optim.SGD([z_s], lr=5.0)
    reads, used, divs = [0], [], []
    for name in ('item', '__float__', '__bool__', 'tolist'):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _o=original, **k: reads.__setitem__(0, reads[0] + 1)
                            or _o(self, *a, **k))
    for _ in range(8):
        optimizer.zero_grad()
        loss({'.': {'output': z_s}}, {'.': {'output': z_t}}, labels).backward()
        optimizer.step()
        used.append(loss.last_terms['taid_t'].clone())
        divs.append(loss.last_terms['student_div'].clone())
    monkeypatch.undo()
    assert reads[0] == 0                                  # no host read in the loss or in t's update
    expected = old_taid_trajectory([float(d) for d in divs], 0.3, 0.9, 0.2, 0.8, 6)
    assert [float(t) for t in used] == pytest.approx(expected[:-1], abs=1e-12)
    assert loss.taid.value() == pytest.approx(expected[-1], abs=1e-12)
    assert expected[-1] > expected[2] > expected[1] == 0.3   # recorded the first loss only, then moved


@pytest.mark.parametrize('fused, syncs', [(False, 1), (True, 0)])
def test_grad_scaler_step_reads_found_inf_once_unless_the_optimizer_is_fused(monkeypatch, fused, syncs):
    """fp16: ``scaler.step`` reads the found-inf flag on the host (one ``item`` per step) to skip an overflowed step;
    an optimizer with ``fused=True`` takes the flag on the device instead. Nothing else in the step reads."""
    import types
    from pesf_ext.engine.speed import scaled_post_forward_process
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, fused=fused)   # SGD keeps no step counter to read
    box = types.SimpleNamespace(grad_scaler=torch.amp.GradScaler('cpu'), stage_grad_count=0, grad_accum_step=1,
                                max_grad_norm=1.0, optimizer=optimizer, lr_scheduler=None, scheduling_step=0)
    scaled_post_forward_process(box, model(torch.randn(3, 4)).sum())   # first step: the scale is made
    counts = collections.Counter()
    for name in ('item', '__float__', '__bool__', 'tolist'):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            counts[_name] += 1
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, counted)
    before = model.weight.detach().clone()
    scaled_post_forward_process(box, model(torch.randn(3, 4)).sum())
    monkeypatch.undo()
    assert sum(counts.values()) == syncs, counts
    assert not torch.equal(model.weight, before)   # the step was taken


@pytest.mark.parametrize('name', ['gpt2_4l_gpt2_2l_stdlib_pesfkd.yaml', 'gpt2_4l_gpt2_2l_stdlib_taid.yaml'])
def test_causal_lm_runner_step_has_at_most_one_host_sync(name, tiny_dirs, tmp_path, monkeypatch):
    """The causal-LM runner's own step (run_lm with tiny GPT-2s), PESF-KD (token-level KL both ways, LoRA teacher)
    and TAID (t updated from the step's divergence): at most the NaN/Inf check per step from this project's code.
    transformers' SDPA mask builder reads the attention mask once per model forward (teacher and student: 2 per
    step), counted apart (:meth:`SyncCounter.from_hf_mask`); the collator leaves out the all-ones mask of packed
    text, so these text configs have none."""
    import os
    from pesf_ext.engine import runner as engine_runner
    from test_lm_configs import ROOT, run_config, shrink
    config = shrink(load_config(os.path.join(ROOT, 'configs', 'causal_lm_offline', name)), tiny_dirs, tmp_path)
    original, seen = engine_runner.train_one_epoch, {}

    def counted_epoch(box, device, epoch, log_freq, max_steps=None):
        seen['counter'] = SyncCounter(monkeypatch, box)
        seen['stats'] = original(box, device, epoch, log_freq, max_steps)
        return seen['stats']
    monkeypatch.setattr(engine_runner, 'train_one_epoch', counted_epoch)
    run_config(config, tmp_path, '--max_steps_per_epoch', '6')
    monkeypatch.undo()
    counter, stats = seen['counter'], seen['stats']
    assert stats['steps'] == 6 == len(counter.marks)
    per_step = [b - a for a, b in zip(counter.marks[1:-1], counter.marks[2:])]
    assert len(per_step) == 4 and max(per_step) <= 1, (per_step, counter.by_name)
    assert counter.hf_mask_reads == 0, counter.hf_mask_reads   # packed text: no padding, no mask to check
    assert stats['loss'] == pytest.approx(torch.stack(counter.losses).double().mean().item(), rel=1e-9)
    if 'taid' in name:   # t was used and updated on the steps counted above
        assert any(k.endswith('taid_t') for k in stats['loss_terms']), stats['loss_terms']
