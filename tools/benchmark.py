"""Seconds per training step and activation memory of distillation methods, side by side in one process: a thin
script around :mod:`pesf_ext.cli.benchmark` (installed as ``pesf-benchmark``)::

    python tools/benchmark.py                                   # Fashion-MNIST ResNet-56 -> ResNet-20, CPU/GPU
    python tools/benchmark.py --configs configs/imagenet/r50_r18_{kd,pesfkd,ftkd}.yaml --batch_size 256  # GPU

``import benchmark`` (other tools, tests) gets the package module itself.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pesf_ext.cli import benchmark as _benchmark  # noqa: E402

if __name__ == '__main__':
    _benchmark.main()
else:
    sys.modules[__name__] = _benchmark
