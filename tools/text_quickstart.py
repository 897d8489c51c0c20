"""CPU quickstart for the text side, offline (MiniLM-L6 teacher fine-tuned on an SST-2 or RTE subset, then KD,
PESF-KD, FT-KD and DML into a 3-layer student): a thin script around :mod:`pesf_ext.cli.text_quickstart`
(installed as ``pesf-text-quickstart``)::

    python tools/text_quickstart.py --data_dir DIR              # DIR/SST-2/train.tsv, DIR/SST-2/dev.tsv
    python tools/text_quickstart.py --data_dir DIR --task rte

``import text_quickstart`` gets the package module itself.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pesf_ext.cli import text_quickstart as _text_quickstart  # noqa: E402

if __name__ == '__main__':
    _text_quickstart.main()
else:
    sys.modules[__name__] = _text_quickstart
