"""The 8-GPU configs (Llama-3.1-8B-Instruct -> Llama-3.2-1B-Instruct, Qwen2.5-7B-Instruct -> Qwen2.5-0.5B-Instruct)
train two steps through the real runner on tiny models of the same architectures and vocabulary relations: Llama's
teacher and student share one output layer size (the tokenizer's), Qwen's teacher is padded further past the
tokenizer than its student (152,064 and 151,936 rows over 151,665 ids). Their speed section is kept, except `fsdp`."""
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
from pesf_ext.engine.config import load_config  # noqa: E402
from pesf_ext.lm import data as lm_data  # noqa: E402
from pesf_ext.lm import memory  # noqa: E402
from pesf_ext.lm.runner import get_lm_args, run_lm  # noqa: E402

CONFIGS = sorted(path for path in make_lm_configs.all_configs()
                 if any(path.startswith(f'configs/{pair}_') for pair in make_lm_configs.BIG_PAIRS))
RECORDS = [{'instruction': f'Name item {i}.', 'context': '' if i % 2 else f'The list has {i} items.',
            'response': f'Item {i} is a small ball.'} for i in range(16)]


def tiny_shapes(tokens):
    """Tiny stand-ins (memory.Shape) with the real pairs' relations: Llama untied 8B / tied 1B over one vocabulary;
    Qwen2 untied 7B padded by 24 rows / tied 0.5B padded by 8, both past the tokenizer."""
    return {'llama_teacher': memory.Shape('l8', 32, 96, 3, 4, 2, tokens, tokens, False, False),
            'llama_student': memory.Shape('l1', 16, 48, 2, 2, 1, tokens, tokens, True, False),
            'qwen_teacher': memory.Shape('q7', 32, 88, 3, 4, 2, tokens + 24, tokens, False, True),
            'qwen_student': memory.Shape('q05', 16, 48, 2, 2, 1, tokens + 8, tokens, True, True)}


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from lm_benchmark import shape_config
    root = tmp_path_factory.mktemp('big')
    tokenizer_dir = lm_data.offline_tokenizer_path(vocab_size=300, cache_dir=str(root / 'tok'), max_bytes=100_000)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    dirs = {'shapes': tiny_shapes(len(tokenizer))}
    for name, shape in dirs['shapes'].items():
        torch.manual_seed(0)
        config = shape_config(shape)
        config.eos_token_id = tokenizer.eos_token_id
        AutoModelForCausalLM.from_config(config).save_pretrained(str(root / name))
        tokenizer.save_pretrained(str(root / name))
        dirs[name] = str(root / name)
    with open(root / 'dolly.jsonl', 'w') as f:
        f.writelines(json.dumps(record) + '\n' for record in RECORDS)
    dirs['jsonl'] = str(root / 'dolly.jsonl')
    return dirs


def shrink(config, dirs, tmp_path):
    """Tiny models and data, two steps; `speed.fsdp` dropped (FSDP needs a torchrun process group: this test is one
    process), the rest of `speed` (bf16, gradient checkpointing, loss chunks) kept."""
    spec = config['datasets']['lm']
    spec.pop('hub_name')
    spec.update(data_files={'train': [dirs['jsonl']]}, max_length=40, held_out={'validation': 4, 'test': 4, 'seed': 0},
                max_samples={'train': 8, 'validation': 4, 'test': 4})
    assert config['speed'].pop('fsdp') == ['student', 'teacher']
    config['speed']['loss_chunk_tokens'] = 16  # several chunks per batch of 2 x <= 40 tokens
    family = 'llama' if 'meta-llama' in json.dumps(config['models']) else 'qwen'
    for name, model in config['models'].items():
        path = dirs[f'{family}_{name.split("_")[0]}']
        for key in ('config_kwargs', 'tokenizer_kwargs', 'model_kwargs'):
            model[key] = {'pretrained_model_name_or_path': path}
        if model.get('dst_ckpt'):
            model['dst_ckpt'] = str(tmp_path / 'ckpt' / os.path.basename(model['dst_ckpt']))
    config['train']['num_epochs'] = 1
    for loader in (config['train']['train_data_loader'], config['train']['val_data_loader'],
                   config['test']['test_data_loader']):
        loader['kwargs'].update(batch_size=2, pin_memory=False)
    config['test']['rouge_samples'] = 2
    return config, family


@pytest.mark.parametrize('path', CONFIGS)
def test_big_pair_config_trains_two_steps(path, tiny, tmp_path):
    config, family = shrink(load_config(os.path.join(ROOT, path)), tiny, tmp_path)
    args = get_lm_args(['--config', 'unused.yaml', '--seed', '0', '--max_steps_per_epoch', '2', '--device', 'cpu',
                        '--cache_dir', str(tmp_path / 'cache'), '--max_new_tokens', '4'])
    results = run_lm(args, config=config)
    teacher_shape, student_shape = tiny['shapes'][f'{family}_teacher'], tiny['shapes'][f'{family}_student']
    for name in ('teacher', 'student'):
        assert 1.0 < results['test'][name]['perplexity'] < 10 * teacher_shape.vocab
    assert 0.0 <= results['test']['agreement'] <= 100.0 and results['test']['kl'] >= 0.0
    trainable, total = results['counts']['teacher']
    assert total == memory.parameters(teacher_shape) + trainable * path.endswith(('_pesfkd.yaml', '_pesfkd_last2.yaml'))
    expected = {'_kd.yaml': 0, '_pesfkd.yaml': memory.lora_parameters(teacher_shape, 16),
                '_pesfkd_last2.yaml': memory.lora_parameters(teacher_shape, 16, 2),
                '_ftkd.yaml': memory.parameters(teacher_shape)}
    assert trainable == next(v for k, v in expected.items() if path.endswith(k))
    assert results['counts']['student'][0] == memory.parameters(student_shape)
    models = results['_models']
    assert models['student'].get_output_embeddings().weight.shape[0] == student_shape.vocab
    student = models['student']
    assert getattr(student, 'is_activation_checkpointing', None) or student.is_gradient_checkpointing
