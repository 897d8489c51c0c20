"""The per-epoch metrics process: the collector against direct computations, and one JSON line per epoch."""
import json

import pytest
import torch
from torch import nn

from pesf_ext import metrics
from pesf_ext.epoch_metrics import PROCESS_NAME, check_options, collect, default_feature_module
from pesf_ext.engine.errors import ConfigError


class TwoLayer(nn.Module):
    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Linear(6, 5)
        self.fc = nn.Linear(5, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.body(x)))


def make_loader():
    torch.manual_seed(0)
    x, y = torch.randn(40, 6), torch.randint(0, 4, (40,))
    return x, y, torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)


def test_collect_matches_direct_computation():
    x, y, loader = make_loader()
    teacher, student = TwoLayer(1), TwoLayer(2)
    result, samples = collect({'teacher': teacher, 'student': student}, loader, torch.device('cpu'),
                              temperature=2.0, feature_modules={'teacher': 'fc', 'student': 'fc'}, keep_samples=30)
    with torch.no_grad():
        zt, zs = teacher(x), student(x)
        ft, fs = torch.relu(teacher.body(x)), torch.relu(student.body(x))
    assert result['teacher_top1'] == pytest.approx(100.0 * (zt.argmax(1) == y).float().mean().item())
    assert result['student_top1'] == pytest.approx(100.0 * (zs.argmax(1) == y).float().mean().item())
    assert result['gap'] == pytest.approx(metrics.mean_sharpness_gap(zt, zs), abs=1e-5)
    assert result['kl'] == pytest.approx(metrics.mean_kl(zt, zs, 2.0), abs=1e-5)
    assert result['agreement'] == pytest.approx(metrics.top1_agreement(zt, zs))
    assert result['pl'] == pytest.approx(metrics.probability_loyalty(zt, zs), abs=1e-6)
    assert result['teacher_logit_std'] == pytest.approx(zt.std(1, correction=0).mean().item(), abs=1e-5)
    expected_cka = metrics.MinibatchCKA()
    for a, b in zip(ft.split(8), fs.split(8)):
        expected_cka.update(a, b)
    assert result['cka_features'] == pytest.approx(expected_cka.compute(), abs=1e-9)
    assert samples['teacher_logits'].shape == (30, 4) and samples['student_features'].shape == (30, 5)
    assert torch.equal(samples['labels'], y[:30])
    assert teacher.training and student.training  # modes restored


def test_collect_identical_models():
    _, _, loader = make_loader()
    model = TwoLayer(3)
    result, _ = collect({'teacher': model, 'student': model}, loader, torch.device('cpu'), 4.0, {'teacher': 'fc',
                        'student': 'fc'})
    assert result['agreement'] == 1.0 and result['gap'] == 0.0
    assert result['pl'] == pytest.approx(1.0, abs=1e-6) and result['kl'] == pytest.approx(0.0, abs=1e-7)
    assert result['cka_logits'] == pytest.approx(1.0, abs=1e-9)
    assert result['cka_features'] == pytest.approx(1.0, abs=1e-9)


def test_options_checked_against_models():
    nets = {'student': TwoLayer(0)}
    assert default_feature_module(nets['student']) == 'fc'
    assert check_options(None, nets)['feature_modules'] == {'student': 'fc'}
    with pytest.raises(ConfigError, match='train.epoch_metrics.feature_modules.student: no module `avgpol`'):
        check_options({'feature_modules': {'student': 'avgpol'}}, nets)
    with pytest.raises(ConfigError, match='train.epoch_metrics: unknown keys'):
        check_options({'temprature': 2}, nets)


def test_runner_appends_one_record_per_epoch(trained_teacher, small_config, tmp_path):
    from pesf_ext.engine import runner
    from pesf_ext.engine.models import build_model
    log = tmp_path / 'logs' / 'pesfkd.log'
    args = runner.get_args(['--config', small_config('resnet56_resnet20_pesfkd.yaml', num_epochs=2), '--device',
                            'cpu', '--seed', '0', '--run_log', str(log), '--max_steps_per_epoch', '2',
                            '--set', f'+train.post_epoch_process={PROCESS_NAME}', '+train.epoch_metrics={}'])
    results = runner.run(args, build_model)
    lines = (tmp_path / 'logs' / 'pesfkd_epochs.jsonl').read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r['epoch'] for r in records] == [0, 1]
    last = records[-1]
    assert last['student_top1'] == pytest.approx(max(r['student_top1'] for r in records))
    assert max(r['student_top1'] for r in records) == pytest.approx(results['best_val_top1'])
    assert 0.0 <= last['agreement'] <= 1.0 and 0.0 < last['pl'] <= 1.0
    assert last['temperature'] == 4.0  # the PESF-KD loss's
    assert set(last['loss_terms']) >= {'pesfkd', 'pesfkd.student_kl', 'pesfkd.teacher_kl'}
    assert len(last['learning_rates']) >= 2 and last['metrics_seconds'] > 0
    samples = torch.load(tmp_path / 'logs' / 'pesfkd_epoch_samples.pt')
    assert samples['teacher_features'].shape == (64, 64) and samples['student_logits'].shape == (64, 10)


def frozen_copy(model):
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


class CallCounter:
    def __init__(self, module):
        self.calls = 0
        module.register_forward_pre_hook(self.count)

    def count(self, module, args):
        self.calls += 1


FEATURES = {'teacher': 'fc', 'student': 'fc'}


def test_frozen_teacher_outputs_are_cached_with_identical_metrics():
    _, _, loader = make_loader()
    teacher, student = frozen_copy(TwoLayer(1)), TwoLayer(2)
    calls = CallCounter(teacher)
    expected, expected_samples = collect({'teacher': teacher, 'student': student}, loader, torch.device('cpu'), 2.0,
                                         FEATURES, keep_samples=30)
    assert calls.calls == len(loader)
    cache = {}
    for run in range(3):
        result, samples = collect({'teacher': teacher, 'student': student}, loader, torch.device('cpu'), 2.0,
                                  FEATURES, keep_samples=30, teacher_cache=cache)
        assert result == expected  # bit for bit
        assert samples.keys() == expected_samples.keys()
        assert all(torch.equal(samples[k], expected_samples[k]) for k in samples)
        assert calls.calls == 2 * len(loader)  # the teacher ran in the first cached call only
    assert len(cache['batches']) == len(loader)
    with torch.no_grad():  # a new teacher checkpoint (RCO's next anchor) is noticed
        teacher.fc.weight.add_(1.0)
    changed, _ = collect({'teacher': teacher, 'student': student}, loader, torch.device('cpu'), 2.0, FEATURES,
                         teacher_cache=cache)
    assert calls.calls == 3 * len(loader) and changed['teacher_logit_mean'] != expected['teacher_logit_mean']


@pytest.mark.parametrize('case', ['trainable adapter', 'training mode', 'shuffled loader'])
def test_teacher_cache_unused_when_the_teacher_can_change(case):
    x, y, loader = make_loader()
    teacher, student = frozen_copy(TwoLayer(1)), TwoLayer(2)
    if case == 'trainable adapter':
        teacher.fc.bias.requires_grad_(True)  # e.g. PESF-KD's adapters, FT-KD, DML
    elif case == 'training mode':
        teacher.train()  # BatchNorm statistics would move during training
    else:
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8, shuffle=True)
    calls, cache = CallCounter(teacher), {}
    for run in range(2):
        collect({'teacher': teacher, 'student': student}, loader, torch.device('cpu'), 2.0, FEATURES,
                teacher_cache=cache)
        assert calls.calls == (run + 1) * len(loader) and cache == {}


def compiled_counter(module):
    """Wraps the in-place compiled call of ``module`` (``nn.Module.compile``) with a call counter."""
    compiled, counter = module._compiled_call_impl, {'calls': 0}

    def counted(*args, **kwargs):
        counter['calls'] += 1
        return compiled(*args, **kwargs)

    module._compiled_call_impl = counted
    return counter


@pytest.mark.parametrize('how', ['torch.compile(model)', 'model.compile()'])
def test_compiled_models_keep_their_feature_taps(how):
    x, _, loader = make_loader()
    reference, _ = collect({'teacher': TwoLayer(1), 'student': TwoLayer(2)}, loader, torch.device('cpu'), 2.0,
                           FEATURES)
    teacher, student = TwoLayer(1), TwoLayer(2)
    if how == 'torch.compile(model)':
        teacher, student = torch.compile(teacher, backend='eager'), torch.compile(student, backend='eager')
    else:
        teacher.compile(backend='eager')
        student.compile(backend='eager')
    student(x[:8]).sum().backward()  # a training step compiles the graph, without the metrics' taps
    with torch.no_grad():
        teacher.eval()(x[:8])
    counters = [compiled_counter(m) for m in (teacher, student)] if how == 'model.compile()' else []
    nets = {'teacher': teacher, 'student': student}
    options = check_options({'feature_modules': FEATURES}, nets)
    for epoch in range(2):
        result, _ = collect(nets, loader, torch.device('cpu'), 2.0, options['feature_modules'])
        assert result['cka_features'] == pytest.approx(reference['cka_features'], abs=1e-12)
        assert result['cka_logits'] == pytest.approx(reference['cka_logits'], abs=1e-12)
    assert all(counter['calls'] == 0 for counter in counters)  # measured on the eager forward
    student(x[:8])
    assert all(counter['calls'] == 1 for counter in counters[1:])  # and the compiled call is back


class SkipsFc(TwoLayer):
    def forward(self, x):
        return torch.relu(self.body(x))[:, :4]


def test_a_feature_tap_that_never_fires_stops_loudly():
    _, _, loader = make_loader()
    with pytest.raises(ConfigError, match=r'train.epoch_metrics.feature_modules.student: `fc` did not run'):
        collect({'teacher': TwoLayer(1), 'student': SkipsFc(2)}, loader, torch.device('cpu'), 2.0, FEATURES)
