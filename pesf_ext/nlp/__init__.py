"""Text classification (GLUE) with Hugging Face transformers: registrations that torchdistill's GLUE YAML schema
needs, the model builders and the task metrics. Importing this package needs no ``transformers``; building models
and data does (``pip install -e '.[nlp]'``).

Registered here: the forward process ``forward_batch_as_kwargs`` (``model(**batch)``), the optimizer
``optimizer_no_decay`` (no weight decay on biases and LayerNorm weights), Hugging Face's learning-rate schedules
(``get_linear_schedule_with_warmup`` and the others), ``extract_transformers_loss`` (the model's own loss for a
``model_term``) and the model builder ``layer_subset_student``: what torchdistill's GLUE configs take from the
``custom`` package of its example scripts (``examples/hf_transformers/custom``), which its wheel does not ship.
"""
import torch
from torchdistill.core.interfaces.registry import FORWARD_PROC_FUNC_DICT, register_forward_proc_func
from torchdistill.losses.registry import (
    FUNC2EXTRACT_MODEL_OUTPUT_DICT, HIGH_LEVEL_LOSS_DICT, get_high_level_loss, register_func2extract_model_output,
    register_high_level_loss
)
from torchdistill.optim.registry import OPTIM_DICT, SCHEDULER_DICT, register_optimizer, register_scheduler

from .glue_metrics import glue_metrics
from .models import build_text_model, layer_subset_student, load_tokenizer

if 'forward_batch_as_kwargs' not in FORWARD_PROC_FUNC_DICT:
    @register_forward_proc_func
    def forward_batch_as_kwargs(model, sample_batch, targets=None, supp_dict=None, **kwargs):
        """``model(**sample_batch, labels=targets)``: a tokenized batch (input_ids, attention_mask, ...) as keyword
        arguments, with its labels, as torchdistill's GLUE script passes the whole collated batch: a Hugging Face
        model then also returns its own loss (``outputs.loss``), which a ``model_term`` with
        ``func2extract_model_loss: 'extract_transformers_loss'`` adds to the criterion. Without targets (or when
        the batch already holds its labels) the batch is passed as it is."""
        if targets is not None and 'labels' not in sample_batch:
            return model(**sample_batch, labels=targets)
        return model(**sample_batch)


if 'extract_transformers_loss' not in FUNC2EXTRACT_MODEL_OUTPUT_DICT:
    @register_func2extract_model_output
    def extract_transformers_loss(student_outputs, targets=None, **kwargs):
        """``{'loss': outputs.loss}``, the Hugging Face model's own loss (CE; MSE for one output, STS-B), for a
        ``WeightedSumLoss`` ``model_term`` (torchdistill's example ``custom/loss.py`` registers the same function)."""
        loss = getattr(student_outputs, 'loss', None)
        if loss is None:
            raise ValueError("func2extract_model_loss 'extract_transformers_loss': the model returned no loss; it "
                             'computes one only when the batch has labels')
        return {'loss': loss}


if 'CriterionWithoutTargets' not in HIGH_LEVEL_LOSS_DICT:
    @register_high_level_loss
    class CriterionWithoutTargets(torch.nn.Module):
        """The high-level loss ``criterion`` (a torchdistill criterion config) called with ``targets=None``, as
        torchdistill's GLUE script calls its criterion: the labels reach the model only (its own loss, for a
        ``model_term``), so e.g. ``KDLoss`` is the soft KL alone. The text runner puts a config's criterion in it
        unless the train config says ``criterion_targets: 'labels'``."""
        def __init__(self, criterion, **kwargs):
            super().__init__()
            self.criterion = get_high_level_loss(criterion)

        def forward(self, io_dict, model_loss_dict, targets=None):
            return self.criterion(io_dict, model_loss_dict, None)

        def __str__(self):
            return f'{self.criterion} (no targets: labels reach the model only)'


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
