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
    argv = ['--out_dir', str(tmp_path / 'qs'), '--max_steps', '1', '--teacher_blocks', '8', '--transfer_blocks', '8',
            '--epochs', '1', '--eval_blocks', '4', '4', '--device', 'cpu', '--cache_dir', str(tmp_path / 'cache')]
    rows = lm_quickstart.main(argv)
    args = lm_quickstart.get_args(argv)
    labels = [label for label, _ in rows]
    assert labels == ['teacher CE', 'student alone', 'KD', 'PESF-KD', 'FT-KD']
    results = dict(rows)
    assert os.path.isfile(tmp_path / 'qs' / 'teacher' / 'gpt2-4l-stdlib.pt')
    teacher_ppl = results['teacher CE']['test']['student']['perplexity']
    assert results['KD']['test']['teacher']['perplexity'] == pytest.approx(teacher_ppl)  # the trained teacher
    assert results['KD']['counts']['teacher'][0] == 0
    assert 0 < results['PESF-KD']['counts']['teacher'][0] < results['FT-KD']['counts']['teacher'][0]
    captured = capsys.readouterr()
    assert 'student ppl' in captured.out and 'PESF-KD' in captured.out
    # one progress bar on the terminal, the runs' INFO lines in the log file
    assert 'lm quickstart' in captured.err and 'INFO' not in captured.err and 'Epoch: [' not in captured.err
    bar = [part for part in captured.err.replace('\r', '\n').splitlines() if 'lm quickstart: FT-KD' in part][-1]
    total = sum(lm_quickstart.planned_steps(lm_quickstart.prepare(name, args, 'x'), 1) for _, name in
                lm_quickstart.RUNS)
    assert f'{total}/{total}' in bar, bar   # every planned step counted, none twice
    log = (tmp_path / 'qs' / 'logs' / 'lm_quickstart.log').read_text()
    assert 'Epoch: [0]' in log and 's/step over 1 steps' in log


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


def test_table_prints_a_dash_where_a_value_does_not_apply():
    teacher_run = {'test': {'student': {'perplexity': 12.345}}, 'counts': {'student': (10, 10)},
                   'seconds_per_step': None}
    kd_run = {'test': {'student': {'perplexity': 15.0}, 'teacher': {'perplexity': 12.345}, 'agreement': 40.0,
                       'kl': float('nan'), 'sharpness_gap': 0.125}, 'counts': {'teacher': (0, 100)},
              'seconds_per_step': 0.05}
    lines = lm_quickstart.format_table([('teacher CE', teacher_run), ('KD', kd_run)]).splitlines()
    assert 'nan' not in '\n'.join(lines)
    assert lines[2].split() == ['teacher', 'CE', '12.35', '-', '-', '-', '-', '-', '-']
    assert lines[3].split() == ['KD', '15.00', '12.35', '40.00', '-', '0.125', '0.050', '0']


def test_progress_follows_the_runner_log():
    import io
    import logging
    from tqdm import tqdm
    bar = tqdm(total=10, file=io.StringIO())
    handler = lm_quickstart.StepProgress(bar)

    def log(message, *args):
        handler.emit(logging.LogRecord('x', logging.INFO, 'x', 0, message, args, None))
    log('Epoch: [0]  [0/4]  eta: 0:00:01  loss: 1.0')
    log('Validation: [3/5]  eta: 0:00:00')   # evaluation lines move nothing
    assert bar.n == 0
    log('Epoch: [0]  [2/4]  eta: 0:00:01')
    assert bar.n == 2
    log('Epoch %d: %.4f s/step over %d steps', 0, 0.1, 4)
    log('Epoch: [1]  [1/4]  eta: 0:00:01')
    assert bar.n == 5 and bar.total == 10


@pytest.mark.parametrize('module,lm_loaded,extra', [('transformers', True, 'lm'), ('peft.tuners', True, 'lm'),
                                                    ('transformers', False, 'nlp'), ('datasets', False, 'nlp'),
                                                    ('matplotlib', False, 'plots'), ('numpy', False, None)])
def test_a_missing_optional_dependency_names_its_extra(module, lm_loaded, extra, monkeypatch):
    """Every runner ends through pesf_ext.engine.cli.describe: one line naming the extra that installs it."""
    from pesf_ext.engine.cli import describe
    if not lm_loaded:
        monkeypatch.delitem(sys.modules, 'pesf_ext.lm', raising=False)
    else:
        import pesf_ext.lm  # noqa: F401
    error = ModuleNotFoundError(f"No module named '{module}'", name=module)
    message, explained = describe(error)
    if extra is None:
        assert not explained and message.startswith('Error: ModuleNotFoundError')
    else:
        assert explained and message == (f"Missing dependency: No module named '{module.split('.')[0]}'. Install the '{extra}' "
                                         f"extra: pip install -e '.[{extra}]' (in a clone; else pip install "
                                         f"'pesf_ext[{extra}]')")


def test_lm_quickstart_without_transformers_says_which_extra(tmp_path):
    """The README's LM quickstart where transformers is not installed: one line, exit status 1."""
    import subprocess
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = ("import sys, runpy; sys.modules['transformers'] = None; sys.argv = ['lm_quickstart.py', '--out_dir', %r]; "
            "runpy.run_path(%r, run_name='__main__')") % (str(tmp_path), os.path.join(root, 'tools', 'lm_quickstart.py'))
    done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=root, timeout=300)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == ("Missing dependency: No module named 'transformers'. Install the "
                                                    "'lm' extra: pip install -e '.[lm]' (in a clone; else pip install "
                                                    "'pesf_ext[lm]')")
