"""Text classification (GLUE) with Hugging Face transformers: registrations that torchdistill's GLUE YAML schema
needs, the model builders and the task metrics. Importing this package needs no ``transformers``; building models
and data does (``pip install -e '.[nlp]'``).

Registered here: the forward process ``forward_batch_as_kwargs`` (``model(**batch)``), the optimizer
``optimizer_no_decay`` (no weight decay on biases and LayerNorm weights), Hugging Face's learning-rate schedules
(``get_linear_schedule_with_warmup`` and the others) and the model builder ``layer_subset_student``.
"""
import torch
from torchdistill.core.interfaces.registry import FORWARD_PROC_FUNC_DICT, register_forward_proc_func
from torchdistill.optim.registry import OPTIM_DICT, SCHEDULER_DICT, register_optimizer, register_scheduler

from .glue_metrics import glue_metrics
from .models import build_text_model, layer_subset_student, load_tokenizer

if 'forward_batch_as_kwargs' not in FORWARD_PROC_FUNC_DICT:
    @register_forward_proc_func
    def forward_batch_as_kwargs(model, sample_batch, targets=None, supp_dict=None, **kwargs):
        """``model(**sample_batch)``: a tokenized batch (input_ids, attention_mask, ...) as keyword arguments."""
        return model(**sample_batch)


if 'optimizer_no_decay' not in OPTIM_DICT:
    @register_optimizer
    def optimizer_no_decay(params, optimizer_key, weight_decay=0.0, lr=None, **kwargs):
        """torch optimizer ``optimizer_key`` (e.g. 'AdamW') with weight decay on matrices only: one-dimensional
        parameters (biases, LayerNorm weights) get none, the BERT fine-tuning convention. ``params`` is a module,
        parameters, or torchdistill's ``module_wise_configs`` groups (each group's own kwargs are kept)."""
        groups = [{'params': list(params.parameters())}] if isinstance(params, torch.nn.Module) else list(params)
        if groups and not isinstance(groups[0], dict):
            groups = [{'params': groups}]
        split = []
        for group in groups:
            params_list = [p for p in group['params'] if p.requires_grad]
            options = {k: v for k, v in group.items() if k != 'params'}
            decay = options.pop('weight_decay', weight_decay)
            split.append({**options, 'params': [p for p in params_list if p.ndim > 1], 'weight_decay': decay})
            split.append({**options, 'params': [p for p in params_list if p.ndim <= 1], 'weight_decay': 0.0})
        split = [group for group in split if group['params']]
        optimizer_kwargs = dict(kwargs, **({'lr': lr} if lr is not None else {}))
        return getattr(torch.optim, optimizer_key)(split, **optimizer_kwargs)


def register_hf_schedulers():
    """Registers Hugging Face's learning-rate schedules (e.g. ``get_linear_schedule_with_warmup``) with torchdistill;
    called by the text runner (importing ``transformers`` at package import would slow every image run)."""
    from transformers.optimization import TYPE_TO_SCHEDULER_FUNCTION
    for schedule in TYPE_TO_SCHEDULER_FUNCTION.values():
        if schedule.__name__ not in SCHEDULER_DICT:
            register_scheduler(schedule)


__all__ = ['register_hf_schedulers', 'build_text_model', 'layer_subset_student', 'load_tokenizer', 'glue_metrics']
