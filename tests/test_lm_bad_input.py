"""Bad input to the causal-LM runner, as a new user gives it: each case ends in one ``Config error:`` line naming the
YAML key or the file (and line), exit status 1, no traceback, and nothing trained (no checkpoint, no adapter).
Each case is a full run (not ``-dry_run``): without the check it would train (silently wrong) or crash later."""
import contextlib
import io
import json
import os
import shutil

import pytest

from test_generated_bad_input import one_line
from test_lm_configs import ROOT, shrink, tiny_dirs  # noqa: F401 (tiny models, offline tokenizer, JSON lines)
from pesf_ext.engine.cli import main_guard
from pesf_ext.engine.config import load_config
from pesf_ext.engine.errors import ConfigError
from pesf_ext.lm import data as lm_data

QWEN_PESFKD = os.path.join(ROOT, 'configs', 'causal_lm', 'qwen2.5_1.5b_0.5b_dolly_pesfkd.yaml')
GPT2_PESFKD = os.path.join(ROOT, 'configs', 'causal_lm', 'gpt2_xl_gpt2_dolly_pesfkd.yaml')
TEXT_PESFKD = os.path.join(ROOT, 'configs', 'causal_lm_offline', 'gpt2_4l_gpt2_2l_stdlib_pesfkd.yaml')
TEXT_KD = os.path.join(ROOT, 'configs', 'causal_lm_offline', 'gpt2_4l_gpt2_2l_stdlib_kd.yaml')


def guarded_run(config, tmp_path, *argv):
    """(exit status, stderr) of the runner's command line and guard on ``config``, with a one-step budget."""
    from pesf_ext.lm.runner import get_lm_args, run_lm
    stderr, status = io.StringIO(), 0

    def call():
        args = get_lm_args(['--config', 'unused.yaml', '--seed', '0', '--max_steps_per_epoch', '1', '--device', 'cpu',
                            '--cache_dir', str(tmp_path / 'cache'), '--max_new_tokens', '4', *argv])
        return run_lm(args, config=config)
    with contextlib.redirect_stderr(stderr):
        try:
            main_guard(call, None)
        except SystemExit as done:
            status = done.code
    return status, stderr.getvalue()


def stops_before_training(config, tmp_path, needles, *argv):
    line = one_line(*guarded_run(config, tmp_path, *argv), needles)
    assert not os.path.exists(tmp_path / 'ckpt'), f'{line}: something was trained and saved'
    return line


def write_jsonl(tmp_path, name, records, tail=''):
    path = tmp_path / name
    path.write_text(''.join(json.dumps(r) + '\n' for r in records) + tail)
    return str(path)


def config_of(path, dirs, tmp_path, edit=None):
    config = shrink(load_config(path), dirs, tmp_path)
    if edit is not None:
        edit(config)
    return config


def entry(config):
    return config['datasets']['lm']


def lora_kwargs(config):
    return config['train']['teacher']['auxiliary_model_wrapper']['kwargs']


def loss_kwargs(config):
    return config['train']['criterion']['kwargs']['sub_terms']['pesfkd']['criterion']['kwargs']


GOOD = {'instruction': 'Name a colour.', 'context': '', 'response': 'Red.'}


def test_record_without_response_names_file_and_line(tiny_dirs, tmp_path):
    """It used to train on the text 'None'."""
    path = write_jsonl(tmp_path, 'data.jsonl', [GOOD] * 9 + [{'instruction': 'Name a fruit.', 'context': ''}] + [GOOD])
    config = config_of(QWEN_PESFKD, tiny_dirs, tmp_path, lambda c: entry(c)['data_files'].update(train=[path]))
    stops_before_training(config, tmp_path, ['datasets.lm.data_files.train', f'{path}, line 10',
                                             'no `response` (datasets.lm.response_field)'])


def test_record_without_a_template_field_names_file_and_line(tiny_dirs, tmp_path):
    path = write_jsonl(tmp_path, 'data.jsonl', [GOOD] * 3 + [{'context': 'x', 'response': 'y'}])
    config = config_of(QWEN_PESFKD, tiny_dirs, tmp_path, lambda c: entry(c)['data_files'].update(train=[path]))
    stops_before_training(config, tmp_path, [f'{path}, line 4', 'no `instruction`',
                                             'datasets.lm.prompt_template reads'])


def test_a_field_covered_by_empty_field_templates_may_be_missing():
    spec = {'prompt_template': '{instruction} {context}', 'empty_field_templates': {'context': '{instruction}'}}
    assert lm_data.record_problem({'instruction': 'a', 'response': 'b'}, spec, 'lm') is None
    assert 'no `instruction`' in lm_data.record_problem({'context': 'a', 'response': 'b'}, spec, 'lm')
    assert 'no `response`' in lm_data.record_problem({'instruction': 'a', 'response': None}, spec, 'lm')


@pytest.mark.parametrize('name, text, needles', [
    ('cut.jsonl', json.dumps(GOOD) + '\n{"instruction": "Name a', ['line 2', 'not valid JSON', 'cut short']),
    ('empty.jsonl', '', ['no records', '(empty file)']),
    ('array.json', json.dumps([GOOD, GOOD], indent=1)[:-20], ['not valid JSON', 'cut short']),
])
def test_unreadable_data_files_name_the_file(name, text, needles, tiny_dirs, tmp_path):
    """They used to give a `datasets` error with advice about the internet."""
    path = tmp_path / name
    path.write_text(text)
    config = config_of(QWEN_PESFKD, tiny_dirs, tmp_path, lambda c: entry(c)['data_files'].update(train=[str(path)]))
    stops_before_training(config, tmp_path, ['datasets.lm.data_files.train', str(path), *needles])


def test_json_records_reads_lines_and_arrays_as_datasets_does(tmp_path):
    import datasets
    records = [GOOD, {**GOOD, 'response': 'Blue.'}]
    lines = write_jsonl(tmp_path, 'a.jsonl', records[:1], '\n' + json.dumps(records[1]) + '\n')  # a blank line
    array = tmp_path / 'b.json'
    array.write_text(json.dumps(records, indent=2))
    for path in (lines, str(array)):
        ours = [record for _, record in lm_data.json_records(path, 'k')]
        theirs = datasets.load_dataset('json', data_files=[path], cache_dir=str(tmp_path / 'c'))['train'].to_list()
        assert ours == theirs == records


@pytest.mark.parametrize('edit, needles', [
    (lambda c: entry(c).update(max_lenght=64), ['datasets.lm.max_lenght: unknown key', 'Closest: max_length']),
    (lambda c: entry(c).update(respone_field='answer'), ['datasets.lm.respone_field', 'Closest: response_field']),
    (lambda c: entry(c).update(block_size=64), ["datasets.lm.block_size: applies to kind 'text' only"]),
    (lambda c: entry(c)['held_out'].update(validaton=4), ['datasets.lm.held_out.validaton', 'Closest: validation']),
    (lambda c: entry(c)['held_out'].update(validation=100), ['datasets.lm.held_out.validation: 100 records asked']),
    (lambda c: entry(c).update(prompt_template='{instruction'), ['datasets.lm.prompt_template', 'literal brace']),
])
def test_misspelt_or_misplaced_dataset_keys(edit, needles, tiny_dirs, tmp_path):
    """A misspelt key used to be ignored (the default applied)."""
    stops_before_training(config_of(QWEN_PESFKD, tiny_dirs, tmp_path, edit), tmp_path, needles)


def test_frozen_update_with_a_lora_teacher(tiny_dirs, tmp_path):
    """It used to train and then save an adapter that never moved."""
    config = config_of(QWEN_PESFKD, tiny_dirs, tmp_path, lambda c: loss_kwargs(c).update(teacher_update='frozen'))
    stops_before_training(config, tmp_path, ["train.teacher.auxiliary_model_wrapper: teacher_update 'frozen'",
                                             'LoRATeacher'])


@pytest.mark.parametrize('argv, needle', [
    (['--rouge_samples', '-1'], '--rouge_samples: must be an integer >= 0, got -1'),
    (['--max_new_tokens', '0'], '--max_new_tokens: must be an integer >= 1, got 0'),
])
def test_command_line_counts(argv, needle, tiny_dirs, tmp_path):
    stops_before_training(config_of(QWEN_PESFKD, tiny_dirs, tmp_path), tmp_path, [needle], *argv)


def test_yaml_rouge_samples_negative(tiny_dirs, tmp_path):
    config = config_of(QWEN_PESFKD, tiny_dirs, tmp_path, lambda c: c['test'].update(rouge_samples=-3))
    stops_before_training(config, tmp_path, ['test.rouge_samples: must be an integer >= 0, got -3'])


@pytest.mark.parametrize('path, key, value', [(GPT2_PESFKD, 'max_length', 200), (TEXT_KD, 'block_size', 129)])
def test_length_beyond_the_context(path, key, value, tiny_dirs, tmp_path):
    """It used to crash in the first forward with an IndexError (GPT-2's learned positions: n_positions 128)."""
    config = config_of(path, tiny_dirs, tmp_path, lambda c: entry(c).update({key: value}))
    stops_before_training(config, tmp_path, [f'datasets.lm.{key}: {value} tokens exceed the context of models.',
                                             'max_position_embeddings 128', f'set {key} <= 128'])


@pytest.mark.parametrize('path, targets, needles', [
    (QWEN_PESFKD, ['qq_proj'], ["no module is named 'qq_proj'", 'k_proj, lm_head, o_proj, q_proj']),
    (TEXT_PESFKD, ['q_proj'], ["no module is named 'q_proj'", 'named c_attn, c_fc, c_proj, lm_head']),
    (TEXT_PESFKD, ['mlp'], ["'mlp' names transformer.h.0.mlp (not a linear layer)"]),
    (QWEN_PESFKD, 'q_proj', ['(a string is a regular expression over full module names']),
])
def test_lora_targets_matching_nothing(path, targets, needles, tiny_dirs, tmp_path):
    """It used to end in PEFT's own error, naming no key."""
    config = config_of(path, tiny_dirs, tmp_path, lambda c: lora_kwargs(c).update(target_modules=targets))
    stops_before_training(config, tmp_path, ['train.teacher.auxiliary_model_wrapper.kwargs.target_modules: ',
                                             *needles])


@pytest.mark.parametrize('edit, needles', [
    (lambda c: lora_kwargs(c).update(lora_alpah=8), ['kwargs.lora_alpah: not an argument of LoRATeacher',
                                                     'Closest: lora_alpha']),
    (lambda c: lora_kwargs(c).update(r=0), ['auxiliary_model_wrapper.kwargs.r: must be an integer >= 1, got 0']),
    (lambda c: lora_kwargs(c).update(last_layers=3), ['kwargs.last_layers: must be an integer in [1, 2], got 3']),
    (lambda c: loss_kwargs(c).update(temprature=2.0), ['pesfkd.criterion.kwargs.temprature: not an argument of '
                                                       'TokenKDLoss', 'Closest: temperature']),
    (lambda c: loss_kwargs(c).update(beta=-0.5), ['pesfkd.criterion.kwargs.beta: must be >= 0, got -0.5']),
])
def test_lora_and_loss_kwargs(edit, needles, tiny_dirs, tmp_path):
    stops_before_training(config_of(QWEN_PESFKD, tiny_dirs, tmp_path, edit), tmp_path, needles)


def test_model_folder_without_tokenizer(tiny_dirs, tmp_path):
    """It used to be reported as teacher and student tokenizers that differ (a '1-token tokenizer')."""
    folder = tmp_path / 'student_weights_only'
    shutil.copytree(tiny_dirs['qwen_student'], folder)
    for name in os.listdir(folder):
        if name not in ('config.json', 'generation_config.json') and not name.endswith('.safetensors'):
            os.remove(folder / name)
    config = config_of(QWEN_PESFKD, tiny_dirs, tmp_path)
    stops_before_training(config, tmp_path, ['models.student_model.tokenizer_kwargs.pretrained_model_name_or_path: '
                                             f'{folder} has no tokenizer files', 'save_pretrained'],
                          '--student_model', str(folder))
    from pesf_ext.nlp.models import load_tokenizer
    with pytest.raises(ConfigError, match='models.teacher_model.tokenizer_kwargs.pretrained_model_name_or_path'):
        load_tokenizer({'tokenizer_kwargs': {'pretrained_model_name_or_path': str(folder)}}, 'models.teacher_model')
    assert len(load_tokenizer({'tokenizer_kwargs': {'pretrained_model_name_or_path': tiny_dirs['qwen_student']}})) > 2


def test_docs_lm_table_is_what_the_runner_prints():
    """docs/bad_input.md's causal-LM rows (python tools/bad_input_table.py --write docs/bad_input.md)."""
    import re
    import bad_input_table
    with open(os.path.join(ROOT, 'docs', 'bad_input.md')) as f:
        section = f.read().split('## Causal language models')[1].split('\n## ')[0]
    documented = re.findall(r'^\| (.+?) \| (Config error: .*) \|$', section, re.MULTILINE)
    rows = bad_input_table.run_lm_all()
    assert [what for what, _ in documented] == [case.what for case, _, _ in rows], \
        'docs/bad_input.md is stale: python tools/bad_input_table.py --write docs/bad_input.md'
    for (case, status, line), (_, doc_line) in zip(rows, documented):
        assert status == 1 and line == doc_line.replace('&#124;', '|'), (case.what, status, line)
