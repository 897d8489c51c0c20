"""Start-up: importing pesf_ext (every image run does) loads no library that only one task needs; GLUE's metrics
import scipy / scikit-learn when they first run, and the registries still know every key."""
import json
import subprocess
import sys

import pytest

TASK_ONLY = ('scipy', 'sklearn', 'transformers', 'datasets', 'matplotlib', 'pandas', 'peft')


def loaded_after(code):
    """Top-level module names in sys.modules of a fresh interpreter after ``code``."""
    script = f'{code}\nimport json, sys\nprint(json.dumps(sorted({{m.split(".")[0] for m in sys.modules}})))'
    completed = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr[-2000:]
    return set(json.loads(completed.stdout.splitlines()[-1]))


@pytest.mark.parametrize('module', ['pesf_ext', 'pesf_ext.cli.image_classification'])
def test_import_loads_no_task_only_library(module):
    loaded = loaded_after(f'import {module}')
    assert 'pesf_ext' in loaded and 'torchdistill' in loaded
    assert not loaded & set(TASK_ONLY), sorted(loaded & set(TASK_ONLY))


def test_registrations_and_glue_metrics_still_work_without_eager_imports():
    """The keys the GLUE configs name are registered at import; the metrics import scipy/sklearn when called."""
    code = '''
import sys
import pesf_ext
from torchdistill.core.interfaces.registry import FORWARD_PROC_FUNC_DICT
from torchdistill.losses.registry import FUNC2EXTRACT_MODEL_OUTPUT_DICT, HIGH_LEVEL_LOSS_DICT
from torchdistill.optim.registry import OPTIM_DICT
assert 'forward_batch_as_kwargs' in FORWARD_PROC_FUNC_DICT and 'optimizer_no_decay' in OPTIM_DICT
assert 'extract_transformers_loss' in FUNC2EXTRACT_MODEL_OUTPUT_DICT and 'CriterionWithoutTargets' in HIGH_LEVEL_LOSS_DICT
assert 'scipy' not in sys.modules and 'sklearn' not in sys.modules
from pesf_ext.nlp.glue_metrics import glue_metrics
r = glue_metrics([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]], [1, 0, 0, 0], ('f1', 'matthews'))
assert abs(r['f1'] - 200 / 3) < 1e-9, r            # precision 1/2, recall 1: F1 2/3
assert abs(r['matthews'] - 100 / 3 ** 0.5) < 1e-9, r  # (1*2 - 1*0) / sqrt(2 * 1 * 3 * 2)
s = glue_metrics([[1.0], [2.0], [4.0]], [1.0, 3.0, 2.0], ('pearson', 'spearman'))
assert abs(s['spearman'] - 50.0) < 1e-9, s  # ranks (1,2,3) vs (1,3,2): 1 - 6*2/(3*8)
'''
    loaded = loaded_after(code)
    assert {'scipy', 'sklearn'} <= loaded  # imported by the metrics that needed them
