"""tools/gpu_check.py: the CPU mode's report (tiny sizes, gloo, fp16 autocast on the CPU) with every section there
and every row passed; a report that survives a section that raises, one that hangs past its limit and a run killed
mid-way; every config's two steps through the runner's own ``setup_box``; honest labels (fp32 is TF32 off, the
teacher's BatchNorm calibrated at the config's input size). The CUDA run is the same code with bigger numbers."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(ROOT, 'tools'))
import gpu_check  # noqa: E402

# a CIFAR-100 pair, a multi-stage feature method and GLUE (ImageNet ResNet-50 -> ResNet-18 runs in the
# throughput section; every config, RCO included, runs in test_every_config_two_steps_through_the_runner_setup)
ONLY = ['resnet56_resnet20_kd', 'resnet56_resnet20_fsp', 'bert_base_uncased_bert_6l_pesfkd']


def test_gpu_check_cpu_mode_report(tmp_path):
    report_path = tmp_path / 'report.md'
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'tools', 'gpu_check.py'), '--device', 'cpu', '--only', *ONLY,
         '--output', str(report_path), '--budget_s', '600'],
        capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS='1'), cwd=ROOT, timeout=900)
    report = report_path.read_text() if report_path.exists() else ''
    assert result.returncode == 0, f'{report}\n{result.stderr[-3000:]}'
    for heading in ('# pesf_ext GPU check', '## Device', '## Two training steps of every config family',
                    '## Throughput: ResNet-50 -> ResNet-18', "## The same KD config through torchdistill's own",
                    '## torchrun, 1 process (gloo), then -resume', "## Causal LM: the runner's training step",
                    '## Summary'):
        assert heading in report, heading
    rows = [line for line in report.splitlines() if line.startswith('| ') and not line.startswith('| config |')]
    steps = [row for row in rows if row.startswith('| cifar100/') or row.startswith('| glue/')]
    # fp32, bf16 + channels_last, fp16 for each config; the first also compiled
    assert len(steps) == 3 * len(ONLY) + 1
    assert all('| passed |' in row for row in steps), steps
    assert any('| compile (eager) | passed |' in row for row in steps)
    assert 'stage1:' in next(row for row in steps if 'fsp' in row)   # both stages of a multi-stage config ran
    assert re.search(r'\| epochs 2 -resume \| 0 \| [\d.]+ \| yes \|', report)
    assert "skipped: torchdistill's examples/torchvision/image_classification.py not found" in report
    # the throughput summary: fp32 (TF32 off) and bf16 measured, TF32 a CUDA-only column
    assert re.search(r'\| kd \| \d+ \| n/a \(CUDA only\) \| \d+ \|', report) and '| dml |' in report
    assert report.count('result: passed') == 2           # throughput and torchrun
    lm_rows = [row for row in rows if row.startswith(('| KD |', '| PESF-KD', '| FT-KD |'))]
    assert len(lm_rows) == 8 and all(row.endswith('| passed |') for row in lm_rows), lm_rows
    assert 'RESULT: PASSED' in report and ' 0 failed' in report
    assert result.stdout.strip() == report.strip()       # one markdown report on stdout
    assert re.search(r'gpu_check: steps done in \d+ s \(limit \d+ s\); \d+ s elapsed, \d+ s of 600 s left',
                     result.stderr)
    logs = tmp_path / 'report_logs'                       # the sections' logs stay beside the report
    assert (logs / 'steps.log').is_file() and (logs / 'torchrun_2.out').is_file()


# sections for run_report, imported by name in the section processes (tests/ is on their PYTHONPATH)
def ok_section(ctx):
    return ['## Fine', '', 'result: passed'], ['passed']


def raising_section(ctx):
    ctx.emit(['## Raises', '', '| row | result |', '|---|---|', '| first | passed |'], ['passed'])
    raise RuntimeError('non-finite loss [nan, nan]')


def hanging_section(ctx):
    with open(os.path.join(ctx.work, 'hang.pid'), 'w') as f:
        f.write(str(os.getpid()))
    ctx.emit(['## Hangs', '', '| row | result |', '|---|---|', '| first | passed |'], ['passed'])
    ctx.current('second row')
    time.sleep(600)


def run(sections, output, budget_s=60, min_section_s=0):
    return gpu_check.run_report([(name, f'test_gpu_check:{name}_section', share) for name, share in sections],
                                str(output), budget_s, {'device': 'cpu'}, min_section_s=min_section_s)


@pytest.fixture
def tests_importable(monkeypatch):
    monkeypatch.setenv('PYTHONPATH', TESTS + os.pathsep + os.environ.get('PYTHONPATH', ''))


def test_a_section_that_raises_is_a_failed_row_and_the_next_runs(tmp_path, tests_importable, capsys):
    code = run([('raising', 1), ('ok', 1)], tmp_path / 'r.md')
    report = (tmp_path / 'r.md').read_text()
    assert code == 1
    assert '| first | passed |' in report   # what the section finished before raising
    assert 'result: FAILED (RuntimeError: non-finite loss [nan, nan])' in report
    assert '## Fine' in report and '2 passed, 1 failed, 0 skipped' in report and 'RESULT: FAILED' in report
    assert 'non-finite loss' in (tmp_path / 'r_logs' / 'raising.log').read_text()   # its traceback, kept
    assert capsys.readouterr().out.strip() == report.strip()


def test_a_section_that_hangs_is_stopped_at_its_limit(tmp_path, tests_importable):
    start = time.monotonic()
    code = run([('hanging', 1), ('ok', 3)], tmp_path / 'r.md', budget_s=40)   # limits: 10 s, then what is left
    elapsed = time.monotonic() - start
    report = (tmp_path / 'r.md').read_text()
    assert code == 1 and elapsed < 45, elapsed
    assert '| first | passed |' in report
    assert re.search(r'result: FAILED \(hanging timed out after 10 s while running second row; log: '
                     r'r_logs/hanging.log\)', report), report
    assert '## Fine' in report and 'RESULT: FAILED' in report
    assert_gone(int((tmp_path / 'r_logs' / 'hang.pid').read_text()))


def assert_gone(pid, wait_s=10):
    for _ in range(int(wait_s * 10)):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise AssertionError(f'process {pid} still runs')


def test_a_run_killed_midway_leaves_the_finished_sections(tmp_path, tests_importable):
    """SIGKILL the process running the check while its second section hangs: the report holds the first
    section, readable, and the hanging section's process ends with it."""
    output = tmp_path / 'r.md'
    script = ('import sys; sys.path[:0] = [%r, %r]; import test_gpu_check as t; '
              't.run([("ok", 1), ("hanging", 1)], %r, budget_s=300)') % (TESTS, os.path.join(ROOT, 'tools'),
                                                                           str(output))
    process = subprocess.Popen([sys.executable, '-c', script], cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    pid_file = tmp_path / 'r_logs' / 'hang.pid'
    try:
        for _ in range(1200):
            if pid_file.exists() and pid_file.read_text():
                break
            time.sleep(0.1)
        assert pid_file.exists(), 'the hanging section never started'
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    report = output.read_text()
    assert report.startswith('# pesf_ext GPU check')
    assert '## Fine\n\nresult: passed' in report and '## Hangs' not in report   # the finished section only
    assert_gone(int(pid_file.read_text()))
    lines = [json.loads(line) for line in (tmp_path / 'r_logs' / 'hanging.jsonl').read_text().splitlines()]
    assert lines[-1] == {'current': 'second row'}   # the killed section's finished rows stay in its record file


@pytest.fixture(scope='module')
def work(tmp_path_factory):
    return str(tmp_path_factory.mktemp('gpu_check_work'))


@pytest.mark.parametrize('label,path,backend', gpu_check.check_configs(), ids=lambda v: str(v).split('/')[-1])
def test_every_config_two_steps_through_the_runner_setup(label, path, backend, work):
    """Every config of the check, two fp32 steps on the CPU at the smallest sizes, built by the runner's own
    setup_box (RCO's schedule included); both losses finite."""
    import pesf_ext  # noqa: F401
    device = torch.device('cpu')
    out = gpu_check.two_steps(path, 'fp32', device, gpu_check.Sizes(device), backend, work)
    assert out and all(len(losses) == 2 and all(map(torch.isfinite, torch.tensor(losses))) for _, losses, _ in out)


def test_rco_box_has_its_schedule(work, monkeypatch):
    """The check's RCO box is the runner's: its schedule set (the old harness's box had none and failed with
    AttributeError), pointed at the random teacher as its only anchor."""
    import pesf_ext  # noqa: F401
    from pesf_ext.engine import runner
    calls = []
    original = runner.setup_box

    def recording(*args, **kwargs):
        box = original(*args, **kwargs)
        calls.append(box)
        return box
    monkeypatch.setattr(runner, 'setup_box', recording)
    device = torch.device('cpu')
    gpu_check.two_steps(gpu_check.cifar('resnet56_resnet20_rco'), 'fp32', device, gpu_check.Sizes(device), None, work)
    assert len(calls) == 1 and calls[0].rco_schedule.anchors == [os.path.join(work, 'rco_anchor.pt')]


def test_input_size_read_from_the_config_transforms():
    assert gpu_check.config_input_size(os.path.join(ROOT, 'configs', 'imagenet', 'r50_r18_kd.yaml')) == 224
    assert gpu_check.config_input_size(gpu_check.cifar('resnet56_resnet20_kd')) == 32
    cpu, cuda = gpu_check.Sizes(torch.device('cpu')), gpu_check.Sizes(torch.device('cuda'))
    imagenet = os.path.join(ROOT, 'configs', 'imagenet', 'r50_r18_kd.yaml')
    assert (cuda.image_size(imagenet), cpu.image_size(imagenet)) == (224, 32)


def test_imagenet_teacher_calibrated_at_its_input_size(work, monkeypatch):
    """At full sizes the ImageNet teacher's BatchNorm statistics are estimated on 224 x 224 images, the size its
    batches have (the old check used 32 px: its test for 'imagenet' never matched the config)."""
    import pesf_ext  # noqa: F401
    from pesf_ext.engine.config import load_config
    from pesf_ext.engine.synthetic import synthetic_data
    sizes = gpu_check.Sizes(torch.device('cuda'))   # full sizes, built on the CPU
    sizes.batch = 2
    calls = []
    monkeypatch.setattr(gpu_check, 'calibrate_batch_norm', lambda model, size, device: calls.append(size))
    path = os.path.join(ROOT, 'configs', 'imagenet', 'r50_r18_kd.yaml')
    size = sizes.image_size(path)
    with synthetic_data(num_samples=2, imagenet_size=size):
        config = load_config(path)
    gpu_check.shrink_train(config, sizes)
    box = gpu_check.build_box(config, torch.device('cpu'), sizes, gpu_check.variant_options('fp32', torch.device(
        'cpu'), None), work, size)
    images = next(iter(box.train_data_loader))[0]
    assert calls == [224] and images.shape[-1] == 224


def test_fp32_means_tf32_off():
    from pesf_ext.engine.speed import SpeedOptions
    cuda = torch.device('cuda')
    assert gpu_check.variant_options('fp32', cuda, None).tf32 is False
    assert gpu_check.variant_options('bf16+channels_last', cuda, None).amp == 'bf16'
    variants = dict(gpu_check.throughput_variants(cuda))
    assert list(variants) == ['fp32', 'TF32', 'bf16+channels_last']
    assert variants['fp32'] == SpeedOptions(tf32=False) and variants['TF32'] == SpeedOptions(tf32=True)
    assert variants['bf16+channels_last'].channels_last and variants['bf16+channels_last'].amp == 'bf16'
    assert [v for v, _ in gpu_check.throughput_variants(torch.device('cpu'))] == ['fp32', 'bf16+channels_last']


def test_lm_section_runs_the_runner_step_of_each_method_chunked_and_not(tmp_path, monkeypatch):
    """The causal-LM section on the CPU (tiny Qwen2 models): KD, PESF-KD on every block and on the last 2, FT-KD,
    each with the loss unchunked and chunked, through the LM runner's model builder and ``setup_box``."""
    from pesf_ext.engine import loop
    from pesf_ext.engine.speed import criterion_modules
    steps = []
    original = loop.TrainStep.__call__

    def recorded(self, step, batch):
        original(self, step, batch)
        kd = next(m for m in criterion_modules(self.box.criterion) if type(m).__name__ == 'TokenKDLoss')
        lora = {n.split('.layers.')[1].split('.')[0] for n, _ in self.box.teacher_model.named_parameters()
                if 'lora_' in n}
        steps.append((kd.teacher_update, kd.chunk_tokens, kd.vocab_size, tuple(sorted(lora)),
                      tuple(loop.split_batch(batch)[0]['input_ids'].shape)))
    monkeypatch.setattr(loop.TrainStep, '__call__', recorded)
    ctx = gpu_check.Context({'device': 'cpu', 'work': str(tmp_path)}, 'lm', time.time() + 300)
    gpu_check.section_lm(ctx)
    lines, results, _, _ = gpu_check.read_records(ctx.records)
    rows = [line for line in lines if line.startswith(('| KD |', '| PESF-KD', '| FT-KD |'))]
    assert results == ['passed'] * 8 and len(rows) == 8, '\n'.join(lines)
    assert all(re.fullmatch(r'\| .+ \| (unchunked|chunked \(16\)) \| \d+ \| - \| passed \|', row) for row in rows)
    expected = [(update, chunk, 320, lora, (2, 32)) for update, lora in (
        ('frozen', ()), ('adapters', ('0', '1', '2')), ('adapters', ('1', '2')), ('full', ())) for chunk in (None, 16)
        for _ in range(2)]   # 2 steps per setting (1 warm-up, 1 timed), unchunked then chunked, one box per method
    assert steps == expected, steps


FAKE_TORCHDISTILL = '''import os, sys, time
args = sys.argv[1:]
assert args[args.index('--device') + 1] == 'cpu' and args[args.index('--seed') + 1] == '0', args
assert os.path.isfile(args[args.index('--config') + 1])
sum(i * i for i in range(2000000))   # some CPU seconds
time.sleep(0.2)
print(' * Acc@1 ' + os.environ['FAKE_TD_TOP1'] + '\\tAcc@5 90.0000')
'''
FAKE_RUNNER = '''import json, os, sys, time
args = sys.argv[1:]
assert args[args.index('--device') + 1] == 'cpu' and args[args.index('--seed') + 1] == '0', args
sum(i * i for i in range(1000000))
time.sleep(0.1)
with open(args[args.index('--summary_json') + 1], 'w') as f:
    json.dump({'test': {'teacher': {'top1': 1.0}, 'student': {'top1': 12.5, 'top5': 90.0}}}, f)
'''


def fake_clone_and_runner(tmp_path, monkeypatch):
    """(gpu_check's module, a fake torchdistill clone): its example script and the runner replaced by quick fakes,
    the Fashion-MNIST sample counts cut to tiny ones."""
    module = sys.modules[gpu_check.section_torchdistill.__module__]
    clone = tmp_path / 'torchdistill'
    (clone / 'examples' / 'torchvision').mkdir(parents=True)
    (clone / 'examples' / 'torchvision' / 'image_classification.py').write_text(FAKE_TORCHDISTILL)
    (tmp_path / 'runner.py').write_text(FAKE_RUNNER)
    monkeypatch.setattr(module, 'RUNNER', str(tmp_path / 'runner.py'))
    monkeypatch.setattr(module, 'CPU_KD_SAMPLES', {'num_train_samples': 32, 'num_val_samples': 16,
                                                   'num_test_samples': 16})
    return module, clone


@pytest.mark.parametrize('td_top1', ['12.5000', '12.7500'])
def test_torchdistill_cpu_mode_pairs_medians_and_top1(tmp_path, monkeypatch, td_top1):
    """CPU mode of the torchdistill section: the cut-down Fashion-MNIST KD YAML and its random teacher, torchdistill's
    example (a fake clone) and the runner (a fake here) alternately, a row per pair with wall and CPU seconds and
    their ratios, the medians, and a FAILED result when the student's test top-1 differs."""
    module, clone = fake_clone_and_runner(tmp_path, monkeypatch)
    monkeypatch.setenv('FAKE_TD_TOP1', td_top1)
    work = tmp_path / 'work'
    work.mkdir()
    ctx = module.Context({'device': 'cpu', 'work': str(work), 'torchdistill_repo': str(clone), 'pairs': 3},
                         'torchdistill', time.time() + 120)
    lines, results = module.section_torchdistill(ctx)
    text = '\n'.join(lines)
    config = (work / 'torchdistill_cpu' / 'fashion_mnist_kd_cpu.yaml').read_text()
    for setting in ('&num_epochs 1', '&num_train_samples 32', '&num_val_samples 16', '&num_test_samples 16'):
        assert setting in config, setting
    assert (work / 'torchdistill_cpu' / 'td_ckpt' / 'ce' / 'fashion_mnist-resnet56.pt').is_file()
    rows = [line for line in lines if re.match(r'\| \d \|', line)]
    assert len(rows) == 3, text
    ratios = []
    for number, row in enumerate(rows, 1):
        cells = [cell.strip() for cell in row.strip('|').split('|')]
        assert cells[0] == str(number)
        td_wall, run_wall, td_cpu, run_cpu = float(cells[1]), float(cells[2]), float(cells[4]), float(cells[5])
        assert td_wall > 0.2 and run_wall > 0.1 and td_cpu > 0 and run_cpu > 0, row
        for ratio, (runner, torchdistill) in ((cells[3], (run_wall, td_wall)), (cells[6], (run_cpu, td_cpu))):
            assert ratio.endswith('x') and abs(float(ratio[:-1]) - runner / torchdistill) <= 0.02 + 0.05 * runner / torchdistill
        ratios.append((float(cells[3][:-1]), float(cells[6][:-1])))
        assert cells[7:] == [td_top1, '12.5000', 'yes' if td_top1 == '12.5000' else 'NO'], row
    assert '3 of 3 pairs ran' in text
    median = re.search(r'median ratio: wall ([\d.]+)x, CPU ([\d.]+)x', text)
    assert median and abs(float(median[1]) - sorted(r[0] for r in ratios)[1]) <= 0.011, text
    assert abs(float(median[2]) - sorted(r[1] for r in ratios)[1]) <= 0.011, text
    if td_top1 == '12.5000':
        assert results == ['passed'] and lines[-1] == 'result: passed', text
    else:
        assert results == ['FAILED'] and lines[-1] == 'result: FAILED', text
        assert 'pair 1: student test top-1 differs (torchdistill 12.7500, runner 12.5000)' in text


def test_torchdistill_cpu_mode_stops_adding_pairs_at_the_time_limit(tmp_path, monkeypatch):
    module, clone = fake_clone_and_runner(tmp_path, monkeypatch)
    monkeypatch.setenv('FAKE_TD_TOP1', '12.5000')
    ctx = module.Context({'device': 'cpu', 'work': str(tmp_path), 'torchdistill_repo': str(clone), 'pairs': 50},
                         'torchdistill', time.time() + 8)
    lines, results = module.section_torchdistill(ctx)
    text = '\n'.join(lines)
    ran = len([line for line in lines if re.match(r'\| \d+ \|', line)])
    assert 1 <= ran < 50 and f'{ran} of 50 pairs ran (time limit:' in text, text
    assert results == ['passed'], text
