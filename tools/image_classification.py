"""Knowledge distillation for image classification with torchdistill + pesf_ext: a thin script around
:mod:`pesf_ext.cli.image_classification` (installed as ``pesf-image``)::

    python tools/image_classification.py --config configs/fashion_mnist/resnet56_resnet20_pesfkd.yaml
    torchrun --nproc_per_node=4 tools/image_classification.py --config configs/imagenet/r50_r18_pesfkd.yaml
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pesf_ext.cli.image_classification import main  # noqa: E402

if __name__ == '__main__':
    main()
