"""tools/lm_compare.py: plans, skips finished runs and builds the causal-LM table from summaries: paired differences
to the student alone and to forward KL over the seeds both have (hand-computed t-intervals), the teacher trained
once, a failure reported in the table instead of a traceback."""
import json
import math
import os
import sys

import pytest
from scipy.stats import t as student_t

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tools'))

import lm_compare  # noqa: E402
from pesf_ext.cli.quickstart import summary_path  # noqa: E402


def write_summary(out_dir, label, perplexity, teacher=None):
    test = {'student': {'perplexity': perplexity, 'top1': 40.0, 'nll': math.log(perplexity)}}
    if teacher is not None:
        test.update(teacher={'perplexity': teacher, 'top1': 50.0}, agreement=60.0, kl=0.5, sharpness_gap=0.2)
    path = summary_path(out_dir, label)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        json.dump({'test': test, 'counts': {'student': [10, 10], **({'teacher': [0, 20]} if teacher else {})},
                   'seconds_per_step': 0.5 if teacher else 0.25, 'machine': {'cpu': 'test cpu'}}, f)


def test_table_from_finished_runs(tmp_path, capsys):
    out = str(tmp_path)
    write_summary(out, 'teacher', 9.0)
    ce, kd, rkl = [30.0, 31.0, 29.5], [25.0, 26.5, 24.0], [24.0, 26.0, 24.5]
    for seed in range(3):
        write_summary(out, f'ce_seed{seed}', ce[seed])
        write_summary(out, f'kd_seed{seed}', kd[seed], teacher=9.0)
        write_summary(out, f'rkl_seed{seed}', rkl[seed], teacher=9.0)
    rows = lm_compare.main(['--seeds', '3', '--methods', 'ce', 'kd', 'rkl', '--out_dir', out, '-table_only'])
    text = capsys.readouterr().out
    diffs = [k - c for k, c in zip(kd, ce)]
    mean = sum(diffs) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2)
    half = student_t.ppf(0.975, 2) * sd / math.sqrt(3)
    kd_line = next(line for line in text.splitlines() if line.startswith('| Forward KL'))
    assert f'{mean:+.2f} ± {half:.2f} (n=3)' in kd_line
    rkl_line = next(line for line in text.splitlines() if line.startswith('| Reverse KL'))
    rkl_diffs = [r - k for r, k in zip(rkl, kd)]
    assert f'{sum(rkl_diffs) / 3:+.2f}' in rkl_line.split(' | ')[3]
    assert 'test perplexity 9.00' in text and 'test cpu' in text
    assert rows['kd']['student'] == dict(enumerate(kd))
    assert not os.path.isfile(os.path.join(out, 'results', 'table.md'))  # -table_only writes nothing


def test_grid_labels_and_overrides(tmp_path):
    plans = []
    original = lm_compare.run

    def fake_run(config, out_dir, label, seed, overrides, **kwargs):
        plans.append((os.path.basename(config), label, seed, overrides))
        write_summary(out_dir, label, 20.0, teacher=None if label.startswith(('ce', 'teacher')) else 9.0)
    lm_compare.run = fake_run
    try:
        lm_compare.main(['--seeds', '2', '--methods', 'kd', 'pesfkd', '--out_dir', str(tmp_path), '--grid',
                         'pesfkd:train.optimizer.module_wise_configs.1.kwargs.lr=1e-3,3e-3'])
    finally:
        lm_compare.run = original
    labels = [label for _, label, _, _ in plans]
    assert labels[0] == 'teacher' and labels.count('teacher') == 1
    assert 'pesfkd__lr-3e-3_seed1' in labels and 'kd_seed0' in labels and len(labels) == 1 + 2 * 3
    pesf = next(p for p in plans if p[1] == 'pesfkd__lr-3e-3_seed1')
    assert pesf[0] == 'gpt2_4l_gpt2_2l_stdlib_pesfkd.yaml' and pesf[2] == 1
    assert 'train.optimizer.module_wise_configs.1.kwargs.lr=3e-3' in pesf[3]
    assert any(o.startswith('models.teacher_model.src_ckpt=') and o.endswith('teacher.pt') for o in pesf[3])
    plans.clear()
    lm_compare.run = fake_run
    try:  # everything finished: nothing runs again
        lm_compare.main(['--seeds', '2', '--methods', 'kd', '--out_dir', str(tmp_path)])
    finally:
        lm_compare.run = original
    assert plans == []


def test_failed_run_is_a_table_row(tmp_path, capsys):
    from pesf_ext.cli.quickstart import RunFailed
    write_summary(str(tmp_path), 'teacher', 9.0)
    original = lm_compare.run

    def failing(config, out_dir, label, *args, **kwargs):
        raise RunFailed(f'[{label}] failed (log: x)')
    lm_compare.run = failing
    try:
        (tmp_path / 'ckpt' / 'teacher').mkdir(parents=True)
        (tmp_path / 'ckpt' / 'teacher' / 'teacher.pt').write_bytes(b'')
        lm_compare.main(['--seeds', '1', '--methods', 'kd', '--out_dir', str(tmp_path)])
    finally:
        lm_compare.run = original
    assert '| kd | failed: kd_seed0' in capsys.readouterr().out


def test_bad_seed_count_is_one_message():
    with pytest.raises(SystemExit) as error:
        lm_compare.get_args(['--seeds', '0'])
    assert error.value.code == 2


def test_teacher_dir_reuses_a_trained_teacher_and_set_reaches_students_only(tmp_path):
    main_study, variant = tmp_path / 'main', tmp_path / 'variant'
    write_summary(str(main_study), 'teacher', 9.0)
    (main_study / 'ckpt' / 'teacher').mkdir(parents=True)
    (main_study / 'ckpt' / 'teacher' / 'teacher.pt').write_bytes(b'weights')
    plans = []
    original = lm_compare.run

    def fake_run(config, out_dir, label, seed, overrides, **kwargs):
        plans.append((label, overrides))
        write_summary(out_dir, label, 20.0, teacher=9.0)
    lm_compare.run = fake_run
    try:
        lm_compare.main(['--seeds', '1', '--methods', 'kd', '--out_dir', str(variant), '--teacher_dir',
                         str(main_study), '--set', 'train.num_epochs=30'])
    finally:
        lm_compare.run = original
    assert [label for label, _ in plans] == ['kd_seed0']  # no teacher trained again
    assert 'train.num_epochs=30' in plans[0][1]
    assert (variant / 'ckpt' / 'teacher' / 'teacher.pt').read_bytes() == b'weights'
    with pytest.raises(SystemExit, match='--teacher_dir: .* does not exist'):
        lm_compare.main(['--seeds', '1', '--methods', 'kd', '--out_dir', str(tmp_path / 'v2'), '--teacher_dir',
                         str(tmp_path / 'nowhere')])
