"""Knowledge distillation for GLUE text classification with torchdistill + pesf_ext + Hugging Face transformers
(``pesf-text``; in a clone also ``python tools/text_classification.py``).

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
import pesf_ext  # noqa: F401  (registers losses, adapters, models, processes)
from pesf_ext.engine.cli import main_guard
from pesf_ext.engine.runner import get_args
from pesf_ext.nlp.runner import add_text_arguments, run_text

EPILOG = '''examples:
  pesf-text --config configs/glue_offline/rte/minilm_l6_minilm_l3_pesfkd.yaml --data_dir DIR --seed 0
      (DIR holds the GLUE TSV files: DIR/RTE/train.tsv, DIR/RTE/dev.tsv)
  pesf-text --config configs/glue/rte/bert_base_uncased_bert_6l_pesfkd.yaml --seed 0
  torchrun --nproc_per_node=4 -m pesf_ext.cli.text_classification --config configs/glue/sst2/bert_base_uncased_bert_6l_kd.yaml
(in a clone, `python tools/text_classification.py` takes the same options)'''


def main(argv=None):
    args = get_args(argv, description='Knowledge distillation for GLUE text classification', extra=add_text_arguments,
                    epilog=EPILOG)
    return main_guard(lambda: run_text(args), args)


if __name__ == '__main__':
    main()
