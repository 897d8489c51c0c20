"""Injects adapters into a model through forward hooks, PEFT style, without touching its module tree.

For every target module a forward hook replaces its output ``out`` by ``out + adapter(module_input, out)``
(element 0 when the output is a tuple/list, as Hugging Face layers return). No module is replaced, so the
model's structure and ``state_dict`` keys stay those of the pretrained checkpoint; the adapters live in the
returned :class:`AdapterDict`, keyed by the target's path with '.' replaced by '__'.

.. code-block:: python

    adapters = inject_adapters(model, [{'modules': ['layer3.*.bn2', 'fc'], 'kind': 'bottleneck', 'bottleneck': 32}],
                               input_shape=[1, 3, 32, 32])
    optimizer = torch.optim.SGD(adapters.parameters(), lr=0.01)
    ...
    remove_adapters(adapters)  # the model is the original one again

Module patterns are matched per dotted component with :func:`fnmatch.fnmatchcase`: '*' never crosses a '.', so
'layer4.*' selects the blocks of layer4 (not every module below them) and 'layer3.*.bn2' the bn2 of each block.
"""
import difflib
import logging
from fnmatch import fnmatchcase

import torch
from torch import nn

from .modules import TargetInfo, build_adapter

logger = logging.getLogger(__name__)
KNOWN_LEAVES = (nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm)


class AdapterDict(nn.ModuleDict):
    """The injected adapters (key: target path with '.' -> '__') and the hook handles that apply them."""
    def __init__(self):
        super().__init__()
        self.hook_handles = list()


class AdapterHook:
    """Forward hook (with kwargs) that adds ``adapter(module_input, module_output)`` to the module's output."""
    def __init__(self, path, adapter):
        self.path = path
        self.adapter = adapter

    def __call__(self, module, args, kwargs, output):
        module_input = args[0] if args else next(v for v in kwargs.values() if torch.is_tensor(v))
        if torch.is_tensor(output):
            return self.add_delta(module_input, output)
        if type(output) in (tuple, list):
            return type(output)([self.add_delta(module_input, output[0]), *output[1:]])
        raise TypeError(f"adapter on '{self.path}': cannot adapt an output of type {type(output).__name__} "
                        '(a tensor, or a tuple/list whose element 0 is adapted, is expected)')

    def add_delta(self, module_input, output):
        delta = self.adapter(module_input, output)
        if delta.shape != output.shape:
            raise RuntimeError(f"adapter on '{self.path}' produced a delta of shape {tuple(delta.shape)} for an "
                               f'output of shape {tuple(output.shape)}')
        return output + delta


def match_module_paths(model, pattern):
    """Paths of ``model.named_modules()`` that ``pattern`` matches (exact path or per-component fnmatch glob)."""
    parts = pattern.split('.')
    return [name for name, _ in model.named_modules() if name and
            (name == pattern or len(name.split('.')) == len(parts) and
             all(fnmatchcase(n, p) for n, p in zip(name.split('.'), parts)))]


def first_tensor(value):
    if torch.is_tensor(value):
        return value
    if isinstance(value, (tuple, list)) and value:
        return first_tensor(value[0])
    if isinstance(value, dict):
        return next((v for v in value.values() if torch.is_tensor(v)), None)
    return None


@torch.no_grad()
def probe_shapes(model, paths, input_shape):
    """Runs one forward of ``model`` (eval mode, no grad, zeros of ``input_shape``) and returns
    {path: (input shape, output shape)} for the given module paths; {} if the forward fails (e.g. a text model)."""
    modules = dict(model.named_modules())
    shapes, handles = dict(), list()

    def make_hook(path):
        def record(module, args, kwargs, output):
            x, y = first_tensor(args) if args else first_tensor(kwargs), first_tensor(output)
            if path not in shapes and x is not None and y is not None:
                shapes[path] = (tuple(x.shape), tuple(y.shape))
        return record

    modes = [(m, m.training) for m in model.modules()]
    param = next(model.parameters(), None)
    device, dtype = (param.device, param.dtype) if param is not None else ('cpu', torch.float32)
    try:
        handles = [modules[p].register_forward_hook(make_hook(p), with_kwargs=True) for p in paths]
        model.eval()
        model(torch.zeros(tuple(input_shape), device=device, dtype=dtype))
    except Exception as error:  # noqa: BLE001  a model that cannot take the dummy input falls back to its leaves
        logger.warning('shape probe with input_shape %s failed (%s: %s); inferring adapter dimensions from the '
                       "targets' leaf modules", list(input_shape), type(error).__name__, error)
        shapes.clear()
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes:
            module.training = training
    return shapes


def feature_dim(shape):
    return shape[1] if len(shape) == 4 else shape[-1]


def leaf_dims(module):
    """(input dim, output dim) of a known leaf (Linear, Conv2d, BatchNorm, LayerNorm)."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, nn.Conv2d):
        return module.in_channels, module.out_channels
    if isinstance(module, nn.LayerNorm):
        return module.normalized_shape[-1], module.normalized_shape[-1]
    return module.num_features, module.num_features


def probed_stride(in_shape, out_shape):
    """Integer stride s with ceil(H_in / s) = H_out on both spatial axes (what a strided 1×1 conv gives), else None."""
    if len(in_shape) != 4 or len(out_shape) != 4:
        return None
    stride = tuple(max(round(i / o), 1) for i, o in zip(in_shape[2:], out_shape[2:]))
    ok = all(-(-i // s) == o for i, o, s in zip(in_shape[2:], out_shape[2:], stride))
    return stride if ok else None


def describe_target(path, module, shapes=None):
    """What is known of ``module`` (see :class:`TargetInfo`): from its type (Linear, Conv2d, BatchNorm,
    LayerNorm), else from probed ``shapes`` (input, output), else from the first/last known leaf of its subtree."""
    if isinstance(module, KNOWN_LEAVES):
        spatial = isinstance(module, (nn.Conv2d, nn.BatchNorm2d))
        stride = tuple(module.stride) if isinstance(module, nn.Conv2d) else (1, 1)
        return TargetInfo(path, module, *leaf_dims(module), spatial=spatial, stride=stride)
    if shapes is not None:
        in_shape, out_shape = shapes
        return TargetInfo(path, module, feature_dim(in_shape), feature_dim(out_shape), spatial=len(out_shape) == 4,
                          stride=probed_stride(in_shape, out_shape) if len(out_shape) == 4 else (1, 1),
                          shapes=shapes)
    leaves = [m for m in module.modules() if isinstance(m, KNOWN_LEAVES)]
    if not leaves:
        return TargetInfo(path, module)
    spatial = isinstance(leaves[-1], (nn.Conv2d, nn.BatchNorm2d))
    return TargetInfo(path, module, leaf_dims(leaves[0])[0], leaf_dims(leaves[-1])[1], spatial=spatial,
                      stride=None if spatial else (1, 1))


def has_adapter_hook(module):
    return any(isinstance(hook, AdapterHook) for hook in module._forward_hooks.values())


def resolve_targets(model, specs):
    """[(path, spec)] for every module that the specs' patterns match; ValueError for unmatched patterns
    (listing the closest real paths), for modules targeted twice and for modules that already carry an adapter."""
    names = [name for name, _ in model.named_modules() if name]
    modules = dict(model.named_modules())
    targets, seen = list(), dict()
    for spec in specs:
        patterns = spec.get('modules')
        if isinstance(patterns, str) or not patterns:
            raise ValueError(f'adapter spec {spec}: `modules` must be a non-empty list of module paths/patterns')
        for pattern in patterns:
            paths = match_module_paths(model, pattern)
            if not paths:
                close = difflib.get_close_matches(pattern, names, n=5, cutoff=0.4)
                raise ValueError(f'adapter pattern `{pattern}` matches no module of {type(model).__name__}; '
                                 f'closest module paths: {close}')
            for path in paths:
                if path in seen:
                    raise ValueError(f"module '{path}' is targeted by two adapter specs: {seen[path]} and {spec}")
                if has_adapter_hook(modules[path]):
                    raise ValueError(f"module '{path}' already carries an adapter; remove_adapters() first")
                seen[path] = spec
                targets.append((path, spec))
    return targets


def inject_adapters(model, specs, input_shape=None):
    """Builds one adapter per module matched by ``specs`` and hooks it onto that module.

    :param model: the (pretrained) model; its modules, parameters and state_dict keys are left unchanged.
    :param specs: list of dicts ``{'modules': [paths or globs], 'kind': one of ADAPTER_KINDS, **kind options}``.
    :param input_shape: dummy input shape (e.g. [1, 3, 32, 32]) for a shape probe of targets whose type does
        not tell their feature sizes; without it (text models) those come from the target's leaf modules.
    :return: :class:`AdapterDict` of the adapters, on the model's device and dtype.
    """
    targets = resolve_targets(model, specs)
    modules = dict(model.named_modules())
    needs_probe = [path for path, _ in targets if not isinstance(modules[path], KNOWN_LEAVES)]
    shapes = probe_shapes(model, needs_probe, input_shape) if needs_probe and input_shape is not None else {}
    param = next(model.parameters(), None)
    adapters = AdapterDict()
    for path, spec in targets:
        options = {k: v for k, v in spec.items() if k not in ('modules', 'kind')}
        try:
            adapter = build_adapter(spec.get('kind'), describe_target(path, modules[path], shapes.get(path)), options)
        except ValueError as error:
            raise ValueError(f'{error} (adapter spec {spec})') from None
        key = path.replace('.', '__')
        if key in adapters:
            raise ValueError(f"adapter key '{key}' of module '{path}' collides with another target's key")
        if param is not None:
            adapter.to(device=param.device, dtype=param.dtype)
        adapters[key] = adapter
    for path, _ in targets:
        hook = AdapterHook(path, adapters[path.replace('.', '__')])
        adapters.hook_handles.append(modules[path].register_forward_hook(hook, with_kwargs=True))
    return adapters


def remove_adapters(adapters):
    """Detaches the hooks of :func:`inject_adapters`: the model computes its original outputs again."""
    for handle in adapters.hook_handles:
        handle.remove()
    adapters.hook_handles.clear()


def count_parameters(module):
    """(trainable, total) numbers of parameters of ``module`` (shared parameters counted once)."""
    params = list(module.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def trainable_report(model, label):
    """One line, e.g. 'teacher: 21,636 trainable / 861,620 total parameters (2.51%)'."""
    trainable, total = count_parameters(model)
    return f'{label}: {trainable:,} trainable / {total:,} total parameters ({100.0 * trainable / max(total, 1):.2f}%)'


__all__ = ['AdapterDict', 'inject_adapters', 'remove_adapters', 'match_module_paths', 'describe_target',
           'count_parameters', 'trainable_report']
