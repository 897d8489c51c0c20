"""Knowledge distillation for causal language models with torchdistill + pesf_ext + Hugging Face transformers/PEFT
(``pesf-causal-lm``; in a clone also ``python tools/causal_lm.py``).

Same engine, command line and checkpoints as ``tools/image_classification.py`` and ``tools/text_classification.py``;
models in the ``config_kwargs``/``tokenizer_kwargs``/``model_kwargs`` schema of the GLUE configs::

    python tools/causal_lm.py --config configs/causal_lm_offline/gpt2_4l_stdlib_teacher_ce.yaml --seed 0
    python tools/causal_lm.py --config configs/causal_lm_offline/gpt2_4l_gpt2_2l_stdlib_pesfkd.yaml --seed 0
    torchrun --nproc_per_node=8 tools/causal_lm.py --config configs/causal_lm/qwen2.5_1.5b_0.5b_dolly_pesfkd.yaml

``--teacher_model`` and ``--student_model`` replace the YAML's model paths (a local directory works offline).
"""
import pesf_ext  # noqa: F401  (registers losses, adapters, models, processes)
import pesf_ext.lm  # noqa: F401  (registers LoRATeacher)
from pesf_ext.engine.cli import main_guard
from pesf_ext.engine.runner import get_args
from pesf_ext.lm.runner import add_lm_arguments, run_lm

EPILOG = '''examples:
  pesf-causal-lm --config configs/causal_lm_offline/gpt2_4l_stdlib_teacher_ce.yaml --seed 0
  pesf-causal-lm --config configs/causal_lm_offline/gpt2_4l_gpt2_2l_stdlib_pesfkd.yaml --seed 0
  torchrun --nproc_per_node=8 -m pesf_ext.cli.causal_lm --config configs/causal_lm/qwen2.5_1.5b_0.5b_dolly_pesfkd.yaml
(in a clone, `python tools/causal_lm.py` takes the same options)'''


def main(argv=None):
    args = get_args(argv, description='Knowledge distillation for causal language models', extra=add_lm_arguments,
                    epilog=EPILOG)
    return main_guard(lambda: run_lm(args), args)


if __name__ == '__main__':
    main()
