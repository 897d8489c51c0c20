"""Knowledge distillation for causal language models: LoRA PESF-KD teachers (``LoRATeacher``, built on PEFT),
model builders in the GLUE configs' schema, text and instruction data, token-level metrics (perplexity, agreement,
KL, sharpness gap, ROUGE-L) and the runner behind ``tools/causal_lm.py``. The token-level losses are
:class:`pesf_ext.losses.TokenKDLoss` and the functions of :mod:`pesf_ext.losses.functional`.

Importing this package registers ``LoRATeacher`` with torchdistill; building models needs ``transformers`` and,
for LoRA, ``peft`` (``pip install -e '.[lm]'``).
"""
from .lora import LoRATeacher, default_target_modules, lora_config

__all__ = ['LoRATeacher', 'default_target_modules', 'lora_config']
