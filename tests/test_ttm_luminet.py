"""Numbers, gradients, reductions and argument checks of TTMLoss, WTTMLoss and LumiNetLoss, and LumiNet's batch
statistics across two gloo processes.

References are written here with plain torch ops (explicit exp/log/sums/powers), independent of pesf_ext's code.
"""
import os
import subprocess
import sys

import pytest
import torch
from torchdistill.losses.registry import get_mid_level_loss

import pesf_ext.losses  # noqa: F401  (registers the losses)
from pesf_ext.losses import LumiNetLoss, TTMLoss, WTTMLoss

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N, K = 8, 10
PATHS = dict(student_module_path='.', student_module_io='output', teacher_module_path='.', teacher_module_io='output')


# ---------------------------------------------------------------- independent references
def ref_softmax(z):
    e = torch.exp(z - z.max(dim=1, keepdim=True).values)
    return e / e.sum(dim=1, keepdim=True)


def ref_ce(z, y):
    log_q = torch.log(ref_softmax(z))
    return -log_q[torch.arange(z.shape[0]), y].mean()


def ref_zscore(z, eps=1e-7):
    mean = z.sum(dim=1, keepdim=True) / z.shape[1]
    sigma = (((z - mean) ** 2).sum(dim=1, keepdim=True) / (z.shape[1] - 1)).sqrt()
    return (z - mean) / (sigma + eps)


def ref_ttm_per_sample(z_t, z_s, gamma, weighted, zscore=False):
    """sum_k pt~_k (log pt~_k - log q_k), pt~ = p_t^gamma / sum p_t^gamma, q = softmax(z_s); WTTM: x sum p_t^gamma."""
    p_t = ref_softmax(ref_zscore(z_t) if zscore else z_t)
    powered = p_t ** gamma
    norm = powered.sum(dim=1, keepdim=True)
    target = powered / norm
    q = ref_softmax(z_s)
    kl = (target * (torch.log(target) - torch.log(q))).sum(dim=1)
    return kl * norm.squeeze(1) if weighted else kl


def ref_batch_standardize(z, eps=1e-5):
    mean = z.sum(dim=0, keepdim=True) / z.shape[0]
    var = ((z - mean) ** 2).sum(dim=0, keepdim=True) / z.shape[0]
    return (z - mean) / torch.sqrt(var + eps)


def ref_luminet_kl_per_sample(z_t, z_s, tau, stats_t=None, stats_s=None):
    """KL(softmax(B(z_t)/tau) || softmax(B(z_s)/tau)) per sample, no tau^2; B with the statistics of stats_* rows."""
    def standardize(z, rows):
        if rows is None:
            return ref_batch_standardize(z)
        mean = rows.sum(dim=0, keepdim=True) / rows.shape[0]
        var = ((rows - mean) ** 2).sum(dim=0, keepdim=True) / rows.shape[0]
        return (z - mean) / torch.sqrt(var + 1e-5)
    p = ref_softmax(standardize(z_t, stats_t) / tau)
    q = ref_softmax(standardize(z_s, stats_s) / tau)
    return (p * (torch.log(p) - torch.log(q))).sum(dim=1)


def logits(seed=0, n=N, k=K):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g) * 2, torch.randn(n, k, generator=g) * 4, torch.randint(0, k, (n,), generator=g)


def io(z):
    return {'.': {'output': z}}


# ---------------------------------------------------------------- values
@pytest.mark.parametrize('zscore', [False, True])
@pytest.mark.parametrize('gamma', [0.1, 0.5, 1.0])
@pytest.mark.parametrize('cls, weighted', [(TTMLoss, False), (WTTMLoss, True)])
def test_ttm_and_wttm_match_hand_formula(cls, weighted, gamma, zscore):
    z_s, z_t, y = logits()
    loss_fn = cls(**PATHS, gamma=gamma, alpha=1.0, beta=45.0, logit_standardization=zscore)
    expected = ref_ce(z_s, y) + 45.0 * ref_ttm_per_sample(z_t, z_s, gamma, weighted, zscore).mean()
    torch.testing.assert_close(loss_fn(io(z_s), io(z_t), y), expected, rtol=1e-5, atol=1e-5)
    assert set(loss_fn.last_terms) == {'student_ce', 'student_kl'}


def test_ttm_is_kd_with_teacher_temperature_only_and_wttm_weights_lie_in_their_range():
    z_s, z_t, y = logits(1)
    tau = 4.0
    p_t, log_q = ref_softmax(z_t / tau), torch.log(ref_softmax(z_s))
    kd_teacher_side = (p_t * (torch.log(p_t) - log_q)).sum(dim=1).mean()
    ttm = TTMLoss(**PATHS, gamma=1 / tau, alpha=0.0, beta=1.0)(io(z_s), io(z_t), y)
    torch.testing.assert_close(ttm, kd_teacher_side, rtol=1e-5, atol=1e-6)
    weights = (ref_softmax(z_t) ** 0.25).sum(dim=1)
    assert (weights >= 1).all() and (weights <= K ** 0.75 + 1e-5).all()
    wttm = WTTMLoss(**PATHS, gamma=0.25, alpha=0.0, beta=1.0)(io(z_s), io(z_t), y)
    assert wttm > ttm  # every weight >= 1 and a sample is rarely one-hot: strictly larger here


def test_zscore_switch_makes_ttm_invariant_to_teacher_scale_and_shift():
    z_s, z_t, y = logits(2)
    loss_fn = TTMLoss(**PATHS, gamma=0.5, alpha=0.0, beta=1.0, logit_standardization=True)
    torch.testing.assert_close(loss_fn(io(z_s), io(z_t), y), loss_fn(io(z_s), io(5 * z_t + 3), y))
    plain = TTMLoss(**PATHS, gamma=0.5, alpha=0.0, beta=1.0)
    assert not torch.allclose(plain(io(z_s), io(z_t), y), plain(io(z_s), io(5 * z_t + 3), y))


@pytest.mark.parametrize('epoch, factor', [(1, 0.25), (3, 0.75), (9, 1.0)])
def test_luminet_matches_hand_formula_with_warmup(epoch, factor):
    z_s, z_t, y = logits(3)
    loss_fn = LumiNetLoss(**PATHS, temperature=2.0, alpha=1.3, beta=121.0, warmup_epochs=4)
    loss_fn.set_epoch(epoch)
    expected = 1.3 * ref_ce(z_s, y) + factor * 121.0 * ref_luminet_kl_per_sample(z_t, z_s, 2.0).mean()
    torch.testing.assert_close(loss_fn(io(z_s), io(z_t), y), expected, rtol=1e-5, atol=1e-5)


def test_luminet_standardizes_each_class_over_the_batch_not_each_sample():
    z_s, z_t, y = logits(4)
    loss_fn = LumiNetLoss(**PATHS, temperature=4.0, alpha=0.0, beta=1.0)
    base = loss_fn(io(z_s), io(z_t), y)
    # adding a per-class constant and scaling each class column changes nothing (up to eps) ...
    shift, scale = torch.randn(1, K), torch.rand(1, K) + 0.5
    torch.testing.assert_close(loss_fn(io(z_s * scale + shift), io(z_t), y), base, rtol=1e-4, atol=1e-5)
    # ... a per-sample constant does change it (it is not a per-sample Z-score)
    assert not torch.allclose(loss_fn(io(z_s + torch.randn(N, 1) * 3), io(z_t), y), base, atol=1e-4)


# ---------------------------------------------------------------- gradients
@pytest.mark.parametrize('make', [
    lambda: TTMLoss(**PATHS, gamma=0.2, alpha=1.0, beta=2.0),
    lambda: WTTMLoss(**PATHS, gamma=0.2, alpha=1.0, beta=2.0, logit_standardization=True),
    lambda: LumiNetLoss(**PATHS, temperature=4.0, alpha=1.0, beta=2.0),
])
def test_gradient_reaches_the_student_only(make):
    z_s, z_t, y = logits(5)
    z_s, z_t = z_s.requires_grad_(True), z_t.requires_grad_(True)
    make()(io(z_s), io(z_t), y).backward()
    assert z_t.grad is None
    assert z_s.grad is not None and z_s.grad.abs().sum() > 0


def test_gradient_of_the_ttm_term_matches_the_hand_formula():
    """d/dz_s of batchmean KL(pt~ || softmax(z_s)) is (softmax(z_s) - pt~) / N."""
    z_s, z_t, y = logits(6)
    z_s.requires_grad_(True)
    TTMLoss(**PATHS, gamma=0.3, alpha=0.0, beta=1.0)(io(z_s), io(z_t), y).backward()
    powered = ref_softmax(z_t) ** 0.3
    expected = (ref_softmax(z_s.detach()) - powered / powered.sum(dim=1, keepdim=True)) / N
    torch.testing.assert_close(z_s.grad, expected, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- reductions
@pytest.mark.parametrize('make', [
    lambda r: TTMLoss(**PATHS, gamma=0.2, alpha=0.0, beta=1.0, reduction=r),
    lambda r: WTTMLoss(**PATHS, gamma=0.2, alpha=0.0, beta=1.0, reduction=r),
    lambda r: LumiNetLoss(**PATHS, temperature=2.0, alpha=0.0, beta=1.0, reduction=r),
])
def test_reductions(make):
    z_s, z_t, y = logits(7)
    values = {r: make(r)(io(z_s), io(z_t), y) for r in ('batchmean', 'sum', 'mean', 'none')}
    assert values['none'].shape == (N,)
    torch.testing.assert_close(values['sum'], values['none'].sum())
    torch.testing.assert_close(values['batchmean'], values['none'].sum() / N)
    torch.testing.assert_close(values['mean'], values['none'].sum() / (N * K))


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize('cls, kwargs, name', [
    (TTMLoss, {'gamma': 0}, 'gamma'),
    (TTMLoss, {'gamma': -0.5}, 'gamma'),
    (WTTMLoss, {'gamma': 'a'}, 'gamma'),
    (WTTMLoss, {'gamma': True}, 'gamma'),
    (TTMLoss, {'gamma': 0.1, 'reduction': 'avg'}, 'reduction'),
    (TTMLoss, {'gamma': 0.1, 'beta': -1.0}, 'beta'),
    (WTTMLoss, {'gamma': 0.1, 'std': 'sample'}, 'std'),
    (LumiNetLoss, {'temperature': 0}, 'temperature'),
    (LumiNetLoss, {'temperature': 4.0, 'batch_statistics': 'all'}, 'batch_statistics'),
    (LumiNetLoss, {'temperature': 4.0, 'warmup_epochs': -1}, 'warmup_epochs'),
    (LumiNetLoss, {'temperature': 4.0, 'alpha': -2.0}, 'alpha'),
    (LumiNetLoss, {'temperature': 4.0, 'eps': -1.0}, 'eps'),
])
def test_bad_arguments_raise_one_line_naming_them(cls, kwargs, name):
    with pytest.raises(ValueError, match=name) as error:
        cls(**PATHS, **kwargs)
    assert '\n' not in str(error.value)


def test_registered_and_refusing_what_they_cannot_compute():
    for key, kwargs in (('TTMLoss', {'gamma': 0.1}), ('WTTMLoss', {'gamma': 0.1}), ('LumiNetLoss', {'temperature': 4.0})):
        loss_fn = get_mid_level_loss({'key': key, 'kwargs': {**PATHS, **kwargs}})
        with pytest.raises(ValueError, match='class logits'):
            loss_fn(io(torch.randn(4, 1)), io(torch.randn(4, 1)), torch.randn(4))
    warm = LumiNetLoss(**PATHS, temperature=4.0, warmup_epochs=2)
    with pytest.raises(RuntimeError, match='set_epoch'):
        warm(io(torch.randn(4, 3)), io(torch.randn(4, 3)), torch.tensor([0, 1, 2, 0]))


# ---------------------------------------------------------------- two processes (gloo)
def test_luminet_batch_statistics_across_two_gloo_processes(tmp_path):
    out = tmp_path / 'ranks.pt'
    command = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
               os.path.join(ROOT, 'tests', '_luminet_ddp_worker.py'), str(out)]
    completed = subprocess.run(command, capture_output=True, text=True, env={**os.environ, 'OMP_NUM_THREADS': '1'},
                               timeout=120, cwd=ROOT)
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = torch.load(out)
    # the worker's batch: same generator calls
    g = torch.Generator().manual_seed(0)
    z_s, z_t = torch.randn(8, 5, generator=g) * 2, torch.randn(8, 5, generator=g) * 3
    halves = (slice(0, 4), slice(4, 8))
    for mode in ('local', 'global'):
        leaf = z_s.clone().requires_grad_(True)
        total = sum(ref_luminet_kl_per_sample(
            z_t[h], leaf[h], 2.0, *((z_t, leaf) if mode == 'global' else (None, None))).mean() for h in halves)
        total.backward()
        torch.testing.assert_close(results[mode]['loss_sum'], total.detach(), rtol=1e-5, atol=1e-6)
        # 'global': each rank's loss also depends on the other rank's logits, and the gradient comes back to them
        torch.testing.assert_close(results[mode]['grad'], leaf.grad, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(results['local']['loss_sum'], results['global']['loss_sum'])
    # global statistics over 2 x 4 rows are the single-process statistics of the whole batch of 8
    whole = ref_luminet_kl_per_sample(z_t, z_s, 2.0).mean() * 2
    torch.testing.assert_close(results['global']['loss_sum'], whole, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- shipped configs, end to end (tiny budget)
@pytest.mark.usefixtures('trained_teacher')
@pytest.mark.parametrize('name, cls, expected', [
    ('resnet56_resnet20_wttm_zscore.yaml', WTTMLoss, {'gamma': 0.1, 'alpha': 1.0, 'beta': 45.0}),
    ('resnet56_resnet20_luminet.yaml', LumiNetLoss, {'temperature': 4.0, 'alpha': 2.0, 'beta': 961.0}),
])
def test_shipped_configs_train_with_the_authors_weights_and_warmup(small_config, monkeypatch, name, cls, expected):
    from pesf_ext.engine import runner
    from pesf_ext.engine.config import load_config
    from pesf_ext.engine.models import build_model
    calls = []
    real_forward = cls.forward

    def recording_forward(self, *args, **kwargs):
        loss = real_forward(self, *args, **kwargs)
        calls.append({'module': self, 'epoch': getattr(self, 'epoch', None), 'loss': loss.item(),
                      'terms': set(self.last_terms)})
        return loss

    monkeypatch.setattr(cls, 'forward', recording_forward)
    path = small_config(name, num_train_samples=128, num_epochs=2)
    results = runner.run(runner.get_args(['--config', path, '--device', 'cpu', '--seed', '0']), build_model,
                         config=load_config(path))
    module = calls[0]['module']
    assert {key: getattr(module, key) for key in expected} == expected
    assert all(torch.isfinite(torch.tensor(call['loss'])) for call in calls)
    assert all(call['terms'] == {'student_ce', 'student_kl'} for call in calls)
    assert results['counts']['teacher'][0] == 0  # the teacher stays frozen
    if cls is LumiNetLoss:  # warm-up 3 of 30 epochs: epochs numbered from 1 by the pre-epoch process
        assert module.warmup_epochs == 3 and {call['epoch'] for call in calls} == {1, 2}
    else:
        assert module.standardization is not None


# ---------------------------------------------------------------- analyze.py scatter (the RESULTS.md figure)
def test_scatter_prints_each_methods_means_and_draws_them(tmp_path, capsys):
    import json
    sys.path.insert(0, os.path.join(ROOT, 'tools'))
    import analyze
    (tmp_path / 'results').mkdir()
    (tmp_path / 'logs').mkdir()
    data = {'kd': [(80.0, 0.2, 4.0), (82.0, 0.4, 4.0)], 'ttm': [(81.0, 1.0, 4.0), (85.0, 3.0, 4.0)]}
    for method, runs in data.items():
        for seed, (top1, gap, std) in enumerate(runs):
            label = f'{method}_seed{seed}'
            (tmp_path / 'results' / f'{label}.json').write_text(json.dumps(
                {'test': {'student': {'top1': top1}, 'sharpness_gap': gap}}))
            (tmp_path / 'logs' / f'{label}_epochs.jsonl').write_text(
                json.dumps({'epoch': 0, 'teacher_logit_std': 9.0}) + '\n' +
                json.dumps({'epoch': 1, 'teacher_logit_std': std}) + '\n')
    out = tmp_path / 'scatter.png'
    analyze.main(['scatter', '--runs', str(tmp_path), '--methods', 'kd', 'ttm', '--out', str(out)])
    text = capsys.readouterr().out
    # means 81 / 83 top-1, 0.3 / 2.0 gap, last-epoch std 4; 95% t-interval of 2 seeds: 12.706 * sd / sqrt(2)
    assert '| KD | 2 | 0.300 ± 1.271 | 4.000 ± 0.000 | 81.000 ± 12.706 |' in text
    assert '| TTM | 2 | 2.000 ± 12.706 | 4.000 ± 0.000 | 83.000 ± 25.412 |' in text
    assert out.stat().st_size > 10000
    # --symlog draws that panel on a symmetric log axis (collapsed runs' gaps span orders of magnitude)
    import matplotlib.pyplot as plt
    seen = []
    original = plt.Axes.set_xscale
    plt.Axes.set_xscale = lambda self, *a, **k: (seen.append(a[0]), original(self, *a, **k))[1]
    try:
        analyze.main(['scatter', '--runs', str(tmp_path), '--methods', 'kd', 'ttm', '--symlog', 'test_gap', '--out',
                      str(tmp_path / 'symlog.png')])
    finally:
        plt.Axes.set_xscale = original
    assert seen == ['symlog'] and (tmp_path / 'symlog.png').stat().st_size > 10000


def test_scatter_with_many_methods_keeps_points_apart_and_the_legend_outside(tmp_path, monkeypatch):
    """Past ten methods tab10's colours repeat, so the marker changes; past eight the legend goes beside the
    panels (inside, it hid the collapsed runs' points)."""
    import json
    sys.path.insert(0, os.path.join(ROOT, 'tools'))
    import analyze
    import matplotlib.pyplot as plt
    (tmp_path / 'results').mkdir()
    (tmp_path / 'logs').mkdir()
    methods = [f'm{i}' for i in range(12)]
    for i, method in enumerate(methods):
        for seed in range(2):
            label = f'{method}_seed{seed}'
            (tmp_path / 'results' / f'{label}.json').write_text(json.dumps(
                {'test': {'student': {'top1': 50.0 + i + seed}, 'sharpness_gap': 0.1 * i}}))
            (tmp_path / 'logs' / f'{label}_epochs.jsonl').write_text(json.dumps({'epoch': 0, 'teacher_logit_std': 4.0}))
    drawn, legends = [], []
    errorbar, legend = plt.Axes.errorbar, plt.Figure.legend
    monkeypatch.setattr(plt.Axes, 'errorbar', lambda self, *a, **k: (drawn.append((k['color'][:3].tolist(), k['fmt'])),
                                                                   errorbar(self, *a, **k))[1])
    monkeypatch.setattr(plt.Figure, 'legend', lambda self, *a, **k: (legends.append(k), legend(self, *a, **k))[1])
    out = tmp_path / 'many.png'
    analyze.main(['scatter', '--runs', str(tmp_path), '--methods', *methods, '--out', str(out)])
    first_panel = drawn[:len(methods)]
    assert len({(tuple(color), fmt) for color, fmt in first_panel}) == len(methods)
    assert legends and legends[0]['loc'] == 'center left' and out.stat().st_size > 10000
