"""FitNet's student side: a regressor from the student's hint layer to the teacher's (Romero et al., ICLR 2015)."""
from torch import nn
from torchdistill.common.module_util import get_module
from torchdistill.models.registry import register_auxiliary_model_wrapper
from torchdistill.models.wrapper import AuxiliaryModelWrapper


@register_auxiliary_model_wrapper
class HintRegressor(AuxiliaryModelWrapper):
    """Student wrapper: ``model`` is the student; ``regressor`` maps the output of its ``hint_module_path`` to the
    teacher's guided layer, Conv2d 3×3 → BatchNorm → ReLU (RepDistiller's ``ConvReg`` for equal spatial sizes), and is
    evaluated after each forward so torchdistill can hook its output. FitNet's loss is then the MSE between
    ``regressor``'s output and the teacher's layer output (``SimpleLossWrapper`` around ``MSELoss``).

    Adriana Romero, Nicolas Ballas, Samira Ebrahimi Kahou, Antoine Chassang, Carlo Gatta, Yoshua Bengio:
    `"FitNets: Hints for Thin Deep Nets" <https://arxiv.org/abs/1412.6550>`_ @ ICLR 2015.
    """
    def __init__(self, student_model, device, device_ids=None, distributed=False, hint_module_path='layer2',
                 in_channels=None, out_channels=None):
        super().__init__()
        if not in_channels or not out_channels or in_channels <= 0 or out_channels <= 0:
            raise ValueError(f'HintRegressor needs positive in_channels and out_channels, got {in_channels!r} and '
                             f'{out_channels!r}')
        self.model = student_model
        self.regressor = nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1),
                                       nn.BatchNorm2d(out_channels), nn.ReLU(inplace=False))
        self.hint_module_path = hint_module_path
        self._hint = []
        get_module(self.model, hint_module_path).register_forward_hook(self.keep_hint)
        self.to(device)

    def keep_hint(self, module, args, output):
        self._hint.append(output)

    def forward(self, *args, **kwargs):
        self._hint.clear()
        output = self.model(*args, **kwargs)
        self.regressor(self._hint[-1])
        return output
