"""The experiment driver behind ``tools/image_classification.py`` (and the text runner): one YAML, one run.

It keeps the command line of torchdistill's ``examples/torchvision/image_classification.py`` and its YAML
schema, and adds what long runs need: teacher train/eval modes handled, the adapted teacher evaluated and saved,
atomic checkpoints with ``-resume``, torchrun on CPU (gloo) as well as GPU (NCCL), NaN stops, validation of the
YAML before any data is touched, and a final table with accuracy, sharpness gap, seconds per step and
trainable parameters.
"""
import argparse
import datetime
import json
import logging
import os
import platform
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch.backends import cudnn
from tqdm import tqdm
from torchdistill.common.main_util import set_seed
from torchdistill.core.distillation import get_distillation_box
from torchdistill.core.training import get_training_box
from torchdistill.datasets.util import build_data_loader
from torchdistill.misc.log import set_basic_log_config, setup_log_file
from torchdistill.models.wrapper import build_auxiliary_model_wrapper

from ..adapters.inject import count_parameters
from ..epoch_metrics import PROCESS_NAME, check_options, records_paths
from .checkpoint import checkpoint_paths, load_last, load_teacher_side, save_best, save_last, unwrap
from .cli import validate_args
from .config import argument_error, fill_taid_total_steps, load_config, validate_config, validate_model_paths
from .distributed import (barrier, check_visible_on_all_ranks, get_rank, init_distributed, is_main_process,
                          main_process_first, resolve_device, shard_eval_loader, wrap_box_models)
from .errors import ConfigError
from .files import load_model_checkpoint, reading
from .fsdp import shard_box_models
from .optimizer_groups import prepare_box, take_rest_entries
from .overrides import apply_overrides
from .loop import evaluate, inference_model, train_one_epoch
from .rng import (DataStream, apply_determinism, isolated_stream, seed_distributed_sampler, seed_global_for_rank,
                  set_cublas_workspace)
from .speed import (add_speed_args, apply_loader_switches, apply_speed, buffers_frozen, check_speed_fits,
                    prepare_for_wrapping, speed_options)
from .stages import advance_to_epoch, apply_stage_defaults, is_multi_stage, merge_counts

logger = logging.getLogger(__name__)
DEFAULT_DISTILLATION_PRE_EPOCH_PROCESS = 'distillation_pre_epoch_process'


def get_args(argv=None, description='Knowledge distillation with pesf_ext (torchdistill runner)', extra=None,
             epilog=None):
    """The runners' command line; ``extra(parser)`` adds a runner's own arguments (the text runner's --data_dir);
    ``epilog``: examples printed under --help, line breaks kept."""
    parser = argparse.ArgumentParser(description=description, epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--config', required=True, help='yaml file path')
    parser.add_argument('--device', default=None, help='device (default: cuda when available, else cpu)')
    parser.add_argument('--run_log', help='log file path')
    parser.add_argument('--start_epoch', default=0, type=int, metavar='N', help='start epoch')
    parser.add_argument('--seed', type=int, help='seed in random number generator')
    parser.add_argument('-disable_cudnn_benchmark', action='store_true', help='disable torch.backend.cudnn.benchmark')
    parser.add_argument('-test_only', action='store_true', help='only test the models')
    parser.add_argument('-dry_run', action='store_true',
                        help='check the YAML, the files it names, the models and the optimizer groups, then exit '
                             'without training or testing')
    parser.add_argument('-student_only', action='store_true', help='test the student model only')
    parser.add_argument('-log_config', action='store_true', help='log config')
    parser.add_argument('-resume', action='store_true',
                        help='resume from <dst_ckpt stem>_last.pt (weights, optimizer, scheduler, epoch, RNG states)')
    parser.add_argument('--summary_json', help='also write the final results to this JSON file')
    parser.add_argument('--max_steps_per_epoch', type=int, help='cap on training steps per epoch (smoke runs)')
    parser.add_argument('--world_size', default=1, type=int, help='number of distributed processes')
    parser.add_argument('--dist_url', default='env://', help='url used to set up distributed training')
    parser.add_argument('-adjust_lr', action='store_true',
                        help='multiply learning rate by number of distributed processes (world_size)')
    parser.add_argument('--debug', action='store_true', help='on an error, print the full traceback')
    add_speed_args(parser)
    add_override_argument(parser)
    if extra is not None:
        extra(parser)
    return parser.parse_args(argv)


def add_override_argument(parser):
    """``--set KEY=VALUE ...``: dotted, type-checked overrides of the YAML (:mod:`pesf_ext.engine.overrides`)."""
    parser.add_argument('--set', nargs='+', action='extend', default=[], dest='overrides', metavar='KEY=VALUE',
                        help='override YAML values, e.g. --set train.num_epochs=5 '
                             '(lists by index; +KEY=VALUE adds a key; values read as YAML, type-checked)')


def student_config_of(models_config):
    return models_config['student_model'] if 'student_model' in models_config else models_config['model']


def build_box(teacher, student, config, device, device_ids, distributed, lr_factor):
    train_config = config['train']
    rest_entries = take_rest_entries(train_config)  # module: '*' (pesf_ext's); torchdistill would look '*' up
    try:
        return _build_box(teacher, student, config, device, device_ids, distributed, lr_factor, rest_entries)
    except TypeError as error:  # an argument a loss/wrapper forwarded and its class refused: name the YAML key
        converted = argument_error(error, train_config, 'train')
        if converted is error:
            raise
        raise converted from error


def _build_box(teacher, student, config, device, device_ids, distributed, lr_factor, rest_entries):
    train_config = config['train']
    if teacher is None:
        box = get_training_box(student, config['datasets'], train_config, device, device_ids, distributed, lr_factor)
        return prepare_box(box, train_config, rest_entries)
    if 'stage1' not in train_config:
        train_config.setdefault('pre_epoch_process', DEFAULT_DISTILLATION_PRE_EPOCH_PROCESS)
    else:
        apply_stage_defaults(train_config, DEFAULT_DISTILLATION_PRE_EPOCH_PROCESS)
    box = get_distillation_box(teacher, student, config['datasets'], train_config, device, device_ids,
                               distributed, lr_factor)
    return prepare_box(box, train_config, rest_entries)  # every trainable parameter in an optimizer group


def parameter_counts(box):
    """(trainable, total) parameters of the student and teacher as set up for training (before clean-up)."""
    counts = {'student': count_parameters(unwrap(box.student_model if hasattr(box, 'student_model') else box.model))}
    if getattr(box, 'teacher_model', None) is not None:
        counts['teacher'] = count_parameters(unwrap(box.teacher_model))
    return counts


def cpu_model():
    """The CPU's model name (``/proc/cpuinfo``; else :func:`platform.processor`)."""
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description(device):
    """Where a run ran. Same-seed runs are bit-identical on one machine, not across CPUs or GPUs (their kernels sum
    in different orders), so a table's runs should come from one machine: the summary JSON records it."""
    description = {'cpu': cpu_model(), 'torch': torch.__version__, 'threads': torch.get_num_threads(),
                   'device': str(device)}
    if torch.cuda.is_available() and str(device).startswith('cuda'):
        description['gpu'] = torch.cuda.get_device_name(device)
    return description


def epoch_metrics_kwargs(box, config, args, dst_ckpt):
    """What the runner hands to ``epoch_metrics_post_epoch_process`` when the YAML switches it on (options checked
    against the built models now, before training); {} otherwise."""
    train_config = config['train']
    if train_config.get('post_epoch_process') != PROCESS_NAME:
        if 'epoch_metrics' in train_config:
            raise ConfigError(f'train.epoch_metrics: set `train.post_epoch_process: {PROCESS_NAME}` to use it')
        return {}
    nets = {'student': inference_model(box.student_model if hasattr(box, 'student_model') else box.model)}
    if getattr(box, 'teacher_model', None) is not None:
        nets['teacher'] = inference_model(box.teacher_model)
    options = check_options(train_config.get('epoch_metrics'), nets)
    paths = records_paths(args.run_log, dst_ckpt)
    if is_main_process():
        os.makedirs(os.path.dirname(os.path.abspath(paths[0])), exist_ok=True)
        if not args.resume and os.path.isfile(paths[0]):
            os.remove(paths[0])
    logger.info('Per-epoch metrics on the validation set -> %s', paths[0])
    return {'records_path': paths, 'options': options}


@dataclass(frozen=True)
class Evaluation:
    """How a runner scores models: ``metric_fn(logits, labels) -> {name: value}`` over the whole set (None: top-1 /
    top-5 accuracy, batch by batch) and the key of the validation metric that selects the best student."""
    metric_fn: Optional[Callable] = None
    score_key: str = 'top1'
    evaluate_fn: Optional[Callable] = None  # replaces loop.evaluate, same arguments (the causal-LM runner's)

    def run(self, models, data_loader, device, header, log_freq):
        return (self.evaluate_fn or evaluate)(models, data_loader, device, header, log_freq, self.metric_fn)


IMAGE_EVALUATION = Evaluation()


def setup_box(teacher, student, config, device, device_ids, distributed, lr_factor, speed, seed,
              evaluation=IMAGE_EVALUATION):
    """The training box of ``config`` exactly as :func:`train` uses it: the loaders' switches, the box (its adapters,
    heads and loss modules drawn off the student's streams), per-rank data and global streams, the validation loader
    sharded, channels_last / SyncBatchNorm, FSDP2 / DDP under torchrun, the ``speed`` switches
    (:class:`~pesf_ext.engine.speed.SpeedOptions`) and the RCO schedule of ``train.rco``. tools/gpu_check.py builds
    its boxes here too, so that every config behaves there as in the runner."""
    apply_loader_switches(speed, config)  # persistent_workers, before the box builds its loaders
    with isolated_stream(seed, 'teacher_side'):  # adapters, heads, loss modules: off the student's streams
        box = build_box(teacher, student, config, device, device_ids, distributed, lr_factor)
    # torchrun: each rank its own data and global (dropout) streams, rank 0 the single-process ones; the models
    # above were built identically on every rank
    box.data_stream = DataStream(seed, get_rank())
    seed_global_for_rank(seed, get_rank())
    seed_distributed_sampler(box.train_data_loader, seed)  # the example order follows --seed
    box.val_data_loader, _ = shard_eval_loader(box.val_data_loader)  # each example once (also for epoch metrics)
    if distributed and is_multi_stage(box):
        raise ConfigError('train.stage1: multi-stage training is not supported with torchrun here (each stage '
                          'builds its models anew, unwrapped); run it in one process')
    prepare_for_wrapping(box, speed, device, distributed)  # channels_last, SyncBatchNorm: before DDP
    if distributed:  # speed.fsdp models: FSDP2 (optimizer re-pointed), the others DDP
        shard_box_models(box, speed.fsdp, device, lockstep_evaluation=evaluation.evaluate_fn is not None)
        # a model whose buffers cannot change (an adapted teacher's frozen BatchNorm): no broadcast
        wrap_box_models(box, device_ids, broadcast_buffers=lambda model: not buffers_frozen(model))
    apply_speed(box, speed, device)
    from ..rco import rco_schedule  # pesf_ext.rco imports this package's modules
    schedule = rco_schedule(config['train'], box.num_epochs)
    if schedule is not None:
        box.rco_schedule = schedule
    return box


def train(teacher, student, config, device, device_ids, distributed, world_size, args, evaluation=IMAGE_EVALUATION):
    student_config = student_config_of(config['models'])
    dst_ckpt = student_config['dst_ckpt']
    lr_factor = world_size if distributed and args.adjust_lr else 1
    box = setup_box(teacher, student, config, device, device_ids, distributed, lr_factor,
                    speed_options(config, args), args.seed, evaluation)
    counts = parameter_counts(box)
    for name, (trainable, total) in counts.items():
        logger.info('%s: %s trainable / %s total parameters', name, f'{trainable:,}', f'{total:,}')
    start_epoch, best_value = args.start_epoch, 0.0
    timing = {'steps': 0, 'step_seconds': 0.0}
    if args.resume:
        with reading(checkpoint_paths(dst_ckpt)[2], '-resume'):  # a truncated/mismatched file: one line
            resumed = load_last(box, dst_ckpt, before_load=advance_to_epoch, seed=args.seed,
                                max_steps_per_epoch=args.max_steps_per_epoch)
        if resumed is None:
            logger.info('-resume: no %s yet, starting from scratch', checkpoint_paths(dst_ckpt)[2])
        else:
            start_epoch, best_value, saved_timing = resumed
            timing.update(saved_timing or {})  # the mean step time covers the epochs before the interruption too
    log_freq = config['train'].get('log_freq', 1000)
    student_model = box.student_model if hasattr(box, 'student_model') else box.model
    start_time = time.time()
    epoch_kwargs = epoch_metrics_kwargs(box, config, args, dst_ckpt)
    from ..rco import anchor_epochs, save_anchor  # pesf_ext.rco imports this package's modules
    anchors = anchor_epochs(config['train'], box.num_epochs)
    progress = tqdm(range(start_epoch, box.num_epochs), initial=start_epoch, total=box.num_epochs, unit='epoch',
                    desc='epochs', dynamic_ncols=True, disable=None if is_main_process() else True)  # console only
    for epoch in progress:
        box.pre_epoch_process(epoch=epoch)
        box.train_data_loader = box.data_stream.wrap(box.train_data_loader)
        stats = train_one_epoch(box, device, epoch, log_freq, args.max_steps_per_epoch)
        timing['steps'] += stats['steps']
        timing['step_seconds'] += stats['step_seconds']
        logger.info('Epoch %d: %.4f s/step over %d steps', epoch, stats['seconds_per_step'], stats['steps'])
        val_score = evaluation.run({'student': student_model}, box.val_data_loader, device, 'Validation:',
                                   log_freq)['student'][evaluation.score_key]
        if val_score > best_value or not os.path.isfile(dst_ckpt):
            logger.info('Best validation %s: %.4f -> %.4f; saving %s', evaluation.score_key, best_value, val_score,
                        dst_ckpt)
            best_value = val_score if not os.path.isfile(dst_ckpt) else max(best_value, val_score)
            save_best(box, student_model, best_value, args, dst_ckpt)
        progress.set_postfix({f'val {evaluation.score_key}': f'{val_score:.4g}',
                              's/step': f'{stats["seconds_per_step"]:.3f}'})
        box.post_epoch_process(**epoch_kwargs, **({'epoch': epoch, 'epoch_stats': stats} if epoch_kwargs else {}))
        if is_multi_stage(box):  # the next stage may train other parts
            counts = merge_counts(counts, parameter_counts(box))
        save_last(box, epoch, best_value, args, dst_ckpt, timing)
        if epoch + 1 in anchors and is_main_process():
            save_anchor(student_model, dst_ckpt, epoch + 1)
    barrier()
    logger.info('Training time %s', datetime.timedelta(seconds=int(time.time() - start_time)))
    # torchdistill's clean-up unfreezes every teacher parameter, so decide now whether the teacher side trained
    trained_teacher = box.teacher_model if counts.get('teacher', (0, 0))[0] > 0 else None
    box.clean_modules()
    seconds_per_step = timing['step_seconds'] / max(timing['steps'], 1)
    return {'counts': counts, 'seconds_per_step': seconds_per_step, f'best_val_{evaluation.score_key}': best_value,
            'trained_teacher': trained_teacher}


def teacher_for_test(teacher, config, device, dst_ckpt, trained_teacher):
    """The teacher to report: the adapted/fine-tuned one saved with the best student when its teacher side was
    trained (in this run, or in an earlier one for ``-test_only``), else the teacher as given."""
    if trained_teacher is not None:
        with reading(checkpoint_paths(dst_ckpt)[1], 'models.student_model.dst_ckpt'):
            load_teacher_side(trained_teacher, dst_ckpt)
        return trained_teacher
    candidate = teacher
    teacher_train_config = (config.get('train') or {}).get('teacher') or {}
    if teacher_train_config.get('auxiliary_model_wrapper'):
        candidate = build_auxiliary_model_wrapper(teacher_train_config, teacher_model=teacher, device=device,
                                                  device_ids=None, distributed=False) or teacher
    with reading(checkpoint_paths(dst_ckpt)[1], 'models.student_model.dst_ckpt'):
        return candidate if load_teacher_side(candidate, dst_ckpt) else teacher


def format_summary(results):
    models = [name for name in ('teacher', 'student') if name in results['test']]
    metrics = list(results['test'][models[-1]]) if models else []
    header = ''.join(f'{("top-1" if m == "top1" else "top-5" if m == "top5" else m):>10}' for m in metrics)
    lines = ['', f'{"model":<10}{header}{"trainable params":>20}{"total params":>16}']
    for name in models:
        res, (trainable, total) = results['test'][name], results['counts'].get(name, (0, 0))
        values = ''.join(f'{res.get(m, float("nan")):>10.2f}' for m in metrics)
        lines.append(f'{name:<10}{values}{trainable:>20,}{total:>16,}')
    if 'sharpness_gap' in results['test']:
        lines.append(f'mean sharpness gap S(z_t) - S(z_s) on the test set: {results["test"]["sharpness_gap"]:.4f}')
    if results.get('seconds_per_step') is not None:
        lines.append(f'mean seconds per training step: {results["seconds_per_step"]:.4f}')
    return '\n'.join(lines)


def run(args, build_model, default_log_freq=1000, config=None, evaluation=IMAGE_EVALUATION, prepare_config=None,
        prepare_data=None, after_test=None):
    """Runs one YAML: validate, build, train (unless ``-test_only``), test, summarise. Returns the results dict.

    ``config`` (an already loaded YAML dict) replaces reading ``args.config``; tests use it to shrink a run.
    ``evaluation`` says how models are scored (:class:`Evaluation`). ``prepare_config(config)``, when given, is
    called once the ``--set`` overrides are applied, before the checks (the text runner checks its GLUE entry
    there). ``prepare_data(config, distributed,
    world_size)``, when given, is called once the models are built and fills ``config['datasets']`` (the text
    runner tokenizes there, with the student's tokenizer). ``after_test(results)``, when given, runs on every rank
    once the models are tested, while the process group still exists (the causal-LM runner's ROUGE-L generations
    are split over ranks there), and returns the results.
    """
    set_basic_log_config()
    validate_args(args)
    device = resolve_device(args.device)
    if getattr(args, 'deterministic', None):
        set_cublas_workspace()  # before CUDA starts (the YAML's speed.deterministic sets it before any CUDA op)
    distributed, world_size, device_ids, device = init_distributed(device, args.world_size, args.dist_url)
    if is_main_process() and args.run_log:
        setup_log_file(os.path.expanduser(args.run_log))
    logger.info(args)
    cudnn.benchmark = not args.disable_cudnn_benchmark
    config = load_config(args.config) if config is None else config
    for key, old, new in apply_overrides(config, getattr(args, 'overrides', None)):
        logger.info('--set %s: %r -> %r', key, old, new)
    if prepare_config is not None:
        prepare_config(config)
    validate_config(config, needs_training=not args.test_only)
    check_speed_fits(speed_options(config, args), config)
    if speed_options(config, args).deterministic:
        apply_determinism()
        logger.info('deterministic algorithms on, cudnn.benchmark off, CUBLAS_WORKSPACE_CONFIG=%s',
                    os.environ['CUBLAS_WORKSPACE_CONFIG'])
    if args.log_config:
        logger.info(config)
    set_seed(args.seed)
    models_config = config['models']
    teacher_config = models_config.get('teacher_model')
    teacher = build_model(teacher_config, device, distributed, 'models.teacher_model') if teacher_config else None
    if teacher is not None:
        teacher.eval()
    student_config = student_config_of(models_config)
    student_key = 'models.student_model' if 'student_model' in models_config else 'models.model'
    with isolated_stream(args.seed, 'student'):  # same initialisation whatever the teacher side draws
        student = build_model(student_config, device, distributed, student_key)
    validate_model_paths(config, teacher, student)
    if prepare_data is not None:
        with main_process_first(local=True):  # each node's local rank 0 tokenizes/downloads, the others read its cache
            prepare_data(config, distributed, world_size)
    fill_taid_total_steps(config, world_size, args.max_steps_per_epoch)
    results = {'config': args.config, 'seed': args.seed, 'seconds_per_step': None, 'counts': {},
               'machine': machine_description(device)}
    trained_teacher = None
    if getattr(args, 'dry_run', False):  # everything a run reads is read and checked; nothing is trained or written
        if not args.test_only:
            build_box(teacher, student, config, device, device_ids, distributed, 1)
        elif student_config.get('dst_ckpt') and os.path.isfile(student_config['dst_ckpt']):
            load_model_checkpoint(student_config['dst_ckpt'], unwrap(student), f'{student_key}.dst_ckpt')
        logger.info('-dry_run: %s checked (YAML, files, models, optimizer groups); nothing trained', args.config)
        return results
    if not args.test_only:
        train_results = train(teacher, student, config, device, device_ids, distributed, world_size, args,
                              evaluation)
        trained_teacher = train_results.pop('trained_teacher')
        results.update(train_results)
    dst_ckpt = student_config.get('dst_ckpt')
    if dst_ckpt and check_visible_on_all_ranks(dst_ckpt, f'{student_key}.dst_ckpt'):  # rank 0 wrote it: all read it
        load_model_checkpoint(dst_ckpt, unwrap(student), f'{student_key}.dst_ckpt')
    test_config = config['test']['test_data_loader']
    test_loader = build_data_loader(config['datasets'][test_config['dataset_id']], test_config, distributed)
    cudnn.benchmark, cudnn.deterministic = False, True
    models = {'student': student}
    if teacher is not None and not args.student_only:
        models = {'teacher': teacher_for_test(teacher, config, device, dst_ckpt, trained_teacher), **models}
        if not results['counts']:
            results['counts'] = {'teacher': count_parameters(unwrap(models['teacher']))}
    results['counts'].setdefault('student', count_parameters(unwrap(student)))
    results['test'] = evaluation.run(models, test_loader, device, 'Test:',
                                     config['test'].get('log_freq', default_log_freq))
    if is_main_process():
        logger.info(format_summary(results))
        if args.summary_json:
            os.makedirs(os.path.dirname(os.path.abspath(args.summary_json)), exist_ok=True)
            with open(args.summary_json, 'w') as f:
                json.dump(results, f, indent=2, default=str)
    results['_models'] = models  # the evaluated networks, for callers that inspect them (not written to JSON)
    if after_test is not None:
        results = after_test(results)
    if distributed:
        torch.distributed.destroy_process_group()
    return results
