"""The text-classification (GLUE) runner: the image runner's engine with Hugging Face models, tokenized GLUE data,
padding collation and GLUE metrics. ``tools/text_classification.py`` is its command line."""
import copy
import logging
import math

from torchdistill.datasets.registry import register_collate_func

from ..data.glue import build_glue_datasets, glue_task, resolve_files
from ..engine.errors import ConfigError
from ..engine.runner import Evaluation, get_args, run
from .glue_metrics import glue_metrics
from .models import build_text_model, load_tokenizer
from . import register_hf_schedulers

logger = logging.getLogger(__name__)
MODEL_NAMES = ('teacher_model', 'student_model', 'model')


def get_text_args(argv=None):
    parser_args = get_args(argv, description='Knowledge distillation for GLUE text classification',
                           extra=add_text_arguments)
    return parser_args


def add_text_arguments(parser):
    parser.add_argument('--data_dir', help="folder holding the GLUE task folders (e.g. RTE/train.tsv); overrides "
                                           'datasets.glue.raw_data_kwargs.data_dir')
    parser.add_argument('--teacher_model', help='teacher model name or local directory; overrides the '
                                                "pretrained_model_name_or_path of the teacher's config/tokenizer/model")
    parser.add_argument('--student_model', help='student model name or local directory (same, for the student)')
    parser.add_argument('--cache_dir', help='cache folder of the datasets library (tokenized data is cached there)')


def glue_spec(config):
    """The one GLUE entry of ``datasets`` (torchdistill's GLUE example schema), with its YAML key."""
    entries = [(name, spec) for name, spec in (config.get('datasets') or {}).items()
               if isinstance(spec, dict) and 'dataset_id_map' in spec]
    if len(entries) != 1:
        raise ConfigError('datasets: expected one GLUE entry with name, raw_data_kwargs and dataset_id_map '
                          f'(found {len(entries)})')
    return entries[0]


def set_model_path(model_config, path):
    for key in ('config_kwargs', 'tokenizer_kwargs', 'model_kwargs'):
        model_config.setdefault(key, {})['pretrained_model_name_or_path'] = path


def apply_command_line(config, args):
    """--data_dir, --teacher_model and --student_model replace the YAML's values (nothing else is touched)."""
    name, spec = glue_spec(config)
    if args.data_dir:
        raw = spec.setdefault('raw_data_kwargs', {}) or {}
        raw.update(data_dir=args.data_dir, train_file_path=None, valid_file_path=None)
        spec['raw_data_kwargs'] = raw
    models = config.get('models') or {}
    if args.teacher_model and 'teacher_model' in models:
        set_model_path(models['teacher_model'], args.teacher_model)
    if args.student_model:
        set_model_path(models.get('student_model') or models['model'], args.student_model)
    return config


def set_num_training_steps(train_config, num_samples, world_size):
    """Fills ``scheduler.kwargs.num_training_steps`` (Hugging Face schedules need it) from the data size."""
    scheduler = train_config.get('scheduler') or {}
    kwargs = scheduler.get('kwargs')
    if kwargs is None or 'num_training_steps' not in kwargs or kwargs['num_training_steps']:
        return
    loader = train_config['train_data_loader']['kwargs']
    accumulation = (train_config.get('optimizer') or {}).get('grad_accum_step', 1)
    steps = math.ceil(num_samples / loader['batch_size'] / world_size / accumulation)
    kwargs['num_training_steps'] = steps * train_config['num_epochs']


class GlueData:
    """The GLUE entry of a run: checked once the command line's overrides are applied and before the models are
    built (:meth:`check`, the runner's ``prepare_config``), tokenized once they are (``prepare_data``)."""

    def __init__(self, cache_dir=None, split_seed=0):
        self.cache_dir, self.split_seed = cache_dir, split_seed
        self.key = self.spec = self.task = self.student_config = None

    def check(self, config):
        self.key, self.spec = glue_spec(config)
        self.task = glue_task(self.spec.get('name'), f'datasets.{self.key}.name')
        resolve_files(self.spec, f'datasets.{self.key}')  # missing files stop the run now
        self.student_config = (config['models'].get('student_model') or config['models'].get('model'))
        # the ids the loaders refer to, so that the YAML checks can run before tokenization
        config['datasets'] = {dataset_id: None for dataset_id in self.spec['dataset_id_map'].values()}

    def __call__(self, config, distributed, world_size):
        from transformers import DataCollatorWithPadding
        tokenizer = load_tokenizer(self.student_config)
        register_collate_func(DataCollatorWithPadding(tokenizer))
        config['datasets'] = build_glue_datasets(self.spec, tokenizer, self.split_seed, self.cache_dir)
        train = config.get('train') or {}
        stages = [v for k, v in train.items() if k.startswith('stage')] or ([train] if train else [])
        for stage in stages:
            dataset_id = stage['train_data_loader']['dataset_id']
            set_num_training_steps(stage, len(config['datasets'][dataset_id]), world_size)
        for dataset_id, dataset in config['datasets'].items():
            logger.info('%s: %d examples', dataset_id, len(dataset))

    def evaluation(self):
        """The task's metrics (known once :meth:`check` has run) and 'score', their mean, to pick the best model."""
        return Evaluation(metric_fn=lambda logits, labels: glue_metrics(logits, labels, self.task.metrics),
                          score_key='score')


def run_text(args, config=None):
    """Loads (or takes) the YAML, applies the command line, and runs it through :func:`pesf_ext.engine.runner.run`."""
    from ..engine.config import load_config
    register_hf_schedulers()
    config = copy.deepcopy(config) if config is not None else load_config(args.config)
    apply_command_line(config, args)
    data = GlueData(cache_dir=args.cache_dir)
    return run(args, build_text_model, default_log_freq=50, config=config, evaluation=data.evaluation(),
               prepare_config=data.check, prepare_data=data)


__all__ = ['get_text_args', 'run_text', 'GlueData', 'apply_command_line']
