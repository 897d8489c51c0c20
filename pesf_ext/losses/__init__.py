"""Logit-based distillation losses; importing this package registers them with torchdistill's mid-level registry."""
from .base import LogitPairLoss
from .dkd import DKDLoss
from .ftkd import FTKDLoss
from .functional import (
    LogitStandardization, cross_entropy, kl_divergence, sharpness, sharpness_gap, soften, softened_kl,
    standardize_logits
)
from .online import DMLLoss, KDCLLoss
from .pesf import PESFKDLoss
from .zscore import ZScoreKDLoss

__all__ = [
    'LogitPairLoss', 'PESFKDLoss', 'FTKDLoss', 'ZScoreKDLoss', 'DMLLoss', 'KDCLLoss', 'DKDLoss',
    'LogitStandardization', 'standardize_logits', 'soften', 'softened_kl', 'kl_divergence', 'cross_entropy',
    'sharpness', 'sharpness_gap',
]
