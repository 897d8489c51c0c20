"""Knowledge distillation for image classification with torchdistill + pesf_ext (``pesf-image``; in a clone also
``python tools/image_classification.py``).

Same command line and YAML schema as torchdistill's ``examples/torchvision/image_classification.py``; runs
teacher-less configs (plain training), distillation configs and torchdistill's own sample configs. An error ends in
one line on stderr and a non-zero exit (the traceback goes to --run_log, or to the console with --debug).
"""
import pesf_ext  # noqa: F401  (registers losses, adapters, models, processes)
from pesf_ext.engine.cli import main_guard
from pesf_ext.engine.models import build_model
from pesf_ext.engine.runner import get_args, run

EPILOG = '''examples:
  pesf-image --config configs/fashion_mnist/resnet56_resnet20_pesfkd.yaml --seed 0
  pesf-image --config configs/fashion_mnist/resnet56_resnet20_kd.yaml --set train.num_epochs=5 -dry_run
  torchrun --nproc_per_node=4 -m pesf_ext.cli.image_classification --config configs/imagenet/r50_r18_pesfkd.yaml
(in a clone, `python tools/image_classification.py` takes the same options)'''


def main(argv=None):
    args = get_args(argv, description='Knowledge distillation for image classification models', epilog=EPILOG)
    return main_guard(lambda: run(args, build_model), args)


if __name__ == '__main__':
    main()
