"""Experiment driver on Fashion-MNIST (methods x seeds x a grid of YAML overrides, one Markdown table):
a thin script around :mod:`pesf_ext.cli.compare` (installed as ``pesf-compare``)::

    python tools/compare.py --methods kd pesfkd zscore --seeds 5 --jobs 2
    python tools/compare.py --methods kd pesfkd zscore --seeds 5 -table_only --out_dir runs/compare

``import compare`` (other tools, tests) gets the package module itself.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pesf_ext.cli import compare as _compare  # noqa: E402

if __name__ == '__main__':
    _compare.main()
else:
    sys.modules[__name__] = _compare
