"""The text-classification (GLUE) runner: the image runner's engine with Hugging Face models, tokenized GLUE data,
padding collation and GLUE metrics. ``tools/text_classification.py`` is its command line."""
import copy
import importlib.util
import logging
import math
import sys
import types

from torchdistill.datasets.registry import register_collate_func

from ..data.glue import LabelsKeptCollator, build_glue_datasets, glue_task, resolve_files
from ..engine.errors import ConfigError
from ..engine.runner import Evaluation, get_args, run
from .glue_metrics import glue_metrics
from .models import build_text_model, load_tokenizer
from . import register_hf_schedulers

logger = logging.getLogger(__name__)
MODEL_NAMES = ('teacher_model', 'student_model', 'model')
CRITERION_TARGETS = ('labels', None)
EXAMPLE_PACKAGE = 'custom'   # torchdistill's examples/hf_transformers/custom, named in its GLUE configs' dependencies


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


def loader_dataset_ids(config):
    """The dataset ids the train, validation and test loaders read (of every stage)."""
    train = config.get('train') or {}
    stages = [v for k, v in train.items() if k.startswith('stage') and isinstance(v, dict)] or [train]
    ids = {(stage.get(loader) or {}).get('dataset_id') for stage in stages
           for loader in ('train_data_loader', 'val_data_loader')}
    ids.add(((config.get('test') or {}).get('test_data_loader') or {}).get('dataset_id'))
    return ids - {None}


def glue_spec(config):
    """The GLUE entry of ``datasets`` (torchdistill's GLUE example schema) the loaders read, with its YAML key.
    Entries no loader reads (MNLI's ``glue_ax``, read only by torchdistill's ``private`` leaderboard predictions)
    are left out."""
    entries = [(name, spec) for name, spec in (config.get('datasets') or {}).items()
               if isinstance(spec, dict) and 'dataset_id_map' in spec]
    if len(entries) > 1:
        used = loader_dataset_ids(config)
        entries = [(name, spec) for name, spec in entries
                   if used & set((spec.get('dataset_id_map') or {}).values())]
    if len(entries) != 1:
        raise ConfigError('datasets: expected one GLUE entry with name, raw_data_kwargs and dataset_id_map '
                          f'that the loaders read (found {len(entries)})')
    return entries[0]


def stand_in_for_example_package():
    """torchdistill's GLUE configs list ``dependencies: [{name: 'custom'}]``, the package beside its example scripts
    (not in its wheel). What they take from it is registered by :mod:`pesf_ext.nlp`, so when no ``custom`` module
    can be imported an empty one stands in for it and the config loads unchanged. When the real package is
    importable (its folder on ``PYTHONPATH``), its ``forward_batch_as_kwargs`` (``model(**batch)``) and
    ``extract_transformers_loss`` take the place of this project's; both work, since the collated batch keeps its
    labels (:class:`pesf_ext.data.glue.LabelsKeptCollator`)."""
    if EXAMPLE_PACKAGE in sys.modules or importlib.util.find_spec(EXAMPLE_PACKAGE) is not None:
        return
    sys.modules[EXAMPLE_PACKAGE] = types.ModuleType(EXAMPLE_PACKAGE, 'stand-in for torchdistill\'s example package')
    logger.info("dependencies: `%s` (torchdistill's examples/hf_transformers/custom) is not installed; pesf_ext.nlp "
                'registers what its GLUE configs use from it', EXAMPLE_PACKAGE)


def apply_criterion_targets(config):
    """``train.criterion_targets`` (also per stage): 'labels' passes the batch's labels to the criterion as its
    targets (this project's GLUE configs: their CE terms need them); null or absent, torchdistill's GLUE script's
    behaviour: the criterion gets no targets (``KDLoss`` is then the soft KL alone, unscaled) and the labels reach
    the model only, whose own loss a ``model_term`` adds. The labels go to the model in both cases."""
    train = config.get('train') or {}
    default = train.pop('criterion_targets', None)
    stages = [(f'train.{k}', v) for k, v in train.items() if k.startswith('stage') and isinstance(v, dict)] \
        or [('train', train)]
    for prefix, stage in stages:
        mode = stage.pop('criterion_targets', default)
        if mode not in CRITERION_TARGETS:
            raise ConfigError(f"{prefix}.criterion_targets: expected 'labels' or null, got {mode!r}")
        criterion = stage.get('criterion')
        if mode is None and isinstance(criterion, dict) and criterion.get('key') != 'CriterionWithoutTargets':
            inner = {k: v for k, v in criterion.items() if k != 'func2extract_model_loss'}
            stage['criterion'] = {'key': 'CriterionWithoutTargets', 'kwargs': {'criterion': inner}}
            if 'func2extract_model_loss' in criterion:
                stage['criterion']['func2extract_model_loss'] = criterion['func2extract_model_loss']
            logger.info('%s.criterion: called without targets, as torchdistill\'s GLUE script calls it (labels reach '
                        "the model only); set %s.criterion_targets: 'labels' to pass them", prefix, prefix)


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
    """Fills ``scheduler.kwargs.num_training_steps`` (Hugging Face schedules need it) from the data size: the
    optimizer steps of the whole run on ``world_size`` processes,
    ``floor(num_epochs * batches / grad_accum_step)`` with ``batches = ceil(ceil(N / world_size) / batch_size)``
    (``floor`` with ``drop_last``), since each rank's sampler gets ``ceil(N / world_size)`` examples and torchdistill
    counts accumulation across epochs. A run resumed on another number of processes gets its own value; ``-resume``
    moves the scheduler's step to the same fraction of training (:mod:`pesf_ext.engine.checkpoint`)."""
    scheduler = train_config.get('scheduler') or {}
    kwargs = scheduler.get('kwargs')
    if kwargs is None or 'num_training_steps' not in kwargs or kwargs['num_training_steps']:
        return
    loader = train_config['train_data_loader']['kwargs']
    accumulation = (train_config.get('optimizer') or {}).get('grad_accum_step', 1) or 1
    per_rank = math.ceil(num_samples / max(world_size, 1))
    batch = loader['batch_size']
    batches = per_rank // batch if loader.get('drop_last') else math.ceil(per_rank / batch)
    kwargs['num_training_steps'] = max(train_config['num_epochs'] * batches // accumulation, 1)


class GlueData:
    """The GLUE entry of a run: checked once the command line's overrides are applied and before the models are
    built (:meth:`check`, the runner's ``prepare_config``), tokenized once they are (``prepare_data``)."""

    def __init__(self, cache_dir=None, split_seed=0):
        self.cache_dir, self.split_seed = cache_dir, split_seed
        self.key = self.spec = self.task = self.student_config = None

    def check(self, config):
        if config.pop('private', None) is not None:
            logger.info("private: torchdistill's GLUE leaderboard predictions (test-set files to submit) are not "
                        'written by this runner; section left out')
        apply_criterion_targets(config)
        self.key, self.spec = glue_spec(config)
        self.task = glue_task(self.spec.get('name'), f'datasets.{self.key}.name')
        resolve_files(self.spec, f'datasets.{self.key}')  # missing files stop the run now
        self.student_config = (config['models'].get('student_model') or config['models'].get('model'))
        # the ids the loaders refer to, so that the YAML checks can run before tokenization
        config['datasets'] = {dataset_id: None for dataset_id in self.spec['dataset_id_map'].values()}

    def __call__(self, config, distributed, world_size):
        from transformers import DataCollatorWithPadding
        tokenizer = load_tokenizer(self.student_config)
        # lengths rounded up to a multiple of 8 (tensor-core friendly; torchdistill's script does so under fp16);
        # the padding is masked, so the outputs do not change; the batch keeps its labels (LabelsKeptCollator)
        register_collate_func(LabelsKeptCollator(DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8)),
                              key='DataCollatorWithPadding')
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
    stand_in_for_example_package()
    config = copy.deepcopy(config) if config is not None else load_config(args.config)
    apply_command_line(config, args)
    data = GlueData(cache_dir=args.cache_dir)
    return run(args, build_text_model, default_log_freq=50, config=config, evaluation=data.evaluation(),
               prepare_config=data.check, prepare_data=data)


__all__ = ['get_text_args', 'run_text', 'GlueData', 'apply_command_line']
