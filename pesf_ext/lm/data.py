"""Data for the causal-LM runner, with Hugging Face ``datasets`` (tokenized once, cached in its cache folder).

One entry of ``datasets`` in the YAML (``kind``):

* 'text': plain text files, each file one document; tokenized, an end-of-text token appended per document, and
  packed into blocks of ``block_size`` tokens (every token counts in the loss);
* 'instruction': JSON-lines records (or a hub dataset): the prompt is ``prompt_template`` filled with the record's
  fields, the response is ``response_field`` followed by the end-of-text token; labels are -100 on the prompt, so
  the loss and every metric count response tokens only.

.. code-block:: yaml

    datasets:
      lm:
        kind: 'instruction'
        hub_name: 'databricks/databricks-dolly-15k'   # or data_files: {train: [a.jsonl], validation: [...], test: [...]}
        prompt_template: "### Instruction:\\n{instruction}\\n\\n### Input:\\n{context}\\n\\n### Response:\\n"
        empty_field_templates: {context: "### Instruction:\\n{instruction}\\n\\n### Response:\\n"}
        response_field: 'response'
        max_length: 512
        held_out: {validation: 500, test: 500, seed: 0}   # carved from train when a split is missing
        max_samples: {train: null, validation: 200, test: 200}
        dataset_id_map: {train: 'dolly/train', validation: 'dolly/val', test: 'dolly/test'}

Offline real text that every machine has: :func:`stdlib_source_files` (the Python standard library's source,
split by file) and :func:`offline_tokenizer_path` (a byte-level BPE tokenizer trained on it once, then cached).
"""
import json
import logging
import os
import sysconfig
import zlib
from collections.abc import Mapping

import torch

from ..engine.errors import ConfigError
from .schema import DEFAULTS, SPLITS, check_lm_entry, template_fields

logger = logging.getLogger(__name__)
KINDS = ('text', 'instruction')
SKIPPED_DIRS = {'site-packages', 'dist-packages', 'test', 'tests', 'idle_test', '__pycache__'}
IGNORE_INDEX = -100


def stdlib_source_files(split='train', root=None):
    """The Python standard library's ``.py`` files (test suites and installed packages left out), split by file:
    a stable hash of each relative path puts 1 file in 20 in 'test', 1 in 20 in 'validation', the rest in 'train'."""
    if split not in SPLITS:
        raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
    root = root or sysconfig.get_paths()['stdlib']
    files = []
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in SKIPPED_DIRS)
        files += [os.path.join(directory, name) for name in sorted(names) if name.endswith('.py')]
    bucket = {0: 'test', 1: 'validation'}
    return [f for f in files if bucket.get(zlib.crc32(os.path.relpath(f, root).encode()) % 20, 'train') == split]


def offline_tokenizer_path(vocab_size=4096, cache_dir=None, max_bytes=4_000_000):
    """Directory of a byte-level BPE tokenizer (``vocab_size`` tokens, '<|endoftext|>' as end-of-text and padding)
    trained on the first ``max_bytes`` of the standard library's training files; built once, then reused."""
    import sys
    cache_dir = cache_dir or os.path.join(os.path.expanduser('~'), '.cache', 'pesf_ext', 'tokenizers')
    path = os.path.join(cache_dir, f'stdlib-bpe{vocab_size}-py{sys.version_info[0]}{sys.version_info[1]}')
    if os.path.isfile(os.path.join(path, 'tokenizer.json')):
        return path
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    texts, size = [], 0
    for name in stdlib_source_files('train'):
        with open(name, encoding='utf-8', errors='replace') as f:
            texts.append(f.read())
        size += len(texts[-1])
        if size >= max_bytes:
            break
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=['<|endoftext|>'],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token='<|endoftext|>', bos_token='<|endoftext|>',
                                   unk_token='<|endoftext|>', pad_token='<|endoftext|>')
    tmp = f'{path}.tmp{os.getpid()}'
    fast.save_pretrained(tmp)
    os.makedirs(cache_dir, exist_ok=True)
    try:
        os.replace(tmp, path)
    except OSError:  # another process finished first
        pass
    logger.info('offline tokenizer: %d tokens trained on %d characters of the standard library -> %s',
                len(fast), size, path)
    return path


def lm_spec(config):
    """The one causal-LM entry of ``datasets`` (a dict with ``kind`` and ``dataset_id_map``), with its YAML key; its
    keys and values checked (:func:`~pesf_ext.lm.schema.check_lm_entry`) and its local files read once
    (:func:`check_data_files`), so bad data stops the run before any model is loaded."""
    entries = [(name, spec) for name, spec in (config.get('datasets') or {}).items()
               if isinstance(spec, dict) and ('dataset_id_map' in spec or 'kind' in spec)]
    if len(entries) != 1:
        raise ConfigError(f'datasets: expected one entry with kind and dataset_id_map (found {len(entries)})')
    key, spec = entries[0]
    check_lm_entry(key, spec)
    if not isinstance(spec.get('dataset_id_map'), dict) or set(spec['dataset_id_map']) - set(SPLITS) \
            or 'train' not in spec['dataset_id_map']:
        raise ConfigError(f'datasets.{key}.dataset_id_map: keys are {SPLITS} (train required), got '
                          f'{spec.get("dataset_id_map")!r}')
    if not spec.get('hub_name') and not spec.get('data_files'):
        raise ConfigError(f'datasets.{key}: give data_files ({{train: [...], ...}}) or hub_name')
    for split, files in (spec.get('data_files') or {}).items():
        for path in [files] if isinstance(files, str) else files:
            if not os.path.isfile(os.path.expanduser(path)):
                raise ConfigError(f'datasets.{key}.data_files.{split}: file not found: {path}')
    if not spec.get('hub_name'):
        check_data_files(spec, key)
    return key, spec


def split_files(spec):
    """{split: [paths]} of ``data_files`` (a single path may be written without a list)."""
    return {split: [os.path.expanduser(f) for f in ([v] if isinstance(v, str) else v)]
            for split, v in (spec.get('data_files') or {}).items()}


def json_records(path, yaml_key):
    """Yields (where, record) of a JSON-lines file (blank lines skipped) or of a file holding one JSON array of
    records, as the ``datasets`` json builder reads them; a line that does not parse is a :class:`ConfigError`
    naming the file and line."""
    with open(path, encoding='utf-8', errors='strict') as f:
        try:
            head = f.read(4096).lstrip()
            f.seek(0)
            if head.startswith('['):
                try:
                    records = json.load(f)
                except json.JSONDecodeError as error:
                    raise ConfigError(f'{yaml_key}: {path}, line {error.lineno}: not valid JSON ({error.msg}); is the '
                                      'file cut short?') from error
                for i, record in enumerate(records if isinstance(records, list) else [records]):
                    yield f'record {i + 1}', record
                return
            for number, line in enumerate(f, 1):
                if line.strip():
                    try:
                        record = json.loads(line.rstrip('\r\n'))
                    except json.JSONDecodeError as error:
                        raise ConfigError(f'{yaml_key}: {path}, line {number}: not valid JSON ({error.msg}); is the '
                                          'file cut short? (JSON lines: one record per line, or one JSON array of '
                                          'records)') from error
                    yield f'line {number}', record
        except UnicodeDecodeError as error:
            raise ConfigError(f'{yaml_key}: {path}: not UTF-8 text ({error.reason} at byte {error.start})') from error


def choose_template(record, spec):
    """(YAML key under the entry, template) that formats ``record``'s prompt: ``prompt_template``, or the
    ``empty_field_templates`` one of the (last listed) field that is missing or blank in the record."""
    chosen = ('prompt_template', spec.get('prompt_template', DEFAULTS['prompt_template']))
    for field, alternative in (spec.get('empty_field_templates') or {}).items():
        if not str(record.get(field) or '').strip():
            chosen = (f'empty_field_templates.{field}', alternative)
    return chosen


def record_problem(record, spec, key):
    """Why ``record`` cannot make an instruction example (None when it can): not a mapping, no (or null) response
    field, or no (or null) field that its prompt template reads (str.format would write 'None')."""
    if not isinstance(record, Mapping):
        return f'a record must be a JSON object, got {type(record).__name__}'
    response_field = spec.get('response_field', DEFAULTS['response_field'])
    if record.get(response_field) is None:
        return (f'no `{response_field}` (datasets.{key}.response_field) in this record (fields: '
                f'{sorted(k for k, v in record.items() if v is not None)})')
    template_key, template = choose_template(record, spec)
    for field in sorted(template_fields(f'datasets.{key}.{template_key}', template)):
        if record.get(field) is None:
            return (f'no `{field}`, which datasets.{key}.{template_key} reads, in this record (fields: '
                    f'{sorted(k for k, v in record.items() if v is not None)}; a field that may be empty needs '
                    f'an empty_field_templates entry)')
    return None


def check_data_files(spec, key):
    """Reads the local ``data_files`` once before anything is tokenized: instruction files must parse and every
    record must have the fields the templates read and the response field; no split may be empty."""
    for split, paths in split_files(spec).items():
        yaml_key = f'datasets.{key}.data_files.{split}'
        if spec['kind'] == 'text':
            if not any(os.path.getsize(path) for path in paths):
                raise ConfigError(f'{yaml_key}: no text in {", ".join(paths)} (empty files)')
            continue
        count = 0
        for path in paths:
            for where, record in json_records(path, yaml_key):
                problem = record_problem(record, spec, key)
                if problem:
                    raise ConfigError(f'{yaml_key}: {path}, {where}: {problem}')
                count += 1
        if count == 0:
            raise ConfigError(f'{yaml_key}: no records in {", ".join(paths)} (empty file)')


def check_hub_records(raw, spec, key):
    """The records of a hub dataset, as :func:`check_data_files` checks local ones (before tokenization)."""
    for split, data in raw.items():
        for row, record in enumerate(data):
            problem = record_problem(record, spec, key)
            if problem:
                raise ConfigError(f'datasets.{key}.hub_name: `{spec["hub_name"]}` split {split!r}, row {row}: '
                                  f'{problem}')


def load_raw(spec, key, cache_dir=None):
    """``datasets.DatasetDict`` of the raw records, with validation/test carved from train when missing."""
    import datasets
    try:
        if spec.get('hub_name'):
            raw = datasets.load_dataset(spec['hub_name'], spec.get('hub_config'), cache_dir=cache_dir)
        else:
            files = split_files(spec)
            builder = 'text' if spec['kind'] == 'text' else 'json'
            extra = {'sample_by': 'document'} if builder == 'text' else {}
            raw = datasets.load_dataset(builder, data_files=files, cache_dir=cache_dir, **extra)
    except ConfigError:
        raise
    except Exception as error:  # noqa: B902 (offline hub access raises several kinds of errors)
        where = f'hub_name `{spec["hub_name"]}`' if spec.get('hub_name') else 'data_files'
        raise ConfigError(f'datasets.{key}: could not load {where} ({type(error).__name__}: '
                          f'{str(error).splitlines()[0] if str(error) else ""}). Without internet, give local files '
                          f'with datasets.{key}.data_files (JSON lines for instructions, text files for text)') from error
    if spec.get('hub_name') and spec['kind'] == 'instruction':
        check_hub_records(raw, spec, key)
    return carve_held_out(raw, spec.get('held_out') or {}, key)


def carve_held_out(raw, held_out, key):
    """Splits missing validation/test sets off 'train' (sizes: counts, or fractions when < 1), reproducibly."""
    import datasets
    splits = dict(raw)
    seed = held_out.get('seed', 0)
    for split in ('test', 'validation'):
        if split in splits or not held_out.get(split):
            continue
        size = held_out[split]
        if not isinstance(size, (int, float)) or size <= 0:
            raise ConfigError(f'datasets.{key}.held_out.{split}: must be a count or a fraction > 0, got {size!r}')
        if isinstance(size, int) and size >= len(splits['train']):
            raise ConfigError(f'datasets.{key}.held_out.{split}: {size} records asked of the {len(splits["train"])} '
                              'left in train; give fewer (or a fraction)')
        parts = splits['train'].train_test_split(test_size=size, seed=seed, shuffle=True)
        splits['train'], splits[split] = parts['train'], parts['test']
    return datasets.DatasetDict(splits)


def fill_template(template, record, key):
    try:
        return template.format(**record)
    except KeyError as error:
        raise ConfigError(f'datasets.{key}.prompt_template: field {error} is not in the records (fields: '
                          f'{sorted(record)})') from error


def tokenize_instructions(dataset, tokenizer, spec, key):
    """input_ids = prompt + response + end-of-text (cut to ``max_length``), labels = -100 on the prompt;
    ``prompt_length`` and ``reference`` (the response text) kept for generation metrics."""
    response_field = spec.get('response_field', DEFAULTS['response_field'])
    max_length = spec.get('max_length', DEFAULTS['max_length'])
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []

    def encode(record):
        problem = record_problem(record, spec, key)  # checked per file and line before; kept for direct callers
        if problem:
            raise ConfigError(f'datasets.{key}: {problem}')
        prompt = tokenizer(fill_template(choose_template(record, spec)[1], record, key),
                           add_special_tokens=False)['input_ids']
        response = tokenizer(str(record[response_field]), add_special_tokens=False)['input_ids'] + eos
        prompt = prompt[:max(max_length - 1, 1)]  # keep at least one response token
        ids = (prompt + response)[:max_length]
        labels = [IGNORE_INDEX] * len(prompt) + ids[len(prompt):]
        return {'input_ids': ids, 'labels': labels, 'prompt_length': len(prompt),
                'reference': str(record[response_field])}
    return dataset.map(encode, remove_columns=dataset.column_names, desc='tokenizing')


def tokenize_and_pack(dataset, tokenizer, spec):
    """Documents tokenized with an end-of-text token after each, concatenated and cut into ``block_size`` blocks
    (the remainder is dropped); labels = input_ids."""
    block_size = spec.get('block_size', DEFAULTS['block_size'])
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []

    def encode(batch):
        return {'ids': [ids + eos for ids in tokenizer(batch['text'], add_special_tokens=False)['input_ids']]}

    def pack(batch):
        flat = [token for ids in batch['ids'] for token in ids]
        blocks = [flat[i:i + block_size] for i in range(0, len(flat) - block_size + 1, block_size)]
        return {'input_ids': blocks, 'labels': [list(b) for b in blocks]}
    encoded = dataset.map(encode, batched=True, remove_columns=dataset.column_names, desc='tokenizing')
    return encoded.map(pack, batched=True, batch_size=1000, remove_columns=['ids'], desc='packing')


def build_lm_datasets(spec, key, tokenizer, cache_dir=None):
    """{dataset_id: dataset} for the ids of ``dataset_id_map`` (each capped by ``max_samples``)."""
    raw = load_raw(spec, key, cache_dir)
    result = {}
    for split, dataset_id in spec['dataset_id_map'].items():
        if split not in raw:
            raise ConfigError(f'datasets.{key}: no {split!r} split (give data_files.{split} or held_out.{split})')
        data = raw[split]
        if spec['kind'] == 'text':
            data = tokenize_and_pack(data, tokenizer, spec)
        else:
            data = tokenize_instructions(data, tokenizer, spec, key)
        cap = (spec.get('max_samples') or {}).get(split)
        if cap is not None:
            data = data.select(range(min(cap, len(data))))
        if len(data) == 0:
            raise ConfigError(f'datasets.{key}: the {split} split is empty after tokenization (smaller block_size?)')
        result[dataset_id] = data
    return result


class CausalLMCollator:
    """Pads input_ids (with the pad token, else end-of-text), attention_mask and labels (with -100) to the longest
    sequence of the batch, on the right; other columns (prompt_length, reference) are left out. A batch with no
    padding (packed text) gets no ``attention_mask``: the models then attend causally as with an all-ones mask, and
    transformers skips its check of the mask's values, a host read per forward."""
    def __init__(self, tokenizer):
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = 0 if pad is None else pad

    def __call__(self, examples):
        length = max(len(e['input_ids']) for e in examples)
        ids = torch.full((len(examples), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(examples), length), dtype=torch.long)
        labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
        for i, example in enumerate(examples):
            n = len(example['input_ids'])
            ids[i, :n] = torch.as_tensor(example['input_ids'])
            mask[i, :n] = 1
            labels[i, :n] = torch.as_tensor(example['labels'])
        if all(len(e['input_ids']) == length for e in examples):
            return {'input_ids': ids, 'labels': labels}
        return {'input_ids': ids, 'attention_mask': mask, 'labels': labels}


__all__ = ['stdlib_source_files', 'offline_tokenizer_path', 'lm_spec', 'build_lm_datasets', 'CausalLMCollator',
           'carve_held_out', 'check_data_files', 'json_records', 'record_problem', 'choose_template']
