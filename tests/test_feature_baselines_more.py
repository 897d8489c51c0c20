"""CC, AB, FT and FSP as the generated configs set them up, against hand-written formulas (RepDistiller's forms:
distiller_zoo/CC.py, AB.py, FT.py, FSP.py), with their gradient routing and the two-stage runs of AB, FT, FSP."""
import logging
import os

import pytest
import torch
from torch.nn import functional as F
from torchdistill.losses.registry import get_mid_level_loss
from torchdistill.models.classification.resnet import resnet20
from torchdistill.models.registry import get_auxiliary_model_wrapper

from test_feature_baselines import generated

CPU = torch.device('cpu')


def sub_terms(config, stage):
    block = config['train'][stage] if stage else config['train']
    return block['criterion']['kwargs']['sub_terms']


def loss_of(config, stage, name):
    term = sub_terms(config, stage)[name]
    return get_mid_level_loss(term['criterion']), term['weight']


def wrapper_of(config, stage, side, **model):
    block = config['train'][stage] if stage else config['train']
    spec = block[side]['auxiliary_model_wrapper']
    return get_auxiliary_model_wrapper(spec['key'], **model, device=CPU, device_ids=None, distributed=False,
                                       **spec['kwargs'])


def pooled(f, size):
    """Average pooling to size x size by reshaping (a hand version of adaptive_avg_pool2d for whole factors)."""
    n, c, h, w = f.shape
    return f.reshape(n, c, size, h // size, size, w // size).mean((3, 5))


# ---- CC ----

def test_cc_config_is_repdistillers_correlation_with_trained_embeddings():
    config = generated('cc')
    loss, weight = loss_of(config, None, 'cc')
    assert weight == 0.02 and set(sub_terms(config, None)) == {'ce', 'cc'}          # CE 1 + 0.02 CC, no KD
    teacher = wrapper_of(config, None, 'teacher', teacher_model=resnet20(num_classes=10).eval())
    student = wrapper_of(config, None, 'student', student_model=resnet20(num_classes=10))
    teacher.model.requires_grad_(False)                                             # frozen_modules: ['model']
    x = torch.randn(5, 3, 32, 32)
    embeddings = {}
    for name, side in (('teacher', teacher), ('student', student)):
        feats = {}
        side.model.avgpool.register_forward_hook(lambda m, a, out: feats.update(pool=out))
        side.linear.register_forward_hook(lambda m, a, out, name=name: embeddings.update({name: out}))
        side(x)
        side.secondary_forward({'model.avgpool': {'output': feats['pool']}})
        assert embeddings[name].shape == (5, 128)
    value = loss({'linear': {'output': embeddings['student']}}, {'linear': {'output': embeddings['teacher']}})
    e_s, e_t = embeddings['student'], embeddings['teacher']
    hand = sum(sum(abs(e_s[i, d] - e_t[i, d]) * abs(e_s[i + 1, d] - e_t[i + 1, d]) for d in range(128))
               for i in range(4)) / 4
    torch.testing.assert_close(value, hand)
    value.backward()
    assert teacher.linear.weight.grad.abs().sum() > 0 and student.linear.weight.grad.abs().sum() > 0
    assert student.model.conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.model.parameters())                  # the teacher network: none
    groups = config['train']['optimizer']['module_wise_configs']
    assert {(g['module'], g['is_teacher']) for g in groups if g['module'] == 'linear'} == {('linear', False),
                                                                                            ('linear', True)}


def test_cc_needs_two_samples():
    loss = get_mid_level_loss({'key': 'CorrelationCongruenceLoss', 'kwargs': {
        'student_module_path': 'linear', 'teacher_module_path': 'linear'}})
    with pytest.raises(ValueError, match='at least 2 samples'):
        loss({'linear': {'output': torch.randn(1, 4)}}, {'linear': {'output': torch.randn(1, 4)}})


# ---- AB ----

def test_ab_connector_reads_pre_activations_and_the_loss_is_repdistillers():
    config = generated('ab')
    assert set(config['train']) >= {'stage1', 'stage2'} and 'num_epochs' not in config['train']
    assert set(sub_terms(config, 'stage1')) == {'ab'} and set(sub_terms(config, 'stage2')) == {'ce'}
    assert 'model.fc' not in [g['module'] for g in config['train']['stage1']['optimizer']['module_wise_configs']]
    student = wrapper_of(config, 'stage1', 'student', student_model=resnet20(num_classes=10)).train()
    assert not list(student.connectors.parameters())            # equal channels: identity connectors, as RepDistiller
    outputs = {}
    for name, connector in student.connectors.items():
        connector.register_forward_hook(lambda m, a, out, name=name: outputs.update({name: out}))
    stage_outputs = {}
    for name in ('layer1', 'layer2', 'layer3'):
        getattr(student.model, name).register_forward_hook(lambda m, a, out, name=name: stage_outputs.update(
            {name: out}))
    x = torch.randn(4, 3, 32, 32)
    student(x)
    net = student.model
    with torch.no_grad():                                       # hand pre-activation of layer1's last block
        h = net.layer1[1](net.layer1[0](net.relu(net.bn1(net.conv1(x)))))
        block = net.layer1[2]
        pre = block.bn2(block.conv2(block.relu(block.bn1(block.conv1(h))))) + h
    torch.testing.assert_close(outputs['stage1'], pre, rtol=1e-4, atol=1e-5)
    assert (outputs['stage1'] < 0).any()                        # before the ReLU: the loss can push it below 0
    torch.testing.assert_close(F.relu(outputs['stage3']), stage_outputs['layer3'])
    loss, weight = loss_of(config, 'stage1', 'ab')
    teacher_io = {f'layer{i}': {'output': F.relu(torch.randn_like(outputs[f'stage{i}']))} for i in (1, 2, 3)}
    value = weight * loss({f'connectors.stage{i}': {'output': outputs[f'stage{i}']} for i in (1, 2, 3)}, teacher_io)
    hand = 0
    for i, w in zip((1, 2, 3), (0.25, 0.5, 1.0)):               # RepDistiller: 2^(i-3), sum / batch / 1000 * 3
        s, t = outputs[f'stage{i}'], teacher_io[f'layer{i}']['output']
        hand = hand + w * (((s + 1) ** 2) * ((s > -1) & (t <= 0)) + ((s - 1) ** 2) * ((s <= 1) & (t > 0))).sum() \
            / 4 / 1000 * 3
    torch.testing.assert_close(value, hand)
    value.backward()
    assert net.layer1[0].conv1.weight.grad.abs().sum() > 0 and net.layer3[2].conv2.weight.grad.abs().sum() > 0
    assert net.fc.weight.grad is None                           # stage 1 never reaches the classifier


@pytest.mark.parametrize('connectors, match', [
    ({'stage1': {'path': 'layer1', 'in_channels': 16, 'out_channels': 16}}, 'connectors.stage1.path'),
    ({'stage1': {'path': 'layer1.2', 'in_channels': 0, 'out_channels': 16}}, 'in_channels'),
    ({}, 'non-empty dict'),
])
def test_ab_connector_rejects_bad_connectors(connectors, match):
    from pesf_ext.models import PreActivationConnector
    with pytest.raises(ValueError, match=match):
        PreActivationConnector(resnet20(num_classes=10), CPU, connectors=connectors)


def test_ab_connector_projects_when_channels_differ():
    from pesf_ext.models import PreActivationConnector
    student = PreActivationConnector(resnet20(num_classes=10), CPU, connectors={
        'stage1': {'path': 'layer1.2', 'in_channels': 16, 'out_channels': 32}})
    out = {}
    student.connectors['stage1'].register_forward_hook(lambda m, a, o: out.update(o=o))
    student(torch.randn(2, 3, 32, 32))
    assert out['o'].shape == (2, 32, 32, 32) and len(list(student.connectors.parameters())) == 3  # conv, BN w, b


# ---- FT ----

def test_ft_loss_is_repdistillers_factor_transfer():
    config = generated('ft')
    loss, weight = loss_of(config, 'stage2', 'ft')
    assert weight == 200.0 and set(sub_terms(config, 'stage2')) == {'ce', 'ft'}
    f_s = torch.randn(3, 32, 8, 8, dtype=torch.float64, requires_grad=True)
    f_t = torch.randn(3, 32, 16, 16, dtype=torch.float64)                   # larger: pooled to 8 x 8
    value = loss({'translator': {'output': f_s}}, {'paraphraser': {'output': f_t}})

    def factor(f):
        a = (f ** 2).mean(1).flatten(1)
        return a / a.norm(dim=1, keepdim=True)
    hand = (factor(f_s) - factor(pooled(f_t, 8))).abs().mean()
    torch.testing.assert_close(value, hand)
    (grad,) = torch.autograd.grad(value, f_s)
    assert grad.abs().sum() > 0
    with pytest.raises(ValueError, match='p must be'):
        get_mid_level_loss({'key': 'FactorTransferLoss', 'kwargs': {'p': 0}})


def test_ft_paraphraser_trains_in_stage1_and_is_a_fixed_target_in_stage2():
    config = generated('ft')
    teacher_net = resnet20(num_classes=10).eval().requires_grad_(False)
    stage1 = wrapper_of(config, 'stage1', 'teacher', teacher_model=teacher_net)
    feature = torch.rand(4, 64, 8, 8)                                        # the teacher's layer3 (post-ReLU)
    out = {}
    stage1.paraphraser.register_forward_hook(lambda m, a, o: out.update(o=o))
    stage1.secondary_forward({'model.layer3': {'output': feature}})
    assert out['o'].shape == feature.shape                                   # stage 1: the reconstruction
    recon_term = sub_terms(config, 'stage1')['reconstruction']
    assert recon_term['criterion_wrapper']['kwargs']['target']['module_path'] == 'model.layer3'
    F.mse_loss(out['o'], feature).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in stage1.paraphraser.encoder.parameters())
    assert all(p.grad is None for p in teacher_net.parameters())
    stage2 = wrapper_of(config, 'stage2', 'teacher', teacher_model=teacher_net)
    assert stage2.paraphraser is stage1.paraphraser                          # what stage 1 trained
    stage2.secondary_forward({'model.layer3': {'output': feature}})
    assert out['o'].shape == (4, 32, 8, 8) and not out['o'].requires_grad    # the factor, k = 0.5, no grad
    fresh = wrapper_of(config, 'stage1', 'teacher', teacher_model=resnet20(num_classes=10))
    assert fresh.paraphraser is not stage1.paraphraser                       # another run starts afresh
    from pesf_ext.models import ParaphraserTeacher
    with pytest.raises(ValueError, match='paraphraser_kwargs'):
        ParaphraserTeacher(teacher_net, CPU, input_module_path='model.layer3',
                           paraphraser_kwargs={'k': 0.25, 'num_input_channels': 64, 'uses_bn': False})
    groups = config['train']['stage2']['optimizer']['module_wise_configs']
    assert not any(g['is_teacher'] for g in groups) and 'translator' in [g['module'] for g in groups]


# ---- FSP ----

MAPS = {'relu': (16, 32), 'layer1': (16, 32), 'layer2': (32, 16), 'layer3': (64, 8)}   # stem + stages


def test_fsp_config_is_repdistillers_fsp_on_the_stem_and_stages():
    config = generated('fsp')
    loss, weight = loss_of(config, 'stage1', 'fsp')
    assert weight == 1.0 and set(sub_terms(config, 'stage2')) == {'ce'}
    assert 'fc' not in [g['module'] for g in config['train']['stage1']['optimizer']['module_wise_configs']]
    g = torch.Generator().manual_seed(0)
    student = {p: {'output': torch.randn(2, c, s, s, generator=g, dtype=torch.float64, requires_grad=True)}
               for p, (c, s) in MAPS.items()}
    teacher = {p: {'output': torch.randn(2, c, s, s, generator=g, dtype=torch.float64)} for p, (c, s) in MAPS.items()}
    value = loss(student, teacher)

    def fsp(bottom, top):
        size = min(bottom.shape[2], top.shape[2])
        bottom, top = pooled(bottom, size), pooled(top, size)
        return torch.einsum('nihw,njhw->nij', top, bottom) / size ** 2
    hand = 0
    paths = list(MAPS)
    for a, b in zip(paths, paths[1:]):
        diff = fsp(student[a]['output'], student[b]['output']) - fsp(teacher[a]['output'], teacher[b]['output'])
        hand = hand + (diff ** 2).sum() / diff.numel()
    torch.testing.assert_close(value, hand)
    grads = torch.autograd.grad(value, [student[p]['output'] for p in paths])
    assert all(gr.abs().sum() > 0 for gr in grads)
    bad = {**teacher, 'layer2': {'output': torch.randn(2, 16, 16, 16, dtype=torch.float64)}}
    with pytest.raises(ValueError, match='equal channels'):
        loss(student, bad)
    with pytest.raises(ValueError, match='student_paths'):
        get_mid_level_loss({'key': 'FSPMatrixLoss', 'kwargs': {'student_paths': ['relu'], 'teacher_paths': ['relu']}})


# ---- two stages through the runner ----

def test_two_stage_run_switches_stage_and_resumes_into_stage2(tmp_path, monkeypatch, caplog):
    """AB on tiny data: stage 1 (AB only) then stage 2 (CE); a resumed run with one more stage-2 epoch continues in
    stage 2 (its optimizer state loads into stage 2's optimizer)."""
    from test_configs import ROOT, make_teacher_checkpoint, shrink
    from pesf_ext.engine.config import load_config
    from pesf_ext.engine.models import build_model
    from pesf_ext.engine.runner import get_args, run
    from pesf_ext.engine.synthetic import synthetic_data
    monkeypatch.chdir(tmp_path)
    path = os.path.join(ROOT, 'configs', 'fashion_mnist', 'resnet56_resnet20_ab.yaml')
    with synthetic_data(num_samples=8), caplog.at_level(logging.INFO):
        config = load_config(path)
        shrink(config)
        make_teacher_checkpoint(config)
        first = run(get_args(['--config', path, '--device', 'cpu', '--seed', '0']), build_model, config=config)
        assert 'Advanced to stage 2' in caplog.text
        student_trainable, student_total = first['counts']['student']
        assert student_trainable == student_total                   # stage 2 trains the classifier too
        caplog.clear()
        config = load_config(path)
        shrink(config)
        config['train']['stage2']['num_epochs'] = 2
        run(get_args(['--config', path, '--device', 'cpu', '--seed', '0', '-resume']), build_model, config=config)
    assert 'Advanced to stage 2' in caplog.text and 'after epoch 1' in caplog.text
    assert 'Epoch: [2]' in caplog.text and 'Epoch: [1]' not in caplog.text
