"""Models registered with torchdistill's model registry (``get_model``): CIFAR ``vgg8`` and ``vgg13``."""
from .cifar_vgg import CifarVGG, vgg8, vgg13

__all__ = ['CifarVGG', 'vgg8', 'vgg13']
