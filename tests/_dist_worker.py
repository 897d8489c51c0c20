"""Run under ``torchrun`` by tests/test_dist_*.py; writes this rank's results to ``<out_dir>/<tag>_rank<k>.*``.

    python -m torch.distributed.run --standalone --nproc_per_node=N tests/_dist_worker.py eval OUT_DIR TAG
    python -m torch.distributed.run --standalone --nproc_per_node=N tests/_dist_worker.py run OUT_DIR TAG <runner args>

``eval``: :func:`pesf_ext.engine.loop.evaluate` of two fixed linear models on :func:`eval_fixture` through the loader
torchdistill builds for a distributed run. ``run``: one runner run; also records, just before the models are wrapped
in DDP, each rank's student and teacher-side initialisation and its random streams.
"""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pesf_ext.engine.checkpoint import trainable_state_dict, unwrap  # noqa: E402
from pesf_ext.engine.loop import evaluate  # noqa: E402

NUM_EVAL_SAMPLES, NUM_CLASSES = 13, 4  # a prime: 2 or 3 ranks never split it evenly


def eval_fixture():
    """(dataset, teacher, student): 13 fixed samples and two fixed linear classifiers."""
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(NUM_EVAL_SAMPLES, 6, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (NUM_EVAL_SAMPLES,), generator=generator)
    teacher, student = torch.nn.Linear(6, NUM_CLASSES), torch.nn.Linear(6, NUM_CLASSES)
    with torch.no_grad():
        for model in (teacher, student):
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=generator))
    return torch.utils.data.TensorDataset(inputs, labels), teacher, student


def order_and_glue_metrics(logits, labels):
    """GLUE's accuracy and Matthews correlation, plus a number that changes with the order of the examples."""
    from pesf_ext.nlp.glue_metrics import METRIC_FUNCTIONS
    import numpy as np
    pred = logits.argmax(axis=1)
    return {'accuracy': METRIC_FUNCTIONS['accuracy'](pred, labels),
            'matthews': METRIC_FUNCTIONS['matthews'](pred, labels),
            'order': float(np.sum(labels * np.arange(1, len(labels) + 1))), 'count': float(len(labels))}


def evaluate_fixture(loader):
    _, teacher, student = eval_fixture()
    models = {'teacher': teacher, 'student': student}
    return {'accuracy': evaluate(models, loader, torch.device('cpu')),
            'metric_fn': evaluate(models, loader, torch.device('cpu'), metric_fn=order_and_glue_metrics)}


def eval_loader_config():
    return {'dataset_id': 'x', 'kwargs': {'batch_size': 4, 'num_workers': 0, 'drop_last': False},
            'sampler': {'class_or_func': torch.utils.data.SequentialSampler, 'kwargs': None}}


def run_eval(out_dir, tag):
    from torch import distributed as dist
    from torchdistill.datasets.util import build_data_loader
    dist.init_process_group('gloo')
    loader = build_data_loader(eval_fixture()[0], eval_loader_config(), distributed=True)
    results = evaluate_fixture(loader)
    with open(os.path.join(out_dir, f'{tag}_rank{dist.get_rank()}.json'), 'w') as f:
        json.dump(results, f)
    dist.destroy_process_group()


def run_runner(out_dir, tag, argv):
    from pesf_ext.engine import runner
    from pesf_ext.engine.models import build_model
    rank = int(os.environ['RANK'])
    record = {}
    wrap_box_models = runner.wrap_box_models

    def recording_wrap(box, device_ids=None, **kwargs):  # after the models and per-rank streams are set, before DDP
        record['student'] = {k: v.clone() for k, v in unwrap(box.student_model).state_dict().items()}
        record['teacher_side'] = trainable_state_dict(box.teacher_model)
        record['data_torch_state'] = box.data_stream.state['torch'].clone()
        record['sampler_seed'] = box.train_data_loader.sampler.seed
        with torch.random.fork_rng(devices=[]):  # the first dropout mask the training step would draw
            record['dropout_mask'] = torch.nn.functional.dropout(torch.ones(64), 0.5)
        with torch.random.fork_rng(devices=[]), box.data_stream.active():  # the first crop offsets it would draw
            record['augmentation_draws'] = torch.randint(0, 5, (16,))
        return wrap_box_models(box, device_ids, **kwargs)

    runner.wrap_box_models = recording_wrap
    results = runner.run(runner.get_args(argv), build_model)
    models = results.pop('_models')
    record['final_student'] = unwrap(models['student']).state_dict()
    torch.save(record, os.path.join(out_dir, f'{tag}_rank{rank}.pt'))
    with open(os.path.join(out_dir, f'{tag}_rank{rank}.json'), 'w') as f:
        json.dump({'test': results['test']}, f)


if __name__ == '__main__':
    mode, out, run_tag = sys.argv[1:4]
    if mode == 'eval':
        run_eval(out, run_tag)
    else:
        run_runner(out, run_tag, sys.argv[4:])
