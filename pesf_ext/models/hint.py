"""FitNet's student side: a regressor from the student's hint layer to the teacher's (Romero et al., ICLR 2015)."""
from torch import nn
from torchdistill.common.module_util import get_module
from torchdistill.models.registry import register_auxiliary_model_wrapper
from torchdistill.models.wrapper import AuxiliaryModelWrapper


def conv_reg_conv(in_channels, out_channels, in_size=None, out_size=None):
    """The conv of RepDistiller's ``ConvReg`` from (channels, map height) of the student's and the teacher's maps;
    Conv2d 3×3 padding 1 when the sizes are not given."""
    if in_size is None and out_size is None:
        return nn.Conv2d(in_channels, out_channels, 3, padding=1)
    if not isinstance(in_size, int) or not isinstance(out_size, int) or min(in_size, out_size) <= 0:
        raise ValueError(f'HintRegressor: in_size and out_size must be positive integers (or both omitted), got '
                         f'{in_size!r} and {out_size!r}')
    if in_size == 2 * out_size:
        return nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)
    if 2 * in_size == out_size:
        return nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1)
    if in_size >= out_size:
        return nn.Conv2d(in_channels, out_channels, 1 + in_size - out_size)
    raise ValueError(f'HintRegressor: student size {in_size} < teacher size {out_size} and not half of it '
                     "(RepDistiller's ConvReg has no regressor for this case)")


@register_auxiliary_model_wrapper
class HintRegressor(AuxiliaryModelWrapper):
    """Student wrapper: ``model`` is the student; ``regressor`` maps the output of its ``hint_module_path`` to the
    teacher's guided layer and is evaluated after each forward so torchdistill can hook its output. FitNet's loss is
    then the MSE between ``regressor``'s output and the teacher's layer output (``SimpleLossWrapper`` around
    ``MSELoss``).

    With ``in_size`` and ``out_size`` (the student's and the teacher's map heights) the regressor is RepDistiller's
    ``ConvReg``: a conv → BatchNorm → ReLU whose conv is Conv2d 3×3 stride 2 when the student's map is twice the
    teacher's, ConvTranspose2d 4×4 stride 2 when it is half, else Conv2d with kernel 1 + in_size - out_size (1×1
    for equal sizes); a student map smaller than the teacher's otherwise raises ValueError, as ConvReg does.
    Without them (the configs written before the sizes were passed): Conv2d 3×3 padding 1 → BatchNorm → ReLU.

    Adriana Romero, Nicolas Ballas, Samira Ebrahimi Kahou, Antoine Chassang, Carlo Gatta, Yoshua Bengio:
    `"FitNets: Hints for Thin Deep Nets" <https://arxiv.org/abs/1412.6550>`_ @ ICLR 2015.
    """
    def __init__(self, student_model, device, device_ids=None, distributed=False, hint_module_path='layer2',
                 in_channels=None, out_channels=None, in_size=None, out_size=None):
        super().__init__()
        if not in_channels or not out_channels or in_channels <= 0 or out_channels <= 0:
            raise ValueError(f'HintRegressor needs positive in_channels and out_channels, got {in_channels!r} and '
                             f'{out_channels!r}')
        self.model = student_model
        self.regressor = nn.Sequential(conv_reg_conv(in_channels, out_channels, in_size, out_size),
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
