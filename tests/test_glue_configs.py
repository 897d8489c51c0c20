"""Every shipped GLUE config loads, validates, trains two steps and tests through the real text runner, with the
model swapped for a tiny 12-layer BERT and the data for tiny GLUE files (the configs themselves need the hub or
the MiniLM package, and hours)."""
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'tools'))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

pytest.importorskip('transformers')
pytest.importorskip('datasets')

import make_glue_configs  # noqa: E402
from glue_fixtures import tiny_bert_dir, tiny_glue_dir  # noqa: E402,F401
from pesf_ext.engine.config import load_config  # noqa: E402
from pesf_ext.nlp.runner import get_text_args, run_text  # noqa: E402

CONFIGS = sorted(make_glue_configs.all_glue_configs())


def test_committed_glue_configs_match_generator():
    for rel_path, text in make_glue_configs.all_glue_configs().items():
        with open(os.path.join(ROOT, 'configs', rel_path)) as f:
            assert f.read() == text, f'configs/{rel_path} differs from tools/make_glue_configs.py output'


def shrink(config):
    spec = config['datasets']['glue']
    spec.update(num_train_samples=None, num_val_samples=4, max_length=16)
    train = config['train']
    train['num_epochs'] = 1
    train['train_data_loader']['kwargs']['batch_size'] = 4
    for loader in (train['train_data_loader'], train['val_data_loader'], config['test']['test_data_loader']):
        loader['kwargs']['pin_memory'] = False
    return config


def tiny_version(model_config, tiny_dir):
    """``model_config`` with the tiny BERT's paths, no checkpoints, and its builder (if any) cutting the fresh model."""
    config = {**model_config, 'src_ckpt': None, 'dst_ckpt': None}
    for key in ('config_kwargs', 'tokenizer_kwargs', 'model_kwargs'):
        config[key] = {**config[key], 'pretrained_model_name_or_path': tiny_dir}
    if config.get('builder'):
        config['builder'] = {**config['builder'], 'kwargs': {**config['builder']['kwargs'], 'teacher_ckpt': None}}
    return config


def save_tiny_checkpoints(config, tiny_dir):
    """Writes the checkpoints a config starts from: the fine-tuned full teacher (teacher ``src_ckpt`` and the
    student builder's ``teacher_ckpt``) or, for TAKD's second step, the teacher assistant."""
    from pesf_ext.nlp.models import build_text_model
    models = config['models']
    student = models.get('student_model') or models['model']
    targets = [(models['teacher_model'], models['teacher_model'].get('src_ckpt'))] if 'teacher_model' in models else []
    builder_ckpt = ((student.get('builder') or {}).get('kwargs') or {}).get('teacher_ckpt')
    if builder_ckpt:
        full = {**student, 'builder': None}
        targets.append((full, builder_ckpt))
    for model_config, path in targets:
        if not path:
            continue
        model = build_text_model(tiny_version(model_config, tiny_dir), torch.device('cpu'), False, 'test')
        os.makedirs(os.path.dirname(path), exist_ok=True)
        torch.save({'model': model.state_dict()}, path)


@pytest.mark.parametrize('rel_path', CONFIGS)
def test_glue_config_trains_two_steps(rel_path, tiny_bert_dir, tiny_glue_dir, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.chdir(tmp_path)
    config = shrink(load_config(os.path.join(ROOT, 'configs', rel_path)))
    args = get_text_args(['--config', rel_path, '--device', 'cpu', '--seed', '0', '--max_steps_per_epoch', '2',
                          '--data_dir', tiny_glue_dir, '--teacher_model', tiny_bert_dir,
                          '--student_model', tiny_bert_dir])
    save_tiny_checkpoints(config, tiny_bert_dir)
    results = run_text(args, config=config)
    task = config['datasets']['glue']['name']
    metrics = make_glue_configs.NUM_LABELS[task] == 1 and ('pearson', 'spearman') or ('accuracy',)
    for name in metrics:
        assert name in results['test']['student']
    assert results['seconds_per_step'] > 0
    assert os.path.isfile(config['models'].get('student_model', config['models'].get('model'))['dst_ckpt'])
    if 'teacher_model' in config['models']:
        assert 'teacher' in results['test']
