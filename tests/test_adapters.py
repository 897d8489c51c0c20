"""Adapter kinds and their hook-based injection: zero-init identity, trainability, dimension inference, errors."""
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torchdistill.models.classification.resnet import resnet20
from torchvision.models import resnet18

from pesf_ext.adapters import (ADAPTER_KINDS, count_parameters, inject_adapters, match_module_paths,
                               remove_adapters, trainable_report)
from pesf_ext.models import vgg8

INPUT_SHAPE = [1, 3, 32, 32]
CASES = {
    'resnet18': (lambda: resnet18(num_classes=10, weights=None), {
        'bottleneck': ['layer1.0', 'layer4.*'],
        'lora': ['layer2.0.conv1', 'fc'],
        'scaled_parallel': ['layer3.0.conv2', 'layer2.0', 'fc'],
        'head': ['fc'],
    }),
    'resnet20': (lambda: resnet20(num_classes=10), {
        'bottleneck': ['layer3', 'layer2.*.bn2'],
        'lora': ['layer1.0.conv1', 'fc'],
        'scaled_parallel': ['layer2.0', 'layer3.1.conv1'],
        'head': ['fc'],
    }),
    'vgg8': (lambda: vgg8(num_classes=10), {
        'bottleneck': ['block2', 'block3.1'],
        'lora': ['block1.0', 'classifier'],
        'scaled_parallel': ['block3.0', 'classifier'],
        'head': ['classifier'],
    }),
}


def frozen(model):
    for param in model.parameters():
        param.requires_grad = False
    return model.eval()


@pytest.mark.parametrize('kind', sorted(ADAPTER_KINDS))
@pytest.mark.parametrize('arch', sorted(CASES))
def test_zero_init_identity_then_training_changes_output(arch, kind):
    torch.manual_seed(0)
    build, targets = CASES[arch]
    model = frozen(build())
    x = torch.randn(2, 3, 32, 32)
    reference, keys = model(x), list(model.state_dict())
    adapters = inject_adapters(model, [{'modules': targets[kind], 'kind': kind, 'bottleneck': 8}], INPUT_SHAPE)
    assert len(adapters) >= len(targets[kind])
    assert torch.equal(model(x), reference)
    assert list(model.state_dict()) == keys

    optimizer = torch.optim.SGD(adapters.parameters(), lr=0.1)
    labels = torch.arange(2)
    for _ in range(3):
        optimizer.zero_grad()
        F.cross_entropy(model(x), labels).backward()
        optimizer.step()
    with torch.no_grad():
        assert not torch.allclose(model(x), reference)
    remove_adapters(adapters)
    assert torch.equal(model(x), reference)


def test_patterns_match_per_component():
    model = resnet20(num_classes=10)
    assert match_module_paths(model, 'layer3.*.bn2') == ['layer3.0.bn2', 'layer3.1.bn2', 'layer3.2.bn2']
    assert match_module_paths(model, 'layer1.*') == ['layer1.0', 'layer1.1', 'layer1.2']
    assert match_module_paths(model, 'fc') == ['fc']


def test_dimensions_from_type_probe_leaves_and_explicit_dim():
    model = frozen(resnet20(num_classes=10))
    specs = [{'modules': ['layer2.0'], 'kind': 'scaled_parallel'}, {'modules': ['layer3'], 'kind': 'bottleneck'},
             {'modules': ['layer1.0.bn1'], 'kind': 'bottleneck', 'dim': 16}]
    probed = inject_adapters(model, specs, INPUT_SHAPE)
    assert probed['layer2__0'].down.weight.shape == (32, 16) and probed['layer2__0'].down.stride == (2, 2)
    assert probed['layer2__0'].up.weight.shape == (32, 32)
    assert probed['layer3'].up.weight.shape == (64, 32) and probed['layer3'].up.spatial
    remove_adapters(probed)
    # without a probe, a block's dims come from its first/last leaf; a strided parallel path then needs the probe
    leaves = inject_adapters(model, specs[1:])
    assert leaves['layer3'].up.weight.shape == (64, 32)
    remove_adapters(leaves)
    with pytest.raises(ValueError, match=r"layer2\.0.*input_shape"):
        inject_adapters(model, specs[:1])


class TupleLayer(nn.Module):
    """A Hugging Face-like layer: (hidden, extra) output, called with a keyword argument."""
    def __init__(self, dim):
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, hidden_states):
        return self.norm(self.dense(hidden_states)), torch.ones(1)


class TupleNet(nn.Module):
    def __init__(self, dim=6):
        super().__init__()
        self.layer = TupleLayer(dim)
        self.act = nn.Tanh()
        self.head = nn.Linear(dim, 3)

    def forward(self, tokens):
        hidden, extra = self.layer(hidden_states=tokens)
        return self.head(self.act(hidden)) * extra


def test_tuple_outputs_keyword_inputs_and_no_probe():
    torch.manual_seed(0)
    model = frozen(TupleNet())
    tokens = torch.randn(2, 5, 6)
    reference = model(tokens)
    adapters = inject_adapters(model, [{'modules': ['layer'], 'kind': 'bottleneck', 'bottleneck': 4},
                                       {'modules': ['act'], 'kind': 'bottleneck',
                                        'dim': 6, 'bottleneck': 2}])
    assert adapters['layer'].up.weight.shape == (6, 4) and adapters['layer'].up.spatial is False
    assert torch.equal(model(tokens), reference)
    with torch.no_grad():
        adapters['layer'].up.bias.fill_(1.0)
    assert not torch.allclose(model(tokens), reference)


def test_graph_starts_at_the_first_adapter():
    model = frozen(resnet20(num_classes=10))
    inject_adapters(model, [{'modules': ['layer3'], 'kind': 'bottleneck'}], INPUT_SHAPE)
    needs_grad = dict()
    for name in ('conv1', 'layer1', 'layer2', 'layer3', 'fc'):
        getattr(model, name).register_forward_hook(
            lambda m, i, o, name=name: needs_grad.__setitem__(name, (o.requires_grad, o.grad_fn is None)))
    model(torch.randn(2, 3, 32, 32))
    assert needs_grad['conv1'] == needs_grad['layer1'] == needs_grad['layer2'] == (False, True)
    assert needs_grad['layer3'] == needs_grad['fc'] == (True, False)


def test_errors_name_the_problem():
    model = resnet20(num_classes=10)
    with pytest.raises(ValueError, match=r"layer3\.0\.bn3.*layer3\.0\.bn2"):
        inject_adapters(model, [{'modules': ['layer3.0.bn3'], 'kind': 'bottleneck'}])
    with pytest.raises(ValueError, match=r"unknown adapter kind `prefix`.*bottleneck.*head.*lora.*scaled_parallel"):
        inject_adapters(model, [{'modules': ['fc'], 'kind': 'prefix'}])
    with pytest.raises(ValueError, match=r"head adapter needs an nn.Linear.*layer3"):
        inject_adapters(model, [{'modules': ['layer3'], 'kind': 'head'}])
    with pytest.raises(ValueError, match=r"does not accept \['scale'\]"):
        inject_adapters(model, [{'modules': ['fc'], 'kind': 'lora', 'scale': 2.0}])
    with pytest.raises(ValueError, match=r"cannot infer the output feature size of module 'layer1\.0\.relu'.*spec"):
        inject_adapters(model, [{'modules': ['layer1.0.relu'], 'kind': 'bottleneck'}])
    with pytest.raises(ValueError, match="targeted by two adapter specs"):
        inject_adapters(model, [{'modules': ['fc'], 'kind': 'head'}, {'modules': ['f*'], 'kind': 'lora'}])
    unpadded = nn.Sequential(nn.Conv2d(3, 4, 3))
    with pytest.raises(ValueError, match="cannot match"):
        inject_adapters(unpadded, [{'modules': ['0'], 'kind': 'scaled_parallel'}])
    inject_adapters(model, [{'modules': ['fc'], 'kind': 'head'}])
    with pytest.raises(ValueError, match="already carries an adapter"):
        inject_adapters(model, [{'modules': ['fc'], 'kind': 'lora'}])


def test_parameter_report():
    model = frozen(resnet20(num_classes=100))
    adapters = inject_adapters(model, [{'modules': ['fc'], 'kind': 'head', 'bottleneck': 32}])
    head = 64 * 100 + 100 + 100 * 32 + 32 + 32 * 100 + 100
    assert count_parameters(adapters) == (head, head)
    holder = nn.ModuleDict({'model': model, 'adapters': adapters})
    base = sum(p.numel() for p in model.parameters())
    assert count_parameters(holder) == (head, base + head)
    assert trainable_report(holder, 'teacher') == \
        f'teacher: {head:,} trainable / {base + head:,} total parameters ({100 * head / (base + head):.2f}%)'


def test_tiny_bert_without_probe():
    transformers = pytest.importorskip('transformers')
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=16, num_labels=3)
    model = frozen(transformers.BertForSequenceClassification(config))
    tokens = torch.randint(0, 50, (2, 8))
    reference = model(input_ids=tokens).logits
    adapters = inject_adapters(model, [
        {'modules': ['bert.encoder.layer.*'], 'kind': 'bottleneck', 'bottleneck': 4},
        {'modules': ['bert.encoder.layer.*.attention.self.query'], 'kind': 'lora', 'bottleneck': 2},
        {'modules': ['classifier'], 'kind': 'head', 'bottleneck': 4}])
    assert adapters['bert__encoder__layer__0'].up.weight.shape == (16, 4)  # from the layer's last LayerNorm
    assert torch.equal(model(input_ids=tokens).logits, reference)
    model(input_ids=tokens).logits.sum().backward()
    assert all(p.grad is not None for p in adapters.parameters())
