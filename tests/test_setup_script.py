"""tools/setup.sh (the README's set-up line) runs the right commands as root without sudo, as a user with sudo and
as a user without it; apt-get, sudo, id and python are stand-ins that record their arguments."""
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, 'tools', 'setup.sh')
SYSTEM_TOOLS = ('bash', 'dirname', 'env', 'ls', 'cat')


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
    stub(bin_dir, 'python', f'echo "python $*" >> {record}')

    def run(uid, with_sudo, *args, data_dir=None):
        stub(bin_dir, 'id', f'echo {uid}')
        if with_sudo:
            stub(bin_dir, 'sudo', f'echo -n "sudo " >> {record}; "$@"')
        elif (bin_dir / 'sudo').exists():
            (bin_dir / 'sudo').unlink()
        record.write_text('')
        env = {'PATH': str(bin_dir), 'FASHION_MNIST_DIR': data_dir or str(tmp_path / 'no_data')}
        completed = subprocess.run([shutil.which('bash'), SCRIPT, *args], env=env, capture_output=True, text=True)
        assert completed.returncode == 0, completed.stderr
        return record.read_text().splitlines(), completed.stderr
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
