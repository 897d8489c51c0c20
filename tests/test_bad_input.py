"""Bad input ends in one line naming the key or file, a non-zero exit and no traceback (docs/bad_input.md is the
table of cases; this checks that it is what the runner prints today), and the range rules behind it."""
import math
import os
import re
import subprocess
import sys

import pytest

import bad_input_table
from pesf_ext.engine.cli import main_guard
from pesf_ext.engine.errors import ConfigError
from pesf_ext.engine.loop import NonFiniteLossError
from pesf_ext.engine.values import check_value, validate_values

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, 'docs', 'bad_input.md')
ROW = re.compile(r'^\| (.+) \| (\d+) \| (.*) \|$')


def doc_rows():
    with open(DOC) as f:
        return [ROW.match(line).groups() for line in f if ROW.match(line)]


def without_loss_values(line):
    """Loss values in the NaN stop's line may differ in their last digits between machines."""
    return re.sub(r'=-?\d[\d.]*(e[+-]?\d+)?', '=<value>', line)


def test_docs_table_is_what_the_runner_prints(fashion_mnist_root):
    rows = bad_input_table.run_all()
    documented = doc_rows()
    assert [what for what, _, _ in documented] == [case.what for case, _, _ in rows], \
        'docs/bad_input.md is stale: python tools/bad_input_table.py --write docs/bad_input.md'
    for (case, status, line), (_, doc_status, doc_line) in zip(rows, documented):
        assert status == 1 and int(doc_status) == 1, (case.what, status, line)
        assert line.startswith(('Config error: ', 'Training stopped: ')), line
        assert without_loss_values(line) == without_loss_values(doc_line.replace('&#124;', '|')), \
            f'{case.what}: the runner now prints {line!r}; regenerate docs/bad_input.md'
    keys = {case.what: line for case, _, line in rows}
    assert 'train.num_epochs: must be a positive integer, got -2' in keys['`train.num_epochs: -2`']
    assert 'non-finite loss nan at epoch 0, step 1' in rows[-1][2]


def test_command_line_names_the_anchor_and_prints_no_traceback(small_config):
    path = small_config('resnet56_resnet20_kd.yaml', num_epochs=-2)
    completed = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'image_classification.py'),
                                '--config', path, '--device', 'cpu'], capture_output=True, text=True)
    assert completed.returncode == 1
    assert completed.stderr.strip().splitlines()[-1] == \
        'Config error: settings.num_epochs: must be a positive integer, got -2'
    assert 'Traceback' not in completed.stderr


class Args:
    def __init__(self, run_log=None, debug=False):
        self.run_log, self.debug = run_log, debug


def raise_(error):
    def run():
        raise error
    return run


def guarded(capsys, error, **kwargs):
    with pytest.raises(SystemExit) as exit_:
        main_guard(raise_(error), Args(**kwargs))
    return exit_.value.code, capsys.readouterr().err


def test_user_errors_print_one_line_and_log_the_traceback(capsys, tmp_path):
    log = tmp_path / 'logs' / 'run.log'
    code, err = guarded(capsys, NonFiniteLossError('non-finite loss nan at epoch 3, step 7'), run_log=str(log))
    assert (code, err) == (1, 'Training stopped: non-finite loss nan at epoch 3, step 7\n')
    logged = log.read_text()
    assert 'Traceback (most recent call last)' in logged and 'NonFiniteLossError' in logged
    code, err = guarded(capsys, ConfigError('train.num_epochs: must be a positive integer,\n got -2'))
    assert (code, err) == (1, 'Config error: train.num_epochs: must be a positive integer, got -2\n')


def test_unexpected_error_points_to_its_traceback(capsys):
    code, err = guarded(capsys, RuntimeError('size mismatch for fc.weight:\n copying a param'))
    assert code == 1 and err.count('\n') == 1
    match = re.fullmatch(r'Error: RuntimeError: size mismatch for fc.weight: copying a param '
                         r'\(traceback in (\S+); --debug prints it\)\n', err)
    assert match, err
    with open(match.group(1)) as f:
        assert 'Traceback (most recent call last)' in f.read()
    os.remove(match.group(1))


def test_interrupt_exits_130_and_debug_reraises(capsys):
    code, err = guarded(capsys, KeyboardInterrupt())
    assert code == 130 and err.startswith('Interrupted: ') and '-resume' in err
    with pytest.raises(ConfigError):
        main_guard(raise_(ConfigError('x')), Args(debug=True))
    assert main_guard(lambda: 42, Args()) == 42


@pytest.mark.parametrize('name, value, fragment', [
    ('batch_size', 0, 'must be a positive integer, got 0'),
    ('batch_size', True, 'must be a positive integer, got True'),
    ('batch_size', '64', "must be a positive integer, got '64'"),
    ('num_workers', -1, 'must be an integer >= 0, got -1'),
    ('momentum', 1.01, 'must be in [0, 1], got 1.01'),
    ('betas', [0.9, 1.2], 'betas[1]: must be in [0, 1], got 1.2'),
    ('mean', [0.5, math.nan], 'mean[1]: must be a finite number, got nan'),
    ('teacher_ce_weight', -1.0, 'must be >= 0, got -1.0'),
    ('anything', -math.inf, 'must be a finite number, got -inf'),
    ('lr', '1e-3', "must be a number (> 0), got '1e-3' (YAML 1.1 reads"),
])
def test_rules(name, value, fragment):
    with pytest.raises(ConfigError) as error:
        check_value(f'x.{name}', name, value)
    assert str(error.value).startswith(f'x.{name}') and fragment in str(error.value), str(error.value)


@pytest.mark.parametrize('name, value', [
    ('batch_size', 1), ('num_workers', 0), ('momentum', 0.0), ('momentum', 1), ('betas', [0.9, 0.999]),
    ('lr', 1e-5), ('num_samples', None), ('milestones', [15, 25]), ('key', 'SGD'), ('mean', [0.5, -1e3]),
])
def test_rules_accept_good_values(name, value):
    check_value(f'x.{name}', name, value)


def test_walk_reaches_lists_of_mappings_and_skips_built_datasets():
    config = {'datasets': {'train': object()}, 'settings': {'num_workers': 2},
              'train': {'optimizer': {'module_wise_configs': [{'kwargs': {'lr': 0.1}}, {'kwargs': {'lr': 0.0}}]}}}
    with pytest.raises(ConfigError, match=r'^train.optimizer.module_wise_configs\[1\].kwargs.lr: must be > 0'):
        validate_values(config)
    config['train']['optimizer']['module_wise_configs'][1]['kwargs']['lr'] = 0.2
    validate_values(config)
