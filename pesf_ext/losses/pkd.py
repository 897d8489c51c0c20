"""Patient knowledge distillation (PKD): intermediate [CLS] states of matched layers."""
import torch
from torch import nn
from torchdistill.losses.registry import register_mid_level_loss

PKD_STRATEGIES = ('skip', 'last')


def pkd_teacher_layers(num_teacher_layers, num_student_layers, strategy='skip'):
    """0-based teacher layer indices matched to student layers 0..M-2 (the student's last layer feeds the classifier
    and is left out, as in the paper). 'skip' (PKD-Skip): every k-th layer, k = N / M (12 -> 6: 1, 3, 5, 7, 9);
    'last' (PKD-Last): the M - 1 layers before the teacher's last (12 -> 6: 6, 7, 8, 9, 10)."""
    if strategy not in PKD_STRATEGIES:
        raise ValueError(f'strategy must be one of {PKD_STRATEGIES}, got {strategy!r}')
    if not 1 < num_student_layers <= num_teacher_layers:
        raise ValueError(f'need 1 < student layers <= teacher layers, got {num_student_layers} and '
                         f'{num_teacher_layers}')
    count = num_student_layers - 1
    if strategy == 'last':
        return list(range(num_teacher_layers - 1 - count, num_teacher_layers - 1))
    step = num_teacher_layers // num_student_layers
    return [step * (j + 1) - 1 for j in range(count)]


def first_tensor_of(value):
    """The hidden states in a module output: the tensor itself, or element 0 of a tuple (older transformers)."""
    while isinstance(value, (tuple, list)):
        value = value[0]
    return value


def normalized_token_states(value, token_index):
    states = first_tensor_of(value)[:, token_index].float()
    return states / states.norm(dim=-1, keepdim=True).clamp_min(1e-12)


@register_mid_level_loss
class PKDLoss(nn.Module):
    """Patient KD loss (Sun et al., EMNLP 2019, eq. 3): MSE between L2-normalised [CLS] hidden states of matched
    student and teacher layers; the teacher's states are detached.

    .. math:: L_{PT} = \\frac{1}{M' N H} \\sum_{j=1}^{M'} \\sum_{i=1}^{N} \\left\\|
              \\frac{h_s^{i,j}}{\\|h_s^{i,j}\\|_2} - \\frac{h_t^{i,I(j)}}{\\|h_t^{i,I(j)}\\|_2} \\right\\|_2^2

    over M' layer pairs, N samples and H hidden units: the mean of the squared differences, as the PKD and
    PESF-KD authors' code computes it (the paper writes the sum; the mean is what its β = 100 goes with).
    The paper's full objective is :math:`(1 - \\alpha) CE + \\alpha L_{DS} + \\beta L_{PT}` with α = 0.5, β = 100:
    put this loss in a ``WeightedSumLoss`` with weight β next to ``LogitKDLoss`` (or ``PESFKDLoss``, Table V of the
    PESF-KD paper). The layers' outputs come from torchdistill forward hooks (``forward_hook.output``).

    Siqi Sun, Yu Cheng, Zhe Gan, Jingjing Liu: `"Patient Knowledge Distillation for BERT Model Compression"
    <https://arxiv.org/abs/1908.09355>`_ @ EMNLP-IJCNLP 2019

    :param student_module_paths: student layers, e.g. ['bert.encoder.layer.0', ..., 'bert.encoder.layer.4'].
    :param teacher_module_paths: matched teacher layers (same count), e.g. PKD-Skip
        ['bert.encoder.layer.1', 'bert.encoder.layer.3', ...] (see :func:`pkd_teacher_layers`).
    :param module_io: 'output' (hidden states after the layer).
    :param token_index: position of the [CLS] token (0 for BERT).

    .. code-block:: yaml

        pkd:
          criterion:
            key: 'PKDLoss'
            kwargs:
              student_module_paths: ['bert.encoder.layer.0', 'bert.encoder.layer.1']
              teacher_module_paths: ['bert.encoder.layer.1', 'bert.encoder.layer.3']
          weight: 100.0
    """
    def __init__(self, student_module_paths, teacher_module_paths, module_io='output', token_index=0):
        super().__init__()
        if not student_module_paths or len(student_module_paths) != len(teacher_module_paths):
            raise ValueError(f'PKDLoss needs as many teacher as student layers (at least one), got '
                             f'{len(student_module_paths or [])} student and {len(teacher_module_paths or [])} teacher')
        self.student_module_paths = list(student_module_paths)
        self.teacher_module_paths = list(teacher_module_paths)
        self.module_io = module_io
        self.token_index = token_index

    def forward(self, student_io_dict, teacher_io_dict, *args, **kwargs):
        student = torch.stack([normalized_token_states(student_io_dict[p][self.module_io], self.token_index)
                               for p in self.student_module_paths])
        teacher = torch.stack([normalized_token_states(teacher_io_dict[p][self.module_io], self.token_index)
                               for p in self.teacher_module_paths]).detach()
        if student.shape != teacher.shape:
            raise ValueError(f'PKDLoss: student [CLS] states {tuple(student.shape[1:])} and teacher '
                             f'{tuple(teacher.shape[1:])} differ in size; PKD needs equal hidden sizes')
        return ((student - teacher) ** 2).mean()

    def extra_repr(self):
        return f'pairs={list(zip(self.student_module_paths, self.teacher_module_paths))}'
