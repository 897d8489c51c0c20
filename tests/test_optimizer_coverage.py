"""Every trainable parameter is in an optimizer group, or the run stops before training with one line naming the
modules left out; ``module: '*'`` in ``train.optimizer.module_wise_configs`` trains every module not listed.

torchdistill trains ONLY the modules listed in a non-empty ``module_wise_configs``: a list naming only the teacher's
adapters trained the adapters and left the student as initialised, without a word. The boxes are built on tiny
random data (pesf_ext.engine.synthetic), as the real runner builds them; nothing is trained.
"""
import glob
import os

import pytest
import torch

import pesf_ext  # noqa: F401
from pesf_ext.engine.config import load_config, validate_config, validate_model_paths
from pesf_ext.engine.errors import ConfigError
from pesf_ext.engine.models import build_model
from pesf_ext.engine.runner import build_box
from pesf_ext.engine.synthetic import synthetic_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FASHION_MNIST = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, 'configs', 'fashion_mnist', '*.yaml')))
PESFKD = 'resnet56_resnet20_pesfkd.yaml'
CPU = torch.device('cpu')


@pytest.fixture
def tiny(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with synthetic_data(num_samples=8):
        yield tmp_path


def loaded(name):
    config = load_config(os.path.join(ROOT, 'configs', 'fashion_mnist', name))
    if 'teacher_model' in config['models']:
        config['models']['teacher_model']['src_ckpt'] = None  # a random teacher stands in for the trained one
    train = config['train']
    for stage in [train[k] for k in train if k.startswith('stage')] or [train]:
        for loader in ('train_data_loader', 'val_data_loader'):
            if loader in stage:
                stage[loader]['kwargs'].update(batch_size=4, num_workers=0)
    for term in ((train.get('criterion') or {}).get('kwargs') or {}).get('sub_terms', {}).values():
        if term['criterion']['key'] == 'CRDLoss':  # one memory row per (synthetic) sample
            term['criterion']['kwargs'].update(num_samples=8, output_size=8, num_negative_samples=4)
    wrapper = train.get('train_data_loader', {}).get('dataset_wrapper') or {}
    if wrapper.get('key') == 'CRDDatasetWrapper':
        wrapper['kwargs']['num_negative_samples'] = 4
    return config


def models_of(config):
    """(teacher, student) as the runner builds them."""
    models = config['models']
    teacher_config = models.get('teacher_model')
    teacher = build_model(teacher_config, CPU, False, 'models.teacher_model') if teacher_config else None
    student = build_model(models.get('student_model') or models['model'], CPU, False, 'models.student_model')
    return teacher, student


def built_box(config):
    teacher, student = models_of(config)
    validate_model_paths(config, teacher, student)
    return build_box(teacher, student, config, CPU, None, False, 1)


def student_groups(box):
    """{id(param): group lr} of the optimizer."""
    return {id(p): group['lr'] for group in box.optimizer.param_groups for p in group['params']}


def adapter_entries(config):
    return [e for e in config['train']['optimizer']['module_wise_configs'] if e.get('is_teacher')]


@pytest.mark.parametrize('name', FASHION_MNIST)
def test_shipped_config_trains_every_trainable_parameter(name, tiny):
    """Every Fashion-MNIST config's box (each stage of multi-stage ones) passes the check; in its last stage every
    trainable student parameter is in the optimizer."""
    config = loaded(name)
    validate_config(config)
    box = built_box(config)
    num_stages = len([k for k in config['train'] if k.startswith('stage')]) or 1
    for _ in range(num_stages - 1):
        box.advance_to_next_stage()  # the check runs again for the new stage
    student = box.student_model if hasattr(box, 'student_model') else box.model
    grouped = student_groups(box)
    left_out = [n for n, p in student.named_parameters() if p.requires_grad and id(p) not in grouped]
    assert left_out == []


def test_listing_only_the_adapters_stops_naming_the_student_modules(tiny):
    config = loaded(PESFKD)
    config['train']['optimizer']['module_wise_configs'] = adapter_entries(config)
    with pytest.raises(ConfigError) as error:
        built_box(config)
    message = str(error.value)
    assert message.startswith('train.optimizer.module_wise_configs: student modules ')
    for module in ('conv1', 'bn1', 'layer1', 'layer2', 'layer3', 'fc'):
        assert f"'{module}'" in message
    assert "module: '*'" in message and '\n' not in message


def test_forgetting_the_adapters_stops_naming_them(tiny):
    """PESF-KD's loss trains the teacher side: adapters left out of the optimizer would never move."""
    config = loaded(PESFKD)
    optimizer = config['train']['optimizer']
    optimizer['module_wise_configs'] = [e for e in optimizer['module_wise_configs'] if not e.get('is_teacher')]
    with pytest.raises(ConfigError, match=r"^train\.optimizer\.module_wise_configs: teacher module 'adapters' "):
        built_box(config)


def test_frozen_teacher_left_out_is_fine(tiny):
    """KD with a frozen teacher and the student listed module by module: nothing trainable is left out."""
    config = loaded('resnet56_resnet20_kd.yaml')
    config['train']['optimizer']['module_wise_configs'] = [
        {'module': m, 'kwargs': {'lr': 0.05}} for m in ('conv1', 'bn1', 'layer1', 'layer2', 'layer3', 'fc')]
    box = built_box(config)
    assert len(box.optimizer.param_groups) == 6


def test_star_gives_every_other_student_module_the_default_kwargs(tiny):
    """Adapters at their own lr, and '*' for the student: the same parameters train at the same lrs as the shipped
    config that lists every student module, and the scheduler schedules the '*' group too."""
    explicit = built_box(loaded(PESFKD))
    config = loaded(PESFKD)
    adapters = adapter_entries(config)
    adapters[0]['kwargs']['lr'] = 2.0e-5
    config['train']['optimizer']['module_wise_configs'] = adapters + [{'module': '*', 'is_teacher': False}]
    box = built_box(config)
    default_lr = config['train']['optimizer']['kwargs']['lr']
    assert [g['lr'] for g in box.optimizer.param_groups] == [2.0e-5, default_lr]
    star = box.optimizer.param_groups[1]
    assert star['momentum'] == config['train']['optimizer']['kwargs']['momentum']
    student = box.student_model
    assert {id(p) for p in star['params']} == {id(p) for p in student.parameters() if p.requires_grad}
    explicit_ids = {id(p) for g in explicit.optimizer.param_groups for p in g['params']}
    assert len(explicit_ids) == sum(len(g['params']) for g in box.optimizer.param_groups)
    milestone = config['train']['scheduler']['kwargs']['milestones'][0]
    gamma = config['train']['scheduler']['kwargs']['gamma']
    for _ in range(milestone):
        box.optimizer.step()
        box.lr_scheduler.step()
    assert [g['lr'] for g in box.optimizer.param_groups] == pytest.approx([2.0e-5 * gamma, default_lr * gamma])


def test_star_with_its_own_kwargs_and_for_the_teacher(tiny):
    config = loaded('resnet56_resnet20_ftkd.yaml')  # FT-KD trains the whole teacher
    config['train']['optimizer']['module_wise_configs'] = [
        {'module': 'fc', 'is_teacher': True, 'kwargs': {'lr': 0.5}},
        {'module': '*', 'is_teacher': True, 'kwargs': {'lr': 0.01}},
        {'module': '*', 'is_teacher': False}]
    box = built_box(config)
    assert [g['lr'] for g in box.optimizer.param_groups] == [0.5, 0.01, config['train']['optimizer']['kwargs']['lr']]
    teacher_ids = {id(p) for p in box.teacher_model.parameters()}
    assert {id(p) for p in box.optimizer.param_groups[1]['params']} == teacher_ids - {
        id(p) for p in box.optimizer.param_groups[0]['params']}


@pytest.mark.parametrize('entries, match', [
    ([{'module': '*'}], r"only `module: '\*'` entries"),
    ([{'module': 'fc'}, {'module': '*'}, {'module': '*'}], r"`module: '\*'` twice for the student"),
])
def test_star_misuse_is_one_line(entries, match, tiny):
    config = loaded('resnet56_resnet20_kd.yaml')
    config['train']['optimizer']['module_wise_configs'] = entries
    with pytest.raises(ConfigError, match=match):
        built_box(config)


@pytest.mark.parametrize('entry, match', [
    ({'module': 'layr1'}, r"^train\.optimizer\.module_wise_configs\[0\]\.module: module path `layr1` is not in the "
                          r"model\. Closest: layer1"),
    ({'module': 'fc', 'lr': 0.1}, r"^train\.optimizer\.module_wise_configs\[0\]: unknown key\(s\) \['lr'\]"),
    ({'kwargs': {'lr': 0.1}}, r'^train\.optimizer\.module_wise_configs\[0\]\.module: missing'),
])
def test_bad_module_wise_entry_names_its_key(entry, match, tiny):
    config = loaded('resnet56_resnet20_kd.yaml')
    config['train']['optimizer']['module_wise_configs'] = [entry]
    teacher, student = models_of(config)
    with pytest.raises(ConfigError, match=match):
        validate_model_paths(config, teacher, student)
