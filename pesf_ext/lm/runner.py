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

from ..engine.checkpoint import unwrap
from ..engine.config import criterion_terms, fill_vocab_size, load_config
from ..engine.distributed import is_main_process
from ..engine.errors import ConfigError
from ..engine.fsdp import full_state_dict, is_sharded
from ..engine.runner import Evaluation, get_args, run
from ..engine.speed import speed_options
from ..losses.divergences import TokenKDLoss
from ..nlp import register_hf_schedulers
from ..nlp.runner import set_num_training_steps
from .data import CausalLMCollator, build_lm_datasets, lm_spec
from .lora import LoRATeacher
from .metrics import evaluate_lm, generation_rouge_l
from .models import (
    ADAPTER_WRAPPERS, build_causal_lm, check_output_rows, check_shared_tokenizer, describe_precision, export_hf,
    model_roles
)

logger = logging.getLogger(__name__)
LM_EVALUATION = Evaluation(score_key='score', evaluate_fn=evaluate_lm)


def get_lm_args(argv=None):
    return get_args(argv, description='Knowledge distillation for causal language models', extra=add_lm_arguments)


def add_lm_arguments(parser):
    parser.add_argument('--teacher_model', help='teacher model name or local directory; replaces the '
                                                "pretrained_model_name_or_path of the teacher's config/tokenizer/model")
    parser.add_argument('--student_model', help='student model name or local directory (same, for the student)')
    parser.add_argument('--cache_dir', help='cache folder of the datasets library (tokenized data is cached there)')
    from .schema import AtLeast  # a count below its minimum: one 'Config error:' line, exit status 1
    parser.add_argument('--rouge_samples', action=AtLeast, minimum=0,
                        help='instruction data: ROUGE-L of greedy generations on this many test prompts (default: '
                             'the YAML test.rouge_samples, else 0)')
    parser.add_argument('--max_new_tokens', action=AtLeast, minimum=1, default=128,
                        help='generation length for ROUGE-L')


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
    """The teacher set-up must match each ``TokenKDLoss``'s ``teacher_update`` (one line naming the key if not);
    the loss's and the ``LoRATeacher``'s kwargs are checked by name (the nearest one suggested) and value."""
    from ..engine.config import check_arguments
    from ..engine.values import check_value, walk
    from ..losses.divergences import TAIDSchedule
    from .lora import check_lora_kwargs, lora_wrappers
    for yaml_key, _, kwargs in lora_wrappers(config):
        check_lora_kwargs(yaml_key, kwargs)
    for term_key, kwargs, stage in token_kd_terms(config):
        check_arguments(f'{term_key}.criterion.kwargs', TokenKDLoss, kwargs, 'TokenKDLoss')
        for key, name, value in walk(kwargs, f'{term_key}.criterion.kwargs'):  # the YAML range rules, by key
            check_value(key, name, value)
        if isinstance(kwargs.get('taid'), dict):
            check_arguments(f'{term_key}.criterion.kwargs.taid', TAIDSchedule, kwargs['taid'], 'TAIDSchedule')
        try:  # the loss's own argument checks, now rather than after tokenization, with the YAML key
            TokenKDLoss(**copy.deepcopy(kwargs))
        except (ValueError, TypeError) as error:
            raise ConfigError(f'{term_key}.criterion.kwargs: {error}') from error
        update = kwargs.get('teacher_update', 'frozen')
        teacher = stage.get('teacher') or {}
        wrapper = (teacher.get('auxiliary_model_wrapper') or {}).get('key')
        prefix = term_key.split('.criterion')[0]  # 'train' or 'train.stageN'
        if update == 'frozen' and wrapper in ADAPTER_WRAPPERS:
            raise ConfigError(f"{prefix}.teacher.auxiliary_model_wrapper: teacher_update 'frozen' never trains the "
                              f"{wrapper} adapters (they would stay at zero and be saved unchanged); use "
                              f"teacher_update 'adapters' (PESF-KD) or remove the wrapper (KD)")
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
        self.vocabulary = None  # shared_vocabulary(): size V, the end-of-response id, the teacher's own eos
        self.teacher_config = self.student_config = None

    def check(self, config):
        """Before any weights load: the data entry and its local files (:func:`lm_spec`), the teacher side, then
        the models' configs (``config.json`` only): ``max_length`` / ``block_size`` within both contexts and the
        LoRA ``target_modules`` / ``last_layers`` against the architecture."""
        from .lora import check_lora_on_model, lora_wrappers
        from .models import build_config
        from .schema import check_context, check_int
        self.key, self.spec = lm_spec(config)
        models = config.get('models') if isinstance(config.get('models'), dict) else {}
        self.teacher_config = models.get('teacher_model')
        self.student_config = models.get('student_model') or models.get('model')
        check_teacher_side(config)
        rouge_samples = (config.get('test') or {}).get('rouge_samples')
        if rouge_samples is not None:
            check_int('test.rouge_samples', rouge_samples, 0)
        student_key = 'models.student_model' if 'student_model' in models else 'models.model'
        configs = {side: (key, build_config(model_config, key)) for side, key, model_config in (
            ('teacher', 'models.teacher_model', self.teacher_config), ('student', student_key, self.student_config))
            if isinstance(model_config, dict)}
        check_context(self.key, self.spec, configs.values())
        for yaml_key, side, kwargs in lora_wrappers(config):
            if side in configs:
                check_lora_on_model(yaml_key, configs[side][1], kwargs)
        config['datasets'] = {dataset_id: None for dataset_id in self.spec['dataset_id_map'].values()}

    def __call__(self, config, distributed, world_size):
        self.tokenizer, self.vocabulary = check_shared_tokenizer(self.teacher_config, self.student_config)
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


class LMModels:
    """The runner's ``build_model``: each model in the dtype of the part it plays in ``config`` (read when it is
    built, after ``--set``; :func:`~pesf_ext.lm.models.model_roles`), kept by YAML key for the checks that need the
    tokenizer (:meth:`prepare_data`)."""

    def __init__(self, config, data):
        self.config, self.data, self.built = config, data, {}

    def __call__(self, model_config, device, distributed, yaml_key):
        role = model_roles(self.config).get(yaml_key, 'trained')
        self.built[yaml_key] = build_causal_lm(model_config, device, distributed, yaml_key, role)
        return self.built[yaml_key]

    def prepare_data(self, config, distributed, world_size):
        """Tokenizes (:class:`LMData`), then checks every output layer covers the shared tokenizer and fills its
        size V into the ``TokenKDLoss`` terms (``vocab_size``)."""
        self.data(config, distributed, world_size)
        vocab_size = self.data.vocabulary['size']
        check_output_rows(self.built, vocab_size)
        for key in fill_vocab_size(config, vocab_size):
            logger.info('%s.criterion.kwargs.vocab_size: %d (the shared tokenizer)', key, vocab_size)

    def evaluate(self, models, data_loader, device, header='Test:', log_freq=1000, metric_fn=None):
        """:func:`evaluate_lm` over the shared tokenizer's ids."""
        vocabulary = self.data.vocabulary or {}
        return evaluate_lm(models, data_loader, device, header, log_freq, metric_fn, vocab_size=vocabulary.get('size'))


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
    if lm.get('precision'):
        lines.append('precision: ' + ', '.join(f'{name} {kind}' for name, kind in lm['precision'].items()) +
                     (f' (forward under {lm["autocast"]} autocast)' if lm.get('autocast') else ''))
    vocabulary = lm.get('vocabulary')
    if vocabulary:
        line = (f'vocabulary: {vocabulary["size"]:,} shared ids; end of response: id {vocabulary["eos_id"]} '
                f'{vocabulary["eos_token"]!r} (student tokenizer)')
        if vocabulary.get('teacher_eos_id') not in (None, vocabulary['eos_id']):
            line += f'; teacher eos id {vocabulary["teacher_eos_id"]} {vocabulary["teacher_eos_token"]!r} not used'
        lines.append(line)
    if lm.get('teacher_adapter_dir'):
        lines.append(f'teacher LoRA adapter: {lm["teacher_adapter_dir"]} (PeftModel.from_pretrained(base, dir))')
    if lm.get('hf_dir'):
        lines.append(f'student as a Hugging Face model: {lm["hf_dir"]} (AutoModelForCausalLM.from_pretrained(dir))')
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
    amp = speed_options(config, args).amp
    lm['precision'] = {name: describe_precision(unwrap(model)) for name, model in models.items()}
    lm['autocast'] = amp
    if data.vocabulary:
        lm['vocabulary'] = data.vocabulary
    teacher = unwrap(models['teacher']) if 'teacher' in models else None  # torchrun: the DDP wrapper's module
    if isinstance(teacher, LoRATeacher) and not args.test_only and student_config.get('dst_ckpt'):
        directory = os.path.splitext(student_config['dst_ckpt'])[0] + '_teacher_adapter'
        adapter = full_state_dict(teacher.model, trainable_only=True) if is_sharded(teacher) else None  # all ranks
        if is_main_process():
            teacher.save_adapter(directory, state_dict=adapter)
        lm['teacher_adapter_dir'] = directory
    if 'student' in models and not args.test_only and student_config.get('dst_ckpt'):
        directory = os.path.splitext(student_config['dst_ckpt'])[0] + '_hf'
        student = unwrap(models['student'])
        state = full_state_dict(student) if is_sharded(student) else None  # FSDP: every rank gathers, rank 0 gets it
        if is_main_process():  # the best student (the runner loaded dst_ckpt into it)
            export_hf(student, data.tokenizer, directory, state_dict=state)
        lm['hf_dir'] = directory
    samples = args.rouge_samples if args.rouge_samples is not None else (config.get('test') or {}).get('rouge_samples', 0)
    if samples and data.spec['kind'] == 'instruction':
        test_id = config['test']['test_data_loader']['dataset_id']
        batch = config['test']['test_data_loader']['kwargs']['batch_size']  # prompts per generate call
        lm['rouge_l'] = {name: generation_rouge_l(model, data.datasets[test_id], data.tokenizer, device, samples,
                                                  args.max_new_tokens, batch_size=batch)
                         for name, model in models.items()}
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
    builder = LMModels(config, data)

    def after_test(results):  # on every rank, before the process group closes: ROUGE-L generations are split over
        model = next(iter(results['_models'].values()))  # ranks, and only global rank 0 writes the summary
        return finish(results, args, config, data, next(model.parameters()).device)

    # -dry_run returns before testing: checked, nothing trained or evaluated, no models to summarise
    return run(args, builder, default_log_freq=50, config=config,
               evaluation=Evaluation(score_key='score', evaluate_fn=builder.evaluate),
               prepare_config=data.check, prepare_data=builder.prepare_data, after_test=after_test)


__all__ = ['get_lm_args', 'run_lm', 'LMData', 'check_teacher_side', 'format_lm_summary']
