"""tools/analyze.py figures from recorded runs, and the cluster-distance number of its t-SNE figure."""
import json
import os

import numpy as np
import pytest
import torch

import analyze


def write_run(run_dir, label, epochs, seed_offset):
    os.makedirs(run_dir / 'logs', exist_ok=True)
    with open(run_dir / 'logs' / f'{label}_epochs.jsonl', 'w') as f:
        for epoch in range(epochs):
            f.write(json.dumps({'epoch': epoch, 'gap': 1.0 / (epoch + 1) + seed_offset, 'kl': 0.5, 'pl': 0.8,
                                'student_top1': 50.0 + 10 * epoch, 'cka_logits': 0.9, 'cka_features': 0.7,
                                'teacher_top1': 90.0, 'teacher_logit_std': 4.0 - epoch / 10 - seed_offset,
                                'teacher_sharpness': 9.0}) + '\n')
    torch.manual_seed(seed_offset)
    labels = torch.arange(60) % 10
    features = torch.nn.functional.one_hot(labels, 10).float() * 5 + torch.randn(60, 10)
    torch.save({'labels': labels, 'teacher_logits': torch.randn(60, 10) * 3, 'student_logits': torch.randn(60, 10),
                'student_features': features}, run_dir / 'logs' / f'{label}_epoch_samples.pt')


def test_figures_from_records(tmp_path):
    for method in ('kd', 'pesfkd'):
        for seed in (0, 1):
            write_run(tmp_path, f'{method}_seed{seed}', 3, seed)
    runs = analyze.read_runs([str(tmp_path)])
    assert set(runs) == {'kd', 'pesfkd'} and set(runs['kd']) == {0, 1}
    epochs, mean, std = analyze.curve(runs['kd'], 'gap')
    assert epochs.tolist() == [0, 1, 2]
    assert mean.tolist() == pytest.approx([1.5, 1.0, 1 / 3 + 0.5]) and std.tolist() == pytest.approx([0.5] * 3)
    written = analyze.main(['figures', '--runs', str(tmp_path), '--out', str(tmp_path / 'figures')])
    assert [os.path.basename(p) for p in written] == [
        'epochs_gap_kl_accuracy.png', 'epochs_cka_pl.png', 'epochs_teacher.png', 'major_logit_distribution.png',
        'logit_mean_std.png', 'tsne_student_features.png']
    for path in written:
        assert os.path.getsize(path) > 10_000


def test_legend_layout_fits_long_labels():
    short = [f'm{i} (n=5)' for i in range(4)]
    assert analyze.legend_layout(short, width_in=13.8) == (4, 1)  # short labels: one row
    long = ['KD (n=5)', 'PESF-KD (lr=2e-3) (n=5)', 'PESF-KD (lr=2e-3, teacher_warmup_epochs=5) (n=5)',
            'PESF-KD (lr=2e-2) (n=5)', 'PESF-KD (lr=2e-2, teacher_warmup_epochs=5) (n=5)']
    columns, rows = analyze.legend_layout(long, width_in=13.8)
    assert columns < len(long) and columns * rows >= len(long)
    parts = analyze.legend_columns(long, columns)
    assert [len(part) for part in parts] == [rows] + [len(part) for part in parts[1:]] and sum(map(len, parts)) == 5
    assert sum(0.075 * max(map(len, part)) + 0.75 for part in parts) <= 13.8  # the chosen columns fit
    parts = analyze.legend_columns(long, columns + 1)
    assert sum(0.075 * max(map(len, part)) + 0.75 for part in parts) > 13.8  # and one more would not
    assert analyze.legend_layout(['x' * 400], width_in=13.8) == (1, 1)


def test_figures_from_records_without_samples(tmp_path, capsys):
    # committed records (compare.py --records_dir) keep the per-epoch lines only: the curves are drawn, the
    # per-sample figures are skipped with a message instead of failing
    for seed in (0, 1):
        write_run(tmp_path, f'kd_seed{seed}', 3, seed)
        os.remove(tmp_path / 'logs' / f'kd_seed{seed}_epoch_samples.pt')
    written = analyze.main(['figures', '--runs', str(tmp_path), '--out', str(tmp_path / 'figures')])
    assert [os.path.basename(p) for p in written] == ['epochs_gap_kl_accuracy.png', 'epochs_cka_pl.png',
                                                      'epochs_teacher.png']
    err = capsys.readouterr().err
    for name in ('major_logit_distribution.png', 'logit_mean_std.png', 'tsne_student_features.png'):
        assert f'{name}: skipped' in err


def test_average_cluster_distance_hand_value():
    # two classes, centroids (0, 0) and (4, 0), every point at distance 1 from its centroid
    points = np.array([[1.0, 0], [-1.0, 0], [5.0, 0], [3.0, 0]])
    assert analyze.average_cluster_distance(points, np.array([0, 0, 1, 1])) == pytest.approx(4.0)


def test_zscore_bound_table_rows(capsys):
    from pesf_ext.metrics import zscore_max_probability
    text = analyze.main(['zscore_bound', '--classes', '10', '100', '--temperatures', '2'])
    rows = text.splitlines()[2:]
    assert [row.split(' | ')[0] for row in rows] == ['| 10', '| 100']
    assert rows[0].split(' | ')[2] == f'{zscore_max_probability(10, 2.0):.3f} |'
    assert capsys.readouterr().out.strip() == text


def write_top1(run_dir, label, top1):
    os.makedirs(run_dir / 'logs', exist_ok=True)
    with open(run_dir / 'logs' / f'{label}_epochs.jsonl', 'w') as f:
        for epoch, value in enumerate(top1):
            f.write(json.dumps({'epoch': epoch, 'student_top1': value}) + '\n')


def test_convergence_table_hand_values(tmp_path):
    # window 2 over 5 epochs: 'before' = epochs 1-2, 'last' = epochs 3-4
    write_top1(tmp_path, 'kd_seed0', [10, 60, 70, 80, 80])   # before 65, last 80, change +15, best epoch 4 (1-based)
    write_top1(tmp_path, 'kd_seed1', [10, 70, 70, 72, 74])   # before 70, last 73, change +3, best epoch 5
    write_top1(tmp_path, 'kd_seed2', [10, 70, 70, 76, 70])   # before 70, last 73, change +3, best epoch 4
    write_top1(tmp_path, 'teacher_ce', [90, 91, 92, 93, 94])  # not a student: left out
    text = analyze.main(['convergence', '--runs', str(tmp_path), '--window', '2'])
    rows = text.splitlines()
    assert len(rows) == 3
    assert '| val top-1, epochs 2–3 | val top-1, epochs 4–5 |' in rows[0]
    cells = [c.strip() for c in rows[2].split('|')[1:-1]]
    from scipy.stats import t
    half = t.ppf(0.975, 2) * np.std([15, 3, 3], ddof=1) / np.sqrt(3)
    assert cells == ['KD', '3', f'{(65 + 70 + 70) / 3:.2f}', f'{(80 + 73 + 73) / 3:.2f}', f'+7.00 ± {half:.2f}', '4']


def test_convergence_leaves_out_unfinished_runs(tmp_path):
    write_top1(tmp_path, 'kd_seed0', [10, 60, 70, 80, 80])
    write_top1(tmp_path, 'kd_seed1', [10, 70, 70, 72])       # still running: its last epochs are not epochs 4-5
    cells = [c.strip() for c in analyze.main(['convergence', '--runs', str(tmp_path), '--window', '2'])
             .splitlines()[2].split('|')[1:-1]]
    assert cells == ['KD', '1', '65.00', '80.00', '+15.00 ± n/a', '4']


def test_convergence_rejects_a_bad_window(tmp_path):
    write_top1(tmp_path, 'kd_seed0', [10, 20])
    with pytest.raises(SystemExit, match='--window'):
        analyze.main(['convergence', '--runs', str(tmp_path), '--window', '0'])


def write_finished(run_dir, label, teacher_std, gap, finished=True):
    os.makedirs(run_dir / 'logs', exist_ok=True)
    with open(run_dir / 'logs' / f'{label}_epochs.jsonl', 'w') as f:
        for epoch in range(2):
            f.write(json.dumps({'epoch': epoch, 'teacher_logit_std': teacher_std + 1 - epoch}) + '\n')
    if finished:
        os.makedirs(run_dir / 'results', exist_ok=True)
        with open(run_dir / 'results' / f'{label}.json', 'w') as f:
            json.dump({'test': {'sharpness_gap': gap, 'student': {'top1': 80.0}}}, f)


def test_paired_table_hand_values(tmp_path):
    for seed, (std, gap) in enumerate([(4.0, 0.5), (5.0, 0.7)]):
        write_finished(tmp_path, f'kd_seed{seed}', std, gap)
    for seed, (std, gap) in enumerate([(3.0, 0.2), (3.0, 0.6)]):
        write_finished(tmp_path, f'pesfkd_seed{seed}', std, gap)
    write_finished(tmp_path, 'pesfkd_seed2', 0.0, 9.0, finished=False)  # still running: left out
    # the last epoch's teacher std (validation): KD 4, 5; PESF-KD 3, 3 -> differences -1, -2
    rows = analyze.main(['paired', '--runs', str(tmp_path), '--key', 'teacher_logit_std',
                         '--methods', 'kd', 'pesfkd']).splitlines()
    half = 12.706204736174694 * np.std([-1, -2], ddof=1) / np.sqrt(2)
    assert rows[2] == '| KD | 4.500 (n=2) | - |'
    assert rows[3] == f'| PESF-KD | 3.000 (n=2) | -1.500 ± {half:.3f} (n=2) |'
    # the test sharpness gap from the summaries: differences -0.3, -0.1
    rows = analyze.main(['paired', '--runs', str(tmp_path), '--key', 'test_gap', '--methods', 'kd', 'pesfkd'])
    assert rows.splitlines()[3].startswith('| PESF-KD | 0.400 (n=2) | -0.200 ± ')


def test_paired_seeds_keeps_the_first_seeds_only(tmp_path):
    for seed, std in enumerate([4.0, 5.0, 9.0]):                     # KD has a third seed the other lacks
        write_finished(tmp_path, f'kd_seed{seed}', std, 0.5)
    for seed, std in enumerate([3.0, 3.0]):
        write_finished(tmp_path, f'pesfkd_seed{seed}', std, 0.5)
    args = ['paired', '--runs', str(tmp_path), '--key', 'teacher_logit_std', '--methods', 'kd', 'pesfkd']
    assert analyze.main(args).splitlines()[2] == '| KD | 6.000 (n=3) | - |'
    rows = analyze.main(args + ['--seeds', '2']).splitlines()
    assert rows[2] == '| KD | 4.500 (n=2) | - |'                    # the mean over the seeds the table pairs
    assert rows[3].startswith('| PESF-KD | 3.000 (n=2) | -1.500 ± ')
    assert set(analyze.read_runs([str(tmp_path)], seeds=1)['kd']) == {0}


def test_paired_needs_the_reference(tmp_path):
    write_finished(tmp_path, 'pesfkd_seed0', 3.0, 0.2)
    with pytest.raises(SystemExit, match='--reference'):
        analyze.main(['paired', '--runs', str(tmp_path), '--key', 'test_gap'])


def test_pairs_table_each_row_against_its_own_reference(tmp_path):
    # KD and PESF-KD at two temperatures; each PESF-KD row is paired with the KD of its temperature
    for label, (std, gap) in {'kd__temperature-1': (4.0, 1.0), 'pesfkd__temperature-1': (3.0, 0.5),
                              'kd__temperature-8': (5.0, 0.3), 'pesfkd__temperature-8': (5.0, 0.4)}.items():
        for seed in (0, 1):
            write_finished(tmp_path, f'{label}_seed{seed}', std + seed, gap + seed / 10)
    rows = analyze.main(['pairs', '--runs', str(tmp_path), '--keys', 'test_gap', 'teacher_logit_std', '--pairs',
                         'kd__temperature-1:pesfkd__temperature-1', 'kd__temperature-8:pesfkd__temperature-8'])
    rows = rows.splitlines()
    assert rows[0] == '| method | vs | Δ test_gap, paired 95% CI | Δ teacher_logit_std, paired 95% CI |'
    # per-seed differences are equal across seeds here, so each interval has half-width 0
    assert rows[2] == '| PESF-KD (temperature=1) | KD (temperature=1) | -0.500 ± 0.000 (n=2) | -1.000 ± 0.000 (n=2) |'
    assert rows[3] == '| PESF-KD (temperature=8) | KD (temperature=8) | +0.100 ± 0.000 (n=2) | +0.000 ± 0.000 (n=2) |'


def test_pairs_rejects_a_malformed_pair_and_a_missing_method(tmp_path):
    write_finished(tmp_path, 'kd_seed0', 4.0, 0.5)
    with pytest.raises(SystemExit, match='REFERENCE:METHOD'):
        analyze.main(['pairs', '--runs', str(tmp_path), '--pairs', 'kd'])
    with pytest.raises(SystemExit, match='`pesfkd`'):
        analyze.main(['pairs', '--runs', str(tmp_path), '--pairs', 'kd:pesfkd'])


def test_read_runs_leaves_out_runs_without_a_summary_where_results_exist(tmp_path):
    write_finished(tmp_path, 'kd_seed0', 4.0, 0.5)
    write_finished(tmp_path, 'kd_seed1', 4.0, 0.5, finished=False)  # compare.py is still running it
    assert set(analyze.read_runs([str(tmp_path)])['kd']) == {0}


def test_label_of_turns_grid_run_labels_back_into_readable_points():
    assert analyze.label_of('kd') == 'KD'
    assert analyze.label_of('pesfkd__lr-2e-4') == 'PESF-KD (lr=2e-4)'
    assert analyze.label_of('pesfkd__lr-2e-3_teacher_warmup_epochs-5') == 'PESF-KD (lr=2e-3, teacher_warmup_epochs=5)'
    assert analyze.label_of('zscore__temperature-0.5_beta-3') == 'Z-score KD (temperature=0.5, beta=3)'


def write_student_top1(run_dir, label, top1):
    """A finished compare.py run whose test-set student top-1 is ``top1``."""
    os.makedirs(run_dir / 'logs', exist_ok=True)
    os.makedirs(run_dir / 'results', exist_ok=True)
    with open(run_dir / 'logs' / f'{label}_epochs.jsonl', 'w') as f:
        f.write(json.dumps({'epoch': 0, 'student_top1': top1}) + '\n')
    with open(run_dir / 'results' / f'{label}.json', 'w') as f:
        json.dump({'test': {'student': {'top1': top1}}}, f)


def test_grid_matrix_finds_cells_by_grid_point_whatever_the_knob_order(tmp_path):
    top1 = {'kd': (80.0, 82.0),                                       # the reference
            'zscore__alpha-1.0': (79.0, 80.0),                        # both knobs at the config's default
            'zscore__alpha-1.0_beta-3': (81.0, 82.0),                 # default temperature
            'zscore__alpha-1.0_temperature-3': (78.0, 80.0),          # default beta
            'zscore__beta-3.0_alpha-1.0_temperature-3': (83.0, 84.0),  # swept in another order, 3.0 for 3
            'zscore__temperature-3_beta-3': (10.0, 10.0)}             # alpha at its default: another grid
    for label, values in top1.items():
        for seed, value in enumerate(values):
            write_student_top1(tmp_path, f'{label}_seed{seed}', value)
    out = tmp_path / 'figures' / 'grid.png'
    rows = analyze.main(['grid', '--runs', str(tmp_path), '--method', 'zscore__alpha-1.0', '--rows',
                         'temperature=default:2,3', '--columns', 'beta=1,3,default:9', '--out', str(out)])
    half = 12.706204736174694 * np.std([-1, -2], ddof=1) / np.sqrt(2)  # seed differences -1 and -2
    assert rows.splitlines() == [
        '| temperature \\ beta | 1 | 3 | 9 (default) |', '|---|---|---|---|',
        f'| 2 (default) | not run | +0.500 ± {half:.3f} (n=2) | -1.500 ± {half:.3f} (n=2) |',
        f'| 3 | not run | +2.500 ± {half:.3f} (n=2) | -2.000 ± 0.000 (n=2) |']
    assert out.stat().st_size > 0
    # against one of its own cells: that cell is the reference, the others are paired with it
    rows = analyze.main(['grid', '--runs', str(tmp_path), '--method', 'zscore__alpha-1.0', '--reference',
                         'zscore__alpha-1.0', '--rows', 'temperature=default', '--columns', 'beta=3,default',
                         '--out', str(out)]).splitlines()
    assert rows[2] == '| default | +2.000 ± 0.000 (n=2) | - (reference) |'


def test_a_grid_cell_short_of_seeds_claims_nothing():
    assert analyze.is_clear(-4.9, 3.2, 2)                   # no --seeds: the interval decides
    assert not analyze.is_clear(-4.9, 3.2, 2, full_n=5)     # 2 of 5 seeds: faded, whatever the interval
    assert analyze.is_clear(-4.9, 3.2, 5, full_n=5)
    assert not analyze.is_clear(-2.2, 2.5, 5, full_n=5)     # the interval includes 0
    assert not analyze.is_clear(-1.0, 0.0, 1)               # one seed has no interval


def test_grid_rejects_bad_axes_and_a_grid_with_no_run(tmp_path):
    write_student_top1(tmp_path, 'kd_seed0', 80.0)
    write_student_top1(tmp_path, 'zscore_seed0', 79.0)
    args = ['grid', '--runs', str(tmp_path), '--method', 'zscore']
    with pytest.raises(SystemExit, match='--rows: `temperature` is not KEY=V1,V2'):
        analyze.main(args + ['--rows', 'temperature', '--columns', 'beta=1'])
    with pytest.raises(SystemExit, match='--method/--rows/--columns: no finished run of `zscore`'):
        analyze.main(args + ['--rows', 'temperature=1', '--columns', 'beta=1'])
    with pytest.raises(SystemExit, match='--reference: no finished run of `dkd`'):
        analyze.main(args + ['--rows', 'temperature=default', '--columns', 'beta=default', '--reference', 'dkd'])
    # one seed each: the difference without an interval
    assert analyze.main(args + ['--rows', 'temperature=default', '--columns', 'beta=default']).splitlines()[2] \
        == '| default | -1.000 ± n/a (n=1) |'


def test_forest_hand_values_and_plot(tmp_path):
    # KD 80, 82, 81; PESF-KD 81, 82, 83 -> differences 1, 0, 2: mean 1, sd 1, half t(0.975, 2) / sqrt(3) = 2.4841;
    # student (CE) 78, 80, 79 -> differences -2, -2, -2: mean -2, sd 0, half 0 (clear of 0)
    for seed, (kd, pesf, ce) in enumerate([(80, 81, 78), (82, 82, 80), (81, 83, 79)]):
        write_student_top1(tmp_path, f'kd_seed{seed}', kd)
        write_student_top1(tmp_path, f'pesfkd_seed{seed}', pesf)
        write_student_top1(tmp_path, f'student_ce_seed{seed}', ce)
    write_student_top1(tmp_path, 'pesfkd_seed3', 99)          # no KD seed 3 to pair with: left out
    out = tmp_path / 'forest.png'
    points = analyze.main(['forest', '--runs', str(tmp_path), '--methods', 'pesfkd', 'student_ce', '--out', str(out)])
    (m1, d1, h1, n1), (m2, d2, h2, n2) = points
    assert (m1, n1, m2, n2) == ('pesfkd', 3, 'student_ce', 3)
    assert d1 == pytest.approx(1.0) and h1 == pytest.approx(4.302652729911275 / np.sqrt(3))
    assert d2 == pytest.approx(-2.0) and h2 == pytest.approx(0.0)
    assert out.stat().st_size > 0


def test_forest_table_rows_and_missing_reference(tmp_path, capsys):
    for seed, (kd, pesf) in enumerate([(80, 81), (82, 82), (81, 83)]):
        write_student_top1(tmp_path, f'kd_seed{seed}', kd)
        write_student_top1(tmp_path, f'pesfkd_seed{seed}', pesf)
    analyze.main(['forest', '--runs', str(tmp_path)])
    rows = capsys.readouterr().out.splitlines()
    assert rows[2] == '| PESF-KD | +1.00 | [-1.48, +3.48] | 3 |'
    with pytest.raises(SystemExit, match='--reference: no finished run of `dml`'):
        analyze.main(['forest', '--runs', str(tmp_path), '--reference', 'dml'])
