"""Causal-LM evaluation over 3 gloo processes counts every held-out token once: equal to one process."""
import os

import pytest
import torch
from torch import distributed as dist
from torch import multiprocessing as mp
from torch.utils.data import DataLoader, DistributedSampler
from _dist_run import free_port  # noqa: E402

transformers = pytest.importorskip('transformers')

NUM_SEQUENCES, LENGTH, VOCAB = 7, 8, 50  # 7 over 3 ranks: DistributedSampler would pad to 9 (2 scored twice)


def models():
    from transformers import GPT2Config, GPT2LMHeadModel
    nets = {}
    for name, layers in (('teacher', 2), ('student', 1)):
        torch.manual_seed(layers)
        config = GPT2Config(vocab_size=VOCAB, n_positions=16, n_embd=16, n_layer=layers, n_head=2)
        nets[name] = GPT2LMHeadModel(config).eval()
    return nets


def dataset():
    generator = torch.Generator().manual_seed(0)
    rows = []
    for i in range(NUM_SEQUENCES):
        ids = torch.randint(0, VOCAB, (LENGTH,), generator=generator)
        labels = ids.clone()
        labels[:i % 4] = -100  # a prompt of 0-3 tokens, not scored
        rows.append({'input_ids': ids, 'attention_mask': torch.ones(LENGTH, dtype=torch.long), 'labels': labels})
    return rows


def evaluate(distributed):
    from pesf_ext.lm.metrics import evaluate_lm
    data = dataset()
    sampler = DistributedSampler(data, shuffle=False) if distributed else None
    return evaluate_lm(models(), DataLoader(data, batch_size=2, sampler=sampler), torch.device('cpu'))


def worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group('gloo', rank=rank, world_size=world)
    try:
        torch.save(evaluate(distributed=True), os.path.join(out_dir, f'rank{rank}.pt'))
    finally:
        dist.destroy_process_group()


def test_three_processes_count_each_token_once(tmp_path):
    expected = evaluate(distributed=False)
    assert expected['tokens'] == sum(LENGTH - 1 - max(i % 4 - 1, 0) for i in range(NUM_SEQUENCES))
    mp.spawn(worker, args=(3, free_port(), str(tmp_path)), nprocs=3, join=True)
    for rank in range(3):
        results = torch.load(tmp_path / f'rank{rank}.pt', weights_only=False)
        assert results['tokens'] == expected['tokens'], rank
        for name in ('teacher', 'student'):
            assert results[name]['nll'] == pytest.approx(expected[name]['nll'], rel=1e-6), (rank, name)
            assert results[name]['top1'] == pytest.approx(expected[name]['top1'], rel=1e-9), (rank, name)
        assert results['kl'] == pytest.approx(expected['kl'], rel=1e-6)
