"""tools/lm_quickstart.py runs its five steps (teacher, student alone, KD, PESF-KD, FT-KD) on real standard-library
text with a one-step budget and prints its table; the students read the teacher the first step trained."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tools'))
pytest.importorskip('transformers')
pytest.importorskip('peft', reason='peft is not installed (pip install -e ".[lm]")')

import lm_quickstart  # noqa: E402


def test_quickstart_smoke(tmp_path, capsys):
    rows = lm_quickstart.main(['--out_dir', str(tmp_path / 'qs'), '--max_steps', '1', '--teacher_blocks', '8',
                               '--transfer_blocks', '8', '--epochs', '1', '--eval_blocks', '4', '4', '--device', 'cpu',
                               '--cache_dir', str(tmp_path / 'cache')])
    labels = [label for label, _ in rows]
    assert labels == ['teacher CE', 'student alone', 'KD', 'PESF-KD', 'FT-KD']
    results = dict(rows)
    assert os.path.isfile(tmp_path / 'qs' / 'teacher' / 'gpt2-4l-stdlib.pt')
    teacher_ppl = results['teacher CE']['test']['student']['perplexity']
    assert results['KD']['test']['teacher']['perplexity'] == pytest.approx(teacher_ppl)  # the trained teacher
    assert results['KD']['counts']['teacher'][0] == 0
    assert 0 < results['PESF-KD']['counts']['teacher'][0] < results['FT-KD']['counts']['teacher'][0]
    out = capsys.readouterr().out
    assert 'student ppl' in out and 'PESF-KD' in out


@pytest.mark.parametrize('tool', ['causal_lm', 'lm_benchmark', 'lm_quickstart', 'make_lm_configs'])
def test_lm_tools_print_help(tool, capsys):
    import importlib
    module = importlib.import_module(tool)
    if tool == 'make_lm_configs':  # no command line: writing the configs is all it does
        assert module.__doc__ and 'make_lm_configs.py' in module.__doc__
        return
    with pytest.raises(SystemExit) as done:
        module.main(['--help'])
    assert done.value.code == 0 and capsys.readouterr().out.startswith('usage:')
