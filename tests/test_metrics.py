"""Analysis metrics against hand computations."""
import math

import pytest
import torch

from pesf_ext import metrics


def hand_pl(teacher_row, student_row):
    p = [math.exp(v) for v in teacher_row]
    p = [v / sum(p) for v in p]
    q = [math.exp(v) for v in student_row]
    q = [v / sum(q) for v in q]
    m = [(a + b) / 2 for a, b in zip(p, q)]
    jsd = 0.5 * sum(a * math.log(a / c) for a, c in zip(p, m)) + 0.5 * sum(b * math.log(b / c) for b, c in zip(q, m))
    return 1 - math.sqrt(jsd)


def test_probability_loyalty_matches_hand_computation_and_scipy():
    teacher = torch.tensor([[2.0, 0.5, -1.0], [0.0, 0.0, 3.0]])
    student = torch.tensor([[1.0, 1.0, 0.0], [0.5, -0.5, 1.0]])
    expected = [hand_pl(t.tolist(), s.tolist()) for t, s in zip(teacher, student)]
    per_sample = metrics.probability_loyalty_per_sample(teacher, student)
    assert per_sample.tolist() == pytest.approx(expected, abs=1e-12)
    assert metrics.probability_loyalty(teacher, student) == pytest.approx(sum(expected) / 2, abs=1e-12)
    distance = pytest.importorskip('scipy.spatial.distance')
    scipy_pl = [1 - distance.jensenshannon(t.softmax(-1).tolist(), s.softmax(-1).tolist())
                for t, s in zip(teacher.double(), student.double())]
    assert per_sample.tolist() == pytest.approx(scipy_pl, abs=1e-9)


def test_probability_loyalty_of_identical_models_is_one():
    logits = torch.randn(16, 10)
    assert metrics.probability_loyalty(logits, logits.clone()) == pytest.approx(1.0, abs=1e-6)


def test_agreement_of_identical_models_is_one_and_of_disjoint_is_zero():
    logits = torch.randn(32, 10)
    assert metrics.top1_agreement(logits, logits.clone()) == 1.0
    assert metrics.top1_agreement(torch.eye(4), torch.eye(4).roll(1, dims=1)) == 0.0


def test_logit_mean_std_hand_values():
    mean, std = metrics.logit_mean_std(torch.tensor([[1.0, 2.0, 3.0, 6.0], [0.0, 0.0, 0.0, 0.0]]))
    assert mean.tolist() == [3.0, 0.0]
    assert std.tolist() == pytest.approx([math.sqrt((4 + 1 + 0 + 9) / 4), 0.0])


def minibatch_cka(x, y, batch_size):
    cka = metrics.MinibatchCKA()
    for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
        cka.update(xb, yb)
    return cka.compute()


def test_unbiased_hsic_matches_explicit_formula():
    x, y = torch.randn(7, 3, dtype=torch.float64), torch.randn(7, 5, dtype=torch.float64)
    k, l_ = x @ x.T, y @ y.T
    n = 7
    kt, lt = k.clone(), l_.clone()
    kt.fill_diagonal_(0)
    lt.fill_diagonal_(0)
    ones = torch.ones(n, dtype=torch.float64)
    expected = (torch.trace(kt @ lt) + (ones @ kt @ ones) * (ones @ lt @ ones) / ((n - 1) * (n - 2))
                - 2 / (n - 2) * (ones @ kt @ lt @ ones)) / (n * (n - 3))
    assert metrics._unbiased_hsic(k, l_).item() == pytest.approx(expected.item(), rel=1e-12)


def test_minibatch_cka_self_orthogonal_and_scale_invariance():
    torch.manual_seed(0)
    x = torch.randn(96, 8, dtype=torch.float64)
    y = x @ torch.randn(8, 6, dtype=torch.float64) + 0.5 * torch.randn(96, 6, dtype=torch.float64)
    assert minibatch_cka(x, x, 32) == pytest.approx(1.0, abs=1e-12)
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    reference = minibatch_cka(x, y, 32)
    assert 0.1 < reference < 1.0
    assert minibatch_cka(x, (y @ q) * 3.7, 32) == pytest.approx(reference, abs=1e-10)
    assert minibatch_cka(x * 0.01, y, 32) == pytest.approx(reference, abs=1e-10)
    assert minibatch_cka(x, torch.randn(96, 6), 32) < 0.2  # unrelated features


def test_minibatch_cka_close_to_full_linear_cka_on_large_batches():
    """The unbiased estimator approaches the (biased) full-batch linear CKA as the batch grows."""
    torch.manual_seed(1)
    x = torch.randn(2000, 5)
    y = torch.tanh(x @ torch.randn(5, 4))
    assert minibatch_cka(x, y, 1000) == pytest.approx(metrics.linear_cka(x, y), abs=0.01)


def test_linear_cka_self_and_invariances():
    x, y = torch.randn(50, 4), torch.randn(50, 7)
    assert metrics.linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    q, _ = torch.linalg.qr(torch.randn(7, 7, dtype=torch.float64))
    assert metrics.linear_cka(x, 2.5 * (y.double() @ q)) == pytest.approx(metrics.linear_cka(x, y), abs=1e-10)


@pytest.mark.parametrize('num_classes', [2, 10, 100])
@pytest.mark.parametrize('std', ['unbiased', 'population'])
def test_zscore_bound_is_attained_and_never_exceeded(num_classes, std):
    from pesf_ext.losses.functional import standardize_logits
    vector, top = metrics.zscore_extreme_logits(num_classes, std)
    expected = (num_classes - 1) / math.sqrt(num_classes) if std == 'unbiased' else math.sqrt(num_classes - 1)
    assert top == pytest.approx(expected)
    # the extreme vector is already standardized, so Z-scoring any positive rescaling/shift of it gives it back
    assert torch.allclose(standardize_logits(5 * vector + 3, std, eps=0.0), vector, atol=1e-12)
    g = torch.Generator().manual_seed(num_classes)
    z = torch.randn(4000, num_classes, generator=g, dtype=torch.float64) * torch.rand(4000, 1, generator=g) * 20
    z[:, 0] += 50 * torch.rand(4000, generator=g, dtype=torch.float64)     # many peaked rows too
    standardized = standardize_logits(z, std, eps=0.0)
    assert standardized.max() <= top + 1e-9
    for tau in (0.5, 2.0):
        bound = metrics.zscore_max_probability(num_classes, tau, std)
        assert torch.softmax(standardized / tau, dim=1).max() <= bound + 1e-12
        assert bound == pytest.approx(math.exp(top / tau) / (math.exp(top / tau) + (num_classes - 1) * math.exp(
            -top / ((num_classes - 1) * tau))))


def test_zscore_bound_rejects_bad_arguments():
    with pytest.raises(ValueError, match='num_classes'):
        metrics.zscore_extreme_logits(1)
    with pytest.raises(ValueError, match='std'):
        metrics.zscore_extreme_logits(10, 'sample')
