"""Shared test helpers: small real-data configs derived from the shipped ones by changing YAML anchors."""
import os
import re
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'tools'))
FASHION_MNIST_CONFIGS = os.path.join(ROOT, 'configs', 'fashion_mnist')
DEBIAN_FASHION_MNIST = '/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz'


def set_anchor(text, anchor, value):
    pattern = re.compile(rf'(&{anchor} )(\S+)')
    assert pattern.search(text), f'anchor &{anchor} not found'
    return pattern.sub(lambda m: m.group(1) + (repr(value) if isinstance(value, str) else str(value)), text)


@pytest.fixture(scope='session')
def fashion_mnist_root(tmp_path_factory):
    if not os.path.isfile(DEBIAN_FASHION_MNIST):
        pytest.skip('Fashion-MNIST not installed: apt-get install dataset-fashion-mnist (.ci/run does this)')
    return str(tmp_path_factory.mktemp('fashion_mnist'))


@pytest.fixture
def small_config(tmp_path, fashion_mnist_root):
    """Writes configs/fashion_mnist/<name> with a tiny budget into tmp_path and returns its path."""
    def make(name, **anchors):
        with open(os.path.join(FASHION_MNIST_CONFIGS, name)) as f:
            text = f.read()
        values = {'num_train_samples': 128, 'num_val_samples': 64, 'num_test_samples': 64, 'num_epochs': 1,
                  'num_workers': 0, 'ckpt_root': str(tmp_path / 'ckpt'), 'root_dir': fashion_mnist_root, **anchors}
        for anchor, value in values.items():
            text = set_anchor(text, anchor, value)
        path = tmp_path / name
        path.write_text(text)
        return str(path)
    return make
