"""Every shipped causal-LM config loads, validates, trains two steps and tests through the real runner, with its
models swapped for tiny random models of the same architectures (Qwen2, GPT-2) and its data for small local files
(the GPU configs download billions of parameters and dolly-15k); plus the runner's data, metrics and errors."""
import json
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'tools'))

pytest.importorskip('transformers')
pytest.importorskip('datasets')
pytest.importorskip('peft', reason='peft is not installed (pip install -e ".[lm]")')

import make_lm_configs  # noqa: E402
from yaml_writer import dump_config  # noqa: E402
import pesf_ext.lm  # noqa: E402,F401
from pesf_ext.engine.config import load_config  # noqa: E402
from pesf_ext.engine.errors import ConfigError  # noqa: E402
from pesf_ext.lm import data as lm_data  # noqa: E402
from pesf_ext.lm.metrics import lcs_length, rouge_l  # noqa: E402
from pesf_ext.lm.runner import get_lm_args, run_lm  # noqa: E402

# the 8-GPU pairs (Llama 3.1 8B -> 3.2 1B, Qwen2.5 7B -> 0.5B) train in tests/test_lm_big_pairs.py, on tiny models
# of their own architectures and vocabulary relations
CONFIGS = sorted(path for path in make_lm_configs.all_configs() if not any(
    path.startswith(f'configs/{pair}_') for pair in make_lm_configs.BIG_PAIRS))
RECORDS = [{'instruction': f'Name item {i} of the list.', 'context': '' if i % 2 else f'The list has {i} items.',
            'response': f'Item {i} is a small {"red" if i % 3 else "blue"} ball.'} for i in range(24)]


def test_committed_lm_configs_match_generator():
    for path, (config, lines) in make_lm_configs.all_configs().items():
        with open(os.path.join(ROOT, path)) as f:
            assert f.read() == dump_config(config, lines), f'{path} differs from tools/make_lm_configs.py output'


@pytest.fixture(scope='module')
def tiny_dirs(tmp_path_factory):
    """A small byte-level BPE tokenizer trained on standard-library text, tiny Qwen2 and GPT-2 teachers and students
    saved with it, a dolly-like JSON-lines file and small text files."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, Qwen2Config
    root = tmp_path_factory.mktemp('lm')
    tokenizer_dir = lm_data.offline_tokenizer_path(vocab_size=320, cache_dir=str(root / 'tok'), max_bytes=150_000)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    vocab = len(tokenizer)
    configs = {
        'qwen_teacher': Qwen2Config(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True,
                                    eos_token_id=tokenizer.eos_token_id),
        'qwen_student': Qwen2Config(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                    num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True,
                                    eos_token_id=tokenizer.eos_token_id),
        'gpt2_teacher': GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=2, n_positions=128,
                                   eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id),
        'gpt2_student': GPT2Config(vocab_size=vocab, n_embd=16, n_layer=1, n_head=2, n_positions=128,
                                   eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id),
    }
    dirs = {}
    for name, config in configs.items():
        torch.manual_seed(0)
        path = str(root / name)
        AutoModelForCausalLM.from_config(config).save_pretrained(path)
        tokenizer.save_pretrained(path)
        dirs[name] = path
    with open(root / 'dolly.jsonl', 'w') as f:
        for record in RECORDS:
            f.write(json.dumps(record) + '\n')
    dirs['jsonl'] = str(root / 'dolly.jsonl')
    texts = []
    for i, source in enumerate(lm_data.stdlib_source_files('train')[:3]):
        with open(source) as f:
            text = f.read()[:3000]
        texts.append(str(root / f'doc{i}.txt'))
        with open(texts[-1], 'w') as f:
            f.write(text)
    dirs['texts'] = texts
    dirs['tokenizer'] = tokenizer_dir
    return dirs


def shrink(config, dirs, tmp_path):
    """The config with tiny models, small local data, a two-step budget and checkpoints under ``tmp_path``."""
    spec = config['datasets']['lm']
    if spec['kind'] == 'instruction':
        spec.pop('hub_name')
        spec.update(data_files={'train': [dirs['jsonl']]}, max_length=48,
                    held_out={'validation': 4, 'test': 4, 'seed': 0})
    else:
        spec.update(data_files={'train': dirs['texts'][:2], 'validation': dirs['texts'][2:],
                                'test': dirs['texts'][2:]}, block_size=32)
    spec['max_samples'] = {'train': 16, 'validation': 4, 'test': 4}
    config.pop('speed', None)
    models = config['models']
    family = 'qwen' if 'Qwen' in json.dumps(models, default=str) else 'gpt2'
    for name, model in models.items():
        role = 'teacher' if name == 'teacher_model' or 'teacher' in (model.get('dst_ckpt') or '') else 'student'
        path = dirs[f'{family}_{role}']
        for key in ('config_kwargs', 'tokenizer_kwargs', 'model_kwargs'):
            model[key] = {'pretrained_model_name_or_path': path}
        model['src_ckpt'] = None
        if model.get('dst_ckpt'):
            model['dst_ckpt'] = str(tmp_path / 'ckpt' / os.path.basename(model['dst_ckpt']))
    train = config['train']
    train['num_epochs'] = 1
    for loader in (train['train_data_loader'], train['val_data_loader'], config['test']['test_data_loader']):
        loader['kwargs'].update(batch_size=2, pin_memory=False)
    if config['test'].get('rouge_samples'):
        config['test']['rouge_samples'] = 2
    return config


def run_config(config, tmp_path, *extra):
    args = get_lm_args(['--config', 'unused.yaml', '--seed', '0', '--max_steps_per_epoch', '2', '--device', 'cpu',
                        '--cache_dir', str(tmp_path / 'cache'), '--max_new_tokens', '4',
                        '--summary_json', str(tmp_path / 'summary.json'), *extra])
    return run_lm(args, config=config)


@pytest.mark.parametrize('path', CONFIGS)
def test_every_lm_config_trains_two_steps(path, tiny_dirs, tmp_path):
    config = shrink(load_config(os.path.join(ROOT, path)), tiny_dirs, tmp_path)
    results = run_config(config, tmp_path)
    test = results['test']
    for name in ('teacher', 'student'):
        if name in test:
            assert 1.0 < test[name]['perplexity'] < 10 * 320 and 0.0 <= test[name]['top1'] <= 100.0
    assert results['seconds_per_step'] > 0 and results['lm']['tokens_per_second'] > 0
    with open(tmp_path / 'summary.json') as f:
        summary = json.load(f)
    assert summary['lm']['peak_memory_mib'] > 0
    if 'teacher' in test:
        assert 0.0 <= test['agreement'] <= 100.0 and test['kl'] >= 0.0
    counts = results['counts']
    if path.endswith('_pesfkd.yaml'):
        trainable, total = counts['teacher']
        assert 0 < trainable < total / 2  # the LoRA weights only
        assert os.path.isfile(os.path.join(results['lm']['teacher_adapter_dir'], 'adapter_config.json'))
    elif path.endswith('_ftkd.yaml'):
        assert counts['teacher'][0] == counts['teacher'][1]
    elif 'teacher' in counts:
        assert counts['teacher'][0] == 0
    if 'dolly' in path and 'teacher' not in path:
        assert set(results['lm']['rouge_l']) >= {'student'}
        assert all(0.0 <= v <= 100.0 for v in results['lm']['rouge_l'].values())


def test_taid_total_steps_filled_from_the_data(tiny_dirs, tmp_path):
    from pesf_ext.engine.config import fill_taid_total_steps
    path = os.path.join(ROOT, 'configs/causal_lm_offline/gpt2_4l_gpt2_2l_stdlib_taid.yaml')
    config = shrink(load_config(path), tiny_dirs, tmp_path)
    stage = config['train']
    kwargs = stage['criterion']['kwargs']['sub_terms']['taid']['criterion']['kwargs']
    assert kwargs['taid']['total_steps'] is None
    config['datasets'] = {stage['train_data_loader']['dataset_id']: list(range(15))}
    fill_taid_total_steps(config, world_size=1)
    assert kwargs['taid']['total_steps'] == 8  # 1 epoch x ceil(15 / batch 2)
    kwargs['taid']['total_steps'] = None
    fill_taid_total_steps(config, world_size=1, max_steps_per_epoch=2)
    assert kwargs['taid']['total_steps'] == 2
    kwargs['taid']['total_steps'] = None
    fill_taid_total_steps(config, world_size=2)  # 8 samples per process
    assert kwargs['taid']['total_steps'] == 4
    kwargs['taid']['total_steps'] = 5  # a YAML value stays
    fill_taid_total_steps(config, world_size=1)
    assert kwargs['taid']['total_steps'] == 5


def test_pesfkd_adapter_directory_reloads_with_peft(tiny_dirs, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    config = shrink(load_config(os.path.join(ROOT, 'configs/causal_lm/qwen2.5_1.5b_0.5b_dolly_pesfkd.yaml')),
                    tiny_dirs, tmp_path)
    results = run_config(config, tmp_path)
    teacher = results['_models']['teacher'].eval()
    ids = torch.arange(10)[None] % 300
    with torch.no_grad():
        expected = teacher(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(tiny_dirs['qwen_teacher'])
        reloaded = PeftModel.from_pretrained(base, results['lm']['teacher_adapter_dir']).eval()
        assert torch.allclose(reloaded(input_ids=ids).logits, expected, atol=1e-6)


def test_resume_continues_after_the_last_epoch(tiny_dirs, tmp_path):
    path = os.path.join(ROOT, 'configs/causal_lm_offline/gpt2_4l_gpt2_2l_stdlib_pesfkd.yaml')
    first = run_config(shrink(load_config(path), tiny_dirs, tmp_path), tmp_path)
    config = shrink(load_config(path), tiny_dirs, tmp_path)
    config['train']['num_epochs'] = 2
    second = run_config(config, tmp_path, '-resume')
    assert first['test']['student']['perplexity'] != second['test']['student']['perplexity']
    only_test = run_config(shrink(load_config(path), tiny_dirs, tmp_path), tmp_path, '-test_only')
    assert only_test['test']['student']['perplexity'] == pytest.approx(second['test']['student']['perplexity'])


# ---- data, metrics, errors ----

def test_rouge_l_on_lins_example():
    """Lin (2004), section 3.1: reference 'police killed the gunman'."""
    reference = 'police killed the gunman'
    assert lcs_length('police kill the gunman'.split(), reference.split()) == 3
    assert rouge_l('police kill the gunman', reference) == pytest.approx(0.75)
    assert rouge_l('the gunman kill police', reference) == pytest.approx(0.5)
    assert rouge_l('The cat sat on the mat.', 'the cat is on the mat') == pytest.approx(5 / 6)
    assert rouge_l('', reference) == 0.0


def test_instruction_labels_mask_the_prompt(tiny_dirs):
    from datasets import Dataset
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(tiny_dirs['tokenizer'])
    spec = {'prompt_template': 'Q: {instruction}\nC: {context}\nA: ', 'empty_field_templates': {
        'context': 'Q: {instruction}\nA: '}, 'response_field': 'response', 'max_length': 200}
    data = lm_data.tokenize_instructions(Dataset.from_list(RECORDS[:2]), tokenizer, spec, 'lm')
    for record, example in zip(RECORDS[:2], data):
        template = spec['prompt_template'] if record['context'] else spec['empty_field_templates']['context']
        prompt = tokenizer(template.format(**record), add_special_tokens=False)['input_ids']
        assert example['prompt_length'] == len(prompt)
        assert example['labels'][:len(prompt)] == [-100] * len(prompt)
        assert example['labels'][len(prompt):] == example['input_ids'][len(prompt):]
        assert example['input_ids'][-1] == tokenizer.eos_token_id
        assert tokenizer.decode(example['input_ids'][len(prompt):-1]) == record['response']
    batch = lm_data.CausalLMCollator(tokenizer)([data[0], data[1]])
    lengths = [len(data[0]['input_ids']), len(data[1]['input_ids'])]
    assert batch['input_ids'].shape == (2, max(lengths))
    short = lengths.index(min(lengths))
    assert torch.all(batch['labels'][short, min(lengths):] == -100)
    assert torch.all(batch['attention_mask'][short, min(lengths):] == 0)


def test_unpadded_batch_has_no_mask_and_the_same_logits(tiny_dirs):
    """Equal-length rows (packed text) get no attention_mask, and the model gives the logits of an all-ones mask."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(tiny_dirs['tokenizer'])
    rows = [{'input_ids': [5, 6, 7, 8], 'labels': [5, 6, 7, 8]}, {'input_ids': [9, 10, 11, 12], 'labels': [9, 10, 11, 12]}]
    batch = lm_data.CausalLMCollator(tokenizer)(rows)
    assert set(batch) == {'input_ids', 'labels'}
    model = AutoModelForCausalLM.from_pretrained(tiny_dirs['qwen_student']).eval()
    with torch.no_grad():
        plain = model(input_ids=batch['input_ids']).logits
        masked = model(input_ids=batch['input_ids'], attention_mask=torch.ones_like(batch['input_ids'])).logits
    assert torch.equal(plain, masked)


def test_text_is_packed_into_full_blocks(tiny_dirs):
    from datasets import Dataset
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(tiny_dirs['tokenizer'])
    texts = ['def f(x):\n    return x + 1\n', 'import os\nprint(os.sep)\n']
    blocks = lm_data.tokenize_and_pack(Dataset.from_dict({'text': texts}), tokenizer, {'block_size': 8})
    flat = [t for text in texts for t in tokenizer(text)['input_ids'] + [tokenizer.eos_token_id]]
    assert [t for block in blocks['input_ids'] for t in block] == flat[:len(flat) // 8 * 8]
    assert blocks['labels'] == blocks['input_ids']


def test_stdlib_splits_are_disjoint_and_real():
    splits = {split: set(lm_data.stdlib_source_files(split)) for split in ('train', 'validation', 'test')}
    assert all(splits.values())
    assert not splits['train'] & splits['test'] and not splits['train'] & splits['validation']
    assert len(splits['train']) > 10 * len(splits['test'])
    assert not any('site-packages' in f for f in splits['train'])


def test_different_tokenizers_are_a_clear_error(tiny_dirs, tmp_path):
    from transformers import AutoTokenizer
    other = lm_data.offline_tokenizer_path(vocab_size=300, cache_dir=str(tmp_path / 'other'), max_bytes=100_000)
    assert len(AutoTokenizer.from_pretrained(other)) != len(AutoTokenizer.from_pretrained(tiny_dirs['tokenizer']))
    config = shrink(load_config(os.path.join(ROOT, 'configs/causal_lm_offline/gpt2_4l_gpt2_2l_stdlib_kd.yaml')),
                    tiny_dirs, tmp_path)
    config['models']['teacher_model']['tokenizer_kwargs'] = {'pretrained_model_name_or_path': other}
    with pytest.raises(ConfigError, match='teacher tokenizer .* student tokenizer .* differ'):
        run_config(config, tmp_path)


def test_hub_dataset_offline_is_a_clear_error(tiny_dirs, tmp_path, monkeypatch):
    monkeypatch.setenv('HF_DATASETS_OFFLINE', '1')
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    config = shrink(load_config(os.path.join(ROOT, 'configs/causal_lm/gpt2_xl_gpt2_dolly_kd.yaml')), tiny_dirs,
                    tmp_path)
    spec = config['datasets']['lm']
    spec.pop('data_files')
    spec['hub_name'] = 'no-such-owner/no-such-dataset-pesf'
    with pytest.raises(ConfigError, match='datasets.lm: could not load hub_name .*datasets.lm.data_files'):
        run_config(config, tmp_path)


@pytest.mark.parametrize('edit,match', [
    (lambda c: c['train']['teacher'].pop('auxiliary_model_wrapper'), "needs adapters on the teacher"),
    (lambda c: c['train']['teacher'].update(requires_grad=False), 'requires_grad'),
    (lambda c: c['datasets']['lm'].update(kind='tokens'), 'datasets.lm.kind'),
    (lambda c: c['datasets']['lm']['data_files'].update(train=['/no/such/file.txt']), 'file not found'),
])
def test_bad_lm_configs_name_the_key(edit, match, tiny_dirs, tmp_path):
    config = shrink(load_config(os.path.join(ROOT, 'configs/causal_lm_offline/gpt2_4l_gpt2_2l_stdlib_pesfkd.yaml')),
                    tiny_dirs, tmp_path)
    edit(config)
    with pytest.raises(ConfigError, match=match):
        run_config(config, tmp_path)


def test_command_line_help_and_one_line_errors(capsys, tmp_path):
    import causal_lm
    with pytest.raises(SystemExit) as done:
        causal_lm.main(['--help'])
    assert done.value.code == 0 and capsys.readouterr().out.startswith('usage:')
    config = tmp_path / 'bad.yaml'
    with open(os.path.join(ROOT, 'configs/causal_lm_offline/gpt2_4l_gpt2_2l_stdlib_kd.yaml')) as f:
        config.write_text(f.read().replace("divergence: 'forward_kl'", "divergence: 'forward_k1'"))
    with pytest.raises(SystemExit) as done:
        causal_lm.main(['--config', str(config), '--device', 'cpu'])
    err = capsys.readouterr().err.strip().splitlines()
    assert done.value.code == 1 and len(err) == 1 and 'Traceback' not in err[0]
    assert 'divergence' in err[0] and 'forward_k1' in err[0]


def test_model_options_replace_the_yaml_architecture(tiny_dirs, tmp_path):
    """--teacher_model/--student_model give the architecture too: the YAML's sizes (written for models built from
    their config) must not be applied to the given weights."""
    path = os.path.join(ROOT, 'configs/causal_lm_offline/gpt2_4l_gpt2_2l_stdlib_kd.yaml')
    original = load_config(path)
    config = shrink(load_config(path), tiny_dirs, tmp_path)
    for name in ('teacher_model', 'student_model'):
        config['models'][name]['config_kwargs'] = original['models'][name]['config_kwargs']
    results = run_config(config, tmp_path, '--teacher_model', tiny_dirs['gpt2_teacher'], '--student_model',
                         tiny_dirs['gpt2_student'])
    assert results['counts']['teacher'][1] < 200_000  # the tiny teacher, not a 4 x 256 one
