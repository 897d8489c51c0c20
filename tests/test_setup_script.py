"""tools/setup.sh (the README's set-up line) runs the right commands as root without sudo, as a user with sudo and
as a user without it, and its two steps for a machine without internet (``wheels`` then ``offline``) download and
install only what they should; apt-get, sudo, id and python are stand-ins that record their arguments (python's
``pip download`` leaves wheel files named as the real ones)."""
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, 'tools', 'setup.sh')
SYSTEM_TOOLS = ('bash', 'dirname', 'env', 'ls', 'cat', 'rm', 'mkdir', 'grep', 'du', 'cut', 'touch')
# pip download -d DIR NAME...: the wheel files pip would save (PyYAML's is platform-specific)
WHEEL_FILES = {'torchdistill==1.1.5': 'torchdistill-1.1.5-py3-none-any.whl', 'tqdm': 'tqdm-4.67.1-py3-none-any.whl',
               'pyyaml': 'PyYAML-6.0.2-cp311-cp311-manylinux_2_17_x86_64.whl',
               'setuptools>=70.1': 'setuptools-80.0.0-py3-none-any.whl'}


def stub(directory, name, body):
    path = directory / name
    path.write_text(f'#!/bin/bash\n{body}\n')
    path.chmod(0o755)


@pytest.fixture
def sandbox(tmp_path):
    """A PATH holding only the system tools the script needs plus recording stand-ins."""
    bin_dir, record = tmp_path / 'bin', tmp_path / 'calls.txt'
    bin_dir.mkdir()
    for tool in SYSTEM_TOOLS:
        os.symlink(shutil.which(tool), bin_dir / tool)
    stub(bin_dir, 'apt-get', f'echo "apt-get $* [DEBIAN_FRONTEND=$DEBIAN_FRONTEND]" >> {record}')
    downloads = '\n'.join(f'    "{name}") touch "$dir/{file}" ;;' for name, file in WHEEL_FILES.items())
    stub(bin_dir, 'python', f'echo "python $*" >> {record}\n'
         'dir=""; prev=""\nfor a in "$@"; do [ "$prev" = "-d" ] && dir=$a; prev=$a; done\n'
         f'[ -n "$dir" ] && for a in "$@"; do case "$a" in\n{downloads}\n  esac; done\nexit 0')
    tree = tmp_path / 'clone'   # a copy of the script in its own tree: .whl/ is made there, not in the checkout
    (tree / 'tools').mkdir(parents=True)
    shutil.copy(SCRIPT, tree / 'tools' / 'setup.sh')

    def run(uid, with_sudo, *args, data_dir=None, expect=0, env_extra=None):
        stub(bin_dir, 'id', f'echo {uid}')
        if with_sudo:
            stub(bin_dir, 'sudo', f'echo -n "sudo " >> {record}; "$@"')
        elif (bin_dir / 'sudo').exists():
            (bin_dir / 'sudo').unlink()
        record.write_text('')
        env = {'PATH': str(bin_dir), 'FASHION_MNIST_DIR': data_dir or str(tmp_path / 'no_data'), **(env_extra or {})}
        completed = subprocess.run([shutil.which('bash'), str(tree / 'tools' / 'setup.sh'), *args], env=env,
                                   capture_output=True, text=True)
        assert completed.returncode == expect, completed.stderr
        run.stdout = completed.stdout
        return record.read_text().splitlines(), completed.stderr
    run.tree = tree
    return run


UPDATE = 'apt-get update [DEBIAN_FRONTEND=noninteractive]'
INSTALL = 'apt-get install -y dataset-fashion-mnist [DEBIAN_FRONTEND=noninteractive]'
PIP = 'python -m pip install torch torchvision -e .'


def test_root_without_sudo_updates_apt_first(sandbox):
    calls, _ = sandbox(0, False)
    assert calls == [UPDATE, INSTALL, PIP]


def test_user_with_sudo(sandbox):
    calls, _ = sandbox(1000, True, 'test')
    assert calls == [f'sudo {UPDATE}', f'sudo {INSTALL}',
                     'python -m pip install torch torchvision -e .[test,nlp,plots]']


def test_user_without_sudo_skips_apt_and_says_so(sandbox):
    calls, stderr = sandbox(1000, False)
    assert calls == [PIP]
    assert 'not root and no sudo' in stderr


def test_data_already_installed_needs_no_apt(sandbox, tmp_path):
    data = tmp_path / 'data'
    data.mkdir()
    (data / 'train-images-idx3-ubyte.gz').write_bytes(b'')
    calls, _ = sandbox(1000, False, data_dir=str(data))
    assert calls == [PIP]


DOWNLOAD = 'python -m pip download --no-deps --only-binary=:all: -d'


def test_wheels_dry_run_prints_the_downloads_and_runs_nothing(sandbox):
    calls, _ = sandbox(1000, False, 'wheels', '--dry-run')
    assert calls == []   # no pip, no apt
    python = shutil.which('python', path=str(sandbox.tree.parent / 'bin'))
    assert sandbox.stdout.replace(python, 'python').splitlines() == [
        'rm -rf .whl', 'mkdir -p .whl/build', f'{DOWNLOAD} .whl torchdistill==1.1.5',
        f'{DOWNLOAD} .whl/build setuptools>=70.1']
    assert not (sandbox.tree / '.whl').exists()


def test_wheels_downloads_torchdistill_without_its_deps(sandbox):
    calls, _ = sandbox(1000, False, 'wheels', env_extra={'EXTRA_WHEELS': 'tqdm'})
    assert calls == [f'{DOWNLOAD} .whl torchdistill==1.1.5 tqdm', f'{DOWNLOAD} .whl/build setuptools>=70.1']
    assert sorted(p.name for p in (sandbox.tree / '.whl').glob('*.whl')) == [
        'torchdistill-1.1.5-py3-none-any.whl', 'tqdm-4.67.1-py3-none-any.whl']
    assert 'bash tools/setup.sh offline' in sandbox.stdout


def test_wheels_refuses_a_platform_wheel(sandbox):
    _, stderr = sandbox(1000, False, 'wheels', env_extra={'EXTRA_WHEELS': 'pyyaml'}, expect=1)
    assert 'not pure-Python' in stderr and 'PyYAML-6.0.2-cp311' in stderr


def test_offline_installs_the_wheels_without_index_or_deps(sandbox):
    (sandbox.tree / '.whl').mkdir()
    (sandbox.tree / '.whl' / 'torchdistill-1.1.5-py3-none-any.whl').write_bytes(b'')
    calls, _ = sandbox(0, False, 'offline')
    assert calls[:2] == ['python -m pip install --no-index --no-deps .whl/torchdistill-1.1.5-py3-none-any.whl',
                         'python -m pip install --no-index --no-deps --no-build-isolation .']
    assert len(calls) == 3 and calls[2].startswith('python -c import pesf_ext')   # no apt, no torch


def test_offline_without_wheels_says_what_to_run(sandbox):
    calls, stderr = sandbox(0, False, 'offline', expect=1)
    assert calls == [] and "run 'bash tools/setup.sh wheels'" in stderr


def test_refresh_docs_runs_python_as_this_interpreter(tmp_path, monkeypatch):
    """The docs' commands run with the interpreter that runs tools/refresh_docs.py (``venv/bin/python -m pytest``
    without the venv activated), not the first ``python`` on PATH."""
    import sys
    sys.path.insert(0, os.path.join(ROOT, 'tools'))
    import refresh_docs
    stub(tmp_path, 'python', 'echo wrong-python')
    monkeypatch.setenv('PATH', f'{tmp_path}{os.pathsep}{os.environ["PATH"]}')
    assert subprocess.run(['python'], capture_output=True, text=True).stdout.strip() == 'wrong-python'
    out = refresh_docs.command_output('python -c "import sys; print(sys.executable)" && python3 -c "print(1)"')
    assert out.splitlines() == [sys.executable, '1']
