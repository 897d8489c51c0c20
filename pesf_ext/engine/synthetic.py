"""Random stand-ins for datasets and pretrained weights, so configs run where the data is not (benchmarks on a
machine without ImageNet, smoke tests without internet). Nothing here is used by a normal run."""
import contextlib

import torch
import torchvision
from torch.utils.data import Dataset

import pesf_ext.data


class RandomImages(Dataset):
    """``num_samples`` random images of ``size``×``size`` with random labels (fixed by ``seed``); with a
    :class:`~pesf_ext.data.TwoViews` transform, each sample is two random views (2, 3, size, size)."""

    def __init__(self, num_classes, num_samples=8, size=32, seed=0, transform=None):
        generator = torch.Generator().manual_seed(seed)
        views = (2,) if isinstance(transform, pesf_ext.data.TwoViews) else ()
        self.images = torch.randn(num_samples, *views, 3, size, size, generator=generator)
        self.targets = torch.randint(0, num_classes, (num_samples,), generator=generator)
        self.classes = [str(label) for label in range(num_classes)]

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        return self.images[index], int(self.targets[index])


def random_pretrained_state_dict(weights, *args, **kwargs):
    """Replaces ``WeightsEnum.get_state_dict``: a freshly initialised state dict of the same architecture."""
    builder = type(weights).__name__[:-len('_Weights')].lower()
    return torchvision.models.get_model(builder, weights=None).state_dict()


@contextlib.contextmanager
def synthetic_data(num_samples=8, imagenet_size=64):
    """Within the block, the configs' dataset builders (Fashion-MNIST, CIFAR-100, ImageFolder) return
    :class:`RandomImages` and torchvision's pretrained weights are random (no download)."""
    patches = [
        (pesf_ext.data, 'fashion_mnist', lambda transform=None, **kwargs: RandomImages(
            10, num_samples, transform=transform)),
        (torchvision.datasets, 'CIFAR100', lambda transform=None, **kwargs: RandomImages(
            100, num_samples, transform=transform)),
        (torchvision.datasets, 'ImageFolder', lambda **kwargs: RandomImages(1000, num_samples, imagenet_size)),
        (torchvision.models._api.WeightsEnum, 'get_state_dict', random_pretrained_state_dict),
    ]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    try:
        for owner, name, value in patches:
            setattr(owner, name, value)
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)
