"""Shared test helpers: small real-data configs derived from the shipped ones by changing YAML anchors."""
import os
import re
import sys

import pytest
import torch

# The tests' models are tiny: thread start-up and spin-waiting cost more than the work, and on a busy 2-core machine
# two threads per op made the GLUE config tests 9x slower (measured: 17.9 s vs 2.0 s for one config).
torch.set_num_threads(1)

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


def calibrate_batch_norm(model, batches):
    """Re-estimates BatchNorm statistics as the exact average over ``batches`` ("precise BN").

    A teacher trained for only a few steps in a test has running statistics far from its activations' (the
    momentum-0.1 average has not caught up), and a deep ResNet in eval mode then produces logits in the
    thousands; a teacher trained for real does not need this.
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for batch in batches:
            model(batch)
    for norm in norms:
        norm.momentum = 0.1
    return model.eval()


@pytest.fixture
def trained_teacher(small_config):
    """A ResNet-56 teacher trained for 8 steps on 512 real Fashion-MNIST images, with precise BatchNorm
    statistics, saved where the distillation configs of ``small_config`` look for it; returns its config path."""
    from pesf_ext.engine import runner
    from pesf_ext.engine.config import load_config
    from pesf_ext.engine.models import build_model
    path = small_config('resnet56_teacher_ce.yaml', num_train_samples=512)
    runner.run(runner.get_args(['--config', path, '--device', 'cpu', '--seed', '0']), build_model)
    config = load_config(path)
    ckpt_path = config['models']['model']['dst_ckpt']
    ckpt = torch.load(ckpt_path, weights_only=False)
    model = build_model({'key': 'resnet56', 'kwargs': {'num_classes': 10}}, torch.device('cpu'), False, 'test')
    model.load_state_dict(ckpt['model'])
    images = torch.stack([image for image, _ in config['datasets']['fashion_mnist/train']])
    ckpt['model'] = calibrate_batch_norm(model, images.split(128)).state_dict()
    torch.save(ckpt, ckpt_path)
    return path
