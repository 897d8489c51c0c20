"""Adapters for PESF-KD teachers: modules (kinds), hook-based injection, and the ``AdapterTeacher`` wrapper."""
from .inject import (AdapterDict, count_parameters, describe_target, inject_adapters, match_module_paths,
                     remove_adapters, trainable_report)
from .modules import (ADAPTER_KINDS, BottleneckAdapter, HeadAdapter, LoRAAdapter, ScaledParallelAdapter,
                      TargetInfo, adapter_options)
from .wrapper import AdapterTeacher

__all__ = ['ADAPTER_KINDS', 'AdapterDict', 'AdapterTeacher', 'BottleneckAdapter', 'HeadAdapter', 'LoRAAdapter',
           'ScaledParallelAdapter', 'TargetInfo', 'adapter_options', 'count_parameters', 'describe_target',
           'inject_adapters', 'match_module_paths', 'remove_adapters', 'trainable_report']
