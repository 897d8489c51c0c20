"""One command that checks the project on a GPU and writes one markdown report (exit status 1 if any check failed;
``pesf-gpu-check``, in a clone also ``python tools/gpu_check.py``).

    python tools/gpu_check.py                    # one CUDA GPU: under 8 minutes on an H100 (--budget_s 450)
    python tools/gpu_check.py --device cpu       # tiny sizes, gloo, fp16 autocast on the CPU (a CI smoke run)
    python tools/gpu_check.py --torchdistill_repo ~/torchdistill   # also time torchdistill's own example script

Everything runs on random data and random weights (no download): configs are built as the runners build them
(the runner's own :func:`pesf_ext.engine.runner.setup_box`), with the datasets swapped for random images or token
ids (pesf_ext/engine/synthetic.py) and pretrained weights replaced by fresh ones. The report's sections:

1. the device;
2. two training steps of every config family (each CIFAR-100 pair's KD and PESF-KD, ImageNet ResNet-50 -> ResNet-18,
   GLUE KD / PESF-KD with a tiny BERT, every CIFAR-100 method on ResNet-56 -> ResNet-20, each stage of multi-stage
   configs), each in fp32 (TF32 off), bf16 + channels_last and fp16 with the GradScaler; the pairs, ImageNet and
   GLUE also compiled (``torch.compile``: inductor for ResNet-56 -> ResNet-20 KD, ``aot_eager`` for the others, the
   same tracing of forward and backward with hooks without code generation; on the CPU ``eager``, first config
   only); a row passes when both losses are finite;
3. the README's "Speed switches" throughput table: ResNet-50 -> ResNet-18 KD, PESF-KD, FT-KD and DML on random
   224 x 224 batches, images/s in fp32 (TF32 off), TF32 and bf16 + channels_last (tools/benchmark.py's ``measure``
   and ``report``; one precision at a time, the methods round-robin);
4. the causal-LM runner's own training step (its model builder and ``setup_box``) for KD, PESF-KD (LoRA on every
   block, on the last 2) and FT-KD at Qwen2.5-1.5B -> Qwen2.5-0.5B shapes with random weights in bf16 and synthetic
   token ids: tokens/s and peak CUDA memory with ``speed.loss_chunk_tokens`` off and on (CPU: tiny Qwen2 models);
5. the same KD config through torchdistill's own example script (``examples/torchvision/image_classification.py``,
   not in its wheel: give a clone with --torchdistill_repo) and through this project's runner, side by side;
6. a one-process ``torchrun`` run (NCCL on CUDA, gloo on the CPU) for one epoch, then resumed with ``-resume`` for a
   second one.

A report that survives: each section runs in its own process with a time limit (its share of ``--budget_s`` plus
what earlier sections left), is appended to ``--output`` and flushed as soon as it finishes, and a section that
raises, crashes or runs past its limit becomes a FAILED line while the next one starts. The sections' logs, their
row records and the files their runs write stay in ``<output stem>_logs/`` beside the report.
"""
import argparse
import glob
import importlib
import json
import os
import runpy
import signal
import subprocess
import sys
import threading
import time
import traceback

from .paths import PACKAGE_DIR, configs_dir, tools_dir, work_dir

ROOT = work_dir()  # where the subprocesses run: a clone's root, else the current directory
IMPORT_ROOT = os.path.dirname(PACKAGE_DIR)  # the folder that holds pesf_ext (the clone, or site-packages)
# the runner the torchdistill and torchrun sections start by path: the clone's script, else the package's module file
RUNNER = os.path.join(tools_dir() or os.path.join(PACKAGE_DIR, 'cli'), 'image_classification.py')
WORKER = ['-m', 'pesf_ext.cli.gpu_check']  # this module's worker modes (-m: its package imports resolve)

VARIANTS = ('fp32', 'bf16+channels_last', 'fp16', 'compile')
CIFAR_PAIRS = ('resnet56_resnet20', 'resnet110_resnet32', 'vgg13_vgg8', 'resnet56_vgg8')
THROUGHPUT_METHODS = ('kd', 'pesfkd', 'ftkd', 'dml')
TORCHDISTILL_SCRIPT = os.path.join('examples', 'torchvision', 'image_classification.py')
DEFAULT_BUDGET_S = 450  # the whole run on one H100, compile included
# (name, target, share of the budget): each section's time limit is its share plus what earlier sections left over
SECTIONS = (('device', 'pesf_ext.cli.gpu_check:section_device', 0.02),
            ('steps', 'pesf_ext.cli.gpu_check:section_steps', 0.45),
            ('throughput', 'pesf_ext.cli.gpu_check:section_throughput', 0.15),
            ('lm', 'pesf_ext.cli.gpu_check:section_lm', 0.2),
            ('torchdistill', 'pesf_ext.cli.gpu_check:section_torchdistill', 0.08),
            ('torchrun', 'pesf_ext.cli.gpu_check:section_torchrun', 0.12))
MIN_SECTION_S = 60  # at least this (or what is left): a section process's start-up alone takes seconds
CROP_TRANSFORMS = ('RandomResizedCrop', 'CenterCrop', 'RandomCrop')  # the last size an image takes


def cifar(name):
    return os.path.join(configs_dir(), 'cifar100', f'{name}.yaml')


def check_configs():
    """(label, path, compile backend on CUDA) of every config the two-step section runs: inductor for CIFAR-100
    ResNet-56 -> ResNet-20 KD, aot_eager for the other pairs, ImageNet and GLUE, none for the other methods (their
    losses are not compiled: the models are)."""
    rows = []
    for pair in CIFAR_PAIRS:
        rows += [(f'cifar100/{pair}_{m}', cifar(f'{pair}_{m}'), 'inductor' if not rows else 'aot_eager')
                 for m in ('kd', 'pesfkd')]
    rows.append(('imagenet/r50_r18_kd', os.path.join(configs_dir(), 'imagenet', 'r50_r18_kd.yaml'), 'aot_eager'))
    for method in ('kd', 'pesfkd'):
        rows.append((f'glue/sst2/bert_base_uncased_bert_6l_{method}', os.path.join(
            configs_dir(), 'glue', 'sst2', f'bert_base_uncased_bert_6l_{method}.yaml'), 'aot_eager'))
    done = {label for label, _, _ in rows}
    for path in sorted(glob.glob(cifar('resnet56_resnet20_*'))):
        label = 'cifar100/' + os.path.basename(path)[:-len('.yaml')]
        if label not in done:
            rows.append((label, path, None))
    return rows


def select_configs(only):
    """:func:`check_configs` restricted to ``only`` (labels or file stems; None: all)."""
    return [c for c in check_configs() if not only or c[0] in only or c[0].split('/')[-1] in only]


class Sizes:
    """Batch and input sizes: full on CUDA, tiny on the CPU (images at most 32 x 32)."""

    def __init__(self, device):
        cpu = device.type == 'cpu'
        self.batch = 2 if cpu else 32
        self.max_image = 32 if cpu else None
        self.throughput_size = 32 if cpu else 224
        self.seq_len = 16 if cpu else 64
        self.throughput_batch = 4 if cpu else 128
        self.throughput_steps, self.throughput_rounds, self.warmup = (1, 1, 1) if cpu else (5, 3, 3)

    def image_size(self, path):
        """The size the check feeds ``path``'s models: the config's own input size (:func:`config_input_size`),
        capped at 32 on the CPU."""
        size = config_input_size(path) or 32
        return size if self.max_image is None else min(size, self.max_image)


def _tagged(loader, suffix, node):
    """Any ``!tag`` of a torchdistill YAML read as the plain mapping, list or scalar under it."""
    import yaml
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


def raw_yaml(path):
    """The YAML of ``path`` as plain data, its tags (``!import_call``, ``!join`` ...) not run."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor('!', _tagged)
    with open(path) as f:
        return yaml.load(f, Loader=Loader)


def config_input_size(path):
    """The side of the images ``path``'s training set yields: the ``size`` of the first RandomResizedCrop,
    CenterCrop or RandomCrop of the dataset ``train.train_data_loader.dataset_id`` names (224 for
    configs/imagenet, 32 for CIFAR-100); None when it has none."""
    raw = raw_yaml(path)
    train = raw.get('train') or {}
    stage = train if 'train_data_loader' in train else train.get('stage1') or {}
    dataset = (raw.get('datasets') or {}).get((stage.get('train_data_loader') or {}).get('dataset_id'))

    def find(node):
        if isinstance(node, dict):
            if str(node.get('key', '')).rsplit('.', 1)[-1] in CROP_TRANSFORMS:
                size = ((node.get('init') or {}).get('kwargs') or {}).get('size')
                if size is not None:
                    return int(size[0] if isinstance(size, list) else size)
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            return None
        for child in children:
            found = find(child)
            if found is not None:
                return found
        return None
    return find(dataset)


def write_tiny_bert(path):
    """A 12-layer BERT with hidden size 32 and a word-level tokenizer, saved without a classifier head."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer
    words = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'] + [f'w{i}' for i in range(1100)]
    BertTokenizer(vocab={w: i for i, w in enumerate(words)}, do_lower_case=True).save_pretrained(path)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=1105, hidden_size=32, num_hidden_layers=12, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(path)
    return path


def tiny_bert(work):
    """``work``/tiny_bert, written on first use."""
    path = os.path.join(work, 'tiny_bert')
    if not os.path.isfile(os.path.join(path, 'config.json')):
        write_tiny_bert(path)
    return path


def text_overrides(config, model_dir):
    """Points a GLUE config's model paths at ``model_dir`` (the tiny BERT)."""
    from pesf_ext.nlp.runner import set_model_path
    for name in ('teacher_model', 'student_model', 'model'):
        if name in config['models']:
            set_model_path(config['models'][name], model_dir)


def stage_names(config):
    return sorted(k for k in config['train'] if k.startswith('stage'))


def shrink_train(config, sizes):
    """Batch size, no loader workers, one epoch per stage."""
    stages = [config['train'][name] for name in stage_names(config)] or [config['train']]
    for stage in stages:
        stage['num_epochs'] = 1
        for name in ('train_data_loader', 'val_data_loader'):
            loader = stage.get(name)
            if loader:
                loader['kwargs'].update(batch_size=sizes.batch, num_workers=0, pin_memory=False, drop_last=True)


def random_rco_route(config, teacher, work):
    """An RCO config's ``train.rco`` pointed at one anchor, the random teacher itself, from epoch 0 (the check
    runs one epoch; the route's real anchors are files of a trained teacher)."""
    import torch
    if config['train'].get('rco') is None:
        return
    path = os.path.join(work, 'rco_anchor.pt')
    torch.save({'model': teacher.state_dict()}, path)
    config['train']['rco'] = {'anchors': [path], 'switch_epochs': [0]}


def build_box(config, device, sizes, options, work, image_size=32):
    """The runner's box of ``config`` (every stage) with the speed ``options``, built by the runner's own
    :func:`~pesf_ext.engine.runner.setup_box`; ``image_size``: the side of the random images (the teacher's
    BatchNorm statistics are estimated at it)."""
    from pesf_ext.engine.models import build_model
    from pesf_ext.engine.runner import setup_box
    from pesf_ext.engine.synthetic import synthetic_data
    models = config['models']
    if 'model_kwargs' in (models.get('student_model') or {}):
        from . import benchmark
        text_overrides(config, tiny_bert(work))
        teacher, student = benchmark.build_text_models(config, sizes.batch, device, sizes.seq_len)
    else:
        with synthetic_data():
            teacher = build_model({**models['teacher_model'], 'src_ckpt': None}, device, False,
                                  'models.teacher_model').eval() if 'teacher_model' in models else None
        if teacher is not None:
            calibrate_batch_norm(teacher, image_size, device)
            random_rco_route(config, teacher, work)
        student_config = models.get('student_model') or models['model']
        student = build_model({**student_config, 'src_ckpt': None}, device, False, 'models.student_model')
    return setup_box(teacher, student, config, device, None, False, 1, options, seed=0)


def calibrate_batch_norm(model, size, device):
    """BatchNorm statistics of a randomly initialised teacher estimated on one random batch of ``size`` x ``size``
    images: with the initial ones (mean 0, variance 1) a deep random ResNet's features grow through the blocks in
    eval mode, and losses on them (FT's reconstruction) overflow even in fp32, which says nothing about the code."""
    import torch
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None   # cumulative average: one batch gives its own statistics
    model.train()
    with torch.no_grad():
        model(torch.randn(16, 3, size, size, device=device, generator=torch.Generator(device).manual_seed(0)))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.eval()


def variant_options(variant, device, backend):
    """Speed options of a two-step row: ``fp32`` with TF32 off (full fp32), the AMP variants as tools/benchmark.py
    builds them, ``compile`` with ``backend`` (``eager`` on the CPU)."""
    from . import benchmark
    from pesf_ext.engine.speed import SpeedOptions
    if variant == 'compile':
        return SpeedOptions(compile=('student', 'teacher'), compile_backend='eager' if device.type == 'cpu'
                            else backend)
    return benchmark.variant_options(variant, SpeedOptions(tf32=variant != 'fp32'))


def two_steps(path, variant, device, sizes, backend, work):
    """[(stage, losses of two steps, options)] of one config in one variant (a multi-stage config: two steps of each
    stage, the box moving on to the next stage as the runner's does after an epoch); raises on a non-finite loss
    (the runner's step stops there) or any other error."""
    from pesf_ext.engine.config import load_config
    from pesf_ext.engine.loop import TrainStep
    from pesf_ext.engine.synthetic import synthetic_data
    image_size = sizes.image_size(path)
    with synthetic_data(num_samples=sizes.batch * 2, imagenet_size=image_size):
        config = load_config(path)
    shrink_train(config, sizes)
    options = variant_options(variant, device, backend)
    box = build_box(config, device, sizes, options, work, image_size)
    out = []
    for epoch, stage in enumerate(stage_names(config) or [None]):
        if epoch:
            box.post_epoch_process()
        box.pre_epoch_process(epoch=epoch)
        step, losses = TrainStep(box, device, epoch), []
        for i, batch in zip(range(2), list(box.train_data_loader) * 2):
            step(i, batch)
            losses.append(step.loss_sum.item() - sum(losses))
        step.close()
        out.append((stage, losses, options))
    del box
    return out


class Context:
    """What a section process knows: the run's options (``--device``, ``--only``, ...), ``work`` (the logs folder
    beside the report), its ``deadline`` (``time.time()``), and its record file, to which :meth:`emit` appends
    finished report lines at once (a section killed later keeps them)."""

    def __init__(self, options, name, deadline):
        self.options, self.name, self.deadline = options, name, deadline
        self.work = options['work']
        self.records = os.path.join(self.work, f'{name}.jsonl')
        self._device = None

    @property
    def device(self):
        if self._device is None:
            from pesf_ext.engine.distributed import resolve_device
            self._device = resolve_device(self.options.get('device'))
        return self._device

    @property
    def sizes(self):
        return Sizes(self.device)

    def left(self):
        return self.deadline - time.time()

    def _append(self, record):
        with open(self.records, 'a') as f:
            f.write(json.dumps(record) + '\n')
            f.flush()
            os.fsync(f.fileno())

    def emit(self, lines, results=()):
        self._append({'lines': list(lines), 'results': list(results)})

    def current(self, what):
        """Says what runs now (named in the report if the section is killed)."""
        self._append({'current': what})


def read_records(path):
    """(lines, results, what ran last, finished) of a section's record file."""
    lines, results, current, done = [], [], None, False
    if os.path.isfile(path):
        with open(path) as f:
            for text in f:
                try:
                    record = json.loads(text)
                except ValueError:
                    break   # a line cut by a kill
                lines += record.get('lines', [])
                results += record.get('results', [])
                current = record.get('current', current)
                done = done or record.get('done', False)
    return lines, results, current, done


def section_device(ctx):
    import torch
    device = ctx.device
    lines = ['## Device', '']
    if device.type == 'cuda':
        props = torch.cuda.get_device_properties(device)
        lines.append(f'- {torch.cuda.get_device_name(device)}, {props.total_memory / 2 ** 30:.0f} GiB, compute '
                     f'capability {props.major}.{props.minor}, CUDA {torch.version.cuda}')
    else:
        lines.append(f'- CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads): tiny sizes, fp16 autocast '
                     'on the CPU, gloo')
    import torchdistill
    lines.append(f'- torch {torch.__version__}, torchdistill {torchdistill.__version__}, Python '
                 f'{sys.version.split()[0]}')
    return lines, []


def steps_row(path, variant, ctx, backend):
    """(variant label, result, detail) of one two-step row."""
    t0 = time.monotonic()
    try:
        results = two_steps(path, variant, ctx.device, ctx.sizes, backend, ctx.work)
    except Exception as error:  # noqa: BLE001  (every failure is a row of the report)
        traceback.print_exc()
        message = str(error).splitlines()[0] if str(error) else ''
        return variant, 'FAILED', f'{type(error).__name__}: {message[:200]}'
    detail = '; '.join(f'{stage + ": " if stage else ""}{a:.4g} -> {b:.4g}' for stage, (a, b), _ in results)
    used = results[0][2].compile_backend if variant == 'compile' else None
    return variant + (f' ({used})' if used else ''), 'passed', f'{detail} ({time.monotonic() - t0:.1f} s)'


def section_steps(ctx):
    """Rows (config, variant, result, losses), each written as it finishes; a row is skipped when the slowest row
    of its variant so far would not fit in the time left."""
    import torch
    device, sizes = ctx.device, ctx.sizes
    configs = select_configs(ctx.options.get('only'))
    ctx.emit(['## Two training steps of every config family', '',
              f'batch {sizes.batch}, images at the config\'s input size{" (at most 32 px on the CPU)" if sizes.max_image else ""}, '
              f'GLUE {sizes.seq_len} tokens (a tiny BERT); fp32 with TF32 off; loss of step 1 -> step 2 (a '
              'multi-stage config: each stage)', '', '| config | variant | result | losses |', '|---|---|---|---|'])
    slowest = {}
    for label, path, backend in configs:
        for variant in VARIANTS:
            if variant == 'compile' and (backend is None or device.type == 'cpu' and label != configs[0][0]):
                continue   # the pairs, ImageNet and GLUE (CPU: dynamo takes ~30 s a config, the first one only)
            if ctx.left() < slowest.get(variant, 0) * 1.2 + 1:
                ctx.emit([f'| {label} | {variant} | skipped | time budget spent ({ctx.left():.0f} s left) |'],
                         ['skipped'])
                continue
            ctx.current(f'{label} [{variant}]')
            print(f'{label} [{variant}] ...', flush=True)
            t0 = time.monotonic()
            shown, result, detail = steps_row(path, variant, ctx, backend)
            slowest[variant] = max(slowest.get(variant, 0), time.monotonic() - t0)
            ctx.emit([f'| {label} | {shown} | {result} | {detail} |'], [result])
            if device.type == 'cuda':
                torch.cuda.empty_cache()


def throughput_variants(device):
    """(label, SpeedOptions) of the throughput columns: fp32 (TF32 off), TF32 (CUDA only) and bf16 +
    channels_last."""
    from . import benchmark
    from pesf_ext.engine.speed import SpeedOptions
    variants = [('fp32', SpeedOptions(tf32=False))]
    if device.type == 'cuda':
        variants.append(('TF32', SpeedOptions(tf32=True)))
    return variants + [('bf16+channels_last', benchmark.variant_options('bf16+channels_last', SpeedOptions()))]


def calibrated_teachers(benchmark, size, device):
    """tools/benchmark.py's ``build`` with :func:`calibrate_batch_norm` applied to a teacher in eval mode (the timing
    is unchanged; a random ResNet-50's eval-mode logits would otherwise reach ~1e4 and can overflow)."""
    from pesf_ext.engine.checkpoint import unwrap
    original = benchmark.build

    def build(*args, **kwargs):
        box, batches = original(*args, **kwargs)
        teacher = getattr(box, 'teacher_model', None)
        if teacher is not None and not teacher.training:
            calibrate_batch_norm(unwrap(teacher), size, device)
        return box, batches
    return original, build


def section_throughput(ctx):
    """Images/s of ResNet-50 -> ResNet-18 methods: each precision measured on its own (TF32 is a process-wide
    switch, set when a box is built), the methods round-robin within it."""
    import statistics
    from . import benchmark
    device, sizes = ctx.device, ctx.sizes
    configs = [os.path.join(configs_dir(), 'imagenet', f'r50_r18_{m}.yaml') for m in THROUGHPUT_METHODS]
    variants = throughput_variants(device)
    ctx.emit(['## Throughput: ResNet-50 -> ResNet-18 on random images (README "Speed switches")', '',
              f'{sizes.throughput_size} x {sizes.throughput_size} images, batch {sizes.throughput_batch}; fp32 is '
              'full fp32 (TF32 off), TF32 the runner\'s default for fp32 on CUDA (speed.tf32)', ''])
    original, build = calibrated_teachers(benchmark, sizes.throughput_size, device)
    benchmark.build = build
    try:
        entries = []
        for variant in variants:
            entries += benchmark.measure(configs, sizes.throughput_batch, sizes.throughput_steps, sizes.warmup,
                                         sizes.throughput_rounds, device, sizes.throughput_size, variants=[variant])
    finally:
        benchmark.build = original
    lines = [benchmark.report(entries, device, sizes.throughput_batch)]
    by_name = {e['name']: e for e in entries}
    names = ('fp32', 'TF32', 'bf16+channels_last')
    lines += ['', '| method | ' + ' | '.join(f'{v} images/s' for v in names) + ' | bf16 + channels_last vs fp32 |',
              '|---|---|---|---|---|']
    measured = [v for v, _ in variants]
    for method in THROUGHPUT_METHODS:
        seconds = {v: statistics.median(by_name[f'r50_r18_{method}.yaml [{v}]']['times']) for v in measured}
        cells = [f'{sizes.throughput_batch / seconds[v]:.0f}' if v in seconds else 'n/a (CUDA only)' for v in names]
        lines.append(f'| {method} | {" | ".join(cells)} | {seconds["fp32"] / seconds["bf16+channels_last"]:.2f}x |')
    return lines + ['', 'result: passed'], ['passed']


# ---- causal LM: the runner's own training step at Qwen2.5-1.5B -> Qwen2.5-0.5B shapes ----

# (row label, config method, LoRA last_layers): the README's causal-LM methods on the Qwen2.5 pair
LM_METHODS = (('KD', 'kd', None), ('PESF-KD (LoRA, every block)', 'pesfkd', None),
              ('PESF-KD (LoRA, last 2 blocks)', 'pesfkd', 2), ('FT-KD', 'ftkd', None))
LM_PAIR = ('Qwen2.5-1.5B', 'Qwen2.5-0.5B')
# CPU: tiny Qwen2 models with the same structure (GQA, q/k/v biases, tied embeddings), a 320-id vocabulary
LM_TINY = {'teacher': dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                           num_key_value_heads=2),
           'student': dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                           num_key_value_heads=1)}


class LMSizes:
    """The LM section's sizes: on CUDA batch 4 x 512 tokens, 2 warm-up and 3 timed steps per setting, chunks of 1,024
    tokens; on the CPU tiny models, batch 2 x 32, 1 + 1 steps, chunks of 16."""

    def __init__(self, device):
        cpu = device.type == 'cpu'
        self.batch, self.seq_len = (2, 32) if cpu else (4, 512)
        self.warmup, self.steps = (1, 1) if cpu else (2, 3)
        self.chunk_tokens = 16 if cpu else 1024
        self.prompt = self.seq_len // 4   # label -100 (an instruction prompt), as in the Dolly configs


def lm_model_config(model_config, role, shape, tokenizer_dir):
    """``models.<model>`` of a Qwen config rewritten for random weights: ``config_kwargs`` with the shape's sizes
    (:data:`pesf_ext.lm.memory.SHAPES`; None: :data:`LM_TINY`), the offline tokenizer for the special ids, and the
    dtype a hub checkpoint gives (Qwen2.5 is stored in bf16): bf16 for a frozen or adapted teacher, fp32 (the
    runner's :func:`~pesf_ext.lm.models.load_dtype` for a trained model) otherwise."""
    if shape is None:
        sizes = dict(LM_TINY[role], vocab_size=320)
    else:
        sizes = dict(hidden_size=shape.hidden, intermediate_size=shape.intermediate, num_hidden_layers=shape.layers,
                     num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads, vocab_size=shape.vocab)
    return {**model_config, 'config_kwargs': dict(model_type='qwen2', tie_word_embeddings=True, **sizes),
            'tokenizer_kwargs': {'pretrained_model_name_or_path': tokenizer_dir}, 'src_ckpt': None,
            'model_kwargs': {}}


class TokenIds:
    """``num`` random sequences of ``seq_len`` token ids below ``vocab`` (a fixed seed), labels -100 on the first
    ``prompt`` positions: the items :class:`~pesf_ext.lm.data.CausalLMCollator` pads (none needs padding)."""

    def __init__(self, num, seq_len, vocab, prompt):
        import torch
        generator = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, vocab, (num, seq_len), generator=generator)
        self.prompt = prompt

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, index):
        ids = self.ids[index].tolist()
        return {'input_ids': ids, 'labels': [-100] * self.prompt + ids[self.prompt:]}


def lm_box(method, last_layers, device, sizes, work):
    """The causal-LM runner's box for configs/causal_lm/qwen2.5_1.5b_0.5b_dolly_<method>.yaml: models built by the
    runner's :class:`~pesf_ext.lm.runner.LMModels` (roles and dtypes as in a run) with random weights at the real
    shapes (CUDA) or tiny ones (CPU), synthetic token ids, ``TokenKDLoss.vocab_size`` the tokenizer's 151,665 ids
    (CPU: 320), the YAML's ``speed`` (bf16 autocast) and the runner's :func:`~pesf_ext.engine.runner.setup_box`."""
    import torch
    from torchdistill.datasets.registry import register_collate_func
    from pesf_ext.engine.config import fill_taid_total_steps, fill_vocab_size, load_config
    from pesf_ext.engine.runner import setup_box
    from pesf_ext.engine.speed import speed_options
    from pesf_ext.lm.data import CausalLMCollator, offline_tokenizer_path
    from pesf_ext.lm.memory import SHAPES
    from pesf_ext.lm.models import model_roles
    from pesf_ext.lm.runner import LMModels
    from pesf_ext.nlp import register_hf_schedulers
    from pesf_ext.nlp.models import load_tokenizer
    from pesf_ext.nlp.runner import set_num_training_steps
    register_hf_schedulers()   # as run_lm does: the configs' get_linear_schedule_with_warmup
    config = load_config(os.path.join(configs_dir(), 'causal_lm', f'qwen2.5_1.5b_0.5b_dolly_{method}.yaml'))
    tokenizer_dir = offline_tokenizer_path(vocab_size=320, cache_dir=os.path.join(work, 'tokenizer'),
                                           max_bytes=150_000)
    cpu = device.type == 'cpu'
    vocab = 320 if cpu else SHAPES[LM_PAIR[0]].tokenizer
    models = config['models']
    for key, role, shape_name in (('teacher_model', 'teacher', LM_PAIR[0]), ('student_model', 'student', LM_PAIR[1])):
        models[key] = lm_model_config(models[key], role, None if cpu else SHAPES[shape_name], tokenizer_dir)
    if last_layers is not None:
        config['train']['teacher']['auxiliary_model_wrapper']['kwargs']['last_layers'] = last_layers
    for key, role in model_roles(config).items():
        if role != 'trained':   # a frozen/adapted base in the dtype a bf16 hub checkpoint gives it
            models[key.split('.')[-1]]['model_kwargs'] = {'dtype': 'bfloat16'}
    builder = LMModels(config, data=None)   # the runner's model builder: each model's role (dtype) read from config
    with torch.device(device):   # random initialisation on the device itself (seconds for 2B parameters)
        teacher = builder(models['teacher_model'], device, False, 'models.teacher_model').eval()
        student = builder(models['student_model'], device, False, 'models.student_model')
    tokenizer = load_tokenizer(models['student_model'], 'models.student_model')
    register_collate_func(CausalLMCollator(tokenizer))
    num = sizes.batch * (sizes.warmup + sizes.steps)
    train = config['train']
    data = TokenIds(num, sizes.seq_len, vocab, sizes.prompt)
    config['datasets'] = {train['train_data_loader']['dataset_id']: data,
                          train['val_data_loader']['dataset_id']: TokenIds(sizes.batch, sizes.seq_len, vocab,
                                                                           sizes.prompt)}
    for name in ('train_data_loader', 'val_data_loader'):
        train[name]['kwargs'].update(batch_size=sizes.batch, num_workers=0, pin_memory=False, drop_last=True)
    set_num_training_steps(train, num, 1)
    fill_vocab_size(config, vocab)
    fill_taid_total_steps(config, 1)
    return setup_box(teacher, student, config, device, None, False, 1, speed_options(config), seed=0)


def lm_measure(box, device, sizes, chunk_tokens):
    """(tokens/s, peak MiB or None) of the box's own step (:class:`~pesf_ext.engine.loop.TrainStep`: forward, the
    NaN/Inf check, backward, AdamW) with ``TokenKDLoss.chunk_tokens`` set as ``speed.loss_chunk_tokens`` sets it:
    ``sizes.warmup`` steps, then ``sizes.steps`` timed ones; the peak is ``torch.cuda.max_memory_allocated`` over
    both (weights, optimizer state, activations, the loss)."""
    import torch
    from pesf_ext.engine.loop import TrainStep
    from pesf_ext.engine.speed import set_loss_chunk_tokens
    set_loss_chunk_tokens(box.criterion, chunk_tokens)
    batches = list(box.train_data_loader)
    cuda = device.type == 'cuda'
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    step = TrainStep(box, device)
    try:
        for i, batch in enumerate(batches[:sizes.warmup]):
            step(i, batch)
        if cuda:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for i, batch in enumerate(batches[sizes.warmup:sizes.warmup + sizes.steps]):
            step(sizes.warmup + i, batch)
        if cuda:
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        if not torch.isfinite(step.loss_sum):
            raise FloatingPointError('non-finite loss')
    finally:
        step.close()
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 20 if cuda else None
    return sizes.batch * sizes.seq_len * sizes.steps / seconds, peak


def section_lm(ctx):
    """Tokens/s and peak CUDA memory of the causal-LM runner's step for KD, PESF-KD (LoRA on every block, on the
    last 2) and FT-KD at Qwen2.5-1.5B -> Qwen2.5-0.5B shapes (random weights; CPU: tiny Qwen2 models), the chunked
    loss off and on; one box per method, each setting warmed up, rows written as they finish."""
    import torch
    device = ctx.device
    sizes = LMSizes(device)
    cpu = device.type == 'cpu'
    shapes = 'tiny Qwen2 models (3 and 2 blocks, 320 ids)' if cpu else \
        f'{LM_PAIR[0]} -> {LM_PAIR[1]} shapes (151,936-row output layers, the loss over 151,665 ids)'
    ctx.emit([f'## Causal LM: the runner\'s training step, {shapes}', '',
              f'random weights (the teacher\'s frozen base in bf16, trained weights fp32), bf16 autocast (the '
              f'configs\' speed.amp), synthetic token ids ({sizes.batch} x {sizes.seq_len}, the first '
              f'{sizes.prompt} labels -100 as a prompt), AdamW; {sizes.warmup} warm-up and {sizes.steps} timed '
              f'steps per row; tokens/s counts every input token; chunked: speed.loss_chunk_tokens = '
              f'{sizes.chunk_tokens}', '',
              '| method | loss | tokens/s | peak CUDA memory (GiB) | result |', '|---|---|---|---|---|'])
    slowest = 0.0
    for label, method, last_layers in LM_METHODS:
        if ctx.left() < slowest * 1.2 + 1:
            ctx.emit([f'| {label} | - | - | - | skipped: time budget spent ({ctx.left():.0f} s left) |'],
                     ['skipped', 'skipped'])
            continue
        ctx.current(f'{label}')
        print(f'LM {label} ...', flush=True)
        t0 = time.monotonic()
        box = None
        try:
            box = lm_box(method, last_layers, device, sizes, ctx.work)
            box.pre_epoch_process(epoch=0)
            for loss_label, chunk in (('unchunked', None), (f'chunked ({sizes.chunk_tokens})', sizes.chunk_tokens)):
                tokens_s, peak = lm_measure(box, device, sizes, chunk)
                memory = '-' if peak is None else f'{peak / 1024:.1f}'
                ctx.emit([f'| {label} | {loss_label} | {tokens_s:.0f} | {memory} | passed |'], ['passed'])
        except Exception as error:  # noqa: BLE001  (every failure is a row of the report)
            traceback.print_exc()
            message = str(error).splitlines()[0] if str(error) else ''
            ctx.emit([f'| {label} | - | - | - | FAILED ({type(error).__name__}: {message[:200]}) |'], ['FAILED'])
        del box
        if device.type == 'cuda':
            torch.cuda.empty_cache()
        slowest = max(slowest, time.monotonic() - t0)


CHILDREN = set()  # process groups a section started (killed with it)


def kill_group(pid):
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def subprocess_run(args, log_path, timeout, env_extra=None):
    """(exit status, or None when it ran past ``timeout`` seconds and was killed with its children; seconds)."""
    env = dict(os.environ, OMP_NUM_THREADS='1',
               PYTHONPATH=IMPORT_ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''), **(env_extra or {}))
    start = time.monotonic()
    with open(log_path, 'w') as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                   start_new_session=True)
        CHILDREN.add(process.pid)
        try:
            code = process.wait(timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            kill_group(process.pid)
            process.wait()
            code = None
        finally:
            CHILDREN.discard(process.pid)
    return code, time.monotonic() - start


def tail(path, lines=3):
    with open(path) as f:
        return ' / '.join(line.strip() for line in f.read().strip().splitlines()[-lines:])[-300:].replace('|', '/')


def exit_cell(code, timeout):
    return f'timed out ({timeout:.0f} s)' if code is None else str(code)


def kd_config_args(work, device, epochs, sizes):
    dst = os.path.join(work, 'ckpt', 'kd.pt')
    return ['--config', cifar('resnet56_resnet20_kd'), '--device', device.type, '--seed', '0',
            '--set', f'train.num_epochs={epochs}', f'models.student_model.dst_ckpt={dst}',
            'models.teacher_model.src_ckpt=null',   # a random teacher
            f'train.train_data_loader.kwargs.batch_size={sizes.batch}', 'train.train_data_loader.kwargs.num_workers=0',
            'train.val_data_loader.kwargs.num_workers=0', 'test.test_data_loader.kwargs.num_workers=0']


# the CPU mode of the torchdistill section: Fashion-MNIST KD, this many samples per split (the test shrinks them)
CPU_KD_CONFIG = os.path.join('fashion_mnist', 'resnet56_resnet20_kd.yaml')
CPU_KD_SAMPLES = {'num_train_samples': 4096, 'num_val_samples': 512, 'num_test_samples': 512}
CPU_KD_PAIRS = 3


def timed_run(args, log_path, timeout):
    """:func:`subprocess_run` plus the user + system CPU seconds of the child and the children it waited for
    (``RUSAGE_CHILDREN`` before and after): (exit status or None, wall seconds, CPU seconds)."""
    import resource
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    code, seconds = subprocess_run(args, log_path, timeout)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return code, seconds, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _yaml_set(text, pattern, value):
    """``text`` with the one match of ``pattern`` (a regex whose group 1 is kept) followed by ``value``."""
    import re
    new, count = re.subn(pattern + r"[^\s#]+", lambda m: m.group(1) + value, text)
    if count != 1:
        raise ValueError(f'{CPU_KD_CONFIG}: expected one `{pattern}`, found {count}')
    return new


def write_cpu_kd_config(work, samples):
    """A cut-down copy of Fashion-MNIST ResNet-56 -> ResNet-20 KD in ``work`` (one epoch, ``samples`` per split,
    checkpoints and the dataset's copy in ``work``) and a seeded random ResNet-56 teacher at its ``src_ckpt``:
    (the YAML's path, the student's checkpoint folder)."""
    import torch
    from pesf_ext.data import fashion_mnist
    from pesf_ext.engine.models import build_model
    with open(os.path.join(configs_dir(), CPU_KD_CONFIG)) as f:
        text = f.read()
    ckpt_root, data_root = os.path.join(work, 'td_ckpt'), os.path.join(work, 'fashion_mnist')
    text = _yaml_set(text, r'(num_epochs: &num_epochs )', '1')
    for anchor, count in samples.items():
        text = _yaml_set(text, rf'(&{anchor} )', str(int(count)))
    text = _yaml_set(text, r'(ckpt_root: &ckpt_root )', json.dumps(ckpt_root))
    text = _yaml_set(text, r'(root: &root_dir )', json.dumps(data_root))
    path = os.path.join(work, 'fashion_mnist_kd_cpu.yaml')
    with open(path, 'w') as f:
        f.write(text)
    models = raw_yaml(path)['models']
    teacher, src_ckpt = models['teacher_model'], os.path.join(ckpt_root, 'ce', 'fashion_mnist-resnet56.pt')
    assert models['teacher_model']['src_ckpt'] == [ckpt_root, '/ce/fashion_mnist-resnet56.pt'], models
    torch.manual_seed(0)
    model = build_model({'key': teacher['key'], 'kwargs': teacher['kwargs']}, torch.device('cpu'), False,
                        'models.teacher_model')
    os.makedirs(os.path.dirname(src_ckpt), exist_ok=True)
    torch.save({'model': model.state_dict()}, src_ckpt)
    fashion_mnist(data_root, split='test', num_samples=1, download=False)  # the copy out of Debian's files, untimed
    return path, os.path.join(ckpt_root, 'kd')


def torchdistill_top1(log_path):
    """The student's test top-1 of torchdistill's example: its last `` * Acc@1 X`` line (the student is tested
    last), or None."""
    import re
    with open(log_path, errors='replace') as f:
        found = re.findall(r'\* Acc@1 ([\d.]+)', f.read())
    return float(found[-1]) if found else None


def runner_top1(summary_path):
    try:
        with open(summary_path) as f:
            return float(json.load(f)['test']['student']['top1'])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _median(values):
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def _top1_cell(value):
    return 'n/a' if value is None else f'{value:.4f}'


def section_torchdistill_cpu(ctx, script):
    """CPU mode: the same Fashion-MNIST KD config (cut down) through torchdistill's example and this project's
    runner, alternately, ``pairs`` pairs of whole processes; wall and CPU seconds, the ratios and their medians,
    and the student's test top-1 of both, which must agree."""
    import shutil
    work = os.path.join(ctx.work, 'torchdistill_cpu')
    os.makedirs(work, exist_ok=True)
    samples = dict(CPU_KD_SAMPLES)
    config, student_dir = write_cpu_kd_config(work, samples)
    pairs = int(ctx.options.get('pairs') or CPU_KD_PAIRS)
    common = ['--config', config, '--device', 'cpu', '--seed', '0']
    lines = ["## The same KD config through torchdistill's own example script (CPU: Fashion-MNIST)", '',
             f'{CPU_KD_CONFIG} cut down to one epoch of {samples["num_train_samples"]} training images, '
             f'{samples["num_val_samples"]} validation and {samples["num_test_samples"]} test images (a seeded random '
             'ResNet-56 teacher), through torchdistill\'s example and this project\'s runner alternately, each a '
             'whole process: wall seconds and user + system CPU seconds (the process and its data-loader workers), '
             'ratio = runner / torchdistill (target <= 1.00x)', '',
             '| pair | torchdistill wall s | runner wall s | wall ratio | torchdistill CPU s | runner CPU s | '
             'CPU ratio | torchdistill top-1 | runner top-1 | same top-1 |', '|---|---|---|---|---|---|---|---|---|---|']
    rows, problems, slowest = [], [], 0.0
    for pair in range(1, pairs + 1):
        if pair > 1 and ctx.left() < slowest * 1.2 + 1:
            break
        ctx.current(f'torchdistill CPU pair {pair}')
        results = {}
        for i, name in enumerate(('torchdistill', 'runner')):
            shutil.rmtree(student_dir, ignore_errors=True)  # no run sees the other's student checkpoints
            log = os.path.join(work, f'{name}_{pair}.out')
            summary = os.path.join(work, f'summary_{pair}.json')
            argv = ([script] + common + ['--run_log', os.path.join(work, f'td_{pair}.log')] if name == 'torchdistill'
                    else [RUNNER] + common + ['--summary_json', summary])
            timeout = max(ctx.left() - 1, 1) / (2 - i)
            code, wall, cpu = timed_run([sys.executable] + argv, log, timeout)
            top1 = torchdistill_top1(log) if name == 'torchdistill' else runner_top1(summary)
            if code != 0:
                problems.append(f'pair {pair}: {name} exit {exit_cell(code, timeout)} ({tail(log)})')
            results[name] = (wall, cpu, top1)
        (td_wall, td_cpu, td_top1), (run_wall, run_cpu, run_top1) = results['torchdistill'], results['runner']
        same = td_top1 is not None and run_top1 is not None and abs(td_top1 - run_top1) <= 1e-4
        if not same:
            problems.append(f'pair {pair}: student test top-1 differs (torchdistill {_top1_cell(td_top1)}, '
                            f'runner {_top1_cell(run_top1)})')
        rows.append((run_wall / td_wall, run_cpu / td_cpu if td_cpu > 0 else float('nan')))
        slowest = max(slowest, td_wall + run_wall)
        lines.append(f'| {pair} | {td_wall:.2f} | {run_wall:.2f} | {rows[-1][0]:.2f}x | {td_cpu:.2f} | {run_cpu:.2f} | '
                     f'{rows[-1][1]:.2f}x | {_top1_cell(td_top1)} | {_top1_cell(run_top1)} | '
                     f'{"yes" if same else "NO"} |')
    wall_median, cpu_median = _median([r[0] for r in rows]), _median([r[1] for r in rows])
    lines += ['', f'{len(rows)} of {pairs} pairs ran' + ('' if len(rows) == pairs else
                                                          f' (time limit: {ctx.left():.0f} s left)'),
              f'median ratio: wall {wall_median:.2f}x, CPU {cpu_median:.2f}x '
              f'(target <= 1.00x: {"met" if wall_median <= 1.0 else "not met"} on wall seconds)']
    lines += [f'- {problem}' for problem in problems]
    ok = not problems
    return lines + ['', f'result: {"passed" if ok else "FAILED"}'], ['passed' if ok else 'FAILED']


def section_torchdistill(ctx):
    device, sizes, work, repo = ctx.device, ctx.sizes, ctx.work, ctx.options.get('torchdistill_repo')
    lines = ["## The same KD config through torchdistill's own example script", '']
    script = os.path.join(os.path.expanduser(repo), TORCHDISTILL_SCRIPT) if repo else None
    if not script or not os.path.isfile(script):
        where = script or f'<clone>/{TORCHDISTILL_SCRIPT}'
        lines.append(f"result: skipped: torchdistill's {TORCHDISTILL_SCRIPT} not found ({where}; the torchdistill "
                     'wheel does not ship its examples). Get it with `git clone https://github.com/yoshitomo-matsubara/'
                     'torchdistill` and pass `--torchdistill_repo <the clone>`.')
        return lines, ['skipped']
    if device.type == 'cpu':
        return section_torchdistill_cpu(ctx, script)
    num_samples = sizes.batch * 4
    runs = {'torchdistill example': [script, '--config', cifar('resnet56_resnet20_kd'), '--device', device.type,
                                     '--run_log', os.path.join(work, 'td.log')],
            'pesf_ext runner': [RUNNER] + kd_config_args(work, device, 1, sizes)}
    results = {}
    for i, (name, argv) in enumerate(runs.items()):
        log = os.path.join(work, name.replace(' ', '_') + '.out')
        timeout = ctx.left() / (len(runs) - i)
        code, seconds = subprocess_run([sys.executable, *WORKER, '--_run_script', argv[0],
                                        str(num_samples)] + argv[1:], log, timeout)
        results[name] = (code, seconds, log, timeout)
    lines += [f'one epoch of {num_samples} random CIFAR-100 images, resnet56_resnet20_kd.yaml, wall seconds including '
              'start-up and evaluation', '', '| script | exit | seconds | last lines |', '|---|---|---|---|']
    lines += [f'| {name} | {exit_cell(code, timeout)} | {seconds:.1f} | {tail(log)} |'
              for name, (code, seconds, log, timeout) in results.items()]
    ok = all(code == 0 for code, _, _, _ in results.values())
    return lines + ['', f'result: {"passed" if ok else "FAILED"}'], ['passed' if ok else 'FAILED']


def section_torchrun(ctx):
    device, sizes, work = ctx.device, ctx.sizes, ctx.work
    backend = 'NCCL' if device.type == 'cuda' else 'gloo'
    ctx.emit([f'## torchrun, 1 process ({backend}), then -resume', '',
              '| run | exit | seconds | resumed | last lines |', '|---|---|---|---|---|'])
    num_samples = sizes.batch * 4
    base = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=1',
            *WORKER, '--_run_script', RUNNER, str(num_samples)]
    ok = True
    for i, (epochs, extra) in enumerate(((1, []), (2, ['-resume']))):
        log = os.path.join(work, f'torchrun_{epochs}.out')
        summary = os.path.join(work, f'summary_{epochs}.json')
        ctx.current(f'torchrun epochs {epochs} {" ".join(extra)}')
        timeout = ctx.left() / (2 - i)
        code, seconds = subprocess_run(base + kd_config_args(work, device, epochs, sizes) + extra
                                       + ['--summary_json', summary], log, timeout)
        with open(log) as f:
            text = f.read()
        resumed = '-resume' not in extra or 'Resumed from' in text
        ok = ok and code == 0 and resumed
        ctx.emit([f'| {" ".join(["epochs " + str(epochs)] + extra)} | {exit_cell(code, timeout)} | {seconds:.1f} | '
                  f'{"yes" if extra and resumed else ("n/a" if not extra else "NO")} | {tail(log)} |'])
    return ['', f'result: {"passed" if ok else "FAILED"}'], ['passed' if ok else 'FAILED']


def run_script(argv):
    """Worker: ``--_run_script SCRIPT NUM_SAMPLES [args...]`` runs SCRIPT as __main__ on random data."""
    from pesf_ext.engine.synthetic import synthetic_data
    script, num_samples, rest = argv[0], int(argv[1]), argv[2:]
    sys.argv = [script] + rest
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    with synthetic_data(num_samples=num_samples):
        runpy.run_path(script, run_name='__main__')


def watch_parent(parent):
    """Ends this section process and the runs it started when the process that started it is gone (a killed
    check leaves no section running on)."""
    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        for pid in list(CHILDREN):
            kill_group(pid)
        os._exit(1)
    threading.Thread(target=watch, daemon=True).start()


def resolve_target(target):
    module, _, name = target.partition(':')
    return getattr(importlib.import_module(module), name)


def section_worker(argv):
    """Worker: ``--_section TARGET OPTIONS_JSON NAME DEADLINE PARENT_PID`` runs ``module:function(ctx)`` and appends
    what it returns to the section's record file; an error becomes a FAILED line."""
    target, options_path, name, deadline, parent = argv
    watch_parent(int(parent))
    with open(options_path) as f:
        ctx = Context(json.load(f), name, float(deadline))
    try:
        if ctx.options.get('device') != 'cpu' and ctx.device.type == 'cuda':
            import torch
            torch.backends.cudnn.benchmark = True
        out = resolve_target(target)(ctx)
        if out:
            ctx.emit(*out)
    except Exception as error:  # noqa: BLE001  (the report names it; the next section still runs)
        traceback.print_exc()
        message = str(error).splitlines()[0] if str(error) else ''
        ctx.emit(['', f'result: FAILED ({type(error).__name__}: {message[:200]})'], ['FAILED'])
    ctx._append({'done': True})
    return 0


class Report:
    """The markdown report: each part printed and appended to ``path`` (flushed to disk) as soon as it is done."""

    def __init__(self, path, stream):
        self.path, self.stream = path, stream
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        open(path, 'w').close()

    def add(self, lines):
        text = '\n'.join(lines) + '\n'
        self.stream.write(text)
        self.stream.flush()
        with open(self.path, 'a') as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def logs_dir(output):
    return os.path.splitext(os.path.abspath(output))[0] + '_logs'


def run_section(name, target, options_path, limit, logs):
    """Runs one section in its own process for at most ``limit`` seconds; returns (lines, results, status)."""
    records, log = os.path.join(logs, f'{name}.jsonl'), os.path.join(logs, f'{name}.log')
    if os.path.exists(records):
        os.remove(records)
    env = dict(os.environ, PYTHONPATH=IMPORT_ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''),
               PYTHONUNBUFFERED='1')
    with open(log, 'w') as out:
        process = subprocess.Popen([sys.executable, *WORKER, '--_section', target, options_path, name,
                                    repr(time.time() + limit), str(os.getpid())], stdout=out,
                                   stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
        try:
            code = process.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            kill_group(process.pid)
            process.wait()
            code = None
    lines, results, current, done = read_records(records)
    lines = lines or [f'## {name}', '']
    if done and code == 0:
        return lines, results, 'failed' if 'FAILED' in results else 'done'
    why = f'timed out after {limit:.0f} s' if code is None else f'ended with exit status {code}'
    where = f' while running {current}' if current else ''
    lines = lines + ['', f'result: FAILED ({name} {why}{where}; log: {os.path.relpath(log, os.path.dirname(logs))})']
    return lines, results + ['FAILED'], 'timed out' if code is None else 'crashed'


def run_report(sections, output, budget_s, options, stream=None, progress=None, min_section_s=MIN_SECTION_S):
    """Runs ``sections`` ((name, 'module:function', share of the budget)) one after another, each in its own
    process, and writes the report to ``output`` as they finish; returns the exit status (1 if anything failed).
    A section's limit is its share of ``budget_s`` plus whatever earlier sections left unused (at least
    ``min_section_s``, at most what is left)."""
    stream = stream or sys.stdout
    progress = progress or sys.stderr
    logs = logs_dir(output)
    os.makedirs(logs, exist_ok=True)
    options_path = os.path.join(logs, 'options.json')
    with open(options_path, 'w') as f:
        json.dump(dict(options, work=logs), f)
    start, end = time.monotonic(), time.time() + budget_s
    report = Report(output, stream)
    report.add(['# pesf_ext GPU check', '',
                f'time budget {budget_s:.0f} s; section logs in {os.path.basename(logs)}/', ''])
    results, total = [], sum(share for _, _, share in sections) or 1
    for i, (name, target, share) in enumerate(sections):
        left = end - time.time()
        later = sum(s for _, _, s in sections[i + 1:])
        limit = min(left, max(left - later / total * budget_s, left * share / (share + later), min_section_s))
        t0 = time.monotonic()
        if left < 1:
            lines, section_results, status = [f'## {name}', '', 'result: skipped (time budget spent)'], ['skipped'], \
                'skipped'
        else:
            lines, section_results, status = run_section(name, target, options_path, limit, logs)
            lines += ['', f'_{time.monotonic() - t0:.0f} s_']
        report.add(lines + [''])
        results += section_results
        print(f'gpu_check: {name} {status} in {time.monotonic() - t0:.0f} s (limit {limit:.0f} s); '
              f'{time.monotonic() - start:.0f} s elapsed, {max(end - time.time(), 0):.0f} s of {budget_s:.0f} s left',
              file=progress, flush=True)
    failed, skipped = results.count('FAILED'), results.count('skipped')
    report.add(['## Summary', '', f'{results.count("passed")} passed, {failed} failed, {skipped} skipped in '
                f'{time.monotonic() - start:.0f} s', '', 'RESULT: ' + ('FAILED' if failed else 'PASSED')])
    return 1 if failed else 0


EPILOG = '''examples:
  pesf-gpu-check                      # one CUDA GPU: under 8 minutes on an H100 (--budget_s 450)
  pesf-gpu-check --device cpu         # tiny sizes, gloo, fp16 autocast on the CPU (a smoke run)
  pesf-gpu-check --torchdistill_repo ~/torchdistill --output gpu_check.md
(in a clone, `python tools/gpu_check.py` takes the same options)'''


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ['--_run_script']:
        return run_script(argv[1:])
    if argv[:1] == ['--_section']:
        return section_worker(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default=None, help='cuda (default when available) or cpu (tiny sizes)')
    parser.add_argument('--torchdistill_repo', default=os.environ.get('TORCHDISTILL_REPO'),
                        help="a clone of torchdistill's repository (its example script is timed side by side)")
    parser.add_argument('--pairs', type=int, default=CPU_KD_PAIRS,
                        help='CPU mode with --torchdistill_repo: pairs of whole-process runs (torchdistill, runner) '
                             f'on Fashion-MNIST KD, fewer when the section time limit is spent (default {CPU_KD_PAIRS})')
    parser.add_argument('--budget_s', type=float, default=DEFAULT_BUDGET_S,
                        help='seconds for the whole run; each section gets a share plus what earlier ones left, '
                             'two-step rows beyond it are skipped and a section past its limit is stopped '
                             f'(default {DEFAULT_BUDGET_S})')
    parser.add_argument('--only', nargs='+', help='two-step checks of these configs only, by label or file stem '
                                                  '(e.g. resnet56_resnet20_kd imagenet/r50_r18_kd)')
    parser.add_argument('--skip', nargs='+', default=[], choices=[name for name, _, _ in SECTIONS[1:]],
                        help='sections to leave out')
    parser.add_argument('--output', default='gpu_check.md',
                        help='the markdown report, written section by section (default gpu_check.md); the '
                             "sections' logs go to <its stem>_logs/")
    args = parser.parse_args(argv)
    sections = [s for s in SECTIONS if s[0] not in args.skip]
    options = {'device': args.device, 'only': args.only, 'torchdistill_repo': args.torchdistill_repo,
               'pairs': args.pairs}
    return run_report(sections, args.output, args.budget_s, options)


if __name__ == '__main__':
    sys.exit(main())
