"""CPU quickstart on real data (Fashion-MNIST: a ResNet-56 teacher, then KD, PESF-KD, FT-KD and Z-score KD into a
ResNet-20, one table): a thin script around :mod:`pesf_ext.cli.quickstart` (installed as ``pesf-quickstart``)::

    python tools/quickstart.py            # the CPU budget: 4,000 train images, 3 epochs per method
    python tools/quickstart.py --full     # the configs' full schedule (30 epochs on 55,000 images each)

``import quickstart`` (the other tools, the tests) gets the package module itself.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pesf_ext.cli import quickstart as _quickstart  # noqa: E402

if __name__ == '__main__':
    _quickstart.main()
else:
    sys.modules[__name__] = _quickstart
