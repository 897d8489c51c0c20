"""tools/claims.py: the verdict rule and a summary row from hand-written run records."""
import json
import os

import pytest

import claims


@pytest.mark.parametrize('diff, half, n, sign, expected', [
    (1.0, 0.5, 5, +1, 'reproduced'), (-1.0, 0.5, 5, +1, 'opposite'), (0.3, 0.5, 5, +1, 'inconclusive'),
    (-0.2, 0.1, 5, -1, 'reproduced'), (1.0, float('nan'), 1, +1, 'inconclusive'),
])
def test_verdict(diff, half, n, sign, expected):
    assert claims.verdict(diff, half, n, sign) == expected


def test_table_row_from_records(tmp_path):
    records = tmp_path / 'runs'
    for label, top1 in {'kd_seed0': 80, 'kd_seed1': 82, 'pesfkd_seed0': 81, 'pesfkd_seed1': 84}.items():
        os.makedirs(records / 'logs', exist_ok=True)
        os.makedirs(records / 'results', exist_ok=True)
        (records / 'logs' / f'{label}_epochs.jsonl').write_text(json.dumps({'epoch': 0}) + '\n')
        (records / 'results' / f'{label}.json').write_text(json.dumps({'test': {'student': {'top1': top1}}}))
    # differences 1 and 2: mean 1.5, half 12.706 * 0.7071 / sqrt(2) = 6.353 -> inconclusive
    rows = claims.table((('claim', 'paper', 'runs', 'pesfkd', 'kd', 'test_top1', +1),), root=str(tmp_path))
    assert rows.splitlines()[2] == ('| claim | paper | PESF-KD − KD, test_top1: +1.50 ± 6.35 (n=2, runs) | '
                                    'inconclusive |')


def test_ratio_row_pairs_seconds_per_step_by_seed(tmp_path):
    records = tmp_path / 'runs' / 'results'
    os.makedirs(records)
    # FT-KD / KD per seed: 2.0 and 3.0 -> mean 2.5; half 12.706 * 0.7071 / sqrt(2) = 6.353 -> inconclusive
    for label, seconds in {'kd_seed0': 0.5, 'kd_seed1': 0.4, 'ftkd_seed0': 1.0, 'ftkd_seed1': 1.2}.items():
        (records / f'{label}.json').write_text(json.dumps({'seconds_per_step': seconds}))
    row = claims.table((('cost', 'paper', 'runs', 'ftkd', 'kd', claims.RATIO + 'seconds_per_step', +1),),
                       root=str(tmp_path)).splitlines()[2]
    assert 'FT-KD / KD, seconds_per_step: 2.50× ± 6.35 (n=2, runs;' in row and row.endswith('| inconclusive |')


def test_causal_lm_row_reads_perplexity_of_grid_points(tmp_path):
    """LM rows read test.student.perplexity of tools/lm_compare.py's records; a grid point row reads its run labels;
    lower perplexity is the claimed side."""
    records = tmp_path / 'lm' / 'results'
    records.mkdir(parents=True)
    for label, ppl in {'kd_seed0': 130.0, 'kd_seed1': 140.0, 'pesfkd__lr-1e-3_seed0': 120.0,
                       'pesfkd__lr-1e-3_seed1': 131.0, 'pesfkd__lr-1e-4_seed0': 999.0}.items():
        (records / f'{label}.json').write_text(json.dumps({'test': {'student': {'perplexity': ppl}}}))
    row = claims.table((('claim', 'paper', 'lm', 'pesfkd@lr=1e-3', 'kd', claims.LM_KEY + 'perplexity', -1),),
                       root=str(tmp_path)).splitlines()[2]
    # differences -10 and -9: mean -9.5, half 12.706 * 0.7071 / sqrt(2) = 6.35 -> reproduced (excludes 0, below)
    assert 'PESF-KD (LoRA, lr=1e-3) − Forward KL (KD), test perplexity: -9.50 ± 6.35 (n=2' in row
    assert row.endswith('| reproduced |')
