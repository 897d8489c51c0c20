"""GLUE for the text runner: local TSV/CSV/JSON files or the Hugging Face hub, tokenized once (and cached by
``datasets``), split into train / validation / test.

The YAML section mirrors torchdistill's GLUE example (``datasets.glue.name``, ``raw_data_kwargs``,
``dataset_id_map``) and adds what offline, honest runs need::

    datasets:
      glue:
        name: 'rte'
        raw_data_kwargs:
          data_dir: 'glue_data'             # holds RTE/train.tsv and RTE/dev.tsv; null: the hub's 'glue' (online)
          train_file_path:                  # explicit files override data_dir (.tsv, .csv or .json/.jsonl)
          valid_file_path:
        max_length: 128                     # tokens; longer inputs are truncated, batches padded to their longest
        num_train_samples: null             # optional subset of the training split (seeded, same for every run)
        num_val_samples: 250                # hold this many training examples out for validation (model
                                            # selection); null: validate on GLUE dev, as the papers do
        dataset_id_map:
          train: 'rte/train'
          validation: 'rte/val'
          test: 'rte/test'                  # GLUE dev (the public test labels are hidden)

Both layouts of the files are read: the Hugging Face export (``sentence1  sentence2  label  idx``) and the original
GLUE TSVs (MRPC's ``Quality  #1 String  #2 String``, QQP's ``is_duplicate``, STS-B's ``score``); string labels are
mapped through the task's label names.
"""
import csv
import os
from dataclasses import dataclass

from ..engine.errors import ConfigError
from .fashion_mnist import DatasetNotFoundError


@dataclass(frozen=True)
class GlueTask:
    text_keys: tuple            # the one or two text columns
    num_labels: int             # 1: regression (STS-B)
    metrics: tuple              # what the papers report on this task
    folder: str                 # folder name in the GLUE download
    label_names: tuple = ()     # names of string labels, in label-id order

    @property
    def is_regression(self):
        return self.num_labels == 1


GLUE_TASKS = {
    'cola': GlueTask(('sentence', None), 2, ('matthews',), 'CoLA'),
    'sst2': GlueTask(('sentence', None), 2, ('accuracy',), 'SST-2'),
    'mrpc': GlueTask(('sentence1', 'sentence2'), 2, ('accuracy', 'f1'), 'MRPC'),
    'stsb': GlueTask(('sentence1', 'sentence2'), 1, ('pearson', 'spearman'), 'STS-B'),
    'qqp': GlueTask(('question1', 'question2'), 2, ('accuracy', 'f1'), 'QQP'),
    'mnli': GlueTask(('premise', 'hypothesis'), 3, ('accuracy',), 'MNLI',
                     ('entailment', 'neutral', 'contradiction')),
    'qnli': GlueTask(('question', 'sentence'), 2, ('accuracy',), 'QNLI', ('entailment', 'not_entailment')),
    'rte': GlueTask(('sentence1', 'sentence2'), 2, ('accuracy',), 'RTE', ('entailment', 'not_entailment')),
    'wnli': GlueTask(('sentence1', 'sentence2'), 2, ('accuracy',), 'WNLI'),
}
# Column names of the original GLUE files, renamed to the Hugging Face ones.
COLUMN_ALIASES = {'#1 String': 'sentence1', '#2 String': 'sentence2', 'Quality': 'label', 'score': 'label',
                  'is_duplicate': 'label'}
SPLIT_FILES = {'train': 'train', 'dev': 'dev'}
# MNLI has two dev sets (matched and mismatched genres); 'dev' is the matched one.
MNLI_SPLIT_FILES = {'train': 'train', 'dev': 'dev_matched', 'dev_mismatched': 'dev_mismatched'}
# torchdistill's MNLI config names the splits after the hub's; here 'test_*' is the same dev set (GLUE test labels are
# hidden), 'validation_matched' follows num_val_samples as 'validation' does.
MNLI_SPLITS = {'validation_matched': 'validation', 'test_matched': 'test', 'validation_mismatched': 'dev_mismatched',
               'test_mismatched': 'dev_mismatched'}


def split_files(name):
    """{split: file stem} of a task's local files."""
    return MNLI_SPLIT_FILES if name == 'mnli' else SPLIT_FILES
EXTENSIONS = ('.tsv', '.csv', '.json', '.jsonl')


def glue_task(name, yaml_key='datasets.glue.name'):
    if name not in GLUE_TASKS:
        raise ConfigError(f'{yaml_key}: unknown GLUE task `{name}`; one of {sorted(GLUE_TASKS)}')
    return GLUE_TASKS[name]


def find_split_file(data_dir, task, split, stem=None):
    """``<data_dir>/<TASK folder>/<stem>.{tsv,csv,json,jsonl}`` (also ``<data_dir>/<stem>.*``; stem: the split's
    file name, 'dev_matched' for MNLI's dev), else None."""
    for folder in (os.path.join(data_dir, task.folder), data_dir):
        for ext in EXTENSIONS:
            path = os.path.join(os.path.expanduser(folder), (stem or SPLIT_FILES[split]) + ext)
            if os.path.isfile(path):
                return path
    return None


def resolve_files(spec, yaml_key='datasets.glue'):
    """{'train': path, 'dev': path} of a GLUE spec (MNLI: also 'dev_mismatched' when data_dir holds it), or None for
    the hub; ConfigError naming the key if missing."""
    task = glue_task(spec.get('name'), f'{yaml_key}.name')
    raw = spec.get('raw_data_kwargs') or {}
    explicit = {'train': raw.get('train_file_path'), 'dev': raw.get('valid_file_path')}
    data_dir = raw.get('data_dir')
    if not any(explicit.values()) and not data_dir:
        return None
    files = {}
    for split, path in explicit.items():
        key = f'{yaml_key}.raw_data_kwargs.{"train_file_path" if split == "train" else "valid_file_path"}'
        if path:
            if not os.path.isfile(os.path.expanduser(path)):
                raise ConfigError(f'{key}: file not found: {path}')
            files[split] = os.path.expanduser(path)
            continue
        stem = split_files(spec['name'])[split]
        found = find_split_file(data_dir, task, split, stem) if data_dir else None
        if found is None:
            where = os.path.join(data_dir or '', task.folder, stem)
            raise ConfigError(f'{yaml_key}.raw_data_kwargs.data_dir: no {split} file for {spec["name"]} '
                              f'(looked for {where}.{{tsv,csv,json,jsonl}}); set data_dir (or --data_dir) to the '
                              f'folder that holds {task.folder}/, or {key}')
        files[split] = found
    if spec['name'] == 'mnli' and data_dir:
        mismatched = find_split_file(data_dir, task, 'dev_mismatched', MNLI_SPLIT_FILES['dev_mismatched'])
        if mismatched:
            files['dev_mismatched'] = mismatched
    return files


def load_raw_splits(spec, cache_dir=None):
    """DatasetDict with 'train' and 'dev' of the spec's task, from local files or the hub."""
    import datasets
    files = resolve_files(spec)
    name = spec['name']
    if files is None:
        try:
            raw = datasets.load_dataset('glue', name, cache_dir=cache_dir)
        except Exception as error:  # noqa: BLE001  (connection errors come in many types)
            raise DatasetNotFoundError(
                f"datasets.glue: could not load GLUE '{name}' from the Hugging Face hub ({type(error).__name__}: "
                f'{error}). Offline, give local files: datasets.glue.raw_data_kwargs.data_dir or --data_dir') from error
        if name == 'mnli':
            return datasets.DatasetDict({'train': raw['train'], 'dev': raw['validation_matched'],
                                         'dev_mismatched': raw['validation_mismatched']})
        return datasets.DatasetDict({'train': raw['train'], 'dev': raw['validation']})
    loaded = {}
    for split, path in files.items():
        ext = os.path.splitext(path)[1]
        try:
            if ext in ('.tsv', '.csv'):
                kwargs = {'delimiter': '\t' if ext == '.tsv' else ',',
                          'quoting': csv.QUOTE_NONE if ext == '.tsv' else csv.QUOTE_MINIMAL}
                loaded[split] = datasets.load_dataset('csv', data_files=path, split='train', cache_dir=cache_dir,
                                                      keep_default_na=False, **kwargs)
            else:
                loaded[split] = datasets.load_dataset('json', data_files=path, split='train', cache_dir=cache_dir)
        except Exception as error:  # noqa: BLE001 (empty, truncated or malformed files: the datasets library's types)
            cause = error.__cause__ or error
            raise DatasetNotFoundError(f'datasets.glue.raw_data_kwargs: {path}: could not be '
                                       f'read as {ext.lstrip(".").upper() or "JSON"} ({type(cause).__name__}: '
                                       f'{str(cause).splitlines()[0] if str(cause) else "empty or malformed"})'
                                       ) from error
    return datasets.DatasetDict(loaded)


def normalize_columns(dataset, task, source):
    renames = {old: new for old, new in COLUMN_ALIASES.items()
               if old in dataset.column_names and new not in dataset.column_names}
    dataset = dataset.rename_columns(renames) if renames else dataset
    needed = [key for key in task.text_keys if key is not None] + ['label']
    missing = [key for key in needed if key not in dataset.column_names]
    if missing:
        raise DatasetNotFoundError(f'{source}: columns {missing} not found (has {dataset.column_names})')
    return dataset


def label_id(value, task):
    if task.is_regression:
        return float(value)
    if isinstance(value, str) and not value.lstrip('-').isdigit():
        if value not in task.label_names:
            raise ValueError(f'unknown label {value!r}; expected one of {task.label_names}')
        return task.label_names.index(value)
    return int(value)


def tokenize_split(dataset, task, tokenizer, max_length, source):
    dataset = normalize_columns(dataset, task, source)
    first, second = task.text_keys

    def encode(batch):
        texts = (batch[first],) if second is None else (batch[first], batch[second])
        encoded = tokenizer(*[[str(t) for t in column] for column in texts], truncation=True, max_length=max_length)
        try:
            encoded['labels'] = [label_id(v, task) for v in batch['label']]
        except ValueError as error:  # a label the task does not have: one line naming the file
            raise DatasetNotFoundError(f'{source}: {error}') from error
        return encoded

    return dataset.map(encode, batched=True, remove_columns=dataset.column_names,
                       desc=f'tokenizing {source} (cached after the first run)')


class LabelsKeptCollator:
    """``(batch, batch['labels'])`` of a padding collator's batch (e.g. ``DataCollatorWithPadding``): the tokenized
    batch keeps its labels, as torchdistill's GLUE script passes it (``forward_process(sample_batch, targets=None)``),
    so either ``forward_batch_as_kwargs`` gives the model its labels and the model returns its own loss: this
    project's (``model(**batch, labels=targets)`` unless the batch holds them) or the one of torchdistill's example
    package ``examples/hf_transformers/custom`` (``model(**batch)``). The second element is the runner's targets
    (metrics, the criterion under ``criterion_targets: 'labels'``). Registered under the name the YAML gives::

        collate_fn: 'DataCollatorWithPadding'
    """

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, examples):
        batch = self.collator(examples)
        return batch, batch['labels']


def build_glue_datasets(spec, tokenizer, split_seed=0, cache_dir=None):
    """{dataset_id: tokenized Dataset} for the ids of ``spec['dataset_id_map']`` (train, validation, test)."""
    task = glue_task(spec.get('name'))
    raw = load_raw_splits(spec, cache_dir)
    max_length = spec.get('max_length', 128)
    train = raw['train']
    num_val = spec.get('num_val_samples')
    if num_val:
        if not isinstance(num_val, int) or not 0 < num_val < len(train):
            raise ConfigError(f'datasets.glue.num_val_samples: must be an integer below the {len(train)} examples of '
                              f'the train file (it holds them out for validation), got {num_val!r}')
        held_out = train.train_test_split(test_size=num_val, seed=split_seed, shuffle=True)
        train, val = held_out['train'], held_out['test']
    else:
        val = raw['dev']
    num_train = spec.get('num_train_samples')
    if num_train and num_train < len(train):
        train = train.shuffle(seed=split_seed).select(range(num_train))
    splits = {'train': train, 'validation': val, 'test': raw['dev']}
    name = spec['name']
    files = resolve_files(spec) or {}
    origin = {'train': files.get('train'), 'validation': files.get('dev' if not num_val else 'train'),
              'test': files.get('dev'), 'dev_mismatched': files.get('dev_mismatched')}
    if name == 'mnli':
        available = dict(splits, **({'dev_mismatched': raw['dev_mismatched']} if 'dev_mismatched' in raw else {}))
        for split, source in MNLI_SPLITS.items():
            if source in available:
                splits[split], origin[split] = available[source], origin.get(source)
    out = {}
    for split, dataset_id in spec['dataset_id_map'].items():
        if split not in splits:
            if name == 'mnli' and split in MNLI_SPLITS:
                raise ConfigError(f'datasets.glue.dataset_id_map.{split}: no MNLI dev_mismatched file; put '
                                  'dev_mismatched.tsv beside dev_matched.tsv in the data_dir')
            raise ConfigError(f'datasets.glue.dataset_id_map.{split}: unknown split; use train, validation, test'
                              + (', validation_matched, validation_mismatched, test_matched, test_mismatched'
                                 if name == 'mnli' else ''))
        source = f'{name}/{split}' + (f' ({origin[split]})' if origin.get(split) else '')
        out[dataset_id] = tokenize_split(splits[split], task, tokenizer, max_length, source)
    return out


__all__ = ['GLUE_TASKS', 'GlueTask', 'glue_task', 'resolve_files', 'build_glue_datasets', 'LabelsKeptCollator']
