"""The causal-LM ``datasets`` entry, its sequence lengths against the models' context, and the LM command line,
checked before any model is loaded or example tokenized. Every problem is one :class:`ConfigError` naming the key.

.. code-block:: yaml

    datasets:
      lm:                                   # any name; the entry with kind and dataset_id_map
        kind: 'instruction'                 # or 'text'
        data_files: {train: [a.jsonl], validation: [b.jsonl], test: [c.jsonl]}   # or hub_name (+ hub_config)
        prompt_template: "### Instruction:\\n{instruction}\\n\\n### Input:\\n{context}\\n\\n### Response:\\n"
        empty_field_templates: {context: "### Instruction:\\n{instruction}\\n\\n### Response:\\n"}
        response_field: 'response'
        max_length: 512                     # instruction only; text uses block_size: 128
        held_out: {validation: 500, test: 500, seed: 0}
        max_samples: {train: null, validation: 200, test: 200}
        dataset_id_map: {train: 'dolly/train', validation: 'dolly/val', test: 'dolly/test'}

``max_length`` (instruction) or ``block_size`` (text) is the longest sequence a model sees, so it must not exceed
either model's context (``max_position_embeddings``; GPT-2's ``n_positions``): a learned position table has no row
past it.
"""
import argparse
import string

from ..engine.config import close_matches
from ..engine.errors import ConfigError

SPLITS = ('train', 'validation', 'test')
COMMON_KEYS = {'kind', 'hub_name', 'hub_config', 'data_files', 'held_out', 'max_samples', 'dataset_id_map'}
KIND_KEYS = {'instruction': {'prompt_template', 'empty_field_templates', 'response_field', 'max_length'},
             'text': {'block_size'}}
LM_DATASET_KEYS = COMMON_KEYS.union(*KIND_KEYS.values())
HELD_OUT_KEYS = {'validation', 'test', 'seed'}
DEFAULTS = {'prompt_template': '{prompt}', 'response_field': 'response', 'max_length': 512, 'block_size': 128}
CONTEXT_ATTRIBUTES = ('max_position_embeddings', 'n_positions', 'n_ctx', 'seq_length')


def check_keys(yaml_key, mapping, known, what=''):
    """Every key of ``mapping`` is in ``known``; an unknown one (a misspelling would be ignored) names the nearest."""
    if not isinstance(mapping, dict):
        raise ConfigError(f'{yaml_key}: must be a mapping{what}, got {mapping!r}')
    for name in mapping:
        if name not in known:
            raise ConfigError(f'{yaml_key}.{name}: unknown key.{close_matches(name, known)} '
                              f'Known: {", ".join(sorted(known))}.')


def check_int(yaml_key, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f'{yaml_key}: must be an integer >= {minimum}, got {value!r}')


def template_fields(yaml_key, template):
    """The record fields a ``str.format`` template reads ('{a} {b[0]}' -> {'a', 'b'})."""
    if not isinstance(template, str):
        raise ConfigError(f'{yaml_key}: must be a string, got {template!r}')
    try:
        names = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    except ValueError as error:  # a single '{' or '}': write '{{' / '}}' for a literal brace
        raise ConfigError(f"{yaml_key}: {error} (write {{{{ or }}}} for a literal brace)") from error
    roots = {name.split('.')[0].split('[')[0] for name in names}
    if '' in roots or any(root.isdigit() for root in roots):
        raise ConfigError(f'{yaml_key}: fields must be named after the records\' fields ({{instruction}}), '
                          f'not positional ({{}}, {{0}})')
    return roots


def check_lm_entry(key, spec):
    """Keys and values of the causal-LM entry ``datasets.<key>`` (before any file is read)."""
    prefix = f'datasets.{key}'
    check_keys(prefix, spec, LM_DATASET_KEYS)
    kind = spec.get('kind')
    if kind not in KIND_KEYS:
        raise ConfigError(f'{prefix}.kind: must be one of {tuple(KIND_KEYS)}, got {kind!r}')
    other = next(k for k in KIND_KEYS if k != kind)
    for name in KIND_KEYS[other]:
        if name in spec:
            raise ConfigError(f'{prefix}.{name}: applies to kind {other!r} only (this entry is kind {kind!r}: '
                              f'{", ".join(sorted(KIND_KEYS[kind]))})')
    for name in ('data_files', 'max_samples'):
        if spec.get(name) is not None:
            check_keys(f'{prefix}.{name}', spec[name], SPLITS, ' of splits (train, validation, test)')
    for split, cap in (spec.get('max_samples') or {}).items():
        if cap is not None:
            check_int(f'{prefix}.max_samples.{split}', cap, 1)
    held_out = spec.get('held_out')
    if held_out is not None:
        check_keys(f'{prefix}.held_out', held_out, HELD_OUT_KEYS)
        for split in ('validation', 'test'):
            size = held_out.get(split)
            if size is not None and (isinstance(size, bool) or not isinstance(size, (int, float)) or size <= 0
                                     or (isinstance(size, float) and size >= 1)):
                raise ConfigError(f'{prefix}.held_out.{split}: a count (integer >= 1) or a fraction in (0, 1), '
                                  f'got {size!r}')
    if kind == 'instruction':
        check_int(f'{prefix}.max_length', spec.get('max_length', DEFAULTS['max_length']), 2)
        if not isinstance(spec.get('response_field', DEFAULTS['response_field']), str):
            raise ConfigError(f'{prefix}.response_field: must be a field name, got {spec["response_field"]!r}')
        template_fields(f'{prefix}.prompt_template', spec.get('prompt_template', DEFAULTS['prompt_template']))
        alternatives = spec.get('empty_field_templates') or {}
        if not isinstance(alternatives, dict):
            raise ConfigError(f'{prefix}.empty_field_templates: must be a mapping field -> template, got '
                              f'{alternatives!r}')
        for field, template in alternatives.items():
            template_fields(f'{prefix}.empty_field_templates.{field}', template)
    else:
        check_int(f'{prefix}.block_size', spec.get('block_size', DEFAULTS['block_size']), 2)


def context_length(model_config):
    """The longest sequence a Hugging Face config's model takes (None when the config does not say)."""
    for name in CONTEXT_ATTRIBUTES:
        value = getattr(model_config, name, None)
        if isinstance(value, int) and value > 0:
            return name, value
    return None, None


def check_context(key, spec, model_configs):
    """``max_length`` / ``block_size`` fits every model's context. ``model_configs``: (YAML key, HF config)."""
    name = 'max_length' if spec['kind'] == 'instruction' else 'block_size'
    length = spec.get(name, DEFAULTS[name])
    for yaml_key, model_config in model_configs:
        attribute, context = context_length(model_config)
        if context is not None and length > context:
            raise ConfigError(f'datasets.{key}.{name}: {length} tokens exceed the context of {yaml_key} '
                              f'({getattr(model_config, "model_type", "?")}: {attribute} {context}); set '
                              f'{name} <= {context}')


class AtLeast(argparse.Action):
    """An integer option that must be >= ``minimum``: otherwise one ``Config error:`` line naming the option and
    exit status 1, as the runner's guard prints a :class:`ConfigError` (before any model or data is read)."""
    def __init__(self, option_strings, dest, minimum=0, **kwargs):
        super().__init__(option_strings, dest, type=int, **kwargs)
        self.minimum = minimum

    def __call__(self, parser, namespace, values, option_string=None):
        if values < self.minimum:
            from ..engine.cli import EXIT_ERROR, describe
            parser.exit(EXIT_ERROR, describe(ConfigError(
                f'{option_string}: must be an integer >= {self.minimum}, got {values}'))[0] + '\n')
        setattr(namespace, self.dest, values)


__all__ = ['check_lm_entry', 'check_context', 'check_keys', 'template_fields', 'context_length', 'AtLeast',
           'LM_DATASET_KEYS', 'DEFAULTS']
