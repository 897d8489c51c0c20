"""As the example's ``custom/optim.py``: every Hugging Face schedule registered, and ``optimizer_no_decay`` splitting
parameters by name (no decay on biases and LayerNorm weights)."""
from torch import nn
from transformers.optimization import TYPE_TO_SCHEDULER_FUNCTION

from torchdistill.optim.registry import get_optimizer, register_optimizer, register_scheduler

for schedule in TYPE_TO_SCHEDULER_FUNCTION.values():
    register_scheduler(schedule)


@register_optimizer
def optimizer_no_decay(model, optimizer_key, weight_decay, no_decay=None, **kwargs):
    no_decay = ['bias', 'LayerNorm.weight'] if no_decay is None else no_decay
    named = list(model.named_parameters()) if isinstance(model, nn.Module) else list(model)
    groups = [{'params': [p for n, p in named if not any(k in n for k in no_decay)], 'weight_decay': weight_decay},
              {'params': [p for n, p in named if any(k in n for k in no_decay)], 'weight_decay': 0.0}]
    return get_optimizer(groups, optimizer_key, **kwargs)
