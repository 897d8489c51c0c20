"""Datasets usable from YAML through torchdistill's ``!import_call`` (Fashion-MNIST offline; GLUE later)."""
from .fashion_mnist import DEBIAN_FASHION_MNIST_DIR, DatasetNotFoundError, fashion_mnist, fashion_mnist_transform
from .views import TwoViews

__all__ = ['DEBIAN_FASHION_MNIST_DIR', 'DatasetNotFoundError', 'fashion_mnist', 'fashion_mnist_transform', 'TwoViews']
