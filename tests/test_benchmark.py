"""tools/benchmark.py: peak memory per config (each measured alone), the runner's own step timed, honest on CPU."""
import weakref

import pytest
import torch

import benchmark
from pesf_ext.engine import loop

CPU = torch.device('cpu')
KD, PESF = benchmark.DEFAULT_CONFIGS[:2]  # Fashion-MNIST ResNet-56 -> ResNet-20 KD and PESF-KD, random images


class RecordingProbe(benchmark.MemoryProbe):
    """The CPU probe, checking at each reset that no box built before is still alive, and reporting a made-up
    peak per measurement (what CUDA's max_memory_allocated since the reset would be)."""

    def __init__(self, built):
        super().__init__(CPU)
        self.built, self.resets, self.alive_at_reset = built, 0, []

    def reset(self):
        super().reset()
        self.resets += 1
        self.alive_at_reset.append(sum(ref() is not None for ref in self.built))

    def peak_mb(self):
        return 1000.0 * self.resets


def test_peak_memory_is_measured_per_config_with_the_previous_ones_freed(monkeypatch):
    built, real_build = [], benchmark.build

    def recording_build(*args, **kwargs):
        box, batches = real_build(*args, **kwargs)
        built.append(weakref.ref(box))
        return box, batches

    monkeypatch.setattr(benchmark, 'build', recording_build)
    probe = RecordingProbe(built)
    entries = benchmark.measure([KD, PESF], batch_size=4, steps=1, warmup=1, rounds=1, device=CPU, input_size=224,
                                probe=probe)
    # two configs measured alone (nothing alive before each), then one reset before the timing builds
    assert probe.alive_at_reset == [0, 0, 0]
    assert [entry['peak_mb'] for entry in entries] == [1000.0, 2000.0]
    rows = [line for line in benchmark.report(entries, CPU, 4).splitlines() if line.startswith('| resnet56')]
    assert [row.split(' | ')[6] for row in rows] == ['1000', '2000']


def test_cpu_rows_say_peak_not_available_and_the_runner_step_is_timed(monkeypatch, capsys):
    calls = []
    real_call = loop.TrainStep.__call__

    def counted(self, step, batch):
        calls.append(step)
        return real_call(self, step, batch)

    monkeypatch.setattr(loop.TrainStep, '__call__', counted)
    benchmark.main(['--configs', KD, PESF, '--batch_size', '4', '--steps', '2', '--rounds', '1', '--warmup', '1',
                    '--device', 'cpu'])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith('| resnet56')]
    assert len(rows) == 2 and all(row.split(' | ')[6] == 'n/a (CPU)' for row in rows)
    # per config: warm-up + measured step (memory), warm-up (timing build), 2 timed steps
    assert len(calls) == 2 * (1 + 1 + 1 + 2)
    for row in rows:
        seconds, samples_per_second = (float(cell) for cell in row.split(' | ')[1:3])
        assert samples_per_second == pytest.approx(4 / seconds, rel=1e-2)
