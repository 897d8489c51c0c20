"""Paired seeds: with the same --seed, every method gives the student the same initialisation and batches."""
import torch

from pesf_ext.engine import runner
from pesf_ext.engine.models import build_model
from pesf_ext.engine.rng import DataStream, isolated_stream, seed_for


def run_recording(config_path, seed=0, steps=1):
    """Runs ``config_path`` for ``steps`` training steps; returns (initial student state, training batches seen by
    the student, final student state)."""
    record = {'batches': []}

    def recording_build_model(model_config, device, distributed, yaml_key):
        model = build_model(model_config, device, distributed, yaml_key)
        if yaml_key.endswith('student_model') or yaml_key == 'models.model':
            record['init'] = {k: v.clone() for k, v in model.state_dict().items()}

            def keep_batch(module, args):
                if module.training:
                    record['batches'].append(args[0].detach().clone())
            model.register_forward_pre_hook(keep_batch)
        return model

    args = runner.get_args(['--config', config_path, '--device', 'cpu', '--seed', str(seed),
                            '--max_steps_per_epoch', str(steps)])
    results = runner.run(args, recording_build_model)
    final = {k: v.clone() for k, v in results['_models']['student'].state_dict().items()}
    return record['init'], record['batches'], final


def assert_same_states(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_seed_streams_are_distinct_and_stable():
    assert seed_for(0, 'student') == seed_for(0, 'student')
    assert len({seed_for(0, s) for s in ('student', 'teacher_side', 'data')}) == 3
    assert seed_for(0, 'student') != seed_for(1, 'student')


def test_isolated_stream_leaves_global_state_untouched():
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    with isolated_stream(0, 'teacher_side'):
        torch.nn.Linear(100, 100)  # draws 10,100 numbers
    assert torch.equal(torch.rand(4), expected)


def test_data_stream_ignores_draws_between_batches():
    loader = torch.utils.data.DataLoader(torch.arange(40), batch_size=8, shuffle=True)

    def epoch(draw_between):
        stream = DataStream(0)
        batches = []
        for batch in stream.wrap(loader):
            batches.append(batch)
            if draw_between:
                torch.rand(1000)
        return torch.cat(batches)

    torch.manual_seed(1)
    first = epoch(False)
    torch.manual_seed(2)
    assert torch.equal(epoch(True), first)
    assert not torch.equal(first, torch.arange(40))  # it did shuffle


def test_one_step_kd_and_pesfkd_give_identical_students(trained_teacher, small_config):
    """PESF-KD's adapters start at zero, so one step of KD and one of PESF-KD from the same seed must coincide."""
    kd_init, kd_batches, kd_final = run_recording(small_config('resnet56_resnet20_kd.yaml'))
    pesf_init, pesf_batches, pesf_final = run_recording(small_config('resnet56_resnet20_pesfkd.yaml'))
    assert_same_states(kd_init, pesf_init)
    assert len(kd_batches) == len(pesf_batches) == 1
    assert torch.equal(kd_batches[0], pesf_batches[0])
    for key in kd_final:
        torch.testing.assert_close(pesf_final[key], kd_final[key], rtol=1e-5, atol=1e-6, msg=key)
    changed = [k for k in kd_final if kd_final[k].is_floating_point() and not torch.equal(kd_final[k], kd_init[k])]
    assert changed, 'the step did not change the student'


def test_crd_heads_memory_and_negatives_do_not_shift_student_init_or_batches(trained_teacher, small_config):
    """CRD builds heads on both sides and a memory bank (a loss module with buffers) and draws negatives every
    step; its student still sees KD's initialisation and KD's two training batches."""
    kd_init, kd_batches, _ = run_recording(small_config('resnet56_resnet20_kd.yaml'), steps=2)
    other_init, other_batches, _ = run_recording(small_config('resnet56_resnet20_crd.yaml'), steps=2)
    assert_same_states(kd_init, other_init)
    assert len(kd_batches) == len(other_batches) == 2
    for kd_batch, other_batch in zip(kd_batches, other_batches):
        assert torch.equal(kd_batch, other_batch)


def test_other_seed_changes_student_init():
    with isolated_stream(0, 'student'):
        a = torch.nn.Linear(8, 8).weight
    with isolated_stream(1, 'student'):
        b = torch.nn.Linear(8, 8).weight
    assert not torch.equal(a, b)
