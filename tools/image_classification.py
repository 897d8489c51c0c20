"""Knowledge distillation for image classification with torchdistill + pesf_ext.

Same command line and YAML schema as torchdistill's ``examples/torchvision/image_classification.py``::

    python tools/image_classification.py --config configs/fashion_mnist/resnet56_resnet20_pesfkd.yaml
    torchrun --nproc_per_node=4 tools/image_classification.py --config configs/imagenet/r50_r18_pesfkd.yaml

Runs teacher-less configs (plain training), distillation configs and torchdistill's own sample configs. An error
ends in one line on stderr and a non-zero exit (the traceback goes to --run_log, or to the console with --debug).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pesf_ext  # noqa: E402,F401  (registers losses, adapters, models, processes)
from pesf_ext.engine.cli import main_guard  # noqa: E402
from pesf_ext.engine.models import build_model  # noqa: E402
from pesf_ext.engine.runner import get_args, run  # noqa: E402


def main(argv=None):
    args = get_args(argv, description='Knowledge distillation for image classification models')
    return main_guard(lambda: run(args, build_model), args)


if __name__ == '__main__':
    main()
