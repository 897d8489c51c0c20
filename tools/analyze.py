"""Teacher-student analysis (metrics table, figures, convergence, paired differences):
a thin script around :mod:`pesf_ext.cli.analyze` (installed as ``pesf-analyze``)::

    python tools/analyze.py figures --runs runs/compare5 --out docs/figures
    python tools/analyze.py paired --runs docs/results/converged --key test_gap --reference kd

``import analyze`` (other tools, tests) gets the package module itself.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pesf_ext.cli import analyze as _analyze  # noqa: E402

if __name__ == '__main__':
    _analyze.main()
else:
    sys.modules[__name__] = _analyze
