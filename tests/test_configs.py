"""Every shipped config loads, validates and trains two steps on tiny data, through the real runner.

The configs are not edited: the test swaps the dataset builders they call (Fashion-MNIST, CIFAR-100,
ImageFolder) for tiny random datasets (pesf_ext.engine.synthetic), torchvision's pretrained-weight download for a random state dict
(no internet here), and shrinks epochs and batch size in the loaded dict.
"""
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'tools'))

import pesf_ext  # noqa: E402,F401
import make_configs  # noqa: E402
from pesf_ext.engine.config import load_config  # noqa: E402
from pesf_ext.engine.models import build_model  # noqa: E402
from pesf_ext.engine.runner import get_args, run  # noqa: E402
from pesf_ext.engine.synthetic import synthetic_data  # noqa: E402
from conftest import calibrate_batch_norm  # noqa: E402

GENERATED = make_configs.all_configs()  # {path under configs/: text}; ~5 s (ruamel.yaml's Python emitter), so once
CONFIGS = sorted(GENERATED)
BATCH, NUM_SAMPLES = 4, 8
CRD_NEGATIVES = 4  # CRD negatives per sample on the tiny data (configs: 16384)


@pytest.fixture
def tiny_world(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with synthetic_data(num_samples=NUM_SAMPLES):
        yield tmp_path


def test_committed_configs_match_generator():
    for rel_path, text in GENERATED.items():
        with open(os.path.join(ROOT, 'configs', rel_path)) as f:
            assert f.read() == text, f'configs/{rel_path} differs from tools/make_configs.py output'


def shrink(config):
    train = config['train']
    stages = [train[k] for k in train if k.startswith('stage')] or [train]  # AB, FT, FSP: one epoch per stage
    for block in stages:
        block['num_epochs'] = 1
    for loader in ('train_data_loader', 'val_data_loader'):  # torchdistill builds the loaders in the first stage
        stages[0][loader]['kwargs'].update(batch_size=BATCH, num_workers=0, pin_memory=False)
    config['test']['test_data_loader']['kwargs'].update(batch_size=BATCH, num_workers=0, pin_memory=False)
    # CRD: one memory row per train sample and K negatives per sample, in the dataset wrapper and in the loss alike
    wrapper = stages[0]['train_data_loader'].get('dataset_wrapper') or {}
    if wrapper.get('key') == 'CRDDatasetWrapper':
        wrapper['kwargs']['num_negative_samples'] = CRD_NEGATIVES
    if 'anchor_epochs' in train:  # RCO's route: after the one epoch
        train['anchor_epochs'] = [1]
    if 'rco' in train:  # RCO: the converged teacher only (the route needs the teacher's run: see the RCO test)
        train['rco'] = {'anchors': [config['models']['teacher_model']['src_ckpt']], 'switch_epochs': [0]}
    terms = [t for block in stages for t in ((block['criterion'].get('kwargs') or {}).get('sub_terms') or {}).values()]
    for term in terms:
        if term['criterion']['key'] == 'CRDLoss':
            term['criterion']['kwargs'].update(num_samples=NUM_SAMPLES, output_size=NUM_SAMPLES,
                                               num_negative_samples=CRD_NEGATIVES)


def make_teacher_checkpoint(config):
    """Distillation configs load the teacher trained by the CE config; stand in a random one."""
    teacher_config = config['models'].get('teacher_model')
    if teacher_config and teacher_config.get('src_ckpt'):
        teacher = build_model({**teacher_config, 'src_ckpt': None}, torch.device('cpu'), False, 'models.teacher_model')
        calibrate_batch_norm(teacher, [torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))])
        os.makedirs(os.path.dirname(teacher_config['src_ckpt']), exist_ok=True)
        torch.save({'model': teacher.state_dict()}, teacher_config['src_ckpt'])


@pytest.mark.parametrize('rel_path', CONFIGS)
def test_config_trains_two_steps(rel_path, tiny_world):
    path = os.path.join(ROOT, 'configs', rel_path)
    config = load_config(path)
    shrink(config)
    make_teacher_checkpoint(config)
    args = get_args(['--config', path, '--device', 'cpu', '--seed', '0'])
    results = run(args, build_model, config=config)
    assert results['counts']['student'][0] > 0
    assert 0.0 <= results['test']['student']['top1'] <= 100.0
    dst_ckpt = (config['models'].get('student_model') or config['models']['model'])['dst_ckpt']
    assert os.path.isfile(dst_ckpt)
    if 'pesfkd' in rel_path:
        teacher_trainable, teacher_total = results['counts']['teacher']
        assert 0 < teacher_trainable < 0.2 * teacher_total, 'PESF-KD must train only a small adapter part'
    if any(name in rel_path for name in ('ftkd', 'dml', 'kdcl')):
        teacher_trainable, teacher_total = results['counts']['teacher']
        assert teacher_trainable == teacher_total, 'FT-KD and online KD train the whole teacher'
    if rel_path.endswith('_crd.yaml') and 'pesfkd' not in rel_path:
        teacher_trainable, teacher_total = results['counts']['teacher']
        assert 0 < teacher_trainable < 0.2 * teacher_total, 'CRD trains the teacher-side embedding head only'


@pytest.mark.parametrize('family', ['fashion_mnist', 'cifar100'])
def test_takd_chain_student_learns_from_the_assistant_the_first_link_saved(family, tiny_world):
    """TAKD: the assistant config's dst_ckpt is the student config's teacher src_ckpt; the second link's teacher is
    exactly the first link's student (same test accuracy on the same data)."""
    results = {}
    for link in ('takd_assistant', 'takd'):
        path = os.path.join(ROOT, 'configs', family, f'resnet56_resnet20_{link}.yaml')
        config = load_config(path)
        shrink(config)
        if link == 'takd_assistant':
            make_teacher_checkpoint(config)
        else:
            assert config['models']['teacher_model']['src_ckpt'] == results['takd_assistant'][1]
            assert os.path.isfile(config['models']['teacher_model']['src_ckpt'])
        results[link] = (run(get_args(['--config', path, '--device', 'cpu', '--seed', '0']), build_model,
                             config=config), config['models']['student_model']['dst_ckpt'])
    assert results['takd'][0]['test']['teacher'] == results['takd_assistant'][0]['test']['student']


@pytest.mark.parametrize('family', ['fashion_mnist', 'cifar100'])
def test_rco_student_follows_the_route_the_teacher_run_saved(family, tiny_world, caplog):
    """RCO: the teacher's *_rco run saves its anchors; the RCO run loads anchor i at switch_epochs[i] and ends on the
    converged teacher (its test accuracy is the teacher run's)."""
    teacher_path = os.path.join(ROOT, 'configs', family, 'resnet56_teacher_ce_rco.yaml')
    config = load_config(teacher_path)
    shrink(config)
    config['train']['num_epochs'] = 2
    teacher_results = run(get_args(['--config', teacher_path, '--device', 'cpu', '--seed', '0']), build_model,
                          config=config)
    final = config['models']['model']['dst_ckpt']
    anchor = final[:-len('.pt')] + '_ep1.pt'
    assert os.path.isfile(anchor) and os.path.isfile(final)

    path = os.path.join(ROOT, 'configs', family, 'resnet56_resnet20_rco.yaml')
    config = load_config(path)
    shrink(config)
    config['train']['num_epochs'] = 2
    assert config['models']['teacher_model']['src_ckpt'] == final
    config['train']['rco'] = {'anchors': [anchor, final], 'switch_epochs': [0, 1]}
    with caplog.at_level('INFO', logger='pesf_ext.rco'):
        results = run(get_args(['--config', path, '--device', 'cpu', '--seed', '0']), build_model, config=config)
    loaded = [r.getMessage() for r in caplog.records if r.getMessage().startswith('RCO: epoch')]
    assert [m.split(' (')[0] for m in loaded] == ['RCO: epoch 0 learns from anchor 1/2',
                                                  'RCO: epoch 1 learns from anchor 2/2']
    assert results['test']['teacher'] == teacher_results['test']['student']


@pytest.mark.parametrize('name', sorted(make_configs.DIVERGENCES))
def test_divergence_zscore_config_is_zscore_kd_with_another_divergence(name):
    """<divergence>_zscore changes one thing from Z-score KD (the divergence), <divergence> one thing from KD."""
    def criterion(method):
        config = load_config(os.path.join(ROOT, 'configs', 'fashion_mnist', f'resnet56_resnet20_{method}.yaml'))
        (term,) = config['train']['criterion']['kwargs']['sub_terms'].values()
        return config, term['criterion']['kwargs']

    divergence, options, _ = make_configs.DIVERGENCES[name]
    for method, reference in ((f'{name}_zscore', 'zscore'), (name, 'kd')):
        (config, kwargs), (reference_config, reference_kwargs) = criterion(method), criterion(reference)
        assert kwargs.pop('divergence') == divergence
        for option in options:
            kwargs.pop(option)
        reference_kwargs.pop('reduction', None)
        assert kwargs.pop('logit_standardization', False) is method.endswith('_zscore')
        assert kwargs == reference_kwargs, method
        assert config['models']['student_model']['key'] == reference_config['models']['student_model']['key']
