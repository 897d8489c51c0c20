"""Speed switches (pesf_ext/engine/speed.py) on CPU: each builds and trains two steps, bf16 autocast computes what
fp32 computes up to bf16 rounding, and the no-grad teacher path gives the very same losses and gradients."""
import math

import pytest
import torch

from conftest import calibrate_batch_norm
from pesf_ext.engine import runner
from pesf_ext.engine.checkpoint import checkpoint_paths
from pesf_ext.engine.config import load_config
from pesf_ext.engine.errors import ConfigError
from pesf_ext.engine.models import build_model
from pesf_ext.engine.speed import SpeedOptions, apply_speed, check_speed_fits, speed_options

CPU = torch.device('cpu')


def build(config_path, options=None, edit=None, seed=0, batch_size=8):
    """The runner's box for a small real-data config (batches of ``batch_size``: mixed precision is slow on CPUs),
    with a random teacher whose BatchNorm statistics are calibrated on the training images (so its logits are of a
    trained network's size)."""
    config = load_config(config_path)
    config['train']['train_data_loader']['kwargs']['batch_size'] = batch_size
    if edit is not None:
        edit(config)
    models = config['models']
    torch.manual_seed(seed)
    teacher = None
    if 'teacher_model' in models:
        teacher = build_model({**models['teacher_model'], 'src_ckpt': None}, CPU, False, 'models.teacher_model')
        images = torch.stack([image for image, _ in config['datasets']['fashion_mnist/train']])
        calibrate_batch_norm(teacher, images.split(64))
    student_config = runner.student_config_of(models)
    student = build_model({**student_config, 'src_ckpt': None}, CPU, False, 'models.student_model')
    box = runner.build_box(teacher, student, config, CPU, None, False, 1)
    if options is not None:
        apply_speed(box, options, CPU)
    box.pre_epoch_process(epoch=0)
    return box


def student_of(box):
    return box.student_model if hasattr(box, 'student_model') else box.model


def first_batches(box, n=2):
    batches = []
    for sample_batch, targets, supp_dict in box.train_data_loader:
        batches.append((sample_batch, targets, supp_dict))
        if len(batches) == n:
            return batches
    raise AssertionError('the loader has fewer batches than needed')


def train_steps(box, batches):
    losses = []
    for sample_batch, targets, supp_dict in batches:
        loss = box.forward_process(sample_batch, targets, supp_dict)
        assert math.isfinite(loss.item())
        box.post_forward_process(loss=loss)
        losses.append(loss.item())
    return losses


def snapshot(module):
    return {name: p.detach().clone() for name, p in module.named_parameters() if p.requires_grad}


def changed(before, module):
    after = dict(module.named_parameters())
    return [name for name, value in before.items() if not torch.equal(value, after[name].detach())]


class Recorder:
    """Forward pre-hook on a module: memory format, grad mode and (from a forward hook) output dtype of each call."""

    def __init__(self, module):
        self.inputs, self.grad_enabled, self.output_dtypes = [], [], []
        module.register_forward_pre_hook(self.pre)
        module.register_forward_hook(self.post)

    def pre(self, module, args):
        self.inputs.append(args[0].is_contiguous(memory_format=torch.channels_last) if args[0].dim() == 4 else None)
        self.grad_enabled.append(torch.is_grad_enabled())

    def post(self, module, args, output):
        self.output_dtypes.append(output.dtype)


PESF = 'resnet56_resnet20_pesfkd.yaml'


@pytest.mark.parametrize('options', [
    SpeedOptions(amp='bf16'),
    SpeedOptions(amp='fp16'),
    SpeedOptions(channels_last=True),
    # inductor (the default backend) needs minutes to compile these two ResNets on 2 cores; aot_eager traces the
    # same graphs (hooks, adapters, autograd) without generating code
    SpeedOptions(amp='bf16', channels_last=True, compile=('student', 'teacher'), compile_backend='aot_eager'),
], ids=lambda options: options.describe())
def test_each_switch_trains_two_pesfkd_steps(small_config, options):
    box = build(small_config(PESF))
    student, teacher = student_of(box), box.teacher_model
    keys = (list(student.state_dict()), list(teacher.state_dict()))
    conv1, fc = Recorder(student.conv1), Recorder(student.fc)
    apply_speed(box, options, CPU)
    batches = first_batches(box)
    before_student, before_teacher = snapshot(student), snapshot(teacher)
    assert before_teacher and all(name.startswith('adapters.') for name in before_teacher)
    train_steps(box, batches)

    if options.amp == 'fp16':
        # a step whose scaled gradients overflow is skipped and halves the scale; any other step updates weights
        scaler = box.grad_scaler
        assert scaler.get_scale() <= 2.0 ** 16
        assert scaler.get_scale() < 2.0 ** 16 or changed(before_student, student)
    else:
        assert changed(before_student, student)
        assert changed(before_teacher, teacher)  # the adapters kept their graph and trained
    if options.amp is not None:
        assert set(fc.output_dtypes) == {dict(bf16=torch.bfloat16, fp16=torch.float16)[options.amp]}
    else:
        assert set(fc.output_dtypes) == {torch.float32}
    if options.channels_last:
        assert student.conv1.weight.is_contiguous(memory_format=torch.channels_last)
        assert all(conv1.inputs)
    for name in options.compile:
        assert getattr(box, f'{name}_model')._compiled_call_impl is not None
    assert (list(student.state_dict()), list(teacher.state_dict())) == keys  # checkpoints keep their keys


def test_bf16_autocast_on_cpu_matches_fp32_up_to_rounding(small_config):
    path = small_config('resnet20_student_ce.yaml')
    reference, mixed = build(path, seed=0), build(path, SpeedOptions(amp='bf16'), seed=0)
    batches = first_batches(reference)
    for p, q in zip(reference.model.parameters(), mixed.model.parameters()):
        assert torch.equal(p, q)
    losses32, losses16 = train_steps(reference, batches), train_steps(mixed, batches)
    assert losses32[0] != losses16[0]  # autocast did change the arithmetic
    for a, b in zip(losses32, losses16):
        assert abs(a - b) <= 0.02 * abs(a), (losses32, losses16)


def freeze_every_teacher_module(config):
    """KD with ``requires_grad: True`` but every teacher module listed in ``frozen_modules``: torchdistill treats
    the teacher as updatable (forward with grad) although nothing in it trains."""
    config['train']['teacher']['requires_grad'] = True
    config['train']['teacher']['frozen_modules'] = ['conv1', 'bn1', 'layer1', 'layer2', 'layer3', 'fc']


def test_teacher_without_trainable_parameters_runs_under_no_grad_with_identical_results(small_config):
    path = small_config('resnet56_resnet20_kd.yaml')
    normal = build(path, edit=freeze_every_teacher_module)
    fast = build(path, SpeedOptions(), edit=freeze_every_teacher_module)
    assert normal.teacher_updatable and fast.teacher_updatable
    assert not any(p.requires_grad for p in fast.teacher_model.parameters())
    records = Recorder(normal.teacher_model), Recorder(fast.teacher_model)
    batch = first_batches(normal, 1)[0]
    losses, grads = [], []
    for box in (normal, fast):
        loss = box.forward_process(*batch)
        loss.backward()
        losses.append(loss.detach())
        grads.append({name: p.grad.clone() for name, p in box.student_model.named_parameters()})
    assert records[0].grad_enabled == [True] and records[1].grad_enabled == [False]
    assert torch.equal(losses[0], losses[1])
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert torch.equal(grads[0][name], grads[1][name]), name


def test_adapters_keep_the_teacher_graph(small_config):
    box = build(small_config(PESF), SpeedOptions())
    record = Recorder(box.teacher_model)
    loss = box.forward_process(*first_batches(box, 1)[0])
    loss.backward()
    assert record.grad_enabled == [True]
    grads = [p.grad for p in box.teacher_model.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_options_from_yaml_and_command_line(small_config):
    args = runner.get_args(['--config', 'x.yaml', '--amp', 'bf16', '--compile', 'student'])
    options = speed_options({'speed': {'amp': 'fp16', 'channels_last': True, 'compile_mode': 'max-autotune'}}, args)
    assert options == SpeedOptions(amp='bf16', channels_last=True, compile=('student',), compile_mode='max-autotune')
    assert speed_options({}, runner.get_args(['--config', 'x.yaml'])) == SpeedOptions()


@pytest.mark.parametrize('section, fragment', [
    ({'amp': 'fp8'}, 'speed.amp: must be one of bf16, fp16 or null'),
    ({'chanels_last': True}, 'speed.chanels_last: unknown switch'),
    ({'channels_last': 'yes'}, 'speed.channels_last: must be True or False'),
    ({'compile': ['studnet']}, 'speed.compile: unknown model `studnet`'),
    ('bf16', 'speed: expected a mapping'),
])
def test_bad_speed_section_names_the_key(section, fragment):
    with pytest.raises(ConfigError, match=fragment):
        speed_options({'speed': section})


def test_fp16_refuses_a_custom_post_forward_process():
    config = {'train': {'post_forward_process': 'my_process'}}
    with pytest.raises(ConfigError, match='train.post_forward_process: `my_process` cannot be combined'):
        check_speed_fits(SpeedOptions(amp='fp16'), config)
    check_speed_fits(SpeedOptions(amp='bf16'), config)


def test_runner_with_fp16_and_channels_last_saves_the_loss_scale(small_config):
    path = small_config('resnet20_student_ce.yaml')
    args = runner.get_args(['--config', path, '--device', 'cpu', '--seed', '0', '--max_steps_per_epoch', '2',
                            '--amp', 'fp16', '-channels_last'])
    config = load_config(path)
    config['train']['train_data_loader']['kwargs']['batch_size'] = 8
    results = runner.run(args, build_model, config=config)
    assert 0.0 <= results['test']['student']['top1'] <= 100.0
    best, _, last = checkpoint_paths(load_config(path)['models']['model']['dst_ckpt'])
    state = torch.load(last, weights_only=False)
    assert state['grad_scaler'] is not None and state['grad_scaler']['scale'] <= 2.0 ** 16
    fresh = build_model({'key': 'resnet20', 'kwargs': {'num_classes': 10}}, CPU, False, 'test')
    fresh.load_state_dict(torch.load(best, weights_only=False)['model'])  # same keys as an unswitched student


def test_benchmark_times_each_variant_side_by_side(capsys):
    import benchmark
    config = benchmark.DEFAULT_CONFIGS[0]  # KD, on random images
    benchmark.main(['--configs', config, '--batch_size', '4', '--steps', '1', '--rounds', '2', '--warmup', '1',
                    '--device', 'cpu', '--variants', 'fp32', 'channels_last'])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith('| resnet56')]
    assert [row.split(' | ')[0] for row in rows] == ['| resnet56_resnet20_kd.yaml [fp32]',
                                                     '| resnet56_resnet20_kd.yaml [channels_last]']
    for row in rows:
        seconds, images_per_second = (float(cell) for cell in row.split(' | ')[1:3])
        assert images_per_second == pytest.approx(4 / seconds, rel=1e-2)
    assert benchmark.variant_options('bf16+channels_last', SpeedOptions()) == \
        SpeedOptions(amp='bf16', channels_last=True)
    with pytest.raises(SystemExit, match='--variants: unknown `fp8`'):
        benchmark.variant_options('fp8', SpeedOptions())


@pytest.mark.parametrize('key', ['tf32', 'sync_batchnorm', 'persistent_workers'])
def test_bad_switch_values_name_the_key(key):
    with pytest.raises(ConfigError, match=f'speed.{key}: must be True or False, got \'yes\''):
        speed_options({'speed': {key: 'yes'}})


def test_small_switches_from_yaml_and_command_line():
    assert speed_options({}) == SpeedOptions(tf32=True, sync_batchnorm=False, persistent_workers=False)
    args = runner.get_args(['--config', 'x.yaml', '-no_tf32', '-sync_batchnorm', '-persistent_workers'])
    assert speed_options({'speed': {'tf32': True}}, args) == \
        SpeedOptions(tf32=False, sync_batchnorm=True, persistent_workers=True)
    assert speed_options({'speed': {'persistent_workers': True, 'tf32': False}}) == \
        SpeedOptions(tf32=False, persistent_workers=True)


def test_persistent_workers_only_where_there_are_workers():
    from torchdistill.datasets.util import build_data_loader
    from pesf_ext.engine.speed import apply_loader_switches
    config = {'train': {'train_data_loader': {'kwargs': {'num_workers': 2, 'batch_size': 4}},
                        'val_data_loader': {'kwargs': {'num_workers': 0}}}}
    apply_loader_switches(SpeedOptions(), config)
    assert 'persistent_workers' not in config['train']['train_data_loader']['kwargs']  # off by default
    apply_loader_switches(SpeedOptions(persistent_workers=True), config)
    assert config['train']['train_data_loader']['kwargs']['persistent_workers'] is True
    assert 'persistent_workers' not in config['train']['val_data_loader']['kwargs']
    entry = {**config['train']['train_data_loader'],
             'sampler': {'class_or_func': torch.utils.data.SequentialSampler, 'kwargs': {}}}
    loader = build_data_loader(torch.utils.data.TensorDataset(torch.zeros(8, 2)), entry, False)
    assert loader.persistent_workers and loader.num_workers == 2  # torchdistill hands the kwargs to DataLoader


def test_tf32_switch_sets_the_cuda_flags_only_for_cuda():
    from pesf_ext.engine.speed import apply_tf32
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        apply_tf32(SpeedOptions(), CPU)
        assert not torch.backends.cuda.matmul.allow_tf32  # nothing changes for a CPU run
        apply_tf32(SpeedOptions(), torch.device('cuda'))
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        apply_tf32(SpeedOptions(tf32=False), torch.device('cuda'))
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_sync_batchnorm_converts_the_student_in_place_and_refuses_cpu(small_config):
    from pesf_ext.engine.speed import prepare_for_wrapping
    box = build(small_config(PESF))
    optimizer_params = [id(p) for group in box.optimizer.param_groups for p in group['params']]
    with pytest.raises(ConfigError, match='speed.sync_batchnorm: needs CUDA'):
        prepare_for_wrapping(box, SpeedOptions(sync_batchnorm=True), CPU, True)
    prepare_for_wrapping(box, SpeedOptions(sync_batchnorm=True), CPU, False)  # one process: nothing to do
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in box.student_model.modules())
    prepare_for_wrapping(box, SpeedOptions(sync_batchnorm=True), torch.device('cuda'), True)  # converts, no forward
    norms = [m for m in box.student_model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and all(isinstance(m, torch.nn.SyncBatchNorm) for m in norms)
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in box.teacher_model.modules())  # frozen BN stays
    assert [id(p) for group in box.optimizer.param_groups for p in group['params']] == optimizer_params


def test_channels_last_before_ddp_and_no_buffer_broadcast_for_the_adapted_teacher(small_config, tmp_path,
                                                                                   monkeypatch):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    path = small_config(PESF)
    config = load_config(path)
    config['train']['train_data_loader']['kwargs']['batch_size'] = 8
    torch.manual_seed(0)
    teacher = build_model({**config['models']['teacher_model'], 'src_ckpt': None}, CPU, False, 'teacher')
    images = torch.stack([image for image, _ in config['datasets']['fashion_mnist/train']])
    calibrate_batch_norm(teacher, images.split(64))
    student = build_model({**config['models']['student_model'], 'src_ckpt': None}, CPU, False, 'student')
    seen = {}
    real_wrap = runner.wrap_box_models

    def recording_wrap(box, device_ids=None, **kwargs):
        seen['channels_last'] = box.student_model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
        real_wrap(box, device_ids, **kwargs)
        seen['broadcast'] = {name: getattr(getattr(box, f'{name}_model'), 'forward_sync_buffers', None)
                             for name in ('student', 'teacher')
                             if isinstance(getattr(box, f'{name}_model'), DistributedDataParallel)}
        if None in seen['broadcast'].values():  # a PyTorch before forward_sync_buffers
            seen['broadcast'] = {name: getattr(box, f'{name}_model').broadcast_buffers for name in seen['broadcast']}

    monkeypatch.setattr(runner, 'wrap_box_models', recording_wrap)
    args = runner.get_args(['--config', path, '--device', 'cpu', '--seed', '0', '--max_steps_per_epoch', '1',
                            '-channels_last'])
    dist.init_process_group('gloo', init_method=f'file://{tmp_path}/pg', rank=0, world_size=1)
    try:
        runner.train(teacher, student, config, CPU, None, True, 1, args)
    finally:
        dist.destroy_process_group()
    assert seen['channels_last']
    assert seen['broadcast'] == {'student': True, 'teacher': False}
