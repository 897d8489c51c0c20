"""torchdistill's official GLUE configs beside torchdistill's own example package (``examples/hf_transformers/custom``,
as its README runs them): that package's ``forward_batch_as_kwargs`` (``model(**sample_batch)``) and
``extract_transformers_loss`` (``{'loss': outputs.loss}``) replace this project's, and the runs still train and test,
because the collated batch keeps its labels as torchdistill's collator does.

The package (tests/torchdistill_example/custom, the same modules and registrations as torchdistill's) is imported
before ``pesf_ext`` in a fresh interpreter: torchdistill's registries are process-wide, so the other tests keep this
project's functions.
"""
import json
import os
import subprocess
import sys

import pytest

from glue_fixtures import write_tiny_bert
from test_official_glue_configs import SHAPES

TESTS = os.path.dirname(os.path.abspath(__file__))
EXAMPLE_DIR = os.path.join(TESTS, 'torchdistill_example')

SCRIPT = r'''
import json, math, sys
sys.path[:0] = [{example_dir!r}, {tests!r}]
import custom  # torchdistill's example package, registered before pesf_ext is imported
assert 'pesf_ext' not in sys.modules
import pathlib
import torch
from torchdistill.core.interfaces.registry import FORWARD_PROC_FUNC_DICT
from torchdistill.losses.registry import FUNC2EXTRACT_MODEL_OUTPUT_DICT
from torchdistill.optim.registry import OPTIM_DICT
from test_official_glue_configs import run_official

def owners():
    return [FORWARD_PROC_FUNC_DICT['forward_batch_as_kwargs'].__module__,
            FUNC2EXTRACT_MODEL_OUTPUT_DICT['extract_transformers_loss'].__module__,
            OPTIM_DICT['optimizer_no_decay'].__module__]

record = {{'before': owners(), 'runs': {{}}}}
models, root = {models!r}, pathlib.Path({root!r})
for task, shape in {shapes!r}:
    out = root / f'{{task}}_{{shape}}'
    out.mkdir()
    results = run_official(task, shape, models, out)
    record['runs'][f'{{task}}-{{shape}}'] = {{'test': results['test'], 'steps': results['seconds_per_step'] is not None}}

# the package's forward and loss on a batch of the runner's collator: the model's own CE on the kept labels
from transformers import AutoTokenizer, BertForSequenceClassification, DataCollatorWithPadding
from torchdistill.core.interfaces.registry import get_forward_proc_func
from torchdistill.losses.registry import get_func2extract_model_output
from pesf_ext.data.glue import LabelsKeptCollator
tokenizer = AutoTokenizer.from_pretrained(models[1])
collate = LabelsKeptCollator(DataCollatorWithPadding(tokenizer))
batch, labels = collate([dict(tokenizer('w1 w2 w3'), labels=1), dict(tokenizer('w4 w5'), labels=0)])
torch.manual_seed(0)
model = BertForSequenceClassification.from_pretrained(models[1], num_labels=2)
outputs = get_forward_proc_func('forward_batch_as_kwargs')(model, batch, labels)
loss = get_func2extract_model_output('extract_transformers_loss')(outputs, labels)['loss']
record['loss_gap'] = float((loss - torch.nn.functional.cross_entropy(outputs.logits, labels)).abs())
record['after'] = owners()
print('RECORD ' + json.dumps(record))
'''


@pytest.fixture(scope='module')
def tiny_models(tmp_path_factory):
    pytest.importorskip('transformers')
    root = tmp_path_factory.mktemp('example_package_models')
    return write_tiny_bert(str(root / 'teacher'), num_layers=2), write_tiny_bert(str(root / 'student'), num_layers=1)


def run_with_example_package(tiny_models, root, shapes):
    script = SCRIPT.format(example_dir=EXAMPLE_DIR, tests=TESTS, models=tiny_models, root=str(root),
                           shapes=list(shapes))
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    completed = subprocess.run([sys.executable, '-c', script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=env, timeout=300, cwd=str(root))
    assert completed.returncode == 0, completed.stdout[-4000:]
    line = [line for line in completed.stdout.splitlines() if line.startswith('RECORD ')][-1]
    return json.loads(line[len('RECORD '):])


def test_official_configs_train_and_test_with_torchdistills_example_package(tiny_models, tmp_path):
    """Every official config shape (CE and MSE through the model's own loss alone, KD, STS-B's KD, MNLI) trains 2
    steps and tests with the package's functions in place; before the fix the CE config stopped with ``TypeError:
    unsupported operand type(s) for +: 'int' and 'NoneType'`` in WeightedSumLoss (the model got no labels)."""
    import math
    from pesf_ext.data.glue import GLUE_TASKS
    record = run_with_example_package(tiny_models, tmp_path, SHAPES)
    package = ['custom.forward_proc', 'custom.loss', 'custom.optim']
    assert record['before'] == package and record['after'] == package  # pesf_ext kept the package's functions
    assert record['loss_gap'] < 1e-6  # the model's own loss is its CE on the labels the batch kept
    for task, shape in SHAPES:
        run = record['runs'][f'{task}-{shape}']
        for name in GLUE_TASKS[task].metrics:
            assert math.isfinite(run['test']['student'][name]), (task, shape, name)
        assert ('teacher' in run['test']) == shape.startswith('kd')
        assert run['steps'], (task, shape)  # it trained (the CE config's sum raised before its first step)
