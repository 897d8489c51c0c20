"""AB's student side: the pre-ReLU outputs of chosen blocks, through connectors (Heo et al., AAAI 2019)."""
from torch import nn
from torchdistill.common.module_util import get_module
from torchdistill.models.registry import register_auxiliary_model_wrapper
from torchdistill.models.wrapper import AuxiliaryModelWrapper


@register_auxiliary_model_wrapper
class PreActivationConnector(AuxiliaryModelWrapper):
    """Student wrapper: ``model`` is the student; for each entry of ``connectors`` ({name: {path, in_channels,
    out_channels[, reads]}}) it keeps the pre-activation of block ``path`` and passes it through
    ``connectors.<name>``. ``reads: 'relu_input'`` (default): the input of the block's last ``relu`` call, i.e.
    bn2(conv2(·)) + shortcut for a torchvision ``BasicBlock``; ``reads: 'output'``: the module's output, for blocks
    whose ReLU comes after them (the CIFAR VGG's ``block<i>``, RepDistiller's ``f<i>_pre``). Connectors: identity
    when the channels match, else Conv2d 1×1 + BatchNorm (RepDistiller's ``Connector``/``ConvReg`` for equal spatial
    sizes). The connectors run after each forward so torchdistill can hook their outputs for ``AltActTransferLoss``.

    torchdistill's ``Connector4DAB`` reads a module's output, i.e. a stage's post-ReLU activation: the student's
    side of the AB loss then cannot go below 0, so it is not what RepDistiller (``preact=True``) computes.
    (The teacher's side only enters through the sign test t > 0, the same before and after the ReLU.)

    Byeongho Heo, Minsik Lee, Sangdoo Yun, Jin Young Choi: `"Knowledge Transfer via Distillation of Activation
    Boundaries Formed by Hidden Neurons" <https://arxiv.org/abs/1811.03233>`_ @ AAAI 2019.
    """
    def __init__(self, student_model, device, device_ids=None, distributed=False, connectors=None, **kwargs):
        super().__init__()
        if not isinstance(connectors, dict) or not connectors:
            raise ValueError(f'PreActivationConnector: connectors must be a non-empty dict, got {connectors!r}')
        self.model = student_model
        self.connectors = nn.ModuleDict()
        self._preacts = {}
        for name, spec in connectors.items():
            in_channels, out_channels = spec.get('in_channels'), spec.get('out_channels')
            if not isinstance(in_channels, int) or not isinstance(out_channels, int) or min(in_channels,
                                                                                            out_channels) <= 0:
                raise ValueError(f'PreActivationConnector: connectors.{name} needs positive integer in_channels and '
                                 f'out_channels, got {in_channels!r} and {out_channels!r}')
            block = get_module(self.model, spec['path'])
            reads = spec.get('reads', 'relu_input')
            if reads == 'output':
                block.register_forward_hook(self._output_keeper(name))
            elif reads != 'relu_input':
                raise ValueError(f"PreActivationConnector: connectors.{name}.reads must be 'relu_input' or 'output', "
                                 f'got {reads!r}')
            elif not isinstance(getattr(block, 'relu', None), nn.ReLU):
                raise ValueError(f"PreActivationConnector: connectors.{name}.path `{spec['path']}` is not a residual "
                                 'block with a `relu` module')
            else:
                block.relu.register_forward_pre_hook(self._keeper(name))
            self.connectors[name] = nn.Identity() if in_channels == out_channels else nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))
        self.to(device)

    def _keeper(self, name):
        def keep(module, args):
            self._preacts[name] = args[0].clone()   # the block's ReLU runs in place; its last call is the output's
        return keep

    def _output_keeper(self, name):
        def keep(module, args, output):
            self._preacts[name] = output.clone()    # in case a later ReLU runs in place on it
        return keep

    def forward(self, *args, **kwargs):
        self._preacts.clear()
        output = self.model(*args, **kwargs)
        for name, connector in self.connectors.items():
            connector(self._preacts[name])
        return output
