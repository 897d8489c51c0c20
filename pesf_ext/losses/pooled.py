"""AT and VID for feature maps of different spatial sizes, as RepDistiller computes them: the larger map is
average-pooled to the smaller one's size first (``distiller_zoo/AT.py`` ``at_loss``, ``distiller_zoo/VID.py``
``forward``). torchdistill's ``ATLoss`` / ``VIDLoss`` need equal sizes; with equal sizes these are the same losses.
Needed by heterogeneous pairs such as ResNet-56 -> VGG-8 (student maps 16/8/4, teacher maps 32/16/8)."""
import torch
from torch.nn import functional as F
from torchdistill.losses.mid_level import ATLoss, VIDLoss
from torchdistill.losses.registry import register_mid_level_loss


def pool_to(feature_map, size):
    """``feature_map`` average-pooled to ``size`` x ``size`` (unchanged when it already is that size)."""
    return feature_map if feature_map.shape[2] == size else F.adaptive_avg_pool2d(feature_map, (size, size))


def match_sizes(student_map, teacher_map):
    """Both maps at the smaller height of the two (RepDistiller pools square maps to (H, H))."""
    size = min(student_map.shape[2], teacher_map.shape[2])
    return pool_to(student_map, size), pool_to(teacher_map, size)


@register_mid_level_loss
class PooledATLoss(ATLoss):
    """torchdistill's ``ATLoss`` (``mode`` 'code' = RepDistiller's ``Attention``: mean over channels of the squared
    map, L2-normalised, squared difference averaged) with the larger map of each pair average-pooled to the
    smaller one's size first, as RepDistiller does."""
    def compute_at_loss(self, student_feature_map, teacher_feature_map):
        return super().compute_at_loss(*match_sizes(student_feature_map, teacher_feature_map))

    def compute_at_loss_paper(self, student_feature_map, teacher_feature_map):
        return super().compute_at_loss_paper(*match_sizes(student_feature_map, teacher_feature_map))


@register_mid_level_loss
class PooledVIDLoss(VIDLoss):
    """torchdistill's ``VIDLoss`` (with ``VariationalDistributor4VID``'s regressors on the student side) where the
    teacher's map is average-pooled to the size of the student's prediction when it is larger, as RepDistiller's
    ``VIDLoss`` pools the target. RepDistiller pools the student's map *before* its regressor when the student's is
    the larger; the regressor runs in the wrapper before this loss, so that case raises ValueError here."""
    def forward(self, student_io_dict, teacher_io_dict, *args, **kwargs):
        vid_loss = 0
        for pair_name, pair_config in self.feature_pairs.items():
            pred_mean, pred_var = student_io_dict[pair_config['student']['path']][pair_config['student']['io']]
            target = teacher_io_dict[pair_config['teacher']['path']][pair_config['teacher']['io']]
            if pred_mean.shape[2] > target.shape[2]:
                raise ValueError(f'PooledVIDLoss: pair {pair_name}: the student map ({pred_mean.shape[2]}) is '
                                 f'larger than the teacher map ({target.shape[2]}); RepDistiller pools it before the '
                                 'regressor')
            target = pool_to(target, pred_mean.shape[2])
            neg_log_prob = 0.5 * ((pred_mean - target) ** 2 / pred_var + torch.log(pred_var))
            vid_loss = vid_loss + pair_config.get('weight', 1) * neg_log_prob.mean()
        return vid_loss
