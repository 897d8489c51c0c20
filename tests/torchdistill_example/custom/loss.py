"""As the example's ``custom/loss.py``: the Hugging Face model's own loss, None when the batch had no labels."""
from torchdistill.losses.util import register_func2extract_model_output


@register_func2extract_model_output
def extract_transformers_loss(student_outputs, targets, **kwargs):
    return {'loss': student_outputs.loss}
