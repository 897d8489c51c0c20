"""Knowledge distillation for causal language models: a thin script around :mod:`pesf_ext.cli.causal_lm`
(installed as ``pesf-causal-lm``)::

    python tools/causal_lm.py --config configs/causal_lm_offline/gpt2_4l_gpt2_2l_stdlib_pesfkd.yaml --seed 0
    torchrun --nproc_per_node=8 tools/causal_lm.py --config configs/causal_lm/qwen2.5_1.5b_0.5b_dolly_pesfkd.yaml

``import causal_lm`` (other tools, tests) gets the package module itself.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pesf_ext.cli import causal_lm as _causal_lm  # noqa: E402

if __name__ == '__main__':
    _causal_lm.main()
else:
    sys.modules[__name__] = _causal_lm
