"""Fashion-MNIST that works offline: the given root, then Debian's ``dataset-fashion-mnist``, then a download.

Xiao, Rasul, Vollgraf: "Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine Learning Algorithms" (2017).
60,000 train / 10,000 test 28x28 grey images, 10 classes. The loading itself is torchvision's ``FashionMNIST``;
this module only finds the idx files. YAML (torchdistill 1.x)::

    datasets:
      &train fashion_mnist/train: !import_call
        key: 'pesf_ext.data.fashion_mnist'
        init:
          kwargs:
            root: './resource/dataset/fashion_mnist'
            split: 'train'            # 'train' (55,000), 'val' (5,000 held out) or 'test' (10,000)
            download: True
            num_samples: 6000          # optional deterministic subset
            transform: !import_call
              key: 'pesf_ext.data.fashion_mnist_transform'
              init: {kwargs: {train: True}}
"""
import gzip
import os
import shutil

import torch
from torch.utils.data import Subset
from torchvision import transforms
from torchvision.datasets import FashionMNIST

DEBIAN_FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'
_IDX_FILES = ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte', 't10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')
# Mean/std of the 60,000 training images (pixel values in [0, 1]).
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530


class DatasetNotFoundError(FileNotFoundError):
    """Raised when a dataset is in none of the places it is looked for."""


def _raw_dir(root):
    return os.path.join(os.path.expanduser(root), 'FashionMNIST', 'raw')


def _has_raw_files(root):
    return all(os.path.isfile(os.path.join(_raw_dir(root), name)) for name in _IDX_FILES)


def _copy_from_debian(root, debian_dir):
    """Decompress Debian's ``*.gz`` idx files into torchvision's layout ``root/FashionMNIST/raw``."""
    sources = [os.path.join(debian_dir, name + '.gz') for name in _IDX_FILES]
    if not all(os.path.isfile(path) for path in sources):
        return False
    raw_dir = _raw_dir(root)
    os.makedirs(raw_dir, exist_ok=True)
    for src, name in zip(sources, _IDX_FILES):
        tmp_path = os.path.join(raw_dir, name + '.tmp')
        with gzip.open(src, 'rb') as fin, open(tmp_path, 'wb') as fout:
            shutil.copyfileobj(fin, fout)
        os.replace(tmp_path, os.path.join(raw_dir, name))
    return True


def fashion_mnist(root='./resource/dataset/fashion_mnist', split='train', transform=None, target_transform=None,
                  download=True, val_size=5000, num_samples=None, subset_seed=0, debian_dir=None):
    """Builds torchvision's ``FashionMNIST`` from the first place that has it.

    Looks in ``root`` (torchvision layout ``root/FashionMNIST/raw``), then in ``debian_dir`` (decompressed into
    ``root``), then downloads when ``download`` is true. ``split``: 'train' (the 60,000 training images minus
    ``val_size`` held out), 'val' (those ``val_size`` images, a fixed random choice) or 'test' (the 10,000 test
    images). ``num_samples`` keeps a deterministic random subset of the split (``subset_seed``), for CPU budgets.
    """
    if split not in ('train', 'val', 'test'):
        raise ValueError(f"split: expected 'train', 'val' or 'test', got {split!r}")
    train = split != 'test'
    debian_dir = debian_dir or DEBIAN_FASHION_MNIST_DIR
    if not _has_raw_files(root) and not _copy_from_debian(root, debian_dir):
        download_error = 'not allowed (download: False)'
        if download:
            try:
                FashionMNIST(os.path.expanduser(root), train=train, download=True)
                download_error = None
            except Exception as error:  # noqa: BLE001 - any download failure ends in the message below
                download_error = repr(error)
        if not _has_raw_files(root):
            raise DatasetNotFoundError(
                f'Fashion-MNIST not found. Looked in (1) root {os.path.abspath(os.path.expanduser(root))} '
                f'(expects FashionMNIST/raw/<idx files>), (2) the Debian package location {debian_dir} '
                f'(apt-get install dataset-fashion-mnist), (3) a download: {download_error}')
    dataset = FashionMNIST(os.path.expanduser(root), train=train, transform=transform,
                           target_transform=target_transform, download=False)
    if split == 'test':
        indices = torch.arange(len(dataset))
    else:
        held_out = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))
        indices = held_out[:val_size] if split == 'val' else held_out[val_size:].sort().values
    if num_samples is not None and num_samples < len(indices):
        generator = torch.Generator().manual_seed(subset_seed)
        indices = indices[torch.randperm(len(indices), generator=generator)[:num_samples]]
    if len(indices) == len(dataset):
        return dataset
    indices = indices.tolist()
    subset = Subset(dataset, indices)
    subset.targets = dataset.targets[indices]
    subset.classes = dataset.classes  # torchdistill's CRDDatasetWrapper reads both
    return subset


def fashion_mnist_transform(train=True, size=32, channels=3, strong=False):
    """CIFAR-style input for CIFAR networks: pad 28→32, grey→``channels``, random crop/flip when ``train``;
    ``strong`` adds torchvision's RandAugment (2 ops, magnitude 10) after them (MLKD's strong view)."""
    pad = (size - 28) // 2
    steps = [transforms.Pad(pad)] if pad > 0 else []
    if train:
        steps += [transforms.RandomCrop(size, padding=2), transforms.RandomHorizontalFlip()]
        if strong:
            steps.append(transforms.RandAugment(num_ops=2, magnitude=10))
    steps += [transforms.Grayscale(num_output_channels=channels), transforms.ToTensor(),
              transforms.Normalize([FASHION_MNIST_MEAN] * channels, [FASHION_MNIST_STD] * channels)]
    return transforms.Compose(steps)
