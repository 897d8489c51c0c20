"""tools/quickstart.py's table and the note printed under it (runs replaced by fixed summaries)."""
import os

import pytest

import quickstart


def fake_summary(top1, teacher=None):
    test = {'student': {'top1': top1}}
    counts = {'student': [272474, 272474]}
    if teacher is not None:
        test.update(teacher={'top1': teacher}, sharpness_gap=0.1)
        counts['teacher'] = [0, 855770]
    return {'test': test, 'counts': counts, 'seconds_per_step': 0.5}


@pytest.mark.parametrize('full', [False, True])
def test_budget_table_says_it_is_a_smoke_test(tmp_path, monkeypatch, capsys, full):
    configs = []

    def fake_run(config_path, out_dir, label, seed, overrides=(), progress=None, **kwargs):
        configs.append((label, config_path))
        os.makedirs(os.path.join(out_dir, 'results'), exist_ok=True)
        return fake_summary(80.0) if label == 'teacher_ce' else fake_summary(70.0, 80.0)

    monkeypatch.setattr(quickstart, 'run', fake_run)
    quickstart.main(['--out_dir', str(tmp_path)] + (['--full'] if full else []))
    out = capsys.readouterr().out
    assert [label for label, _ in configs] == ['teacher_ce', 'KD', 'PESF-KD', 'FT-KD', 'Z-score_KD']
    assert '| Z-score KD  | 70.00 | 80.00 |' in out
    assert ('A smoke test, not a ranking' in out) is not full       # the note belongs to the 3-epoch budget only
    saved = (tmp_path / 'results' / 'table.md').read_text()
    assert saved.startswith('| method') and saved.strip() in out
    assert ('docs/RESULTS.md' in saved) is not full
