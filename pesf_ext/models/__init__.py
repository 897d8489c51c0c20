"""Models registered with torchdistill's model registry (``get_model``): CIFAR ``vgg8`` and ``vgg13``; FitNet's
``HintRegressor``, AB's ``PreActivationConnector`` (student) and FT's ``ParaphraserTeacher`` (auxiliary model
wrapper registry)."""
from .ab import PreActivationConnector
from .cifar_vgg import CifarVGG, vgg8, vgg13
from .factor import ParaphraserTeacher
from .hint import HintRegressor

__all__ = ['CifarVGG', 'vgg8', 'vgg13', 'HintRegressor', 'PreActivationConnector', 'ParaphraserTeacher']
