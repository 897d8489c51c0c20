"""GLUE metrics against hand computations, and the text-side losses (regression KD, PKD, LogitKD, TaskLoss) against
hand-written formulas, with their gradient routing."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchdistill.losses.mid_level import KDLoss

import pesf_ext  # noqa: F401
from pesf_ext.losses import DMLLoss, FTKDLoss, LogitKDLoss, PESFKDLoss, PKDLoss, TaskLoss, ZScoreKDLoss
from pesf_ext.losses.pkd import pkd_teacher_layers
from pesf_ext.nlp.glue_metrics import glue_metrics

PATHS = dict(student_module_path='.', student_module_io='output', teacher_module_path='.', teacher_module_io='output')


def io(z):
    return {'.': {'output': z}}


# ---- metrics --------------------------------------------------------------------------------------------------

def test_accuracy_f1_matthews_by_hand():
    gold = np.array([1, 1, 1, 0, 0, 0, 1, 0])
    logits = np.array([[0, 1], [0, 1], [1, 0], [1, 0], [0, 1], [1, 0], [0, 1], [1, 0]], dtype=float)
    # predictions 1 1 0 0 1 0 1 0: TP = 3, FN = 1, FP = 1, TN = 3
    tp, fn, fp, tn = 3, 1, 1, 3
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    f1 = 2 * precision * recall / (precision + recall)
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    results = glue_metrics(logits, gold, ('accuracy', 'f1', 'matthews'))
    assert results['accuracy'] == pytest.approx(100 * 6 / 8)
    assert results['f1'] == pytest.approx(100 * f1)
    assert results['matthews'] == pytest.approx(100 * mcc)
    assert results['score'] == pytest.approx((75 + 100 * f1 + 100 * mcc) / 3)


def test_pearson_spearman_by_hand():
    pred = np.array([[1.0], [2.0], [4.0], [3.0], [10.0]])
    gold = np.array([1.5, 2.0, 3.0, 4.0, 5.0])
    x, y = pred[:, 0], gold
    pearson = ((x - x.mean()) * (y - y.mean())).sum() / math.sqrt(((x - x.mean()) ** 2).sum() * ((y - y.mean()) ** 2).sum())
    # ranks: pred 1 2 4 3 5, gold 1 2 3 4 5 -> d^2 = 0 0 1 1 0
    spearman = 1 - 6 * 2 / (5 * (5 ** 2 - 1))
    results = glue_metrics(pred, gold, ('pearson', 'spearman'))
    assert results['pearson'] == pytest.approx(100 * pearson)
    assert results['spearman'] == pytest.approx(100 * spearman)


def test_constant_prediction_correlation_is_zero_not_nan():
    results = glue_metrics(np.ones((4, 1)), np.array([0.0, 1.0, 2.0, 3.0]), ('pearson', 'spearman'))
    assert results['pearson'] == 0.0 and results['spearman'] == 0.0


# ---- regression (STS-B) in the logit-pair losses --------------------------------------------------------------

def regression_pair():
    torch.manual_seed(0)
    z_s = torch.randn(6, 1, requires_grad=True)
    z_t = torch.randn(6, 1, requires_grad=True)
    y = torch.rand(6) * 5
    return z_s, z_t, y


def test_logit_kd_regression_is_mse_to_label_and_teacher():
    z_s, z_t, y = regression_pair()
    loss = LogitKDLoss(**PATHS, temperature=5.0, alpha=0.3, beta=0.7)(io(z_s), io(z_t), y)
    expected = 0.3 * ((z_s[:, 0] - y) ** 2).mean() + 0.7 * ((z_s[:, 0] - z_t[:, 0]) ** 2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert z_s.grad is not None and z_t.grad is None  # teacher detached


def test_pesfkd_regression_terms_and_routing():
    z_s, z_ta, y = regression_pair()
    loss = PESFKDLoss(**PATHS, temperature=5.0, alpha=0.5, beta=0.5, teacher_alpha=0.2, teacher_beta=0.8)(
        io(z_s), io(z_ta), y)
    s, t = z_s[:, 0], z_ta[:, 0]
    expected = 0.5 * ((s - y) ** 2).mean() + 0.5 * ((s - t) ** 2).mean() + 0.2 * ((t - y) ** 2).mean() + \
        0.8 * ((t - s) ** 2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    # each side gets only its own terms: d/ds = 0.5*2(s-y)/N + 0.5*2(s-t)/N ; d/dt = 0.2*2(t-y)/N + 0.8*2(t-s)/N
    n = len(y)
    assert torch.allclose(z_s.grad[:, 0], (s - y + s - t).detach() / n, atol=1e-6)
    assert torch.allclose(z_ta.grad[:, 0], (0.4 * (t - y) + 1.6 * (t - s)).detach() / n, atol=1e-6)


def test_ftkd_and_dml_regression_reach_the_teacher():
    z_s, z_t, y = regression_pair()
    FTKDLoss(**PATHS, temperature=4.0, alpha=0.5, beta=0.5)(io(z_s), io(z_t), y).backward()
    assert z_t.grad is not None and z_t.grad.abs().sum() > 0
    z_s, z_t, y = regression_pair()
    DMLLoss(**PATHS)(io(z_s), io(z_t), y).backward()
    assert z_t.grad.abs().sum() > 0 and z_s.grad.abs().sum() > 0


def test_zscore_on_regression_head_is_a_clear_error():
    z_s, z_t, y = regression_pair()
    with pytest.raises(ValueError, match='at least two classes'):
        ZScoreKDLoss(**PATHS, temperature=2.0, alpha=0.1, beta=9.0)(io(z_s), io(z_t), y)


def test_logit_kd_equals_torchdistill_kdloss_on_classification():
    torch.manual_seed(1)
    z_s, z_t, y = torch.randn(8, 3), torch.randn(8, 3), torch.randint(0, 3, (8,))
    ours = LogitKDLoss(**PATHS, temperature=4.0, alpha=0.3, beta=0.7)(io(z_s), io(z_t), y)
    theirs = KDLoss(**PATHS, temperature=4.0, alpha=0.3, beta=0.7)(io(z_s), io(z_t), y)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)


def test_logit_kd_reads_hugging_face_outputs():
    from transformers.modeling_outputs import SequenceClassifierOutput
    z_s, z_t, y = torch.randn(4, 2), torch.randn(4, 2), torch.tensor([0, 1, 1, 0])
    loss = LogitKDLoss(**PATHS, temperature=2.0, alpha=0.5)
    wrapped = loss(io(SequenceClassifierOutput(logits=z_s)), io(SequenceClassifierOutput(logits=z_t)), y)
    assert wrapped.item() == pytest.approx(loss(io(z_s), io(z_t), y).item())


def test_task_loss_ce_and_mse():
    z, y = torch.randn(5, 3), torch.tensor([0, 2, 1, 1, 0])
    assert TaskLoss()(z, y).item() == pytest.approx(F.cross_entropy(z, y).item())
    r, t = torch.randn(5, 1), torch.rand(5)
    assert TaskLoss()(r, t).item() == pytest.approx(((r[:, 0] - t) ** 2).mean().item())


# ---- PKD ----------------------------------------------------------------------------------------------------

def test_pkd_loss_by_hand_and_teacher_detached():
    torch.manual_seed(2)
    s_states = [torch.randn(3, 5, 8, requires_grad=True) for _ in range(2)]
    t_states = [torch.randn(3, 5, 8, requires_grad=True) for _ in range(2)]
    student = {f's{j}': {'output': (h,)} for j, h in enumerate(s_states)}  # tuple outputs (older transformers)
    teacher = {f't{j}': {'output': h} for j, h in enumerate(t_states)}
    loss = PKDLoss(['s0', 's1'], ['t0', 't1'])(student, teacher)
    total = 0.0
    for hs, ht in zip(s_states, t_states):
        a, b = hs[:, 0].detach().numpy(), ht[:, 0].detach().numpy()
        a = a / np.linalg.norm(a, axis=1, keepdims=True)
        b = b / np.linalg.norm(b, axis=1, keepdims=True)
        total += ((a - b) ** 2).sum()
    assert loss.item() == pytest.approx(total / (2 * 3 * 8), rel=1e-5)
    loss.backward()
    assert all(h.grad is not None for h in s_states) and all(h.grad is None for h in t_states)
    assert s_states[0].grad[:, 1:].abs().sum() == 0  # only the [CLS] position


def test_pkd_layer_maps():
    assert pkd_teacher_layers(12, 6, 'skip') == [1, 3, 5, 7, 9]   # PKD-Skip: teacher layers 2, 4, ..., 10 (1-based)
    assert pkd_teacher_layers(12, 6, 'last') == [6, 7, 8, 9, 10]  # PKD-Last: 7..11 (1-based)
    with pytest.raises(ValueError):
        pkd_teacher_layers(6, 8)
    with pytest.raises(ValueError, match='as many'):
        PKDLoss(['a'], ['b', 'c'])
