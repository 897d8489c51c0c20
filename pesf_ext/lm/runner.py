"""The causal-LM runner: the image/GLUE runners' engine (``pesf_ext.engine.runner.run``: YAML checks, torchrun,
``-resume``, ``-test_only``, ``--set``, speed switches, progress bar) with Hugging Face causal LMs, tokenized text or
instruction data, token-level metrics and, for PESF-KD with LoRA, the trained teacher adapter saved as a PEFT
directory. ``tools/causal_lm.py`` is its command line."""
import copy
import json
import logging
import os
import resource

import torch
from torchdistill.datasets.registry import register_collate_func

from ..engine.config import criterion_terms, load_config
from ..engine.distributed import is_main_process
from ..engine.errors import ConfigError
from ..engine.runner import Evaluation, get_args, run
from ..losses.divergences import TokenKDLoss
from ..nlp import register_hf_schedulers
from ..nlp.runner import set_num_training_steps
from .data import CausalLMCollator, build_lm_datasets, lm_spec
from .lora import LoRATeacher
from .metrics import evaluate_lm, generation_rouge_l
from .models import build_causal_lm, check_shared_tokenizer

logger = logging.getLogger(__name__)
LM_EVALUATION = Evaluation(score_key='score', evaluate_fn=evaluate_lm)
ADAPTER_WRAPPERS = ('LoRATeacher', 'AdapterTeacher')


def get_lm_args(argv=None):
    return get_args(argv, description='Knowledge distillation for causal language models', extra=add_lm_arguments)


def add_lm_arguments(parser):
    parser.add_argument('--teacher_model', help='teacher model name or local directory; replaces the '
                                                "pretrained_model_name_or_path of the teacher's config/tokenizer/model")
    parser.add_argument('--student_model', help='student model name or local directory (same, for the student)')
    parser.add_argument('--cache_dir', help='cache folder of the datasets library (tokenized data is cached there)')
    parser.add_argument('--rouge_samples', type=int, help='instruction data: ROUGE-L of greedy generations on this '
                                                          'many test prompts (default: the YAML test.rouge_samples, '
                                                          'else 0)')
    parser.add_argument('--max_new_tokens', type=int, default=128, help='generation length for ROUGE-L')


def set_model_path(model_config, path):
    """A pretrained model replaces the YAML's: its directory gives the architecture (config_kwargs are only the path;
    sizes written for a model built from its config would not fit the weights), tokenizer and weights."""
    model_config['config_kwargs'] = {'pretrained_model_name_or_path': path}
    for key in ('tokenizer_kwargs', 'model_kwargs'):
        model_config[key] = {**(model_config.get(key) or {}), 'pretrained_model_name_or_path': path}


def apply_command_line(config, args):
    models = config.get('models') or {}
    if args.teacher_model and 'teacher_model' in models:
        set_model_path(models['teacher_model'], args.teacher_model)
    if args.student_model:
        set_model_path(models.get('student_model') or models['model'], args.student_model)
    return config


def token_kd_terms(config):
    """(YAML key, kwargs) of every ``TokenKDLoss`` term of the training criteria."""
    train = config.get('train') or {}
    stages = [(f'train.{k}', v) for k, v in train.items() if k.startswith('stage')] or [('train', train)]
    found = []
    for prefix, stage in stages:
        if stage.get('criterion'):
            for term_key, loss_key, kwargs, _ in criterion_terms(stage['criterion'], f'{prefix}.criterion'):
                if loss_key == 'TokenKDLoss':
                    found.append((term_key, kwargs if kwargs is not None else {}, stage))
    return found


def check_teacher_side(config):
    """The teacher set-up must match each ``TokenKDLoss``'s ``teacher_update`` (one line naming the key if not)."""
    for term_key, kwargs, stage in token_kd_terms(config):
        try:  # the loss's own argument checks, now rather than after tokenization, with the YAML key
            TokenKDLoss(**copy.deepcopy(kwargs))
        except (ValueError, TypeError) as error:
            raise ConfigError(f'{term_key}.criterion.kwargs: {error}') from error
        update = kwargs.get('teacher_update', 'frozen')
        teacher = stage.get('teacher') or {}
        wrapper = (teacher.get('auxiliary_model_wrapper') or {}).get('key')
        prefix = term_key.split('.criterion')[0]  # 'train' or 'train.stageN'
        if update != 'frozen' and teacher.get('requires_grad', True) is False:
            raise ConfigError(f'{prefix}.teacher.requires_grad: teacher_update {update!r} trains the teacher side; '
                              'set it to True')
        if update == 'adapters' and wrapper not in ADAPTER_WRAPPERS:
            raise ConfigError(f"{prefix}.teacher.auxiliary_model_wrapper: teacher_update 'adapters' (PESF-KD) needs "
                              f"adapters on the teacher (key: 'LoRATeacher'), got {wrapper!r}")
        if update == 'full' and wrapper in ADAPTER_WRAPPERS:
            raise ConfigError(f"{prefix}.teacher.auxiliary_model_wrapper: teacher_update 'full' (FT-KD) trains the "
                              f'whole teacher; remove the {wrapper} wrapper')


class LMData:
    """The causal-LM entry of a run: checked before the models are built (:meth:`check`), tokenized after
    (``__call__``) with the student's tokenizer once teacher and student are known to share it."""

    def __init__(self, cache_dir=None):
        self.cache_dir = cache_dir
        self.key = self.spec = self.tokenizer = self.datasets = None
        self.teacher_config = self.student_config = None

    def check(self, config):
        self.key, self.spec = lm_spec(config)
        models = config['models']
        self.teacher_config = models.get('teacher_model')
        self.student_config = models.get('student_model') or models.get('model')
        check_teacher_side(config)
        config['datasets'] = {dataset_id: None for dataset_id in self.spec['dataset_id_map'].values()}

    def __call__(self, config, distributed, world_size):
        self.tokenizer = check_shared_tokenizer(self.teacher_config, self.student_config)
        register_collate_func(CausalLMCollator(self.tokenizer))
        self.datasets = build_lm_datasets(self.spec, self.key, self.tokenizer, self.cache_dir)
        config['datasets'] = dict(self.datasets)
        train = config.get('train') or {}
        stages = [v for k, v in train.items() if k.startswith('stage')] or ([train] if train else [])
        for stage in stages:
            num_samples = len(self.datasets[stage['train_data_loader']['dataset_id']])
            set_num_training_steps(stage, num_samples, world_size)
        for dataset_id, dataset in self.datasets.items():
            logger.info('%s: %d sequences', dataset_id, len(dataset))

    def mean_train_tokens(self, dataset_id, limit=2000):
        data = self.datasets[dataset_id]
        n = min(len(data), limit)
        return sum(len(ids) for ids in data.select(range(n))['input_ids']) / max(n, 1)


def peak_memory_mib(device):
    """Peak memory of this process: CUDA allocator peak on a GPU, else the peak resident set size (MiB)."""
    if str(device).startswith('cuda') and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def format_lm_summary(results):
    test, lm = results['test'], results['lm']
    models = [name for name in ('teacher', 'student') if name in test]
    rouge = lm.get('rouge_l', {})
    lines = ['', f'{"model":<10}{"perplexity":>12}{"top-1 %":>10}' + (f'{"ROUGE-L":>10}' if rouge else '') +
             f'{"trainable params":>20}{"total params":>16}']
    for name in models:
        trainable, total = results['counts'].get(name, (0, 0))
        lines.append(f'{name:<10}{test[name]["perplexity"]:>12.3f}{test[name]["top1"]:>10.2f}' +
                     (f'{rouge.get(name, float("nan")):>10.2f}' if rouge else '') + f'{trainable:>20,}{total:>16,}')
    if 'agreement' in test:
        lines.append(f'teacher-student on {test["tokens"]:,} held-out tokens: top-1 agreement {test["agreement"]:.2f}%, '
                     f'KL(p_t || p_s) {test["kl"]:.4f}, sharpness gap S(z_t) - S(z_s) {test["sharpness_gap"]:.4f}')
    if lm.get('tokens_per_second') is not None:
        lines.append(f'training: {lm["tokens_per_second"]:,.0f} tokens/s ({results["seconds_per_step"]:.4f} s/step), '
                     f'peak memory {lm["peak_memory_mib"]:,.0f} MiB ({lm["memory_kind"]})')
    if lm.get('teacher_adapter_dir'):
        lines.append(f'teacher LoRA adapter: {lm["teacher_adapter_dir"]} (PeftModel.from_pretrained(base, dir))')
    return '\n'.join(lines)


def finish(results, args, config, data, device):
    """Adds the LM figures (tokens/s, peak memory, ROUGE-L, teacher adapter directory) to ``results``."""
    models = results.get('_models', {})
    student_config = config['models'].get('student_model') or config['models'].get('model')
    lm = {'peak_memory_mib': peak_memory_mib(device),
          'memory_kind': 'CUDA allocator peak' if str(device).startswith('cuda') else 'process peak RSS'}
    train = config.get('train') or {}
    loader = train.get('train_data_loader')
    if results.get('seconds_per_step') and loader:
        batch = loader['kwargs']['batch_size']
        lm['tokens_per_second'] = batch * data.mean_train_tokens(loader['dataset_id']) / results['seconds_per_step']
    teacher = models.get('teacher')
    if isinstance(teacher, LoRATeacher) and not args.test_only and student_config.get('dst_ckpt'):
        directory = os.path.splitext(student_config['dst_ckpt'])[0] + '_teacher_adapter'
        if is_main_process():
            teacher.save_adapter(directory)
        lm['teacher_adapter_dir'] = directory
    samples = args.rouge_samples if args.rouge_samples is not None else (config.get('test') or {}).get('rouge_samples', 0)
    if samples and data.spec['kind'] == 'instruction':
        test_id = config['test']['test_data_loader']['dataset_id']
        lm['rouge_l'] = {name: generation_rouge_l(model, data.datasets[test_id], data.tokenizer, device, samples,
                                                  args.max_new_tokens) for name, model in models.items()}
    results['lm'] = lm
    if is_main_process():
        logger.info(format_lm_summary(results))
        if args.summary_json:
            with open(args.summary_json, 'w') as f:
                json.dump({k: v for k, v in results.items() if k != '_models'}, f, indent=2, default=str)
    return results


def run_lm(args, config=None):
    """Loads (or takes) the YAML, applies the command line, runs it, and adds the LM summary."""
    register_hf_schedulers()
    config = copy.deepcopy(config) if config is not None else load_config(args.config)
    apply_command_line(config, args)
    data = LMData(cache_dir=args.cache_dir)
    results = run(args, build_causal_lm, default_log_freq=50, config=config, evaluation=LM_EVALUATION,
                  prepare_config=data.check, prepare_data=data)
    model = next(iter(results['_models'].values()))
    device = next(model.parameters()).device
    return finish(results, args, config, data, device)


__all__ = ['get_lm_args', 'run_lm', 'LMData', 'check_teacher_side', 'format_lm_summary']
