"""CIFAR VGG-8 / VGG-13 with BatchNorm, as in the CRD / RepDistiller family (RepDistiller ``models/vgg.py``).

Five blocks of conv3×3-BN-ReLU (the last ReLU of each block applied in ``forward``), max-pooling after blocks 0-2
(after block 3 only for 64×64 inputs, as in RepDistiller), global average pooling after block 4 and
``classifier = Linear(512, num_classes)``. Layer names (block0..block4, pool0..pool4, classifier) and state_dict
keys match RepDistiller's ``vgg8_bn`` / ``vgg13_bn``, so its checkpoints load.

The ReLU after each block is a parameter-free module ``relu0``..``relu4`` (not in place), so forward hooks can read
RepDistiller's features: ``block<i>`` outputs its pre-activation ``f<i>_pre`` (AB) and ``relu<i>`` the activation
``f<i>`` (AT, FitNet, VID, SP, FT, FSP); RepDistiller calls ``F.relu`` there, the same computation.

Karen Simonyan, Andrew Zisserman: `"Very Deep Convolutional Networks for Large-Scale Image Recognition"
<https://arxiv.org/abs/1409.1556>`_ @ ICLR 2015; Yonglong Tian, Dilip Krishnan, Phillip Isola: `"Contrastive
Representation Distillation" <https://openreview.net/forum?id=SkgpBJrtvS>`_ @ ICLR 2020.
"""
import math

from torch import nn
from torchdistill.models.registry import register_model

CFGS = {
    'vgg8': [[64], [128], [256], [512], [512]],
    'vgg13': [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
}


def make_block(widths, in_channels):
    layers = list()
    for width in widths:
        layers += [nn.Conv2d(in_channels, width, kernel_size=3, padding=1), nn.BatchNorm2d(width),
                   nn.ReLU(inplace=True)]
        in_channels = width
    return nn.Sequential(*layers[:-1])


class CifarVGG(nn.Module):
    """VGG with BatchNorm for 32×32 inputs; ``cfg`` lists the conv widths of the five blocks."""
    def __init__(self, cfg, num_classes=100):
        super().__init__()
        in_channels = [3] + [widths[-1] for widths in cfg[:-1]]
        for i, (widths, channels) in enumerate(zip(cfg, in_channels)):
            setattr(self, f'block{i}', make_block(widths, channels))
        for i in range(4):
            setattr(self, f'pool{i}', nn.MaxPool2d(kernel_size=2, stride=2))
        for i in range(5):   # hookable post-activation features f0..f4 (no parameters, state_dict unchanged)
            setattr(self, f'relu{i}', nn.ReLU())
        self.pool4 = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(cfg[-1][-1], num_classes)
        self.reset_parameters()

    def reset_parameters(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        height = x.shape[2]
        x = self.pool0(self.relu0(self.block0(x)))
        x = self.pool1(self.relu1(self.block1(x)))
        x = self.pool2(self.relu2(self.block2(x)))
        x = self.relu3(self.block3(x))
        if height == 64:
            x = self.pool3(x)
        x = self.pool4(self.relu4(self.block4(x)))
        return self.classifier(x.flatten(1))


@register_model(key='vgg8')
def vgg8(num_classes=100, **kwargs):
    """VGG-8 with BatchNorm (RepDistiller ``vgg8_bn``; ~3.96M parameters for 100 classes)."""
    return CifarVGG(CFGS['vgg8'], num_classes=num_classes, **kwargs)


@register_model(key='vgg13')
def vgg13(num_classes=100, **kwargs):
    """VGG-13 with BatchNorm (RepDistiller ``vgg13_bn``; ~9.46M parameters for 100 classes)."""
    return CifarVGG(CFGS['vgg13'], num_classes=num_classes, **kwargs)
