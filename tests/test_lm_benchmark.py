"""tools/lm_benchmark.py measures what it says: the activations autograd keeps and the teacher's training state
order as PESF-KD's cost argument predicts (frozen teacher < LoRA on the last blocks < LoRA everywhere <= FT-KD).
Counts of bytes, not timings: the same on every machine."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tools'))
pytest.importorskip('transformers')
pytest.importorskip('peft', reason='peft is not installed (pip install -e ".[lm]")')

import lm_benchmark  # noqa: E402


@pytest.mark.parametrize('arch', ['gpt2', 'llama'])
def test_teacher_side_costs_are_ordered(arch, capsys):
    results = {r['method']: r for r in lm_benchmark.main([
        '--arch', arch, '--teacher_layers', '4', '--student_layers', '1', '--hidden', '64', '--student_hidden', '32',
        '--vocab', '128', '--seq', '16', '--batch', '2', '--steps', '1', '--lora_r', '4', '--last_layers', '1',
        '--device', 'cpu'])}
    saved = {m: r['saved_mib'] for m, r in results.items()}
    assert saved['kd'] < saved['pesfkd_lora_last'] < saved['pesfkd_lora_all'] <= saved['ftkd']
    state = {m: r['teacher_trainable'] for m, r in results.items()}
    assert state['kd'] == 0 < state['pesfkd_lora_last'] < state['pesfkd_lora_all'] < state['ftkd'] / 5
    assert all(r['s_per_step'] > 0 for r in results.values())
    table = capsys.readouterr().out
    assert 'ratios to kd' in table and table.count('\n') >= 5


def test_record_round_trip_gives_the_same_markdown_table(tmp_path, capsys):
    """--record keeps what was measured; --from_record prints the README's table from it without measuring."""
    record = tmp_path / 'bench.json'
    argv = ['--teacher_layers', '2', '--student_layers', '1', '--hidden', '32', '--student_hidden', '16', '--vocab',
            '64', '--seq', '8', '--batch', '2', '--steps', '1', '--lora_r', '2', '--last_layers', '1',
            '--device', 'cpu', '--markdown']
    measured = lm_benchmark.main(argv + ['--record', str(record)])
    first = capsys.readouterr().out
    assert lm_benchmark.main(['--from_record', str(record), '--markdown']) == measured
    again = capsys.readouterr().out
    assert again == first
    rows = [line for line in first.splitlines() if line.startswith('| ')]
    assert len(rows) == 1 + len(lm_benchmark.METHODS)
    kd_row = next(row for row in rows if row.startswith('| KD'))
    assert kd_row.split(' | ')[2] == '1.00' and kd_row.split(' | ')[4] == '1.00'  # ratios to itself
    assert 'teacher 2 blocks × 32' in first and 'LoRA on the last block |' in first
