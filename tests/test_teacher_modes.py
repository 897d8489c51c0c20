"""AdapterTeacher (frozen base, trainable adapters, torchdistill integration) and the train-mode rule."""
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import RandomSampler, TensorDataset
from torchdistill.common.module_util import get_module
from torchdistill.core.distillation import DistillationBox
from torchdistill.models.classification.resnet import resnet20
from torchdistill.models.wrapper import build_auxiliary_model_wrapper

import pesf_ext  # noqa: F401  (registers AdapterTeacher and the pre-epoch process)
from pesf_ext.adapters import AdapterTeacher
from pesf_ext.procs import distillation_pre_epoch_process, set_train_mode_where_trainable

SPECS = [{'modules': ['layer2.*.bn2'], 'kind': 'bottleneck', 'bottleneck': 8},
         {'modules': ['fc'], 'kind': 'head', 'bottleneck': 8}]
CRD = {'key': 'Linear4CRD', 'kwargs': {'input_module_path': 'model.avgpool',
                                       'linear_kwargs': {'in_features': 64, 'out_features': 16}}}


def snapshot(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def assert_same(before, module):
    after = module.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_pesf_steps_change_adapters_only():
    torch.manual_seed(0)
    teacher = AdapterTeacher(resnet20(num_classes=10), SPECS, device='cpu', input_shape=[1, 3, 32, 32])
    base, adapters = snapshot(teacher.model), snapshot(teacher.adapters)
    teacher.train()
    assert teacher.adapters.training and not any(m.training for m in teacher.model.modules())
    assert not any(p.requires_grad for p in teacher.model.parameters())
    optimizer = torch.optim.SGD([p for p in teacher.parameters() if p.requires_grad], lr=0.1)
    x, labels, student_logits = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]), torch.randn(4, 10)
    for _ in range(3):
        optimizer.zero_grad()
        logits = teacher(x)
        kl = F.kl_div(F.log_softmax(logits / 4, 1), F.softmax(student_logits / 4, 1), reduction='batchmean')
        (F.cross_entropy(logits, labels) + kl).backward()
        optimizer.step()
    assert_same(base, teacher.model)  # weights AND BatchNorm running statistics, bitwise
    changed = teacher.adapters.state_dict()
    assert any(not torch.equal(adapters[k], changed[k]) for k in adapters)
    teacher.eval()
    assert not any(m.training for m in teacher.modules())


def test_composes_with_linear4crd_through_torchdistill():
    torch.manual_seed(0)
    config = {'auxiliary_model_wrapper': {'key': 'AdapterTeacher', 'kwargs': {
        'adapters': SPECS, 'input_shape': [1, 3, 32, 32], 'wrapper': CRD}}}
    teacher = build_auxiliary_model_wrapper(config, teacher_model=resnet20(num_classes=10), device='cpu',
                                            device_ids=None, distributed=False)
    assert isinstance(teacher, AdapterTeacher) and teacher.inner.is_teacher is False
    assert teacher.inner.normalizer.training and not teacher.model.training
    assert get_module(teacher, 'layer3') is get_module(teacher, 'model.layer3') is teacher.model.layer3
    assert get_module(teacher, 'normalizer') is teacher.inner.normalizer
    assert get_module(teacher, 'adapters') is teacher.adapters
    features = dict()
    teacher.model.avgpool.register_forward_hook(lambda m, i, o: features.__setitem__('output', o))
    logits = teacher(torch.randn(2, 3, 32, 32), dict())
    embedding = teacher.inner.normalizer(torch.flatten(features['output'], 1))
    teacher.secondary_forward({'model.avgpool': features})
    (logits.sum() + embedding.sum()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in teacher.adapters.named_parameters()
               if n.endswith('up.weight') or n.endswith('net.3.weight'))
    assert all(p.grad is None for p in teacher.model.parameters())


def test_state_dicts():
    torch.manual_seed(0)
    pretrained = resnet20(num_classes=10)
    teacher = AdapterTeacher(resnet20(num_classes=10), SPECS, device='cpu', wrapper=CRD)
    teacher.load_state_dict(pretrained.state_dict())  # a plain base checkpoint (train.teacher.src_ckpt)
    assert_same(pretrained.state_dict(), teacher.model)
    assert all(k.startswith(('layer2__', 'fc.')) for k in teacher.adapter_state_dict())
    full = snapshot(teacher)
    with torch.no_grad():
        for param in teacher.adapters.parameters():
            param.add_(1.0)
    teacher.load_state_dict(full)  # a full wrapper checkpoint
    assert_same(full, teacher)
    adapters = {k: v + 1 for k, v in teacher.adapter_state_dict().items()}
    teacher.load_adapter_state_dict(adapters)
    assert all(torch.equal(v, teacher.adapter_state_dict()[k]) for k, v in adapters.items())
    with pytest.raises(RuntimeError):
        teacher.load_state_dict({'conv1.weight': pretrained.conv1.weight})  # strict: missing base keys


def mixed_net():
    net = nn.Sequential(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout(0.5)),  # frozen block
                        nn.Linear(4, 4), nn.Dropout(0.5))
    for param in net[0].parameters():
        param.requires_grad = False
    return net


def test_train_mode_rule():
    teacher = resnet20(num_classes=10)
    for param in teacher.parameters():
        param.requires_grad = False
    set_train_mode_where_trainable(teacher)
    assert not any(m.training for m in teacher.modules())

    net = mixed_net()
    set_train_mode_where_trainable(net)
    assert [m.training for m in net.modules()] == [True, False, False, False, False, True, True]
    set_train_mode_where_trainable(net, mode=False)
    assert not any(m.training for m in net.modules())

    trainable = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)).eval()
    set_train_mode_where_trainable(trainable)
    assert all(m.training for m in trainable.modules())

    wrapped = nn.DataParallel(mixed_net())
    set_train_mode_where_trainable(wrapped)
    assert wrapped.training and [m.training for m in wrapped.module.modules()][:3] == [True, False, False]


class WarmupLoss(nn.Module):
    def __init__(self):
        super().__init__()
        self.epoch = None

    def set_epoch(self, epoch):
        self.epoch = epoch


class WeightedSum(nn.Module):
    """Keeps its sub-losses in a plain dict, as torchdistill's WeightedSumLoss does."""
    def __init__(self, term_dict):
        super().__init__()
        self.term_dict = term_dict


def test_pre_epoch_process_on_a_fake_box():
    teacher = AdapterTeacher(resnet20(num_classes=10), SPECS, device='cpu').train()
    nn.Module.train(teacher, True)  # what a freshly built teacher looks like: everything in train mode
    sub_loss = WarmupLoss()
    box = SimpleNamespace(teacher_model=teacher, student_model=mixed_net().eval(),
                          criterion=WeightedSum({'dkd': (sub_loss, 1.0)}),
                          teacher_io_dict={'fc': {'output': {0: 1}}}, student_io_dict={}, distributed=False,
                          train_data_loader=None)
    distillation_pre_epoch_process(box, epoch=2)
    assert box.student_model.training and box.teacher_io_dict == {'fc': {'output': {}}}
    assert teacher.adapters.training and not any(m.training for m in teacher.model.modules())
    assert sub_loss.epoch == 3


class TinyStudent(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))

    def forward(self, x):
        return self.net(x)


def test_real_distillation_box_trains_adapters_on_a_frozen_base():
    torch.manual_seed(0)
    dataset = TensorDataset(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)))
    kd = {'student_module_path': '.', 'student_module_io': 'output', 'teacher_module_path': 'fc',
          'teacher_module_io': 'output', 'temperature': 4.0, 'alpha': 0.5}
    train_config = {
        'num_epochs': 1,
        'train_data_loader': {'dataset_id': 'train', 'sampler': {'class_or_func': RandomSampler, 'kwargs': {}},
                              'kwargs': {'batch_size': 4}},
        'teacher': {'auxiliary_model_wrapper': {'key': 'AdapterTeacher', 'kwargs': {'adapters': SPECS}},
                    'requires_grad': True, 'forward_hook': {'output': ['fc']}, 'forward_proc': 'forward_batch_only'},
        'student': {'forward_proc': 'forward_batch_only'},
        'optimizer': {'key': 'SGD', 'kwargs': {'lr': 0.1}, 'module_wise_configs': [
            {'module': 'net'}, {'module': 'adapters', 'is_teacher': True, 'kwargs': {'lr': 0.05}}]},
        'criterion': {'key': 'WeightedSumLoss', 'kwargs': {'sub_terms': {
            'kd': {'criterion': {'key': 'KDLoss', 'kwargs': kd}, 'weight': 1.0}}}},
        'pre_epoch_process': 'distillation_pre_epoch_process',
    }
    box = DistillationBox(resnet20(num_classes=10), TinyStudent(), {'train': dataset}, train_config,
                          torch.device('cpu'), None, False, 1)
    teacher = box.teacher_model
    assert [group['lr'] for group in box.optimizer.param_groups] == [0.1, 0.05]
    base, adapters = snapshot(teacher.model), snapshot(teacher.adapters)
    nn.Module.train(teacher, True)
    box.pre_epoch_process(epoch=0)
    assert not any(m.training for m in teacher.model.modules()) and teacher.adapters.training
    for sample_batch, targets, supp_dict in box.train_data_loader:
        box.post_forward_process(loss=box.forward_process(sample_batch, targets, supp_dict))
    assert_same(base, teacher.model)
    changed = teacher.adapters.state_dict()
    assert any(not torch.equal(adapters[k], changed[k]) for k in adapters)
