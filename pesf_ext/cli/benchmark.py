"""Seconds per training step and activation memory of distillation methods, measured side by side in one process
(``pesf-benchmark``; in a clone also ``python tools/benchmark.py``).

    python tools/benchmark.py                                   # Fashion-MNIST ResNet-56 -> ResNet-20, CPU/GPU
    python tools/benchmark.py --configs configs/imagenet/r50_r18_{kd,pesfkd,ftkd}.yaml --batch_size 256  # GPU
    python tools/benchmark.py --configs configs/imagenet/r50_r18_{kd,pesfkd,ftkd,dml}.yaml --batch_size 256 \
        --variants fp32 bf16+channels_last                  # every config in fp32 and in AMP + channels_last
    python tools/benchmark.py --configs configs/glue_offline/sst2/minilm_l6_minilm_l3_{kd,pesfkd_head,pesfkd,ftkd,dml}.yaml \
        --batch_size 32 --seq_len 64                        # GLUE: MiniLM-L6 -> 3 layers, random 64-token batches

Each config is built through the same runner code (models, torchdistill box, optimizer, teacher modes) and fed
the same random batches (no data loading cost; pretrained weights are random, which does not change the cost).
Methods are timed round-robin, one step of each in turn, so that drifts of the machine hit all of them alike; the
table gives the median seconds per step of the runner's own training step (``TrainStep`` of
pesf_ext/engine/loop.py: forward, the NaN/Inf check, backward, optimizer step), images per second, its ratio to the
first config (KD by default), the bytes of tensors autograd saves for backward during one step (the activation
memory a method costs), and on CUDA the peak allocated memory of each config measured alone (the configs before it
freed, peak statistics reset); CPU rows say 'n/a'. cudnn.benchmark is on, as in the runner.

The speed switches of the runner (``--amp``, ``-channels_last``, ``--compile``; see pesf_ext/engine/speed.py) apply
to every config; ``--variants`` instead builds every config once per variant, each a '+'-joined set of ``fp32``,
``bf16``, ``fp16``, ``channels_last``, ``compile``, all timed in the same round-robin.
"""
import argparse
import dataclasses
import gc
import itertools
import os
import statistics
import time

import torch

import pesf_ext  # noqa: F401
from pesf_ext.engine.config import load_config
from pesf_ext.engine.overrides import apply_overrides
from pesf_ext.engine.distributed import resolve_device
from pesf_ext.engine.loop import TrainStep, move_to, split_batch
from pesf_ext.engine.models import build_model
from pesf_ext.engine.runner import build_box, parameter_counts
from pesf_ext.engine.speed import add_speed_args, apply_speed, speed_options
from pesf_ext.engine.synthetic import synthetic_data

from .paths import configs_dir

DEFAULT_CONFIGS = [os.path.join(configs_dir(), 'fashion_mnist', f'resnet56_resnet20_{name}.yaml')
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


VARIANT_TOKENS = ('fp32', 'bf16', 'fp16', 'channels_last', 'compile')


def variant_options(variant, base):
    """Speed options of a ``--variants`` entry such as ``bf16+channels_last`` (other fields from ``base``)."""
    tokens = variant.split('+')
    unknown = [token for token in tokens if token not in VARIANT_TOKENS]
    if unknown:
        raise SystemExit(f'--variants: unknown `{unknown[0]}` in `{variant}`; use {", ".join(VARIANT_TOKENS)}')
    amp = [token for token in tokens if token in ('bf16', 'fp16')]
    return dataclasses.replace(base, amp=amp[0] if amp else None, channels_last='channels_last' in tokens,
                               compile=('student', 'teacher') if 'compile' in tokens else ())


def random_token_dataset(tokenizer, num_samples, seq_len, num_labels):
    """Tokenized-looking examples of exactly ``seq_len`` tokens ([CLS] ids [SEP]) with random ids and labels."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, tokenizer.vocab_size, (num_samples, seq_len - 2), generator=generator)
    return [{'input_ids': [tokenizer.cls_token_id, *row.tolist(), tokenizer.sep_token_id],
             'token_type_ids': [0] * seq_len, 'attention_mask': [1] * seq_len,
             'labels': float(i % 5) if num_labels == 1 else i % num_labels} for i, row in enumerate(ids)]


def build_text_models(config, batch_size, device, seq_len):
    """Teacher and student of a GLUE config with their pretrained weights (no fine-tuned checkpoint needed: the cost
    does not depend on the values), and random token batches of ``seq_len`` tokens in ``config['datasets']``."""
    from torchdistill.datasets.registry import register_collate_func
    from transformers import DataCollatorWithPadding

    from pesf_ext.nlp import register_hf_schedulers
    from pesf_ext.nlp.models import build_text_model, load_tokenizer
    from pesf_ext.nlp.runner import glue_spec, set_num_training_steps
    register_hf_schedulers()
    models = config['models']
    student_config = {**models['student_model'], 'src_ckpt': None}
    builder = student_config.get('builder')
    if builder:
        student_config['builder'] = {**builder, 'kwargs': {**(builder.get('kwargs') or {}), 'teacher_ckpt': None}}
    teacher = build_text_model({**models['teacher_model'], 'src_ckpt': None}, device, False, 'models.teacher_model')
    student = build_text_model(student_config, device, False, 'models.student_model')
    tokenizer = load_tokenizer(student_config)
    register_collate_func(DataCollatorWithPadding(tokenizer))
    _, spec = glue_spec(config)
    data = random_token_dataset(tokenizer, batch_size * 4, seq_len, student.config.num_labels)
    config['datasets'] = {dataset_id: data for dataset_id in spec['dataset_id_map'].values()}
    set_num_training_steps(config['train'], len(data), 1)
    return teacher.eval(), student


def build(config_path, batch_size, device, input_size, options=None, cli_args=None, seq_len=64):
    """The box of ``config_path`` on random batches (images, or ``seq_len`` tokens for GLUE configs); speed switches
    from ``options``, else from the YAML's ``speed`` section overridden by ``cli_args``."""
    with synthetic_data(num_samples=batch_size * 4, imagenet_size=input_size):
        config = load_config(config_path)
    apply_overrides(config, OVERRIDES)
    models = config['models']
    if 'model_kwargs' in models['student_model']:
        teacher, student = build_text_models(config, batch_size, device, seq_len)
    else:
        teacher_config = {**models['teacher_model'], 'src_ckpt': None}
        with synthetic_data():
            teacher = build_model(teacher_config, device, False, 'models.teacher_model').eval()
        student = build_model({**models['student_model'], 'src_ckpt': None}, device, False, 'models.student_model')
    loader = config['train']['train_data_loader']
    loader['kwargs'].update(batch_size=batch_size, num_workers=0, pin_memory=False, drop_last=True)
    box = build_box(teacher, student, config, device, None, False, 1)
    apply_speed(box, options or speed_options(config, cli_args), device)
    box.pre_epoch_process(epoch=0)
    batches = [(move_to(x, device), move_to(y, device), supp)
               for x, y, supp in (split_batch(batch) for batch in box.train_data_loader)]
    return box, batches


class MemoryProbe:
    """Peak memory of one config: on CUDA the peak allocated bytes since :meth:`reset`; elsewhere None (a process's
    peak resident memory cannot be reset, so CPU rows say 'n/a' rather than a number that mixes configs)."""

    def __init__(self, device):
        self.device = device

    def reset(self):
        gc.collect()
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_mb(self):
        if self.device.type != 'cuda':
            return None
        torch.cuda.synchronize(self.device)
        return torch.cuda.max_memory_allocated(self.device) / 2 ** 20


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def memory_of(path, label, options, batch_size, warmup, device, input_size, cli_args, seq_len, probe):
    """(saved activations MB, peak MB or None, parameter counts) of one config built alone: everything of the
    configs before it is freed first, and the peak covers building, warm-up and one measured step."""
    probe.reset()
    box, batches = build(path, batch_size, device, input_size, options, cli_args, seq_len)
    run_step = TrainStep(box, device)
    for i in range(warmup):
        run_step(i, batches[i % len(batches)])
    meter = SavedTensorMeter()
    with torch.autograd.graph.saved_tensors_hooks(meter.pack, meter.unpack):
        run_step(warmup, batches[0])
    peak = probe.peak_mb()
    counts = parameter_counts(box)
    run_step.close()
    del box, batches, run_step
    return meter.megabytes, peak, counts


def measure(configs, batch_size, steps, warmup, rounds, device, input_size, variants=((None, None),), cli_args=None,
            seq_len=64, probe=None):
    """``variants``: (label, SpeedOptions or None for the YAML's + command line's) pairs; every config is built once
    per pair. Memory is measured config by config, each alone; then every config is built again and all are timed
    round-robin, each step being the runner's own (:class:`pesf_ext.engine.loop.TrainStep`: batch to device,
    forward, NaN/Inf check, backward and optimizer step)."""
    probe = probe or MemoryProbe(device)
    pairs = list(itertools.product(configs, variants))
    entries = []
    for path, (label, options) in pairs:
        saved_mb, peak, counts = memory_of(path, label, options, batch_size, warmup, device, input_size, cli_args,
                                           seq_len, probe)
        entries.append({'name': os.path.basename(path) + (f' [{label}]' if label else ''), 'times': [],
                        'saved_mb': saved_mb, 'peak_mb': peak, 'counts': counts})
    probe.reset()
    for entry, (path, (label, options)) in zip(entries, pairs):
        box, batches = build(path, batch_size, device, input_size, options, cli_args, seq_len)
        entry.update(box=box, batches=batches, step=TrainStep(box, device))
        for i in range(warmup):
            entry['step'](i, batches[i % len(batches)])
    # round-robin, one step of each config in turn: a drift of the machine (frequency, another process) hits every
    # config alike, which timing blocks of steps per config does not (blocks gave +-10% between equal methods)
    for i in range(rounds * steps):
        for entry in entries:
            sync(device)
            start = time.perf_counter()
            entry['step'](warmup + i, entry['batches'][i % len(entry['batches'])])
            sync(device)
            entry['times'].append(time.perf_counter() - start)
    for entry in entries:
        entry.pop('step').close()
    return entries


def report(entries, device, batch_size):
    base = entries[0]
    base_time = statistics.median(base['times'])
    lines = [f'device: {device} ({torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"}, '
             f'{torch.get_num_threads()} threads), batch {batch_size}, {len(base["times"])} timed steps per config',
             '| config | s/step (median) | samples/s | ratio to first | saved activations MB | ratio | '
             'peak MB (this config alone) | trainable teacher params |', '|---|---|---|---|---|---|---|---|']
    for entry in entries:
        median = statistics.median(entry['times'])
        peak = f'{entry["peak_mb"]:.0f}' if entry['peak_mb'] is not None else 'n/a (CPU)'
        teacher_trainable = entry['counts'].get('teacher', (0, 0))[0]
        lines.append(f'| {entry["name"]} | {median:.4f} | {batch_size / median:.1f} | {median / base_time:.2f}x | '
                     f'{entry["saved_mb"]:.1f} | {entry["saved_mb"] / max(base["saved_mb"], 1e-9):.2f}x | {peak} | '
                     f'{teacher_trainable:,} |')
    return '\n'.join(lines)


EPILOG = '''examples:
  pesf-benchmark                      # Fashion-MNIST ResNet-56 -> ResNet-20: KD, PESF-KD, FT-KD, Z-score KD
  pesf-benchmark --configs configs/fashion_mnist/resnet56_resnet20_{kd,pesfkd}.yaml --batch_size 128
  pesf-benchmark --configs configs/imagenet/r50_r18_{kd,pesfkd,ftkd}.yaml --batch_size 256 \\
      --variants fp32 bf16+channels_last
(in a clone, `python tools/benchmark.py` takes the same options)'''


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--configs', nargs='+', default=DEFAULT_CONFIGS, help='first one is the reference (KD)')
    parser.add_argument('--batch_size', type=int, default=64)
    parser.add_argument('--steps', type=int, default=10, help='timed steps per config and round')
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--rounds', type=int, default=4, help='timed steps per config = rounds x steps')
    parser.add_argument('--input_size', type=int, default=224, help='image size of ImageNet configs')
    parser.add_argument('--seq_len', type=int, default=64, help='tokens per example of GLUE configs')
    parser.add_argument('--device', default=None)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--variants', nargs='+', help="e.g. fp32 bf16+channels_last: each config once per variant")
    parser.add_argument('--set', nargs='+', action='extend', default=[], dest='overrides', metavar='KEY=VALUE',
                        help='YAML overrides applied to every config (see tools/image_classification.py --help)')
    add_speed_args(parser)
    args = parser.parse_args(argv)
    OVERRIDES[:] = args.overrides
    torch.manual_seed(args.seed)
    device = resolve_device(args.device)
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True  # as the runner (unless -disable_cudnn_benchmark)
    variants = [(None, None)]
    if args.variants:
        base = speed_options({}, args)
        variants = [(variant, variant_options(variant, base)) for variant in args.variants]
    entries = measure(args.configs, args.batch_size, args.steps, args.warmup, args.rounds, device, args.input_size,
                      variants, args, args.seq_len)
    print(report(entries, device, args.batch_size))


if __name__ == '__main__':
    main()
