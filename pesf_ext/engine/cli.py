"""How every runner ends on an error: one line on stderr naming the YAML key or file, a non-zero exit, no traceback.

The traceback is not lost: it is appended to the ``--run_log`` file (or, for an unexpected error without
``--run_log``, to a file in the temporary directory whose path the line gives); ``--debug`` prints it instead.
Used by ``tools/image_classification.py`` and any other runner around :func:`pesf_ext.engine.runner.run`::

    args = get_args(argv)
    return main_guard(lambda: run(args, build_model), args)
"""
import datetime
import os
import sys
import tempfile
import traceback

import torch

from ..data.fashion_mnist import DatasetNotFoundError
from .distributed import collective_failure_message
from .errors import ConfigError
from .extras import missing_dependency_message
from .loop import NonFiniteLossError

EXIT_ERROR, EXIT_INTERRUPTED = 1, 130


def one_line(text):
    return ' '.join(str(text).split())


def describe(error):
    """(one-line message, whether the error is one the user caused and the message fully explains)."""
    if isinstance(error, (ConfigError, DatasetNotFoundError)):
        return f'Config error: {one_line(error)}', True
    missing = missing_dependency_message(error)   # an optional dependency: the extra that installs it
    if missing:
        return missing, True
    if isinstance(error, NonFiniteLossError):
        return f'Training stopped: {one_line(error)}', True
    if isinstance(error, KeyboardInterrupt):
        return ('Interrupted: checkpoints of finished epochs are kept (<dst_ckpt stem>_last.pt); continue with '
                '-resume', True)
    if isinstance(error, torch.OutOfMemoryError):
        return (f'Out of memory: {one_line(error).split(". ")[0]}. Lower train.train_data_loader.kwargs.batch_size '
                'or add --amp bf16', False)
    if isinstance(error, FileNotFoundError) and error.filename:
        return f'File not found: {error.filename}', False
    collective = collective_failure_message(error)  # a distributed wait that timed out: which rank, where
    if collective:
        return collective, False
    return f'Error: {type(error).__name__}: {one_line(error)}', False


def save_traceback(trace, run_log):
    """Appends ``trace`` to the run log (or a new file in the temporary directory); returns the path."""
    if run_log:
        path = os.path.expanduser(run_log)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    else:
        stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
        path = os.path.join(tempfile.gettempdir(), f'pesf_ext-{stamp}-{os.getpid()}-traceback.log')
    with open(path, 'a') as f:
        f.write(trace)
    return path


def main_guard(run_fn, args):
    """Calls ``run_fn()``; on an error prints one line to stderr and exits non-zero (see module docstring)."""
    try:
        return run_fn()
    except SystemExit:
        raise
    except BaseException as error:  # noqa: B902 (KeyboardInterrupt too: one line, the checkpoints stay)
        if getattr(args, 'debug', False):
            raise
        message, explained = describe(error)
        run_log = getattr(args, 'run_log', None)
        if run_log or not explained:
            path = save_traceback(f'{message}\n{traceback.format_exc()}', run_log)
            if not explained:
                message += f' (traceback in {path}; --debug prints it)'
        sys.stderr.write(message + '\n')  # not print: torchdistill silences print on ranks other than 0
        sys.stderr.flush()
        sys.exit(EXIT_INTERRUPTED if isinstance(error, KeyboardInterrupt) else EXIT_ERROR)


def validate_args(args):
    """Command-line numbers that must be counts; raises :class:`ConfigError` naming the option."""
    for option, minimum in (('start_epoch', 0), ('max_steps_per_epoch', 0), ('world_size', 1)):
        value = getattr(args, option, None)
        if value is not None and value < minimum:
            raise ConfigError(f'--{option}: must be an integer >= {minimum}, got {value}')
