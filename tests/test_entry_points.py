"""``pip install .`` (no clone needed afterwards) gives the console scripts, each with an example in its --help.

A copy of the project's files is installed, not editable, into a fresh virtual environment; the environment sees
the system's site-packages (``--system-site-packages``: torch, torchdistill and transformers are not installed again,
which keeps this test under a minute) and ``--no-deps --no-build-isolation`` install nothing else. Every script
then runs from a folder outside the project, so it imports the installed copy (checked) and finds the configs packed
into it.
"""
import importlib
import os
import shutil
import subprocess
import sys
import venv

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ['pesf-image', 'pesf-quickstart', 'pesf-text-quickstart', 'pesf-text', 'pesf-causal-lm', 'pesf-compare',
           'pesf-analyze', 'pesf-glue-compare', 'pesf-lm-compare', 'pesf-benchmark', 'pesf-gpu-check']
SKIP = shutil.ignore_patterns('.git', 'runs', 'resource', 'build', 'dist', '*.egg-info', '__pycache__', '*.pyc',
                              '.pytest_cache')


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('entry_points')
    source = tmp / 'src'
    shutil.copytree(ROOT, source, ignore=SKIP)  # pip builds in the source folder: keep the project's clean
    env_dir = tmp / 'venv'
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    python = str(env_dir / 'bin' / 'python')
    completed = subprocess.run([python, '-m', 'pip', 'install', '--quiet', '--no-deps', '--no-build-isolation',
                                str(source)], capture_output=True, text=True, cwd=tmp)
    assert completed.returncode == 0, completed.stderr[-3000:]
    shutil.rmtree(source)  # nothing of the project is left to import from
    outside = tmp / 'elsewhere'
    outside.mkdir()
    return env_dir, outside


def test_the_installed_copy_is_imported_with_its_configs(installed):
    env_dir, outside = installed
    completed = subprocess.run([str(env_dir / 'bin' / 'python'), '-c',
                                'import pesf_ext, pesf_ext.cli.paths as p; print(pesf_ext.__file__); '
                                'print(p.checkout_root()); print(p.configs_dir())'],
                               capture_output=True, text=True, cwd=outside)
    assert completed.returncode == 0, completed.stderr
    module, checkout, configs = completed.stdout.split()
    assert module.startswith(str(env_dir)), module
    assert checkout == 'None'
    assert configs.startswith(str(env_dir))
    assert os.path.isfile(os.path.join(configs, 'fashion_mnist', 'resnet56_resnet20_pesfkd.yaml'))
    assert os.path.isfile(os.path.join(configs, 'glue_offline', 'sst2', 'minilm_l6_minilm_l3_kd.yaml'))


@pytest.mark.parametrize('script', SCRIPTS)
def test_console_script_help_has_an_example(script, installed):
    env_dir, outside = installed
    completed = subprocess.run([str(env_dir / 'bin' / script), '--help'], capture_output=True, text=True,
                               cwd=outside)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.startswith(f'usage: {script} ')
    assert f'examples:\n  {script} ' in completed.stdout


def test_tools_scripts_stay_thin_and_share_the_package_module():
    """``python tools/<name>.py`` runs the package's main; ``import quickstart`` (other tools, tests) is the package
    module itself, so patching one patches the other."""
    sys.path.insert(0, os.path.join(ROOT, 'tools'))
    for name in ('quickstart', 'text_quickstart', 'text_classification', 'causal_lm', 'compare', 'analyze',
                 'glue_compare', 'lm_compare', 'benchmark', 'gpu_check'):
        module = importlib.import_module(name)
        assert module is importlib.import_module(f'pesf_ext.cli.{name}'), name
        with open(os.path.join(ROOT, 'tools', f'{name}.py')) as f:
            assert len(f.read().splitlines()) < 25, f'tools/{name}.py is not a thin script'
    completed = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'image_classification.py'), '--help'],
                               capture_output=True, text=True)
    assert completed.returncode == 0 and 'examples:\n  pesf-image ' in completed.stdout
