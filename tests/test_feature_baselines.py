"""AT and SP as the generated configs set them up (torchdistill's ATLoss / SPKDLoss), against hand-written formulas
(Zagoruyko & Komodakis 2017 as RepDistiller computes it; Tung & Mori 2019), with their gradient routing."""
import pytest
import torch
import yaml
from torchdistill.losses.registry import get_mid_level_loss

import make_configs

STAGES = {'layer1': (16, 32), 'layer2': (32, 16), 'layer3': (64, 8)}   # channels, spatial size (CIFAR ResNets)


class TaglessLoader(yaml.SafeLoader):
    """Reads a generated config without building anything: torchdistill's tags (!import_call, !join) become None."""


TaglessLoader.add_multi_constructor('!', lambda loader, suffix, node: None)


def generated(name):
    return yaml.load(make_configs.all_configs()[f'fashion_mnist/resnet56_resnet20_{name}.yaml'], TaglessLoader)


def criterion(name, term):
    sub = generated(name)['train']['criterion']['kwargs']['sub_terms'][term]
    return get_mid_level_loss(sub['criterion']), sub['weight']


def features(seed, requires_grad):
    g = torch.Generator().manual_seed(seed)
    return {path: {'output': torch.randn(4, c, s, s, generator=g, dtype=torch.float64).requires_grad_(requires_grad)}
            for path, (c, s) in STAGES.items()}


def hand_attention(f):
    a = (f ** 2).mean(dim=1).flatten(1)
    return a / a.norm(dim=1, keepdim=True)


def hand_similarity(f):
    f = f.flatten(1)
    g = f @ f.t()
    return g / g.norm(dim=1, keepdim=True)


def test_at_config_is_the_stagewise_attention_loss():
    loss, weight = criterion('at', 'at')
    assert weight == 1000.0
    student, teacher = features(0, True), features(1, False)
    value = loss(student, teacher)
    hand = sum(((hand_attention(student[p]['output']) - hand_attention(teacher[p]['output'])) ** 2).mean()
               for p in STAGES)
    torch.testing.assert_close(value, hand)
    grads = torch.autograd.grad(value, [student[p]['output'] for p in STAGES])
    assert all(g.abs().sum() > 0 for g in grads)


def test_sp_config_is_the_similarity_preserving_loss():
    loss, weight = criterion('sp', 'sp')
    assert weight == 3000.0
    student, teacher = features(2, True), features(3, False)
    value = loss(student, teacher)
    s, t = student['layer3']['output'], teacher['layer3']['output']
    hand = ((hand_similarity(s) - hand_similarity(t)) ** 2).sum() / s.shape[0] ** 2
    torch.testing.assert_close(value, hand)
    (grad,) = torch.autograd.grad(value, s)
    assert grad.abs().sum() > 0


def test_torchdistill_spkd_normalises_rows_by_their_l1_norm():
    """Why the SP configs use pesf_ext's loss: torchdistill's SPKDLoss differs from the paper's L2 form."""
    from torchdistill.losses.mid_level import SPKDLoss
    student, teacher = features(4, False), features(5, False)
    theirs = SPKDLoss('layer3', 'layer3', 'batchmean')(student, teacher)
    s, t = student['layer3']['output'].flatten(1), teacher['layer3']['output'].flatten(1)
    gram_s, gram_t = s @ s.t(), t @ t.t()
    l1 = ((gram_s / gram_s.abs().sum(1, keepdim=True) - gram_t / gram_t.abs().sum(1, keepdim=True)) ** 2).sum() / 16
    torch.testing.assert_close(theirs, l1)
    ours, _ = criterion('sp', 'sp')
    assert not torch.allclose(ours(student, teacher), theirs)


@pytest.mark.parametrize('name', ['at', 'sp'])
def test_the_teacher_side_is_frozen(name):
    config = generated(name)
    assert config['train']['teacher']['requires_grad'] is False
    assert not any(g['is_teacher'] for g in config['train']['optimizer']['module_wise_configs'])


def test_fitnet_regressor_hint_and_loss():
    from torchdistill.models.classification.resnet import resnet20
    from pesf_ext.models import HintRegressor
    student = HintRegressor(resnet20(num_classes=10), torch.device('cpu'), hint_module_path='layer2', in_channels=32,
                            out_channels=32).train()
    term = generated('fitnet')['train']['criterion']['kwargs']['sub_terms']['fitnet']
    assert term['weight'] == 100.0 and term['criterion']['key'] == 'MSELoss'
    assert term['criterion_wrapper']['kwargs']['target'] == {'is_from_teacher': True, 'module_path': 'layer2',
                                                             'io': 'output'}
    x = torch.randn(4, 3, 32, 32)
    captured = {}
    student.regressor.register_forward_hook(lambda m, a, out: captured.update(regressed=out))
    logits = student(x)
    bare = student.model
    hint = bare.layer2(bare.layer1(bare.relu(bare.bn1(bare.conv1(x)))))
    torch.testing.assert_close(logits, bare(x))                          # the wrapper returns the student's output
    torch.testing.assert_close(captured['regressed'], student.regressor(hint))
    teacher_hint = torch.randn(4, 32, 16, 16)
    loss = term['weight'] * torch.nn.functional.mse_loss(captured['regressed'], teacher_hint)
    hand = 100.0 * ((captured['regressed'] - teacher_hint) ** 2).sum() / captured['regressed'].numel()
    torch.testing.assert_close(loss, hand)
    loss.backward()
    assert student.regressor[0].weight.grad.abs().sum() > 0 and bare.layer1[0].conv1.weight.grad.abs().sum() > 0
    assert bare.fc.weight.grad is None                                   # the hint loss stops at the hint layer


def test_vid_regressors_and_loss_as_configured():
    """VID: a Gaussian with a learned per-channel variance (init 5) predicts each teacher stage from the student's;
    L = mean of 0.5 ((mu - t)^2 / var + log var), summed over stages (Ahn et al. 2019, RepDistiller's form)."""
    from torchdistill.losses.registry import get_mid_level_loss as loss_of
    from torchdistill.models.registry import get_auxiliary_model_wrapper
    config = generated('vid')
    wrapper = config['train']['student']['auxiliary_model_wrapper']
    term = config['train']['criterion']['kwargs']['sub_terms']['vid']
    assert term['weight'] == 1.0
    from torchdistill.models.classification.resnet import resnet20
    student = get_auxiliary_model_wrapper(wrapper['key'], student_model=resnet20(num_classes=10),
                                          device=torch.device('cpu'), device_ids=None, distributed=False,
                                          **wrapper['kwargs'])
    feats = {p: torch.randn(4, c, s, s) for p, (c, s) in STAGES.items()}
    io = {f'student_model.{p}': {'output': f.requires_grad_()} for p, f in feats.items()}
    student.secondary_forward(io)   # the wrapper's regressors read the hooked stage outputs
    outputs = {}
    for i, p in enumerate(STAGES, 1):
        regressor = student.regressor_dict[f'stage{i}']
        outputs[f'regressor_dict.stage{i}'] = {'output': regressor(io[f'student_model.{p}']['output'])}
        torch.testing.assert_close(outputs[f'regressor_dict.stage{i}']['output'][1].flatten(),
                                   torch.full((STAGES[p][0],), 5.0))            # initial variance
    teacher = {p: {'output': torch.randn(4, c, s, s)} for p, (c, s) in STAGES.items()}
    value = loss_of(term['criterion'])(outputs, teacher)
    hand = 0
    for i, p in enumerate(STAGES, 1):
        mean, var = outputs[f'regressor_dict.stage{i}']['output']
        hand = hand + (0.5 * ((mean - teacher[p]['output']) ** 2 / var + torch.log(var))).mean()
    torch.testing.assert_close(value, hand)
    value.backward()
    assert all(f.grad.abs().sum() > 0 for f in feats.values())
    assert student.regressor_dict['stage1'].soft_plus_param.grad.abs().sum() > 0
