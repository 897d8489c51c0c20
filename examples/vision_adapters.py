"""Adapter patterns on an ImageNet-style ResNet (torchvision; timm's ``resnet*`` use the same module names).

    python examples/vision_adapters.py

Prints, for a few patterns, the modules they select, the adapters' size, and checks that the adapted teacher still
gives the pretrained outputs (zero-initialised last projection). A ResNet block is not a ``Linear``/``Conv2d``/norm
layer, so its feature sizes come from a shape probe: pass ``input_shape`` (one input, batch 1). For a timm ViT the
same kind of patterns read ``blocks.*.mlp.fc2`` (a ``Linear``: no probe needed) or ``blocks.11`` (probe).
"""
import torch
from torchvision.models import resnet18

import pesf_ext.plain as pk
from pesf_ext.adapters import match_module_paths, remove_adapters

PATTERNS = {
    'last block (the shipped CIFAR/ImageNet placement)': [{'modules': ['layer4.1'], 'kind': 'bottleneck',
                                                           'bottleneck': 32}],
    'every block of the last stage': [{'modules': ['layer4.*'], 'kind': 'bottleneck', 'bottleneck': 32}],
    'head adapter on the classifier (the authors\' released placement)': [{'modules': ['fc'], 'kind': 'head',
                                                                           'bottleneck': 32}],
    'LoRA on the classifier': [{'modules': ['fc'], 'kind': 'lora', 'bottleneck': 8}],
}


def main():
    torch.manual_seed(0)
    teacher = resnet18(weights=None)   # yours: resnet18(weights='IMAGENET1K_V1') or timm.create_model(...)
    x = torch.randn(2, 3, 64, 64)
    teacher.eval()
    with torch.no_grad():
        before = teacher(x)
    results = {}
    for what, specs in PATTERNS.items():
        adapters = pk.add_adapters(teacher, specs, input_shape=[1, 3, 64, 64])
        with torch.no_grad():
            same = torch.equal(teacher(x), before)
        paths = [path for spec in specs for pattern in spec['modules'] for path in match_module_paths(teacher, pattern)]
        trainable = pk.count_parameters(adapters)[0]
        print(f'{what}: {paths} -> {trainable:,} adapter parameters; pretrained outputs kept: {same}')
        results[what] = (paths, trainable, same)
        remove_adapters(adapters)
    return results


if __name__ == '__main__':
    main()
