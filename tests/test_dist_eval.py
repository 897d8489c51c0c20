"""Evaluation over torchrun processes scores each example once: metrics equal the single-process ones."""
import pytest
import torch

from _dist_run import rank_results, torchrun
from _dist_worker import NUM_EVAL_SAMPLES, eval_fixture, eval_loader_config, evaluate_fixture
from pesf_ext.engine.distributed import ShardSampler


def single_process_results():
    from torchdistill.datasets.util import build_data_loader
    return evaluate_fixture(build_data_loader(eval_fixture()[0], eval_loader_config(), distributed=False))


def test_shards_cover_every_index_once():
    for world in (1, 2, 3, 5):
        shards = [list(ShardSampler(NUM_EVAL_SAMPLES, rank, world)) for rank in range(world)]
        assert sorted(i for shard in shards for i in shard) == list(range(NUM_EVAL_SAMPLES))
        assert [len(ShardSampler(NUM_EVAL_SAMPLES, rank, world)) for rank in range(world)] == [len(s) for s in shards]


def test_three_processes_match_one_on_a_prime_sized_set(tmp_path):
    """13 examples over 3 ranks: DistributedSampler would pad to 15 (2 examples scored twice)."""
    torchrun(3, 'eval', tmp_path, 'eval')
    expected = single_process_results()
    assert expected['metric_fn']['student']['count'] == NUM_EVAL_SAMPLES
    for rank, results in enumerate(rank_results(tmp_path, 'eval', 3)):
        for model in ('teacher', 'student'):
            # counts of correct examples and dataset-ordered logits: exactly the single-process numbers
            assert results['accuracy'][model] == expected['accuracy'][model], (rank, model)
            assert results['metric_fn'][model] == expected['metric_fn'][model], (rank, model)
        # a float sum in another order
        assert results['accuracy']['sharpness_gap'] == pytest.approx(expected['accuracy']['sharpness_gap'],
                                                                     rel=1e-6, abs=1e-9)
        assert results['metric_fn']['sharpness_gap'] == pytest.approx(expected['metric_fn']['sharpness_gap'],
                                                                      rel=1e-6, abs=1e-9)
    # the fixture can tell duplicates apart: accuracy is neither 0 nor 100
    assert 0 < expected['accuracy']['student']['top1'] < 100
