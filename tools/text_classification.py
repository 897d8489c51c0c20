"""Knowledge distillation for GLUE text classification: a thin script around
:mod:`pesf_ext.cli.text_classification` (installed as ``pesf-text``)::

    python tools/text_classification.py --config configs/glue_offline/rte/minilm_l6_minilm_l3_pesfkd.yaml \\
        --data_dir glue_data --seed 0     # glue_data/RTE/{train,dev}.tsv: GLUE TSV files in a folder you pass
    torchrun --nproc_per_node=4 tools/text_classification.py --config configs/glue/sst2/bert_base_uncased_bert_6l_kd.yaml

``import text_classification`` (other tools, tests) gets the package module itself.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pesf_ext.cli import text_classification as _text_classification  # noqa: E402

if __name__ == '__main__':
    _text_classification.main()
else:
    sys.modules[__name__] = _text_classification
