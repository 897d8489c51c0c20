"""The feature rows of the VGG-8 pairs (VGG-13 -> VGG-8, ResNet-56 -> VGG-8) as the generated CIFAR-100 configs set
them up, against hand-written RepDistiller formulas, with their gradient routing: the pooled AT / VID losses, FitNet's
ConvReg across map sizes, AB's connectors on VGG block outputs; and the rows RepDistiller cannot build.

The ResNet-56 teacher is stood in for by a ResNet-20: same stage shapes (16@32, 32@16, 64@8), a third of the cost."""
import functools

import pytest
import torch
import yaml
from torch.nn import functional as F
from torchdistill.losses.registry import get_mid_level_loss
from torchdistill.models.classification.resnet import resnet20
from torchdistill.models.registry import get_auxiliary_model_wrapper

import make_configs
from pesf_ext.models import HintRegressor, vgg8, vgg13
from test_feature_baselines import TaglessLoader

CPU = torch.device('cpu')
NEW_ROWS = {'vgg13_vgg8': ('at', 'sp', 'fitnet', 'vid', 'cc', 'ab', 'ft', 'fsp'),
            'resnet56_vgg8': ('at', 'sp', 'fitnet', 'vid', 'cc', 'ft')}


@functools.lru_cache(maxsize=None)
def all_configs():
    return make_configs.all_configs()


def generated(pair, name):
    return yaml.load(all_configs()[f'cifar100/{pair}_{name}.yaml'], TaglessLoader)


def term_of(config, name, stage=None):
    block = config['train'][stage] if stage else config['train']
    term = block['criterion']['kwargs']['sub_terms'][name]
    return term, get_mid_level_loss(term['criterion'])


def wrap(spec, model):
    return get_auxiliary_model_wrapper(spec['key'], student_model=model, device=CPU, device_ids=None,
                                       distributed=False, **spec['kwargs'])


def capture(model, paths):
    """Forward hooks storing each module's output in {path: {'output': tensor}}, as torchdistill's io_dict."""
    io = {}
    for path in paths:
        model.get_submodule(path).register_forward_hook(
            lambda m, a, out, path=path: io.__setitem__(path, {'output': out}))
    return io


def frozen_teacher(model, paths, x):
    """A frozen teacher as torchdistill runs it (requires_grad False, eval, no grad), with its hooked outputs."""
    model.requires_grad_(False).eval()
    io = capture(model, paths)
    with torch.no_grad():
        model(x)
    return model, io


def pool(f, size):
    """Average pooling to size x size by reshaping (adaptive_avg_pool2d for whole factors, written out)."""
    n, c, h, w = f.shape
    return f.reshape(n, c, size, h // size, size, w // size).mean((3, 5))


def attention(f):
    a = f.pow(2).mean(1).flatten(1)
    return a / a.norm(dim=1, keepdim=True)


def test_new_rows_exist_and_only_those():
    names = {p for p in all_configs() if p.startswith(('cifar100/vgg13_vgg8_', 'cifar100/resnet56_vgg8_'))}
    for pair, rows in NEW_ROWS.items():
        assert {f'cifar100/{pair}_{r}.yaml' for r in rows} <= names
    assert 'cifar100/resnet56_vgg8_ab.yaml' not in names and 'cifar100/resnet56_vgg8_fsp.yaml' not in names


@pytest.mark.parametrize('pair, name', [(p, n) for p, rows in NEW_ROWS.items() for n in rows if n not in ('cc', 'ft')])
def test_the_teacher_network_is_frozen(pair, name):
    config = generated(pair, name)
    blocks = [config['train'][s] for s in ('stage1', 'stage2') if s in config['train']] or [config['train']]
    for block in blocks:
        assert block['teacher']['requires_grad'] is False
        assert not any(g['is_teacher'] for g in block['optimizer'].get('module_wise_configs') or [])


@pytest.mark.parametrize('pair, method', [('resnet56_vgg8', 'ab'), ('resnet56_vgg8', 'fsp')])
def test_rows_repdistiller_cannot_build_are_refused(pair, method):
    pair = next(p for p in make_configs.PAIRS_CIFAR if p.tag == pair)
    with pytest.raises(ValueError, match='as many'):
        make_configs.distillation_config(make_configs.CIFAR100, pair, make_configs.METHODS[method])


def test_at_resnet56_vgg8_pools_the_teacher_map_and_only_the_student_learns():
    config = generated('resnet56_vgg8', 'at')
    term, loss = term_of(config, 'at')
    assert term['criterion']['key'] == 'PooledATLoss' and term['weight'] == 1000.0
    pairs = term['criterion']['kwargs']['at_pairs']                    # RepDistiller's zip: 3 of the student's 4
    assert [(p['student']['path'], p['teacher']['path']) for p in pairs.values()] == \
        [('relu1', 'layer1'), ('relu2', 'layer2'), ('relu3', 'layer3')]
    assert config['train']['student']['forward_hook']['output'] == ['relu1', 'relu2', 'relu3']
    x = torch.randn(4, 3, 32, 32)
    teacher, t_io = frozen_teacher(resnet20(num_classes=100), ['layer1', 'layer2', 'layer3'], x)
    student = vgg8(num_classes=100).train()
    s_io = capture(student, ['relu1', 'relu2', 'relu3'])
    student(x)
    value = term['weight'] * loss(s_io, t_io)
    hand = 0
    for i in (1, 2, 3):                                                # student 16/8/4, teacher 32/16/8
        s, t = s_io[f'relu{i}']['output'], t_io[f'layer{i}']['output']
        assert t.shape[2] == 2 * s.shape[2]
        hand = hand + ((attention(s) - attention(pool(t, s.shape[2]))) ** 2).mean()
    torch.testing.assert_close(value, 1000.0 * hand)
    value.backward()
    assert student.block0[0].weight.grad.abs().sum() > 0 and student.block3[0].weight.grad.abs().sum() > 0
    assert student.block4[0].weight.grad is None and student.classifier.weight.grad is None   # f4 is not paired
    assert all(p.grad is None for p in teacher.parameters())


def test_at_vgg13_vgg8_pairs_all_four_stages_with_torchdistills_loss():
    term, _ = term_of(generated('vgg13_vgg8', 'at'), 'at')
    assert term['criterion']['key'] == 'ATLoss'                        # equal sizes: nothing to pool
    assert [(p['student']['path'], p['teacher']['path']) for p in term['criterion']['kwargs']['at_pairs'].values()] \
        == [(f'relu{i}', f'relu{i}') for i in (1, 2, 3, 4)]


def test_pooled_at_pools_the_student_when_its_map_is_larger():
    loss = get_mid_level_loss({'key': 'PooledATLoss', 'kwargs': {'at_pairs': {'a': {
        'student': {'path': 's', 'io': 'output'}, 'teacher': {'path': 't', 'io': 'output'}, 'weight': 2}}}})
    s, t = torch.randn(3, 5, 8, 8, dtype=torch.float64), torch.randn(3, 7, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(loss({'s': {'output': s}}, {'t': {'output': t}}),
                               2 * ((attention(pool(s, 4)) - attention(t)) ** 2).mean())


def test_vid_resnet56_vgg8_regressors_and_pooled_target():
    config = generated('resnet56_vgg8', 'vid')
    term, loss = term_of(config, 'vid')
    assert term['criterion']['key'] == 'PooledVIDLoss' and term['weight'] == 1.0
    wrapper = wrap(config['train']['student']['auxiliary_model_wrapper'], vgg8(num_classes=100)).train()
    shapes = {k: (r.regressor[0].in_channels, r.regressor[-1].out_channels) for k, r in wrapper.regressor_dict.items()}
    assert shapes == {'stage1': (128, 16), 'stage2': (256, 32), 'stage3': (512, 64)}   # student -> teacher channels
    x = torch.randn(4, 3, 32, 32)
    teacher, t_io = frozen_teacher(resnet20(num_classes=100), ['layer1', 'layer2', 'layer3'], x)
    s_io = capture(wrapper, [f'student_model.relu{i}' for i in (1, 2, 3)] +
                   [f'regressor_dict.stage{i}' for i in (1, 2, 3)])
    wrapper(x)
    wrapper.secondary_forward(s_io)
    value = loss(s_io, t_io)
    hand = 0
    for i in (1, 2, 3):
        mean, var = s_io[f'regressor_dict.stage{i}']['output']
        torch.testing.assert_close(mean, wrapper.regressor_dict[f'stage{i}'].regressor(
            s_io[f'student_model.relu{i}']['output']))
        torch.testing.assert_close(var.flatten(), torch.full((mean.shape[1],), 5.0))      # initial variance
        target = pool(t_io[f'layer{i}']['output'], mean.shape[2])
        hand = hand + (0.5 * ((mean - target) ** 2 / var + var.log())).mean()
    torch.testing.assert_close(value, hand)
    value.backward()
    assert all(r.regressor[0].weight.grad.abs().sum() > 0 for r in wrapper.regressor_dict.values())
    assert all(r.soft_plus_param.grad.abs().sum() > 0 for r in wrapper.regressor_dict.values())
    assert wrapper.student_model.block1[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_pooled_vid_refuses_a_student_map_larger_than_the_teachers():
    loss = get_mid_level_loss({'key': 'PooledVIDLoss', 'kwargs': {'feature_pairs': {'a': {
        'student': {'path': 's', 'io': 'output'}, 'teacher': {'path': 't', 'io': 'output'}}}}})
    with pytest.raises(ValueError, match='before the regressor'):
        loss({'s': {'output': (torch.randn(2, 4, 8, 8), torch.ones(1, 4, 1, 1))}}, {'t': {'output': torch.randn(
            2, 4, 4, 4)}})


def test_fitnet_resnet56_vgg8_conv_transpose_regressor_and_gradients():
    config = generated('resnet56_vgg8', 'fitnet')
    spec = config['train']['student']['auxiliary_model_wrapper']
    assert spec['kwargs'] == {'hint_module_path': 'relu2', 'in_channels': 256, 'out_channels': 32, 'in_size': 8,
                              'out_size': 16}
    term = config['train']['criterion']['kwargs']['sub_terms']['fitnet']
    assert term['criterion_wrapper']['kwargs']['target']['module_path'] == 'layer2' and term['weight'] == 100.0
    student = wrap(spec, vgg8(num_classes=100)).train()
    conv = student.regressor[0]
    assert isinstance(conv, torch.nn.ConvTranspose2d) and (conv.kernel_size, conv.stride, conv.padding) == \
        ((4, 4), (2, 2), (1, 1))                                       # RepDistiller's ConvReg for s_H * 2 == t_H
    x = torch.randn(4, 3, 32, 32)
    teacher, t_io = frozen_teacher(resnet20(num_classes=100), ['layer2'], x)
    s_io = capture(student, ['regressor', 'model.relu2'])
    student(x)
    regressed, target = s_io['regressor']['output'], t_io['layer2']['output']
    assert regressed.shape == target.shape == (4, 32, 16, 16)
    hand = F.relu(student.regressor[1](F.conv_transpose2d(s_io['model.relu2']['output'], conv.weight, conv.bias,
                                                          stride=2, padding=1)))
    torch.testing.assert_close(regressed, hand)
    value = 100.0 * F.mse_loss(regressed, target)
    torch.testing.assert_close(value, 100.0 * ((regressed - target) ** 2).sum() / regressed.numel())
    value.backward()
    assert conv.weight.grad.abs().sum() > 0 and student.model.block2[0].weight.grad.abs().sum() > 0
    assert student.model.block3[0].weight.grad is None and student.model.classifier.weight.grad is None
    assert all(p.grad is None for p in teacher.parameters())


@pytest.mark.parametrize('in_size, out_size, conv, out', [
    (8, 8, (torch.nn.Conv2d, (1, 1), (1, 1)), 8),           # RepDistiller: kernel 1 + s_H - t_H for s_H >= t_H
    (16, 8, (torch.nn.Conv2d, (3, 3), (2, 2)), 8),
    (8, 16, (torch.nn.ConvTranspose2d, (4, 4), (2, 2)), 16),
    (8, 6, (torch.nn.Conv2d, (3, 3), (1, 1)), 6),
])
def test_hint_regressor_is_repdistillers_conv_reg(in_size, out_size, conv, out):
    wrapper = HintRegressor(vgg8(num_classes=10), CPU, hint_module_path='relu2', in_channels=256, out_channels=32,
                            in_size=in_size, out_size=out_size)
    layer = wrapper.regressor[0]
    assert (type(layer), layer.kernel_size, layer.stride) == conv
    assert wrapper.regressor(torch.randn(2, 256, in_size, in_size)).shape == (2, 32, out, out)


def test_hint_regressor_refuses_what_conv_reg_cannot_map():
    with pytest.raises(ValueError, match='no regressor'):
        HintRegressor(vgg8(num_classes=10), CPU, hint_module_path='relu2', in_channels=256, out_channels=32,
                      in_size=4, out_size=16)


def test_fitnet_vgg13_vgg8_is_a_conv1x1_regressor():
    spec = generated('vgg13_vgg8', 'fitnet')['train']['student']['auxiliary_model_wrapper']
    assert spec['kwargs'] == {'hint_module_path': 'relu2', 'in_channels': 256, 'out_channels': 256, 'in_size': 8,
                              'out_size': 8}
    assert wrap(spec, vgg8(num_classes=100)).regressor[0].kernel_size == (1, 1)


def test_ab_vgg13_vgg8_reads_block_outputs_with_four_stage_weights():
    config = generated('vgg13_vgg8', 'ab')
    stage1 = config['train']['stage1']
    spec = stage1['student']['auxiliary_model_wrapper']
    assert {k: (c['path'], c['reads']) for k, c in spec['kwargs']['connectors'].items()} == \
        {f'stage{i}': (f'block{i}', 'output') for i in (1, 2, 3, 4)}
    assert stage1['teacher']['forward_hook']['output'] == ['relu1', 'relu2', 'relu3', 'relu4']
    assert stage1['teacher']['requires_grad'] is False
    term, loss = term_of(config, 'ab', 'stage1')
    student = wrap(spec, vgg8(num_classes=100)).train()
    assert not list(student.connectors.parameters())                  # equal channels and sizes: identity
    x = torch.randn(4, 3, 32, 32)
    teacher, t_io = frozen_teacher(vgg13(num_classes=100), ['relu1', 'relu2', 'relu3', 'relu4'], x)
    s_io = capture(student, [f'connectors.stage{i}' for i in (1, 2, 3, 4)])
    blocks = capture(student.model, [f'block{i}' for i in (1, 2, 3, 4)])
    student(x)
    hand = 0
    for i, w in zip((1, 2, 3, 4), (0.125, 0.25, 0.5, 1.0)):          # RepDistiller ABLoss(4): 2^(i-4)
        s, t = s_io[f'connectors.stage{i}']['output'], t_io[f'relu{i}']['output']
        torch.testing.assert_close(s, blocks[f'block{i}']['output'])     # f_i_pre, before the ReLU
        assert (s < 0).any()
        hand = hand + w * (((s + 1) ** 2) * ((s > -1) & (t <= 0)) + ((s - 1) ** 2) * ((s <= 1) & (t > 0))).sum() \
            / 4 / 1000 * 3
    value = term['weight'] * loss(s_io, t_io)
    torch.testing.assert_close(value, hand)
    value.backward()
    assert student.model.block0[0].weight.grad.abs().sum() > 0 and student.model.block4[0].weight.grad.abs().sum() > 0
    assert student.model.classifier.weight.grad is None
    assert all(p.grad is None for p in teacher.parameters())


def test_ft_fsp_sp_cc_modules_of_the_vgg8_pairs():
    ft = generated('resnet56_vgg8', 'ft')['train']
    translator = ft['stage2']['student']['auxiliary_model_wrapper']['kwargs']
    assert translator['input_module_path'] == 'student_model.relu4'             # RepDistiller feat[-2]: f4
    assert (translator['translator_kwargs']['num_input_channels'],
            translator['translator_kwargs']['num_output_channels']) == (512, 32)  # 0.5 x the teacher's 64
    paraphraser = ft['stage1']['teacher']['auxiliary_model_wrapper']['kwargs']
    assert paraphraser['input_module_path'] == 'model.layer3'
    assert paraphraser['paraphraser_kwargs']['num_input_channels'] == 64
    for pair in NEW_ROWS:                                   # RepDistiller's init lr: 0.01 for ResNet students only
        assert generated(pair, 'ft')['train']['stage1']['optimizer']['kwargs']['lr'] == 0.05
    fsp = generated('vgg13_vgg8', 'fsp')['train']['stage1']['criterion']['kwargs']['sub_terms']['fsp']
    assert fsp['criterion']['kwargs']['student_paths'] == fsp['criterion']['kwargs']['teacher_paths'] == \
        [f'relu{i}' for i in range(5)]
    sp = generated('resnet56_vgg8', 'sp')['train']['criterion']['kwargs']['sub_terms']['sp']['criterion']['kwargs']
    assert (sp['student_module_path'], sp['teacher_module_path']) == ('relu4', 'layer3')   # feat[-2] of each
    cc = generated('resnet56_vgg8', 'cc')['train']
    dims = [cc[side]['auxiliary_model_wrapper']['kwargs']['linear_kwargs']['in_features'] for side in ('student',
                                                                                                        'teacher')]
    assert dims == [512, 64]
