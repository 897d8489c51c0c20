"""GLUE-style evaluation on more processes than examples: the ranks whose shard is empty take part in the gathers,
and every rank returns the single-process metrics.

Run as a script under torchrun, this file is its own worker (``python -m torch.distributed.run ... <this file> OUT``).
"""
import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

NUM_EXAMPLES, NUM_PROCESSES = 2, 3


class TextLikeClassifier(nn.Module):
    """Takes keyword inputs as a Hugging Face model does (``model(**batch)``); a ``labels`` keyword is an error, so
    evaluation must not pass the labels the collated batch keeps."""

    def __init__(self, outputs, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.linear = nn.Linear(4, outputs)

    def forward(self, input_ids, attention_mask):
        return self.linear(input_ids.float() * attention_mask[:, :1])


def examples(regression):
    generator = torch.Generator().manual_seed(1)
    labels = torch.rand(NUM_EXAMPLES, generator=generator) * 5 if regression else torch.tensor([1, 0])
    return [{'input_ids': torch.randint(0, 9, (4,), generator=generator), 'attention_mask': torch.ones(4),
             'labels': labels[i]} for i in range(NUM_EXAMPLES)]


def glue_loader(regression, distributed):
    """Batches as the text runner collates them (``(batch with labels, labels)``), through torchdistill's loader
    builder, which gives a ``DistributedSampler`` under torchrun."""
    from torch.utils.data.dataloader import default_collate
    from torchdistill.datasets.util import build_data_loader
    from pesf_ext.data.glue import LabelsKeptCollator
    config = {'dataset_id': 'x', 'kwargs': {'batch_size': 4, 'num_workers': 0, 'drop_last': False},
              'sampler': {'class_or_func': torch.utils.data.SequentialSampler, 'kwargs': None}}
    loader = build_data_loader(examples(regression), config, distributed=distributed)
    loader.collate_fn = LabelsKeptCollator(default_collate)
    return loader


def in_order(labels):
    """A number that changes when the examples come back in another order: sum of (position + 1) * label."""
    return float(sum((i + 1) * float(y) for i, y in enumerate(labels)))


def evaluate_all(distributed):
    """{'cls': ..., 'stsb': ...}: Matthews/accuracy of a 2-class pair and Pearson/Spearman of a regression pair."""
    from pesf_ext.engine.loop import evaluate
    from pesf_ext.nlp.glue_metrics import glue_metrics
    out = {}
    for name, regression, metrics in (('cls', False, ('accuracy', 'matthews')), ('stsb', True, ('pearson',))):
        outputs = 1 if regression else 2
        models = {'teacher': TextLikeClassifier(outputs, 0), 'student': TextLikeClassifier(outputs, 1)}
        out[name] = evaluate(models, glue_loader(regression, distributed), torch.device('cpu'),
                             metric_fn=lambda z, y, m=metrics: dict(glue_metrics(z, y, m), order=in_order(y)))
    models = {'teacher': TextLikeClassifier(2, 0), 'student': TextLikeClassifier(2, 1)}
    out['top1'] = evaluate(models, glue_loader(False, distributed), torch.device('cpu'))
    return out


def test_three_processes_on_two_examples_equal_one_process(tmp_path):
    command = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={NUM_PROCESSES}',
               os.path.abspath(__file__), str(tmp_path)]
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    completed = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                               timeout=240)
    assert completed.returncode == 0, completed.stdout[-4000:]
    expected = json.loads(json.dumps(evaluate_all(distributed=False)))
    assert set(expected['cls']['student']) == {'accuracy', 'matthews', 'score', 'order'}
    assert 'sharpness_gap' in expected['cls'] and 'sharpness_gap' not in expected['stsb']
    gaps = {name: expected[name].pop('sharpness_gap', None) for name in expected}
    for rank in range(NUM_PROCESSES):
        with open(tmp_path / f'rank{rank}.json') as f:
            results = json.load(f)
        for name, gap in gaps.items():  # a float sum in another order
            assert results[name].pop('sharpness_gap', None) == (None if gap is None else pytest.approx(gap, rel=1e-6))
        assert results == expected, rank   # rank 2 has no example; the others score one each


if __name__ == '__main__':
    from torch import distributed as dist
    dist.init_process_group('gloo')
    results = evaluate_all(distributed=True)
    with open(os.path.join(sys.argv[1], f'rank{dist.get_rank()}.json'), 'w') as f:
        json.dump(results, f)
    dist.barrier()  # every rank done with its collectives before any tears gloo down (else an abort at exit)
    dist.destroy_process_group()
