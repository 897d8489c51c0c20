"""Model building for the runners: torchvision first (as torchdistill's example), then torchdistill's registry.

Keys that pesf_ext registers itself (``vgg8``, ``vgg13`` for CIFAR) take precedence over torchvision's
ImageNet models of the same name, so the CIFAR VGGs of the CRD/PESF-KD papers are what those keys build.
"""
import logging

from torchdistill.models.official import get_image_classification_model
from torchdistill.models.registry import MODEL_DICT, get_model

from .errors import ConfigError
from .files import load_model_checkpoint

logger = logging.getLogger(__name__)
PESF_MODEL_KEYS = {'vgg8', 'vgg13'}


def build_model(model_config, device, distributed, yaml_key):
    """Builds ``models.<name>`` of a YAML; pretrained-weight download failures name the key and the way out."""
    key = model_config['key']
    kwargs = model_config.get('kwargs') or {}
    try:
        model = None if key in PESF_MODEL_KEYS else get_image_classification_model(model_config, distributed)
        if model is None:
            model = get_model(key, model_config.get('repo_or_dir'), **kwargs)
    except TypeError as error:  # an argument the model's builder does not take (or lacks)
        raise ConfigError(f'{yaml_key}.kwargs: {" ".join(str(error).split())}') from error
    except (OSError, RuntimeError) as error:
        if 'weights' in kwargs or kwargs.get('pretrained'):
            raise ConfigError(
                f'{yaml_key}: could not load pretrained weights for `{key}` ({error}). Without internet, set '
                f'`{yaml_key}.kwargs.weights: null` / `pretrained: False` and give a local `src_ckpt`.') from error
        raise
    src_ckpt = model_config.get('src_ckpt')
    if src_ckpt:
        load_model_checkpoint(src_ckpt, model, f'{yaml_key}.src_ckpt')
    return model.to(device)


def is_known_model_key(key):
    from torchvision import models
    return key in MODEL_DICT or key in models.__dict__
