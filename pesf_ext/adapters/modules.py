"""Adapter modules for PESF-KD: each computes a DELTA that is added to its target module's output.

A forward hook on the target (see :mod:`pesf_ext.adapters.inject`) replaces the target's output ``out`` by
``out + adapter(module_input, out)``. Every adapter's last projection is zero-initialised, so the delta is exactly
zero before training and the adapted teacher reproduces the pretrained outputs bit for bit.

Kinds (``ADAPTER_KINDS``, the key is the ``kind`` of an adapter spec):

* ``bottleneck`` — Houlsby et al. (ICML 2019), PESF-KD eq. 6: ``h <- h + f(h W_down) W_up`` on the output ``h``;
* ``head`` — the placement of the PESF-KD authors' released code: ``logits <- logits - Adapter(feat)`` on the
  classifier's input feature;
* ``lora`` — Hu et al. (ICLR 2022): ``W x + (alpha / r) B A x`` in parallel to a Linear/Conv2d;
* ``scaled_parallel`` — He et al. (ICLR 2022): ``h <- h + s f(x W_down) W_up`` from the target's input ``x``.

Jun Rao, Xv Meng, Liang Ding, Shuhan Qi, Xuebo Liu, Min Zhang, Dacheng Tao: `"Parameter-Efficient and
Student-Friendly Knowledge Distillation" <https://arxiv.org/abs/2205.15308>`_ @ IEEE TMM (2023)
"""
import inspect
from dataclasses import dataclass
from typing import Optional, Tuple

from torch import nn
from torch.nn import functional as F

ACTIVATIONS = {'relu': nn.ReLU, 'gelu': nn.GELU}


@dataclass(frozen=True)
class TargetInfo:
    """What an adapter needs to know about the module it adapts (filled in by :func:`inject.describe_target`).

    ``in_dim`` / ``out_dim``: feature size of the target's input / output (channels of an (N, C, H, W) tensor, last
    axis otherwise); ``spatial``: True for (N, C, H, W) features, False for (N, ..., d), None if unknown;
    ``stride``: spatial stride from input to output (None if unknown); ``shapes``: probed (input, output) shapes.
    """
    path: str
    module: nn.Module
    in_dim: Optional[int] = None
    out_dim: Optional[int] = None
    spatial: Optional[bool] = None
    stride: Optional[Tuple[int, int]] = None
    shapes: Optional[Tuple[tuple, tuple]] = None

    def require(self, value, what):
        if value is None:
            raise ValueError(f"cannot infer the {what} of module '{self.path}' ({type(self.module).__name__}); "
                             "give `dim` in the adapter spec or `input_shape` for a shape probe")
        return value


class FeatureLinear(nn.Linear):
    """A Linear map over the feature axis: the last axis of (N, ..., d) tensors, or the channel axis of
    (N, C, H, W) tensors, where it is a 1×1 Conv2d (with ``stride``) using the same weight viewed as (out, in, 1, 1).

    ``spatial`` fixes the layout when it is known from the target (a Linear inside a channels-last block has 4-D
    inputs too); None decides per call from the tensor's rank.
    """
    def __init__(self, in_features, out_features, spatial=None, stride=(1, 1), bias=True):
        super().__init__(in_features, out_features, bias=bias)
        self.spatial = spatial
        self.stride = tuple(stride)

    def forward(self, x):
        spatial = x.dim() == 4 if self.spatial is None else self.spatial
        if spatial:
            return F.conv2d(x, self.weight[:, :, None, None], self.bias, stride=self.stride)
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f'{super().extra_repr()}, spatial={self.spatial}, stride={self.stride}'


def zero_(module):
    """Zero-initialises ``module``'s parameters: the adapter's delta starts at exactly 0."""
    for param in module.parameters():
        nn.init.zeros_(param)
    return module


def make_activation(name):
    if name not in ACTIVATIONS:
        raise ValueError(f'unknown activation `{name}`; valid: {sorted(ACTIVATIONS)}')
    return ACTIVATIONS[name]()


class BottleneckAdapter(nn.Module):
    """Serial bottleneck adapter (PESF-KD eq. 6; Houlsby et al., ICML 2019) on the target's OUTPUT ``h``:

    .. math:: h \\leftarrow h + f(h W_{down}) W_{up}, \\quad W_{down} \\in R^{d \\times r}, W_{up} \\in R^{r \\times d}

    Linear maps over the last axis, or 1×1 convolutions over the channels of (N, C, H, W) outputs.
    ``W_up`` and its bias are zero-initialised. The paper uses r = 32 (CIFAR-100) and r = 64 (RTE).

    Spec options: ``bottleneck`` (r, default 32), ``activation`` ('relu' | 'gelu'), ``dim`` (d, overrides the
    inferred output feature size).
    """
    def __init__(self, dim, bottleneck=32, activation='relu', spatial=None):
        super().__init__()
        self.down = FeatureLinear(dim, bottleneck, spatial)
        self.act = make_activation(activation)
        self.up = zero_(FeatureLinear(bottleneck, dim, spatial))

    @classmethod
    def from_target(cls, target, bottleneck=32, activation='relu', dim=None):
        dim = dim if dim is not None else target.require(target.out_dim, 'output feature size')
        return cls(dim, bottleneck, activation, target.spatial)

    def forward(self, module_input, module_output):
        return self.up(self.act(self.down(module_output)))


class HeadAdapter(nn.Module):
    """Head adapter of the PESF-KD authors' released code (github.com/1170300319/PESF-KD), on the classifier:

    .. math:: z \\leftarrow z - A(x), \\quad A = Linear(d, K) \\to Linear(K, r) \\to ReLU \\to Linear(r, K)

    where ``x`` is the classifier's INPUT (the penultimate feature, size d) and ``z`` its logits (K classes). The
    minus sign is the released code's; with the zero-initialised last layer the sign only flips the learned
    weights. Target: an ``nn.Linear`` classifier (e.g. 'fc', 'classifier'). Spec options: ``bottleneck`` (r),
    ``zero_init`` (default True; False keeps PyTorch's default init of the last layer too, as the released code
    does, so the adapted teacher no longer starts as the pretrained one).
    """
    def __init__(self, in_features, num_classes, bottleneck=32, zero_init=True):
        super().__init__()
        last = nn.Linear(bottleneck, num_classes)
        self.net = nn.Sequential(
            nn.Linear(in_features, num_classes), nn.Linear(num_classes, bottleneck), nn.ReLU(),
            zero_(last) if zero_init else last
        )

    @classmethod
    def from_target(cls, target, bottleneck=32, zero_init=True):
        if not isinstance(target.module, nn.Linear):
            raise ValueError(f"a head adapter needs an nn.Linear classifier, but '{target.path}' is "
                             f'{type(target.module).__name__}')
        if not isinstance(zero_init, bool):
            raise ValueError(f"head adapter on '{target.path}': zero_init must be true or false, got {zero_init!r}")
        return cls(target.module.in_features, target.module.out_features, bottleneck, zero_init)

    def forward(self, module_input, module_output):
        return -self.net(module_input)


class LoRAAdapter(nn.Module):
    """LoRA (Hu et al., `"LoRA: Low-Rank Adaptation of Large Language Models"
    <https://openreview.net/forum?id=nZeVKeeFYf9>`_ @ ICLR 2022) in parallel to a Linear or Conv2d, on its INPUT x:

    .. math:: W x + \\frac{\\alpha}{r} B A x, \\quad B = 0 \\text{ at init}

    Linear target: A = Linear(in, r), B = Linear(r, out). Conv2d target: A = Conv2d(in, r) with the target's
    kernel size, stride, padding, dilation and padding mode, B = 1×1 Conv2d(r, out). No biases.
    Spec options: ``bottleneck`` (rank r, default 32), ``lora_alpha`` (default r, i.e. scale 1, as Hu et al.
    set alpha to the first r tried).
    """
    def __init__(self, down, up, scale):
        super().__init__()
        self.lora_a = down
        self.lora_b = zero_(up)
        self.scale = scale

    @classmethod
    def from_target(cls, target, bottleneck=32, lora_alpha=None):
        module, rank = target.module, bottleneck
        scale = (rank if lora_alpha is None else lora_alpha) / rank
        if isinstance(module, nn.Linear):
            down = nn.Linear(module.in_features, rank, bias=False)
            up = nn.Linear(rank, module.out_features, bias=False)
        elif isinstance(module, nn.Conv2d):
            down = nn.Conv2d(module.in_channels, rank, module.kernel_size, module.stride, module.padding,
                             module.dilation, bias=False, padding_mode=module.padding_mode)
            up = nn.Conv2d(rank, module.out_channels, 1, bias=False)
        else:
            raise ValueError(f"LoRA needs an nn.Linear or nn.Conv2d target, but '{target.path}' is "
                             f'{type(module).__name__}')
        return cls(down, up, scale)

    def forward(self, module_input, module_output):
        return self.scale * self.lora_b(self.lora_a(module_input))

    def extra_repr(self):
        return f'scale={self.scale}'


class ScaledParallelAdapter(nn.Module):
    """Scaled parallel adapter (He et al., `"Towards a Unified View of Parameter-Efficient Transfer Learning"
    <https://openreview.net/forum?id=0RDcd5Axok>`_ @ ICLR 2022) from the target's INPUT x to its output h:

    .. math:: h \\leftarrow h + s \\cdot f(x W_{down}) W_{up}, \\quad W_{up} = 0 \\text{ at init}

    Linear maps over the last axis, or 1×1 convolutions over channels (the down projection with the target's
    spatial stride) for (N, C, H, W) features. Spec options: ``bottleneck`` (r, default 32), ``activation``,
    ``scale`` (s, default 4.0), ``dim`` (int: input and output size; [in, out]: each).
    """
    def __init__(self, in_dim, out_dim, bottleneck=32, activation='relu', scale=4.0, spatial=None, stride=(1, 1)):
        super().__init__()
        self.down = FeatureLinear(in_dim, bottleneck, spatial, stride)
        self.act = make_activation(activation)
        self.up = zero_(FeatureLinear(bottleneck, out_dim, spatial))
        self.scale = scale

    @classmethod
    def from_target(cls, target, bottleneck=32, activation='relu', scale=4.0, dim=None):
        if dim is None:
            in_dim = target.require(target.in_dim, 'input feature size')
            out_dim = target.require(target.out_dim, 'output feature size')
        else:
            in_dim, out_dim = (dim, dim) if isinstance(dim, int) else dim
        stride = (1, 1)
        if target.spatial is not False:
            stride = parallel_stride(target)
        return cls(in_dim, out_dim, bottleneck, activation, scale, target.spatial, stride)

    def forward(self, module_input, module_output):
        return self.scale * self.up(self.act(self.down(module_input)))

    def extra_repr(self):
        return f'scale={self.scale}'


def parallel_stride(target):
    """Stride of the 1×1 convolution that maps the target's (N, C, H, W) input grid onto its output grid;
    ValueError when no strided 1×1 convolution can (e.g. a 3×3 conv without 'same' padding)."""
    module = target.module
    if isinstance(module, nn.Conv2d):
        if module.padding == 'same':  # torch allows 'same' only with stride 1
            return (1, 1)
        padding = (0, 0) if module.padding == 'valid' else module.padding
        if any(2 * p != d * (k - 1) for p, d, k in zip(padding, module.dilation, module.kernel_size)):
            raise ValueError(f"scaled_parallel: input and output shapes of '{target.path}' cannot match: "
                             f'a 1×1 convolution cannot reproduce kernel {module.kernel_size} with padding '
                             f'{module.padding} and dilation {module.dilation}')
        return tuple(module.stride)
    if target.stride is None:
        detail = f' (probed input/output shapes {target.shapes})' if target.shapes else \
            '; give `input_shape` for a shape probe'
        raise ValueError(f"scaled_parallel: input and output shapes of '{target.path}' cannot be matched by a "
                         f'strided 1×1 convolution{detail}')
    return target.stride


ADAPTER_KINDS = {
    'bottleneck': BottleneckAdapter,
    'head': HeadAdapter,
    'lora': LoRAAdapter,
    'scaled_parallel': ScaledParallelAdapter,
}


def adapter_options(kind):
    """Names of the spec options that ``kind`` accepts (the keyword arguments of its ``from_target``)."""
    params = inspect.signature(ADAPTER_KINDS[kind].from_target).parameters
    return [name for name in params if name != 'target']


def build_adapter(kind, target, options):
    """Builds the adapter ``kind`` for ``target`` with spec ``options``; ValueError on unknown kinds/options."""
    if kind not in ADAPTER_KINDS:
        raise ValueError(f'unknown adapter kind `{kind}`; valid kinds: {sorted(ADAPTER_KINDS)}')
    unknown = sorted(set(options) - set(adapter_options(kind)))
    if unknown:
        raise ValueError(f'adapter kind `{kind}` does not accept {unknown}; valid options: {adapter_options(kind)}')
    return ADAPTER_KINDS[kind].from_target(target, **options)


__all__ = ['ADAPTER_KINDS', 'TargetInfo', 'FeatureLinear', 'BottleneckAdapter', 'HeadAdapter', 'LoRAAdapter',
           'ScaledParallelAdapter', 'adapter_options', 'build_adapter']
