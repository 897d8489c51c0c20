"""pesf_ext: parameter-efficient, student-friendly knowledge distillation for torchdistill.

Importing the package registers every loss, adapter wrapper, model, dataset and process with torchdistill's
registries, so a YAML file only needs ``dependencies: [{name: pesf_ext}]`` (the project's runners import it).
"""
from . import adapters, data, losses, models, nlp, procs  # noqa: F401  (registration side effects)
from . import epoch_metrics  # noqa: F401,E402  (registers epoch_metrics_post_epoch_process)
from . import rco  # noqa: F401,E402  (registers rco_pre_epoch_process)

__version__ = '0.2.0'
