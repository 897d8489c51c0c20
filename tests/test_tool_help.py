"""Every command-line tool prints its --help (and each subcommand's) and exits 0: argparse formats help strings
with %-interpolation, so a bare '95% CI' in one of them made `analyze.py --help` die with a ValueError traceback."""
import importlib

import pytest

TOOLS = ['analyze', 'bad_input_table', 'benchmark', 'causal_lm', 'compare', 'glue_compare', 'gpu_check',
         'image_classification', 'lm_compare', 'quickstart', 'refresh_docs', 'text_classification', 'text_quickstart']
ANALYZE_COMMANDS = ['metrics', 'figures', 'convergence', 'paired', 'pairs', 'zscore_bound']


def help_text(tool, argv, capsys):
    with pytest.raises(SystemExit) as done:
        importlib.import_module(tool).main(argv)
    assert done.value.code == 0, f'{tool} {argv} exited {done.value.code}'
    return capsys.readouterr().out


@pytest.mark.parametrize('tool', TOOLS)
def test_tool_help_exits_zero(tool, capsys):
    assert help_text(tool, ['--help'], capsys).startswith('usage:')


@pytest.mark.parametrize('command', ANALYZE_COMMANDS)
def test_analyze_subcommand_help_exits_zero(command, capsys):
    assert f' {command} [-h]' in help_text('analyze', [command, '--help'], capsys).splitlines()[0]


def test_analyze_help_keeps_the_percent_sign(capsys):
    assert '95% CIs' in help_text('analyze', ['--help'], capsys)


@pytest.mark.parametrize('tool', ['analyze', 'bad_input_table', 'benchmark', 'causal_lm', 'compare', 'glue_compare',
                                  'gpu_check', 'image_classification', 'lm_compare', 'quickstart',
                                  'text_classification', 'text_quickstart'])
def test_tool_help_shows_an_example(tool, capsys):
    text = help_text(tool, ['--help'], capsys)
    examples = text.split('examples:\n', 1)[1]
    assert examples.startswith('  ') and ('python tools/' in examples or 'pesf-' in examples)
