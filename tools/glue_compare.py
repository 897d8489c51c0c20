"""GLUE experiment driver (offline configs: methods x seeds on the 3-layer MiniLM student, one table):
a thin script around :mod:`pesf_ext.cli.glue_compare` (installed as ``pesf-glue-compare``)::

    python tools/glue_compare.py --task sst2 --seeds 3
    python tools/glue_compare.py --task rte --seeds 3 --methods ce kd pesfkd ftkd dml --jobs 2

``import glue_compare`` (other tools, tests) gets the package module itself.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pesf_ext.cli import glue_compare as _glue_compare  # noqa: E402

if __name__ == '__main__':
    _glue_compare.main()
else:
    sys.modules[__name__] = _glue_compare
