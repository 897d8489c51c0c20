"""Seconds per training step and activation memory of distillation methods, measured side by side in one process.

    python tools/benchmark.py                                   # Fashion-MNIST ResNet-56 -> ResNet-20, CPU/GPU
    python tools/benchmark.py --configs configs/imagenet/r50_r18_{kd,pesfkd,ftkd}.yaml --batch_size 256  # GPU

Each config is built through the same runner code (models, torchdistill box, optimizer, teacher modes) and fed
the same random batches (no data loading cost; pretrained weights are random, which does not change the cost).
Methods are timed round-robin, one step of each in turn, so that drifts of the machine hit all of them alike; the
table gives the median seconds per step (forward, backward, optimizer step), its ratio to the first config (KD by
default), the bytes of tensors autograd saves for backward during one step (the activation memory a method costs),
and on CUDA the peak allocated memory.
"""
import argparse
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import pesf_ext  # noqa: E402,F401
from pesf_ext.engine.config import load_config  # noqa: E402
from pesf_ext.engine.overrides import apply_overrides  # noqa: E402
from pesf_ext.engine.distributed import resolve_device  # noqa: E402
from pesf_ext.engine.loop import move_to  # noqa: E402
from pesf_ext.engine.models import build_model  # noqa: E402
from pesf_ext.engine.runner import build_box, parameter_counts  # noqa: E402
from pesf_ext.engine.synthetic import synthetic_data  # noqa: E402

DEFAULT_CONFIGS = [os.path.join(ROOT, 'configs', 'fashion_mnist', f'resnet56_resnet20_{name}.yaml')
                   for name in ('kd', 'pesfkd', 'ftkd', 'zscore')]


class SavedTensorMeter:
    """Sums the bytes of distinct storages that autograd saves for backward while active."""

    def __init__(self):
        self.storages = {}

    def pack(self, tensor):
        storage = tensor.untyped_storage()
        self.storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    @staticmethod
    def unpack(tensor):
        return tensor

    @property
    def megabytes(self):
        return sum(self.storages.values()) / 2 ** 20

OVERRIDES = []  # --set, applied to every config


def build(config_path, batch_size, device, input_size):
    with synthetic_data(num_samples=batch_size * 4, imagenet_size=input_size):
        config = load_config(config_path)
    apply_overrides(config, OVERRIDES)
    models = config['models']
    teacher_config = {**models['teacher_model'], 'src_ckpt': None}
    with synthetic_data():
        teacher = build_model(teacher_config, device, False, 'models.teacher_model').eval()
    student = build_model({**models['student_model'], 'src_ckpt': None}, device, False, 'models.student_model')
    loader = config['train']['train_data_loader']
    loader['kwargs'].update(batch_size=batch_size, num_workers=0, pin_memory=False, drop_last=True)
    box = build_box(teacher, student, config, device, None, False, 1)
    box.pre_epoch_process(epoch=0)
    batches = [(move_to(x, device), move_to(y, device), supp) for x, y, supp in box.train_data_loader]
    return box, batches


def step(box, batch):
    sample_batch, targets, supp_dict = batch
    loss = box.forward_process(sample_batch, targets, supp_dict)
    box.post_forward_process(loss=loss)


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def measure(configs, batch_size, steps, warmup, rounds, device, input_size):
    entries = []
    for path in configs:
        box, batches = build(path, batch_size, device, input_size)
        for i in range(warmup):
            step(box, batches[i % len(batches)])
        meter = SavedTensorMeter()
        if device.type == 'cuda':
            torch.cuda.reset_peak_memory_stats(device)
        with torch.autograd.graph.saved_tensors_hooks(meter.pack, meter.unpack):
            step(box, batches[0])
        peak = torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == 'cuda' else None
        entries.append({'name': os.path.basename(path), 'box': box, 'batches': batches, 'times': [],
                        'saved_mb': meter.megabytes, 'peak_mb': peak, 'counts': parameter_counts(box)})
    # round-robin, one step of each config in turn: a drift of the machine (frequency, another process) hits every
    # config alike, which timing blocks of steps per config does not (blocks gave +-10% between equal methods)
    for i in range(rounds * steps):
        for entry in entries:
            sync(device)
            start = time.perf_counter()
            step(entry['box'], entry['batches'][i % len(entry['batches'])])
            sync(device)
            entry['times'].append(time.perf_counter() - start)
    return entries


def report(entries, device, batch_size):
    base = entries[0]
    base_time = statistics.median(base['times'])
    lines = [f'device: {device} ({torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"}, '
             f'{torch.get_num_threads()} threads), batch {batch_size}, {len(base["times"])} timed steps per config',
             '| config | s/step (median) | ratio to first | saved activations MB | ratio | peak CUDA MB | '
             'trainable teacher params |', '|---|---|---|---|---|---|---|']
    for entry in entries:
        median = statistics.median(entry['times'])
        peak = f'{entry["peak_mb"]:.0f}' if entry['peak_mb'] is not None else '-'
        teacher_trainable = entry['counts'].get('teacher', (0, 0))[0]
        lines.append(f'| {entry["name"]} | {median:.4f} | {median / base_time:.2f}x | {entry["saved_mb"]:.1f} | '
                     f'{entry["saved_mb"] / max(base["saved_mb"], 1e-9):.2f}x | {peak} | {teacher_trainable:,} |')
    return '\n'.join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--configs', nargs='+', default=DEFAULT_CONFIGS, help='first one is the reference (KD)')
    parser.add_argument('--batch_size', type=int, default=64)
    parser.add_argument('--steps', type=int, default=10, help='timed steps per config and round')
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--rounds', type=int, default=4, help='timed steps per config = rounds x steps')
    parser.add_argument('--input_size', type=int, default=224, help='image size of ImageNet configs')
    parser.add_argument('--device', default=None)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--set', nargs='+', action='extend', default=[], dest='overrides', metavar='KEY=VALUE',
                        help='YAML overrides applied to every config (see tools/image_classification.py --help)')
    args = parser.parse_args(argv)
    OVERRIDES[:] = args.overrides
    torch.manual_seed(args.seed)
    device = resolve_device(args.device)
    entries = measure(args.configs, args.batch_size, args.steps, args.warmup, args.rounds, device, args.input_size)
    print(report(entries, device, args.batch_size))


if __name__ == '__main__':
    main()
