"""tools/compare.py without training: the configs it writes and the table it prints."""
import json
import os

import pytest

import compare


def fake_run(student_top1, seconds_per_step, teacher_top1=None, gap=None, teacher_trainable=None):
    test = {'student': {'top1': student_top1, 'top5': 99.0}}
    counts = {'student': [272474, 272474]}
    if teacher_top1 is not None:
        test['teacher'] = {'top1': teacher_top1, 'top5': 99.0}
        test['sharpness_gap'] = gap
        counts['teacher'] = [teacher_trainable, 861620]
    return {'test': test, 'seconds_per_step': seconds_per_step, 'counts': counts}


def test_write_config_sets_the_budget_and_the_crd_memory(tmp_path):
    sizes = {'num_train_samples': 300, 'num_val_samples': 50, 'num_test_samples': 70}
    path = compare.write_config('resnet56_resnet20_pesfkd_crd.yaml', str(tmp_path), 2, sizes, crd_negatives=128)
    with open(path) as f:
        text = f.read()
    for expected in ('&num_train_samples 300', '&num_val_samples 50', '&num_test_samples 70', '&num_epochs 2',
                     '&crd_num_samples 300', '&crd_num_negative_samples 128', f"&ckpt_root '{tmp_path}/ckpt'",
                     'milestones: [1]'):
        assert expected in text
    # configs without CRD are written with the same budget and no CRD anchors
    path = compare.write_config(compare.config_name('kd'), str(tmp_path), 2, sizes, crd_negatives=128)
    with open(path) as f:
        text = f.read()
    assert '&num_train_samples 300' in text and 'crd_num_samples' not in text


def runs_of(*results, kl=None, agreement=None):
    record = None if kl is None else {'kl': kl, 'agreement': agreement, 'teacher_logit_std': 2 * kl}
    return {seed: (result, record) for seed, result in enumerate(results)}


def test_paired_interval_hand_computed():
    """Differences 1, 2, 3 over three seeds: mean 2, s_d = 1, t_{0.975, 2} = 4.302653 (table value)."""
    ref = compare.summarize(runs_of(fake_run(70.0, 0.2), fake_run(71.0, 0.2), fake_run(72.0, 0.2)))
    row = compare.summarize(runs_of(fake_run(71.0, 0.2), fake_run(73.0, 0.2), fake_run(75.0, 0.2)))
    diff, half, n = compare.paired_interval(row, ref)
    assert (diff, n) == (2.0, 3)
    assert half == pytest.approx(4.302653 / 3 ** 0.5, rel=1e-6)


def test_table_aggregates_seeds_pairs_differences_and_relates_cost():
    rows = {
        compare.STUDENT_CE: compare.summarize(runs_of(fake_run(60.0, 0.1))),
        'kd': compare.summarize(runs_of(fake_run(70.0, 0.2, 80.0, 1.0, 0), fake_run(72.0, 0.2, 80.0, 3.0, 0),
                                        kl=0.5, agreement=0.9)),
        'pesfkd@temperature=2': compare.summarize(runs_of(fake_run(73.0, 0.3, 81.0, 0.5, 37728),
                                                          fake_run(74.0, 0.3, 83.0, 0.5, 37728))),
    }
    lines = compare.table(rows, 'kd', failures={'crd': ['crd_seed1']}).splitlines()
    assert lines[2] == '| Student (CE) | 60.00 ± n/a (n=1) | -10.00 (n=1) | - | - | - | - | - | 0.1000 | 0.50 | 272,474 / - |'
    assert lines[3] == '| KD | 71.00 ± 1.41 (n=2) | - | 80.00 | 1.00 | 2.000 | 0.500 | 0.900 | 0.2000 | 1.00 | 272,474 / 0 |'
    # differences 3 and 2: mean 2.5, s_d = 0.7071, t_{0.975, 1} = 12.7062 -> half-width 6.35
    assert lines[4] == ('| PESF-KD (temperature=2) | 73.50 ± 0.71 (n=2) | +2.50 ± 6.35 (n=2) | 82.00 | - | 0.500 | - | - | '
                        '0.3000 | 1.50 | 272,474 / 37,728 |')
    assert lines[5].startswith('| crd | failed: crd_seed1')


def test_with_point_puts_the_grid_point_inside_a_name_that_has_brackets():
    assert compare.with_point('PESF-KD', 'lr=2e-3') == 'PESF-KD (lr=2e-3)'
    assert compare.with_point('PESF-KD (head adapter)', 'lr=2e-3') == 'PESF-KD (head adapter, lr=2e-3)'
    assert compare.with_point('KD', '') == 'KD'
    import analyze
    assert analyze.label_of('pesfkd_head__lr-2e-3') == 'PESF-KD (head adapter, lr=2e-3)'


def test_point_text_reads_grid_points_and_run_labels_alike():
    assert compare.point_text('temperature=2_alpha=0.5') == 'temperature=2, alpha=0.5'
    assert compare.point_text('grad_accum_step=1_weight=1.0') == 'grad_accum_step=1, weight=1.0'
    assert compare.point_text('lr-2e-3_teacher_warmup_epochs-5', sep='-') == 'lr=2e-3, teacher_warmup_epochs=5'
    assert compare.point_text('lr=2e-3') == 'lr=2e-3'


def test_grid_is_a_product_per_method():
    grid = compare.parse_grid(['a.b.temperature=2,4', 'kd:c.alpha=0.1,0.5'], ['kd', 'zscore'])
    assert [label for label, _ in grid['zscore']] == ['temperature=2', 'temperature=4']
    assert grid['kd'][1] == ('temperature=2_alpha=0.5', ['a.b.temperature=2', 'c.alpha=0.5'])
    assert len(grid['kd']) == 4
    assert compare.parse_grid([], ['kd']) == {'kd': [('', [])]}


def test_grid_labels_are_safe_file_names_and_distinct():
    modules = 'train.teacher.auxiliary_model_wrapper.kwargs.adapters.0.modules'
    grid = compare.parse_grid([f'pesfkd:{modules}=default,[layer3.*],[fc]'], ['pesfkd'])
    assert grid['pesfkd'] == [('', []), ('modules=layer3.all', [f'{modules}=[layer3.*]']),
                              ('modules=fc', [f'{modules}=[fc]'])]
    with pytest.raises(SystemExit, match=r'make them distinct'):
        compare.parse_grid(['a.modules=[fc],fc'], ['kd'])
    with pytest.raises(SystemExit, match=r'make them distinct'):
        compare.parse_grid(['a.modules=[]'], ['kd'])


def test_grid_value_default_is_the_plain_run(tmp_path, capsys):
    grid = compare.parse_grid(['kd:a.lr=default,2e-4', 'kd:b.temperature=default,2'], ['kd'])
    assert grid['kd'] == [('', []), ('temperature=2', ['b.temperature=2']), ('lr=2e-4', ['a.lr=2e-4']),
                          ('lr=2e-4_temperature=2', ['a.lr=2e-4', 'b.temperature=2'])]
    # the default point reuses the method's plain run: same run label, no override
    compare.main(['--methods', 'kd', '--grid', 'kd:train.criterion.kwargs.sub_terms.kd.criterion.kwargs.alpha=default,0.5',
                  '--seeds', '1', '--out_dir', str(tmp_path), '--commands_only'])
    lines = [line for line in capsys.readouterr().out.splitlines() if 'resnet56_resnet20_kd.yaml' in line]
    assert len(lines) == 2
    assert 'kd_seed0.json' in lines[0] and 'kwargs.alpha=' not in lines[0]
    assert 'kd__alpha-0.5_seed0.json' in lines[1] and lines[1].endswith('kwargs.alpha=0.5')


def test_takd_runs_its_assistant_per_seed_and_learns_from_it(tmp_path, capsys):
    compare.main(['--methods', 'kd', 'takd', '--seeds', '2', '--out_dir', str(tmp_path), '--commands_only'])
    lines = capsys.readouterr().out.splitlines()
    for seed in range(2):
        assistant = [line for line in lines if 'resnet56_resnet20_takd_assistant.yaml' in line and f'--seed {seed}' in line]
        student = [line for line in lines if 'resnet56_resnet20_takd.yaml' in line and f'--seed {seed}' in line]
        assert len(assistant) == 1 and len(student) == 1
        expected = os.path.join(str(tmp_path), 'ckpt', f'takd_assistant_seed{seed}', 'student.pt')
        assert f'models.teacher_model.src_ckpt={expected}' in student[0]
        assert 'models.teacher_model.src_ckpt' not in assistant[0]


def test_teacher_trains_on_a_superset_with_its_own_schedule(tmp_path, capsys):
    """Issue 9's regime: --teacher_train_samples gives the teacher more images than the students (theirs are a
    prefix of the same fixed permutation, so a subset) and --milestones / --teacher_milestones set the lr steps."""
    compare.main(['--methods', 'kd', 'student_ce', '--seeds', '1', '--out_dir', str(tmp_path), '--commands_only',
                  '--num_train_samples', '500', '--num_epochs', '10', '--milestones', '5', '8',
                  '--teacher_train_samples', '3000', '--teacher_epochs', '6', '--teacher_milestones', '4'])
    configs = {name: (tmp_path / 'configs' / name).read_text() for name in
               ('resnet56_teacher_ce.yaml', 'resnet56_resnet20_kd.yaml', 'resnet20_student_ce.yaml')}
    assert '&num_train_samples 3000' in configs['resnet56_teacher_ce.yaml']
    assert 'milestones: [4]' in configs['resnet56_teacher_ce.yaml']
    for name in ('resnet56_resnet20_kd.yaml', 'resnet20_student_ce.yaml'):
        assert '&num_train_samples 500' in configs[name] and 'milestones: [5, 8]' in configs[name]
        assert '&num_epochs 10' in configs[name]
    assert len(capsys.readouterr().out.splitlines()) == 3     # teacher + 2 students


def test_student_subset_is_inside_the_teacher_subset(fashion_mnist_root):
    from pesf_ext.data import fashion_mnist
    small = fashion_mnist(fashion_mnist_root, 'train', num_samples=200, download=False)
    large = fashion_mnist(fashion_mnist_root, 'train', num_samples=3000, download=False)
    assert set(small.indices) < set(large.indices)


@pytest.mark.parametrize('flags', [['--milestones', '10'], ['--teacher_milestones', '0'], ['--milestones', '-1']])
def test_milestones_outside_the_epochs_exit_naming_the_flag(tmp_path, flags):
    with pytest.raises(SystemExit, match=flags[0]):
        compare.main(['--methods', 'kd', '--seeds', '1', '--num_epochs', '10', '--out_dir', str(tmp_path),
                      '--commands_only', *flags])


@pytest.mark.parametrize('teacher_epochs,student_epochs,anchors,route,switch', [
    (30, 30, [5, 10, 20], ['_ep5', '_ep10', '_ep20', ''], [0, 8, 15, 22]),   # the configs' route
    (4, 3, [1, 3], ['_ep1', '_ep3', ''], [0, 1, 2]),                          # the quickstart budget
    (3, 2, [1, 2], ['_ep2', ''], [0, 1]),                                      # fewer epochs than anchors
    (1, 5, [], [''], [0]),
])
def test_rco_route_scales_to_the_budget(teacher_epochs, student_epochs, anchors, route, switch):
    teacher_overrides, student_overrides = compare.rco_route(teacher_epochs, student_epochs, '/r/ce/t.pt')
    assert teacher_overrides == [f'+train.anchor_epochs={json.dumps(anchors, separators=(",", ":"))}']
    expected_route = [f'/r/ce/t{suffix}.pt' for suffix in route]
    assert student_overrides == ['models.teacher_model.src_ckpt=/r/ce/t.pt',
                                 f'train.rco.anchors={json.dumps(expected_route, separators=(",", ":"))}',
                                 f'train.rco.switch_epochs={json.dumps(switch, separators=(",", ":"))}']


def test_rco_runs_in_compare_on_the_route_of_its_teacher(tmp_path, fashion_mnist_root, capsys):
    """End to end: compare's teacher saves the anchors, and the RCO student loads them in order."""
    compare.main(['--methods', 'rco', '--seeds', '1', '--out_dir', str(tmp_path), '--num_train_samples', '64',
                  '--num_val_samples', '32', '--num_test_samples', '32', '--num_epochs', '2', '--teacher_epochs', '3'])
    assert (tmp_path / 'ckpt' / 'ce' / 'fashion_mnist-resnet56_ep2.pt').is_file()
    log = (tmp_path / 'logs' / 'rco_seed0.log').read_text()
    loaded = [line.split('(')[-1].rstrip(')') for line in log.splitlines() if 'RCO: epoch' in line]
    assert [os.path.basename(path) for path in loaded] == ['fashion_mnist-resnet56_ep2.pt', 'fashion_mnist-resnet56.pt']
    assert '| RCO |' in capsys.readouterr().out


@pytest.mark.parametrize('epochs,init', [(3, 1), (30, 4), (240, 30)])
def test_init_stage_keeps_its_share_of_the_budget(tmp_path, epochs, init):
    sizes = {'num_train_samples': 300, 'num_val_samples': 50, 'num_test_samples': 70}
    text = open(compare.write_config('resnet56_resnet20_ab.yaml', str(tmp_path), epochs, sizes, 128)).read()
    assert f'&init_epochs {init} ' in text and f'&num_epochs {epochs}' in text


def _summary(top1, teacher=None):
    return fake_run(top1, 0.5, teacher, 0.1 if teacher else None, 0 if teacher else None)


def _write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        json.dump(data, f)


@pytest.fixture
def fake_image_runs(monkeypatch):
    calls = []

    def run(config, out_dir, label, seed, overrides, progress=None, device='cpu', resume=True):
        calls.append(label)
        if label == 'teacher_ce':
            _write(os.path.join(out_dir, 'ckpt', 'ce', 'fashion_mnist-resnet56.pt'), {})
            _write(compare.summary_path(out_dir, label), _summary(run.teacher_top1))
        else:
            _write(compare.summary_path(out_dir, label), _summary(70.0 + seed, teacher=90.0))
        os.makedirs(os.path.dirname(compare.records_path(out_dir, label)), exist_ok=True)
        with open(compare.records_path(out_dir, label), 'a') as f:
            f.write('{"epoch": 0}\n')
    run.teacher_top1 = 90.0
    monkeypatch.setattr(compare, 'run', run)
    return run, calls


def test_records_dir_keeps_runs_across_machines_and_checks_the_teacher(tmp_path, fake_image_runs):
    run, calls = fake_image_runs
    records = tmp_path / 'records'
    args = ['--methods', 'kd', '--out_dir', str(tmp_path / 'machine1'), '--records_dir', str(records)]
    compare.main(args + ['--seeds', '1'])
    assert calls == ['teacher_ce', 'kd_seed0']
    assert os.path.isfile(compare.summary_path(str(records), 'kd_seed0'))
    assert not os.path.exists(compare.summary_path(str(records), 'summary'))   # the table dump is not a run
    # a fresh machine: no checkpoints, the records only
    args[3] = str(tmp_path / 'machine2')
    compare.main(args + ['--seeds', '1'])
    assert calls == ['teacher_ce', 'kd_seed0']                   # all finished: nothing runs, not even the teacher
    compare.main(args + ['--seeds', '2'])
    assert calls[2:] == ['teacher_ce', 'kd_seed1']               # the teacher is trained again first
    assert (tmp_path / 'machine2' / 'logs' / 'teacher_ce_epochs.jsonl').read_text() == '{"epoch": 0}\n'
    # a teacher that does not reproduce stops before any student learns from it
    args[3] = str(tmp_path / 'machine3')
    run.teacher_top1 = 89.0
    with pytest.raises(SystemExit, match='another teacher'):
        compare.main(args + ['--seeds', '3'])
    assert calls[4:] == ['teacher_ce']


def test_table_names_its_machine_and_table_only_writes_nothing(tmp_path, fake_image_runs, capsys):
    run, calls = fake_image_runs
    out = tmp_path / 'runs'
    args = ['--methods', 'kd', '--seeds', '2', '--out_dir', str(out)]
    compare.main(args)
    for seed, cpu in ((0, 'CPU A'), (1, 'CPU B')):
        path = compare.summary_path(str(out), f'kd_seed{seed}')
        summary = json.load(open(path))
        _write(path, dict(summary, machine={'cpu': cpu, 'threads': 1}))
    os.remove(out / 'results' / 'table.md')
    capsys.readouterr()
    compare.main(args + ['-table_only'])
    footnote = capsys.readouterr().out.strip().splitlines()[-1]
    assert 'Run on several machines (CPU A; CPU B)' in footnote
    assert not (out / 'results' / 'table.md').exists()              # -table_only reads records, writes nothing
    assert compare.machines_note({'kd': {'machines': ['CPU A']}}) == 'Run on: CPU A.'
    assert compare.machine_name({}) == 'an unrecorded machine'
    assert compare.machine_name({'machine': {'cpu': 'CPU A', 'gpu': 'GPU B'}}) == 'GPU B'
