"""CIFAR VGG-8 / VGG-13 (RepDistiller layout) registered in torchdistill's model registry."""
import pytest
import torch
from torchdistill.models.registry import MODEL_DICT, get_model

import pesf_ext  # noqa: F401  (registers vgg8 / vgg13)
from pesf_ext.models import vgg8, vgg13


@pytest.mark.parametrize('key, builder, num_params, num_convs', [('vgg8', vgg8, 3_965_028, 5),
                                                                 ('vgg13', vgg13, 9_462_180, 10)])
def test_registered_shapes_and_sizes(key, builder, num_params, num_convs):
    assert MODEL_DICT[key] is builder
    model = get_model(key, num_classes=100).eval()
    assert sum(p.numel() for p in model.parameters()) == num_params  # RepDistiller: vgg8 3.96M, vgg13 9.46M
    assert sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) == num_convs
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    assert get_model(key, num_classes=10)(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    names = {name for name, _ in model.named_children()}
    assert names == {f'block{i}' for i in range(5)} | {f'pool{i}' for i in range(5)} | {'classifier'} | \
        {f'relu{i}' for i in range(5)}   # relu0..relu4: parameter-free, for feature hooks


def test_relu_modules_give_repdistiller_features():
    """``block<i>`` outputs RepDistiller's f<i>_pre, ``relu<i>`` its f<i> = relu(f<i>_pre) (not in place), and the
    shapes are RepDistiller's for 32x32 inputs: f0 64@32, f1 128@16, f2 256@8, f3 512@4, f4 512@4."""
    model = vgg8(num_classes=10).eval()
    seen = {}
    for name in [f'block{i}' for i in range(5)] + [f'relu{i}' for i in range(5)]:
        getattr(model, name).register_forward_hook(lambda m, a, out, name=name: seen.__setitem__(name, out))
    model(torch.randn(2, 3, 32, 32))
    for i, (channels, size) in enumerate(((64, 32), (128, 16), (256, 8), (512, 4), (512, 4))):
        assert seen[f'relu{i}'].shape == (2, channels, size, size)
        assert seen[f'block{i}'].min() < 0   # the pre-activation was not overwritten by an in-place ReLU
        assert torch.equal(seen[f'relu{i}'], seen[f'block{i}'].clamp(min=0))


def test_repdistiller_state_dict_keys():
    keys = list(vgg13().state_dict())
    assert keys[:7] == ['block0.0.weight', 'block0.0.bias', 'block0.1.weight', 'block0.1.bias',
                        'block0.1.running_mean', 'block0.1.running_var', 'block0.1.num_batches_tracked']
    assert 'block0.3.weight' in keys and 'block0.5.weight' not in keys  # conv-BN-ReLU-conv-BN, last ReLU in forward
    assert keys[-2:] == ['classifier.weight', 'classifier.bias']


def test_unknown_kwargs_are_rejected():
    with pytest.raises(TypeError):
        vgg8(num_classes=10, pretrained=True)
