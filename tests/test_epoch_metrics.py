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
