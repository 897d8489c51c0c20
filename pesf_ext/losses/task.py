"""The supervised loss of one network: CE for a classification head, squared error for a regression head."""
from torch import nn
from torchdistill.losses.registry import register_low_level_loss

from .base import extract_logits
from .functional import cross_entropy, is_regression, squared_error


@register_low_level_loss
class TaskLoss(nn.Module):
    """:math:`CE(y, z)` for classification logits, :math:`\\frac{1}{N}\\sum_i (\\hat{y}_i - y_i)^2` for a
    one-output regression head (GLUE STS-B), as ``BertForSequenceClassification`` computes its own loss. Reads
    Hugging Face outputs (``.logits``), so it pairs with torchdistill's ``SimpleLossWrapper`` on module path '.':

    .. code-block:: yaml

        task:
          criterion: {key: 'TaskLoss', kwargs: {reduction: 'batchmean'}}
          criterion_wrapper:
            key: 'SimpleLossWrapper'
            kwargs:
              input: {is_from_teacher: False, module_path: '.', io: 'output'}
              target: {uses_label: True}
          weight: 1.0
    """
    def __init__(self, reduction='batchmean'):
        super().__init__()
        self.reduction = reduction

    def forward(self, output, targets):
        logits = extract_logits({'.': {'output': output}}, '.', 'output')
        if is_regression(logits):
            return squared_error(logits, targets, self.reduction)
        return cross_entropy(logits, targets, self.reduction)
