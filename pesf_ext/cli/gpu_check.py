"""One command that checks the project on a GPU and prints one markdown report (exit status 1 if any check failed;
``pesf-gpu-check``, in a clone also ``python tools/gpu_check.py``).

    python tools/gpu_check.py                    # one CUDA GPU: about 5-8 minutes on an H100/H200
    python tools/gpu_check.py --device cpu       # tiny sizes, gloo, fp16 autocast on the CPU (a CI smoke run)
    python tools/gpu_check.py --torchdistill_repo ~/torchdistill   # also time torchdistill's own example script

Everything runs on random data and random weights (no download): configs are built as the runners build them, with
the datasets swapped for random images or token ids (pesf_ext/engine/synthetic.py) and pretrained weights replaced
by fresh ones. The report's sections:

1. the device;
2. two training steps of every config family (each CIFAR-100 pair's KD and PESF-KD, ImageNet ResNet-50 -> ResNet-18,
   GLUE KD / PESF-KD with a tiny BERT, every CIFAR-100 method on ResNet-56 -> ResNet-20, each stage of multi-stage
   configs), each in fp32, bf16 + channels_last and fp16 with the GradScaler; the pairs, ImageNet and GLUE also
   compiled (``torch.compile``: inductor for ResNet-56 -> ResNet-20 KD, ``aot_eager`` for the others, the same
   tracing of forward and backward with hooks without code generation; on the CPU ``eager``, first config only);
   a row passes when both losses are finite;
3. the README's "Speed switches" throughput table: ResNet-50 -> ResNet-18 KD, PESF-KD, FT-KD and DML on random
   224 x 224 batches, images/s in fp32 and in bf16 + channels_last, timed round-robin in one process
   (tools/benchmark.py's ``measure`` and ``report``);
4. the same KD config through torchdistill's own example script (``examples/torchvision/image_classification.py``,
   not in its wheel: give a clone with --torchdistill_repo) and through this project's runner, side by side;
5. a one-process ``torchrun`` run (NCCL on CUDA, gloo on the CPU) for one epoch, then resumed with ``-resume`` for a
   second one.
"""
import argparse
import contextlib
import glob
import os
import runpy
import subprocess
import sys
import tempfile
import time
import traceback

from .paths import PACKAGE_DIR, configs_dir, tools_dir, work_dir

ROOT = work_dir()  # where the subprocesses run: a clone's root, else the current directory
IMPORT_ROOT = os.path.dirname(PACKAGE_DIR)  # the folder that holds pesf_ext (the clone, or site-packages)
# the runner the torchdistill and torchrun sections start by path: the clone's script, else the package's module file
RUNNER = os.path.join(tools_dir() or os.path.join(PACKAGE_DIR, 'cli'), 'image_classification.py')
WORKER = ['-m', 'pesf_ext.cli.gpu_check']  # this module's ``--_run_script`` worker (-m: its package imports resolve)

VARIANTS = ('fp32', 'bf16+channels_last', 'fp16', 'compile')
CIFAR_PAIRS = ('resnet56_resnet20', 'resnet110_resnet32', 'vgg13_vgg8', 'resnet56_vgg8')
THROUGHPUT_METHODS = ('kd', 'pesfkd', 'ftkd', 'dml')
TORCHDISTILL_SCRIPT = os.path.join('examples', 'torchvision', 'image_classification.py')


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


class Sizes:
    """Batch and input sizes: full on CUDA, tiny on the CPU."""

    def __init__(self, device):
        cpu = device.type == 'cpu'
        self.batch = 2 if cpu else 32
        self.imagenet = 32 if cpu else 224
        self.throughput_size = 32 if cpu else 224
        self.seq_len = 16 if cpu else 64
        self.throughput_batch = 4 if cpu else 128
        self.throughput_steps, self.throughput_rounds, self.warmup = (1, 1, 1) if cpu else (5, 3, 3)


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


def build_box(config, device, sizes, options, tiny_bert):
    """The runner's box of ``config`` (every stage) with the speed ``options``, as tools/benchmark.py builds it."""
    from . import benchmark
    from pesf_ext.engine.models import build_model
    from pesf_ext.engine.runner import build_box as runner_box
    from pesf_ext.engine.speed import apply_speed
    from pesf_ext.engine.synthetic import synthetic_data
    models = config['models']
    if 'model_kwargs' in (models.get('student_model') or {}):
        text_overrides(config, tiny_bert)
        teacher, student = benchmark.build_text_models(config, sizes.batch, device, sizes.seq_len)
    else:
        with synthetic_data():
            teacher = build_model({**models['teacher_model'], 'src_ckpt': None}, device, False,
                                  'models.teacher_model').eval() if 'teacher_model' in models else None
        if teacher is not None:
            calibrate_batch_norm(teacher, sizes.imagenet if 'imagenet' in str(models['teacher_model']) else 32, device)
        student_config = models.get('student_model') or models['model']
        student = build_model({**student_config, 'src_ckpt': None}, device, False, 'models.student_model')
    box = runner_box(teacher, student, config, device, None, False, 1)
    return apply_speed(box, options, device)


def calibrate_batch_norm(model, size, device):
    """BatchNorm statistics of a randomly initialised teacher estimated on one random batch: with the initial ones
    (mean 0, variance 1) a deep random ResNet's features grow through the blocks in eval mode, and losses on them
    (FT's reconstruction) overflow even in fp32, which says nothing about the code."""
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
    from . import benchmark
    from pesf_ext.engine.speed import SpeedOptions
    options = benchmark.variant_options(variant, SpeedOptions())
    if variant == 'compile':
        options = SpeedOptions(compile=('student', 'teacher'), compile_backend='eager' if device.type == 'cpu'
                               else backend)
    return options


def two_steps(path, variant, device, sizes, backend, tiny_bert):
    """[(stage, losses of two steps)] of one config in one variant (a multi-stage config: two steps of each stage,
    the box moving on to the next stage as the runner's does after an epoch); raises on a non-finite loss (the
    runner's step stops there) or any other error."""
    from pesf_ext.engine.config import load_config
    from pesf_ext.engine.loop import TrainStep
    from pesf_ext.engine.synthetic import synthetic_data
    with synthetic_data(num_samples=sizes.batch * 2, imagenet_size=sizes.imagenet):
        config = load_config(path)
    shrink_train(config, sizes)
    options = variant_options(variant, device, backend)
    box = build_box(config, device, sizes, options, tiny_bert)
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


def section_device(device):
    import torch
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
    return lines


def section_steps(device, sizes, budget_s, tiny_bert, only=None):
    """Rows: (config, variant, result, detail)."""
    import torch
    rows, start = [], time.monotonic()
    configs = [c for c in check_configs() if not only or c[0] in only or c[0].split('/')[-1] in only]
    for label, path, backend in configs:
        for variant in VARIANTS:
            if variant == 'compile' and (backend is None or device.type == 'cpu' and label != configs[0][0]):
                continue   # the pairs, ImageNet and GLUE (CPU: dynamo takes ~30 s a config, the first one only)
            if time.monotonic() - start > budget_s:
                rows.append((label, variant, 'skipped', f'time budget of {budget_s:.0f} s spent'))
                continue
            try:
                t0 = time.monotonic()
                results = two_steps(path, variant, device, sizes, backend, tiny_bert)
                detail = '; '.join(f'{stage + ": " if stage else ""}{a:.4g} -> {b:.4g}'
                                   for stage, (a, b), _ in results)
                used = results[0][2].compile_backend if variant == 'compile' else None
                rows.append((label, variant + (f' ({used})' if used else ''), 'passed',
                             f'{detail} ({time.monotonic() - t0:.1f} s)'))
            except Exception as error:  # noqa: BLE001  (every failure is a row of the report)
                message = str(error).splitlines()[0] if str(error) else ''
                rows.append((label, variant, 'FAILED', f'{type(error).__name__}: {message[:200]}'))
                traceback.print_exc(file=sys.stderr)
            finally:
                if device.type == 'cuda':
                    torch.cuda.empty_cache()
    lines = ['## Two training steps of every config family', '',
             f'batch {sizes.batch}, ImageNet {sizes.imagenet} px, GLUE {sizes.seq_len} tokens (a tiny BERT); loss of '
             'step 1 -> step 2 (a multi-stage config: each stage)', '',
             '| config | variant | result | losses |', '|---|---|---|---|']
    lines += [f'| {c} | {v} | {r} | {d} |' for c, v, r, d in rows]
    return lines, [r for _, _, r, _ in rows]


@contextlib.contextmanager
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

    benchmark.build = build
    try:
        yield
    finally:
        benchmark.build = original


def section_throughput(device, sizes):
    from . import benchmark
    from pesf_ext.engine.speed import SpeedOptions
    configs = [os.path.join(configs_dir(), 'imagenet', f'r50_r18_{m}.yaml') for m in THROUGHPUT_METHODS]
    variants = [(v, benchmark.variant_options(v, SpeedOptions())) for v in ('fp32', 'bf16+channels_last')]
    lines = ['## Throughput: ResNet-50 -> ResNet-18 on random images (README "Speed switches")', '',
             f'{sizes.throughput_size} x {sizes.throughput_size} images, batch {sizes.throughput_batch}', '']
    try:
        with calibrated_teachers(benchmark, sizes.throughput_size, device):
            entries = benchmark.measure(configs, sizes.throughput_batch, sizes.throughput_steps, sizes.warmup,
                                        sizes.throughput_rounds, device, sizes.throughput_size, variants=variants)
        lines.append(benchmark.report(entries, device, sizes.throughput_batch))
        by_name = {e['name']: e for e in entries}
        import statistics
        lines += ['', '| method | fp32 images/s | bf16 + channels_last images/s | speed-up |', '|---|---|---|---|']
        for method in THROUGHPUT_METHODS:
            name = f'r50_r18_{method}.yaml'
            fp32, amp = (statistics.median(by_name[f'{name} [{v}]']['times']) for v, _ in variants)
            lines.append(f'| {method} | {sizes.throughput_batch / fp32:.0f} | {sizes.throughput_batch / amp:.0f} | '
                         f'{fp32 / amp:.2f}x |')
        return lines + ['', 'result: passed'], ['passed']
    except Exception as error:  # noqa: BLE001
        traceback.print_exc(file=sys.stderr)
        return lines + [f'result: FAILED ({type(error).__name__}: {str(error)[:200]})'], ['FAILED']


def run_script(argv):
    """Worker: ``--_run_script SCRIPT NUM_SAMPLES [args...]`` runs SCRIPT as __main__ on random data."""
    from pesf_ext.engine.synthetic import synthetic_data
    script, num_samples, rest = argv[0], int(argv[1]), argv[2:]
    sys.argv = [script] + rest
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    with synthetic_data(num_samples=num_samples):
        runpy.run_path(script, run_name='__main__')


def subprocess_run(args, log_path, env_extra=None, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS='1',
               PYTHONPATH=IMPORT_ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''), **(env_extra or {}))
    start = time.monotonic()
    with open(log_path, 'w') as log:
        code = subprocess.run(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, timeout=timeout).returncode
    return code, time.monotonic() - start


def tail(path, lines=3):
    with open(path) as f:
        return ' / '.join(line.strip() for line in f.read().strip().splitlines()[-lines:])[-300:]


def kd_config_args(work, device, epochs, sizes):
    dst = os.path.join(work, 'ckpt', 'kd.pt')
    return ['--config', cifar('resnet56_resnet20_kd'), '--device', device.type, '--seed', '0',
            '--set', f'train.num_epochs={epochs}', f'models.student_model.dst_ckpt={dst}',
            'models.teacher_model.src_ckpt=null',   # a random teacher
            f'train.train_data_loader.kwargs.batch_size={sizes.batch}', 'train.train_data_loader.kwargs.num_workers=0',
            'train.val_data_loader.kwargs.num_workers=0', 'test.test_data_loader.kwargs.num_workers=0']


def section_torchdistill(device, sizes, work, repo):
    lines = ["## The same KD config through torchdistill's own example script", '']
    script = os.path.join(os.path.expanduser(repo), TORCHDISTILL_SCRIPT) if repo else None
    if not script or not os.path.isfile(script):
        where = script or f'<clone>/{TORCHDISTILL_SCRIPT}'
        lines.append(f"result: skipped: torchdistill's {TORCHDISTILL_SCRIPT} not found ({where}; the torchdistill "
                     'wheel does not ship its examples). Get it with `git clone https://github.com/yoshitomo-matsubara/'
                     'torchdistill` and pass `--torchdistill_repo <the clone>`.')
        return lines, ['skipped']
    num_samples = sizes.batch * 4
    results = {}
    runs = {'torchdistill example': [script, '--config', cifar('resnet56_resnet20_kd'), '--device', device.type,
                                     '--run_log', os.path.join(work, 'td.log')],
            'pesf_ext runner': [RUNNER]
            + kd_config_args(work, device, 1, sizes)}
    for name, argv in runs.items():
        log = os.path.join(work, name.replace(' ', '_') + '.out')
        code, seconds = subprocess_run([sys.executable, *WORKER, '--_run_script', argv[0],
                                        str(num_samples)] + argv[1:], log)
        results[name] = (code, seconds, log)
    lines += [f'one epoch of {num_samples} random CIFAR-100 images, resnet56_resnet20_kd.yaml, wall seconds including '
              'start-up and evaluation', '', '| script | exit | seconds | last lines |', '|---|---|---|---|']
    lines += [f'| {name} | {code} | {seconds:.1f} | {tail(log)} |' for name, (code, seconds, log) in results.items()]
    ok = all(code == 0 for code, _, _ in results.values())
    return lines + ['', f'result: {"passed" if ok else "FAILED"}'], ['passed' if ok else 'FAILED']


def section_torchrun(device, sizes, work):
    backend = 'NCCL' if device.type == 'cuda' else 'gloo'
    lines = [f'## torchrun, 1 process ({backend}), then -resume', '']
    num_samples = sizes.batch * 4
    base = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=1',
            *WORKER, '--_run_script', RUNNER,
            str(num_samples)]
    rows, ok = [], True
    for epochs, extra in ((1, []), (2, ['-resume'])):
        log = os.path.join(work, f'torchrun_{epochs}.out')
        summary = os.path.join(work, f'summary_{epochs}.json')
        code, seconds = subprocess_run(base + kd_config_args(work, device, epochs, sizes) + extra
                                       + ['--summary_json', summary], log)
        text = open(log).read()
        resumed = '-resume' not in extra or 'Resumed from' in text
        ok = ok and code == 0 and resumed
        rows.append(f'| {" ".join(["epochs " + str(epochs)] + extra)} | {code} | {seconds:.1f} | '
                    f'{"yes" if extra and resumed else ("n/a" if not extra else "NO")} | {tail(log)} |')
    lines += ['| run | exit | seconds | resumed | last lines |', '|---|---|---|---|---|'] + rows
    return lines + ['', f'result: {"passed" if ok else "FAILED"}'], ['passed' if ok else 'FAILED']


EPILOG = '''examples:
  pesf-gpu-check                      # one CUDA GPU: about 5-8 minutes on an H100/H200
  pesf-gpu-check --device cpu         # tiny sizes, gloo, fp16 autocast on the CPU (a smoke run)
  pesf-gpu-check --torchdistill_repo ~/torchdistill --output gpu_check.md
(in a clone, `python tools/gpu_check.py` takes the same options)'''


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ['--_run_script']:
        return run_script(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default=None, help='cuda (default when available) or cpu (tiny sizes)')
    parser.add_argument('--torchdistill_repo', default=os.environ.get('TORCHDISTILL_REPO'),
                        help="a clone of torchdistill's repository (its example script is timed side by side)")
    parser.add_argument('--budget_s', type=float, default=300,
                        help='seconds for the two-step section; rows after it are reported as skipped')
    parser.add_argument('--only', nargs='+', help='two-step checks of these configs only, by label or file stem '
                                                  '(e.g. resnet56_resnet20_kd imagenet/r50_r18_kd)')
    parser.add_argument('--skip', nargs='+', default=[], choices=('steps', 'throughput', 'torchdistill', 'torchrun'),
                        help='sections to leave out')
    parser.add_argument('--output', help='also write the report to this file')
    args = parser.parse_args(argv)
    import torch
    from pesf_ext.engine.distributed import resolve_device
    import pesf_ext  # noqa: F401,E402  (registers losses, models, processes)
    device = resolve_device(args.device)
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
    sizes = Sizes(device)
    start = time.monotonic()
    lines, results = ['# pesf_ext GPU check', ''], []
    with tempfile.TemporaryDirectory() as work:
        tiny_bert = write_tiny_bert(os.path.join(work, 'tiny_bert'))
        sections = [('device', lambda: (section_device(device), []))]
        if 'steps' not in args.skip:
            sections.append(('steps', lambda: section_steps(device, sizes, args.budget_s, tiny_bert, args.only)))
        if 'throughput' not in args.skip:
            sections.append(('throughput', lambda: section_throughput(device, sizes)))
        if 'torchdistill' not in args.skip:
            sections.append(('torchdistill', lambda: section_torchdistill(device, sizes, work, args.torchdistill_repo)))
        if 'torchrun' not in args.skip:
            sections.append(('torchrun', lambda: section_torchrun(device, sizes, work)))
        for name, section in sections:
            t0 = time.monotonic()
            section_lines, section_results = section()
            lines += section_lines + ['', f'_{time.monotonic() - t0:.0f} s_', '']
            results += section_results
    failed, skipped = results.count('FAILED'), results.count('skipped')
    lines += ['## Summary', '', f'{results.count("passed")} passed, {failed} failed, {skipped} skipped in '
              f'{time.monotonic() - start:.0f} s', '', 'RESULT: ' + ('FAILED' if failed else 'PASSED')]
    report = '\n'.join(lines)
    print(report)
    if args.output:
        with open(args.output, 'w') as f:
            f.write(report + '\n')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
