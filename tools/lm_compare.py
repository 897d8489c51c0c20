"""Causal-LM experiment driver (offline configs: a teacher trained once, then methods x seeds on the 2-layer student,
one table of held-out perplexity with paired intervals): a thin script around :mod:`pesf_ext.cli.lm_compare`
(installed as ``pesf-lm-compare``)::

    python tools/lm_compare.py --seeds 5

``import lm_compare`` (other tools, tests) gets the package module itself.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pesf_ext.cli import lm_compare as _lm_compare  # noqa: E402

if __name__ == '__main__':
    _lm_compare.main()
else:
    sys.modules[__name__] = _lm_compare
