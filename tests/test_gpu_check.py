"""tools/gpu_check.py in its CPU mode (tiny sizes, gloo, fp16 autocast on the CPU): every section of the report is
there and every row passed. The CUDA run (full sizes, NCCL) is the same code with bigger numbers."""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# a CIFAR-100 pair, a multi-stage feature method and GLUE (ImageNet ResNet-50 -> ResNet-18 runs in the throughput
# section); the full list is the default on a GPU
ONLY = ['resnet56_resnet20_kd', 'resnet56_resnet20_fsp', 'bert_base_uncased_bert_6l_pesfkd']


def test_gpu_check_cpu_mode_report(tmp_path):
    report_path = tmp_path / 'report.md'
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'tools', 'gpu_check.py'), '--device', 'cpu', '--only', *ONLY,
         '--output', str(report_path)],
        capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS='1'), cwd=ROOT, timeout=600)
    report = report_path.read_text() if report_path.exists() else ''
    assert result.returncode == 0, f'{report}\n{result.stderr[-3000:]}'
    for heading in ('# pesf_ext GPU check', '## Device', '## Two training steps of every config family',
                    '## Throughput: ResNet-50 -> ResNet-18', "## The same KD config through torchdistill's own",
                    '## torchrun, 1 process (gloo), then -resume', '## Summary'):
        assert heading in report, heading
    rows = [line for line in report.splitlines() if line.startswith('| ') and not line.startswith('| config |')]
    steps = [row for row in rows if row.startswith('| cifar100/') or row.startswith('| imagenet/')
             or row.startswith('| glue/')]
    # fp32, bf16 + channels_last, fp16 for each config; the first also compiled
    assert len(steps) == 3 * len(ONLY) + 1
    assert all('| passed |' in row for row in steps), steps
    assert any('| compile (eager) | passed |' in row for row in steps)
    assert 'stage1:' in next(row for row in steps if 'fsp' in row)   # both stages of a multi-stage config ran
    assert re.search(r'\| epochs 2 -resume \| 0 \| [\d.]+ \| yes \|', report)
    assert "skipped: torchdistill's examples/torchvision/image_classification.py not found" in report
    assert '| kd |' in report and '| dml |' in report   # the throughput summary table
    assert report.count('result: passed') == 2           # throughput and torchrun
    assert 'RESULT: PASSED' in report and ' 0 failed' in report
    assert result.stdout.strip() == report.strip()       # one markdown report on stdout


def test_gpu_check_exit_status_follows_failures(tmp_path, monkeypatch):
    """A failing row makes the exit status 1 (here: a config whose loss is NaN, through the runner's own step)."""
    sys.path.insert(0, os.path.join(ROOT, 'tools'))
    import gpu_check

    def fail(*args, **kwargs):
        raise RuntimeError('non-finite loss [nan, nan]')

    monkeypatch.setattr(gpu_check, 'two_steps', fail)
    monkeypatch.setattr(gpu_check, 'write_tiny_bert', lambda path: path)
    code = gpu_check.main(['--device', 'cpu', '--only', 'resnet56_resnet20_kd', '--skip', 'throughput', 'torchrun',
                           '--output', str(tmp_path / 'r.md')])
    report = (tmp_path / 'r.md').read_text()
    assert code == 1
    assert '| cifar100/resnet56_resnet20_kd | fp32 | FAILED | RuntimeError: non-finite loss [nan, nan] |' in report
    assert 'RESULT: FAILED' in report
