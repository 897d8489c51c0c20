"""Models registered with torchdistill's model registry (``get_model``): CIFAR ``vgg8`` and ``vgg13``; FitNet's
``HintRegressor`` student wrapper (auxiliary model wrapper registry)."""
from .cifar_vgg import CifarVGG, vgg8, vgg13
from .hint import HintRegressor

__all__ = ['CifarVGG', 'vgg8', 'vgg13', 'HintRegressor']
