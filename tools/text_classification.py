"""Knowledge distillation for GLUE text classification with torchdistill + pesf_ext + Hugging Face transformers.

Same engine, command line and end-of-run report as ``tools/image_classification.py``; YAML schema of torchdistill's
``examples/hf_transformers/text_classification.py``::

    python tools/text_classification.py --config configs/glue/rte/bert_base_uncased_bert_6l_pesfkd.yaml
    python tools/text_classification.py --config configs/glue_offline/rte/minilm_l6_minilm_l3_pesfkd.yaml \\
        --data_dir glue_data --seed 0     # glue_data/RTE/{train,dev}.tsv: GLUE TSV files in a folder you pass
    torchrun --nproc_per_node=4 tools/text_classification.py \\
        --config configs/glue/sst2/bert_base_uncased_bert_6l_kd.yaml

``--data_dir``, ``--teacher_model`` and ``--student_model`` replace the YAML's data folder and model paths, so
torchdistill's own GLUE configs (``configs/official/glue/.../<task>/{ce,kd}/*.yaml`` in its repository) run as they
are (docs/glue.md)::

    python tools/text_classification.py --config rte/kd/bert_base_uncased_from_bert_large_uncased.yaml \
        --data_dir ~/glue_data --teacher_model ~/models/bert-large-uncased-rte --student_model bert-base-uncased
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pesf_ext  # noqa: E402,F401  (registers losses, adapters, models, processes)
from pesf_ext.engine.cli import main_guard  # noqa: E402
from pesf_ext.nlp.runner import get_text_args, run_text  # noqa: E402


def main(argv=None):
    args = get_text_args(argv)
    return main_guard(lambda: run_text(args), args)


if __name__ == '__main__':
    main()
