"""Logit-based distillation losses, and the feature losses SP, CC, FT, FSP (and AT, VID across map sizes) in
RepDistiller's forms; importing this package registers them with torchdistill's mid-level registry."""
from .base import LogitPairLoss
from .cc import CorrelationCongruenceLoss
from .ctkd import CTKDLoss, CurriculumTemperature
from .dist import LogitDISTLoss
from .divergences import TAIDSchedule, TokenKDLoss
from .dkd import DKDLoss
from .fsp import FSPMatrixLoss
from .ft import FactorTransferLoss
from .ftkd import FTKDLoss
from .functional import (
    LogitStandardization, cross_entropy, is_regression, kl_divergence, sharpness, sharpness_gap, soften, softened_kl,
    squared_error, standardize_logits
)
from .kd import LogitKDLoss
from .luminet import LumiNetLoss
from .mlkd import MLKDLoss, forward_two_views
from .online import DMLLoss, KDCLLoss
from .pesf import PESFKDLoss
from .pkd import PKDLoss
from .pooled import PooledATLoss, PooledVIDLoss
from .sp import SimilarityPreservingLoss
from .task import TaskLoss
from .ttm import TTMLoss, WTTMLoss
from .zscore import ZScoreKDLoss

__all__ = [
    'LogitPairLoss', 'LogitKDLoss', 'PKDLoss', 'TaskLoss', 'TokenKDLoss', 'TAIDSchedule',
    'PESFKDLoss', 'FTKDLoss', 'ZScoreKDLoss', 'DMLLoss', 'KDCLLoss', 'DKDLoss', 'CTKDLoss', 'MLKDLoss', 'forward_two_views', 'LogitDISTLoss', 'SimilarityPreservingLoss',
    'CorrelationCongruenceLoss', 'FactorTransferLoss', 'FSPMatrixLoss', 'PooledATLoss', 'PooledVIDLoss',
    'CurriculumTemperature', 'TTMLoss', 'WTTMLoss', 'LumiNetLoss',
    'LogitStandardization', 'standardize_logits', 'soften', 'softened_kl', 'kl_divergence', 'cross_entropy',
    'sharpness', 'sharpness_gap',
]
