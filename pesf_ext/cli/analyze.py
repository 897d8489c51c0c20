"""Teacher-student analysis: the metrics table of checkpoints, and figures from recorded runs (``pesf-analyze``; in a
clone also ``python tools/analyze.py``).

    # metrics of a trained pair on the test set (student checkpoint; its adapted/fine-tuned teacher beside it)
    python tools/analyze.py metrics --config configs/fashion_mnist/resnet56_resnet20_pesfkd.yaml \\
        --student_ckpt runs/compare5/ckpt/pesfkd_seed0/student.pt --set datasets...
    # every figure of docs/analysis.md from the per-epoch records of tools/compare.py or tools/quickstart.py runs
    python tools/analyze.py figures --runs runs/compare5 --out docs/figures
    # has each method's validation accuracy plateaued? (last two windows of epochs, paired over seeds)
    python tools/analyze.py convergence --runs docs/results/converged --window 5
    # one metric (test sharpness gap, the teacher's logit std, ...) per method, paired to KD with 95% CIs
    python tools/analyze.py paired --runs docs/results/converged --key test_gap --reference kd
    # a two-knob grid (tools/compare.py --grid) against KD: a matrix of paired differences, and a heatmap
    python tools/analyze.py grid --runs docs/results/converged_epyc --method zscore__alpha-1.0 \\
        --rows temperature=0.5,1,default:2,3 --columns beta=1,3,default:9 --out docs/figures/grid.png
    # one point per method: its mean sharpness gap and teacher logit std against its mean student top-1
    python tools/analyze.py scatter --runs docs/results/converged_epyc --seeds 5 --methods kd ttm wttm luminet \\
        --out docs/figures/scatter.png
    # every method's paired difference to KD, as a table and a forest plot (docs/RESULTS.md's summary)
    python tools/analyze.py forest --runs docs/results/converged --methods student_ce pesfkd ftkd zscore \\
        --out docs/figures/forest.png
    # the sharpest target Z-score KD can give, per class count and temperature (docs/RESULTS.md)
    python tools/analyze.py zscore_bound --classes 10 100 --temperatures 1 2 4

``figures`` reads ``<run dir>/logs/<label>_epochs.jsonl`` (one JSON line per epoch, written by
``epoch_metrics_post_epoch_process``) and ``<label>_epoch_samples.pt`` (last epoch's validation logits, penultimate
features and labels); runs named ``<method>_seed<N>`` are grouped by method (curves: mean over seeds, band: ±1 std;
distributions and t-SNE: the lowest seed).
"""
import argparse
import collections
import glob
import json
import os
import re
import sys

import torch

from .compare import LABELS as METHOD_LABELS, mean, paired_interval, point_pairs, point_text, with_point
from .paths import work_dir
from .quickstart import summary_path

ROOT = work_dir()  # a clone's root (figures go to its docs/), else the current directory

LABELS = {'teacher_ce': 'Teacher (CE)', **METHOD_LABELS}

SEED = re.compile(r'^(?P<method>.+)_seed(?P<seed>\d+)$')


# ---------------------------------------------------------------------------------------------------- metrics
def metrics_main(args):
    from pesf_ext.engine.config import load_config, validate_config
    from pesf_ext.engine.errors import ConfigError
    from pesf_ext.engine.models import build_model
    from pesf_ext.engine.overrides import apply_overrides
    from pesf_ext.engine.runner import student_config_of, teacher_for_test
    from pesf_ext.epoch_metrics import check_options, collect, loss_temperature
    from torchdistill.common.main_util import load_ckpt
    from torchdistill.datasets.util import build_data_loader
    from torchdistill.losses.registry import get_high_level_loss
    try:
        config = load_config(args.config)
        apply_overrides(config, args.overrides)
        validate_config(config, needs_training=False)
        device = torch.device(args.device)
        models_config = config['models']
        student_config = student_config_of(models_config)
        student_ckpt = args.student_ckpt or student_config.get('dst_ckpt')
        if not student_ckpt or not os.path.isfile(student_ckpt):
            raise ConfigError(f'--student_ckpt: file not found: {student_ckpt}')
        student = build_model(student_config, device, False, 'models.student_model')
        load_ckpt(student_ckpt, model=student, strict=True)
        models = {'student': student}
        if 'teacher_model' in models_config:
            teacher = build_model(models_config['teacher_model'], device, False, 'models.teacher_model')
            models = {'teacher': teacher_for_test(teacher, config, device, student_ckpt, None), **models}
        options = check_options((config.get('train') or {}).get('epoch_metrics'), models)
    except ConfigError as error:
        sys.exit(f'Config error: {error}')
    temperature = options['temperature']
    if temperature is None:
        criterion_config = (config.get('train') or {}).get('criterion')
        temperature = loss_temperature(get_high_level_loss(criterion_config)) if criterion_config else 1.0
    loader_config = config['test']['test_data_loader']
    loader = build_data_loader(config['datasets'][loader_config['dataset_id']], loader_config, False)
    result, samples = collect(models, loader, device, temperature, options['feature_modules'], args.keep_samples)
    print(f'{"metric":<22}{"value":>12}')
    for key, value in result.items():
        print(f'{key:<22}{value:>12.4f}')
    if args.samples_out:
        torch.save(samples, args.samples_out)
    return result


# ---------------------------------------------------------------------------------------------------- figures
def read_runs(run_dirs, seeds=None):
    """{method: {seed: (records by epoch, samples path)}} from the runs' logs/ directories; where a run directory
    has results/ (tools/compare.py's), only the runs whose summary JSON is there (finished); with ``seeds``, only
    seeds 0 .. seeds - 1 (as ``tools/compare.py --seeds``)."""
    runs = collections.defaultdict(dict)
    for run_dir in run_dirs:
        for path in sorted(glob.glob(os.path.join(run_dir, 'logs', '*_epochs.jsonl'))):
            label = os.path.basename(path)[:-len('_epochs.jsonl')]
            match = SEED.match(label)
            method, seed = (match['method'], int(match['seed'])) if match else (label, 0)
            if seeds is not None and seed >= seeds:
                continue
            records = {}
            with open(path) as f:
                for line in f:
                    if line.strip():
                        record = json.loads(line)
                        records[record['epoch']] = record  # a resumed run may repeat an epoch: the last one counts
            if os.path.isdir(os.path.join(run_dir, 'results')) and \
                    not os.path.isfile(summary_path(run_dir, label)):
                continue  # still running (tools/compare.py writes the summary last): its curves stop early
            samples = path[:-len('_epochs.jsonl')] + '_epoch_samples.pt'
            runs[method][seed] = (records, samples if os.path.isfile(samples) else None)
    return runs


def label_of(method):
    """``pesfkd__lr-2e-3_teacher_warmup_epochs-5`` (a run label of ``tools/compare.py --grid``) ->
    ``PESF-KD (lr=2e-3, teacher_warmup_epochs=5)``."""
    base, _, point = method.partition('__')
    return with_point(LABELS.get(base, base), point_text(point, sep='-') if point else '')


def curve(runs, key):
    """Epochs, mean and std over seeds of ``key``."""
    import numpy as np
    epochs = sorted(set.intersection(*[set(r) for r, _ in runs.values()]))
    values = np.array([[runs[s][0][e].get(key, np.nan) for e in epochs] for s in sorted(runs)], dtype=float)
    return np.array(epochs), values.mean(axis=0), values.std(axis=0)


def legend_columns(labels, columns):
    """The labels of each column, as matplotlib lays out a legend of ``columns`` columns: column by column, the
    entries split as evenly as possible with the longer columns first (``numpy.array_split``)."""
    import numpy as np
    return [list(part) for part in np.array_split(np.array(labels, dtype=object), columns)]


def legend_layout(labels, width_in, char_in=0.075, handle_in=0.75, max_columns=6):
    """(columns, rows) of a figure legend: the most columns (at most ``max_columns``) whose widest labels, at about
    ``char_in`` inches a character plus ``handle_in`` for the line sample and padding, fit in ``width_in`` inches."""
    for columns in range(min(len(labels), max_columns), 0, -1):
        parts = legend_columns(labels, columns)
        if columns == 1 or sum(char_in * max(map(len, part)) + handle_in for part in parts) <= width_in:
            return columns, len(parts[0])
    return 1, 0


def plot_curves(runs, panels, path, title):
    """One axes per (key, y label[, symlog threshold]) panel; a line per method (mean over seeds, band ±1 std), one
    colour per method in every panel. A threshold makes the axis symlog (linear within ±threshold), so the first
    epochs' large values (an untrained student's gap and KL) do not flatten the rest."""
    import matplotlib.pyplot as plt
    colors = {method: f'C{i % 10}' for i, method in enumerate(runs)}
    width = 4.6 * len(panels)
    labels = {method: f'{label_of(method)} (n={len(seeds)})' for method, seeds in runs.items()}
    columns, rows = legend_layout(list(labels.values()), width)
    height = 3.4 + 0.3 * rows  # each legend row adds to the figure, not at the axes' expense
    fig, axes = plt.subplots(1, len(panels), figsize=(width, height))
    legend = {}
    for ax, (key, ylabel, *linthresh) in zip(axes, panels):
        for method, seeds in runs.items():
            if not all(key in rec for recs, _ in seeds.values() for rec in recs.values()):
                continue
            epochs, mean, std = curve(seeds, key)
            label = labels[method]
            line, = ax.plot(epochs + 1, mean, marker='o', markersize=3, color=colors[method], label=label)
            nonnegative = all(rec[key] >= 0 for recs, _ in seeds.values() for rec in recs.values())
            low = (mean - std).clip(min=0) if nonnegative else mean - std  # a KL's band stays >= 0
            ax.fill_between(epochs + 1, low, mean + std, color=colors[method], alpha=0.15)
            legend.setdefault(label, line)
        if linthresh:
            ax.set_yscale('symlog', linthresh=linthresh[0])
        ax.set_xlabel('epoch')
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.legend(list(legend.values()), list(legend), loc='lower center', ncol=columns, frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, (0.1 + 0.3 * rows) / height, 1, 0.95))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def first_samples(seeds):
    for seed in sorted(seeds):
        if seeds[seed][1]:
            return torch.load(seeds[seed][1], weights_only=False)
    return None


def skipped(path, why):
    """A figure that cannot be drawn from these runs (committed records keep no per-sample tensors): says so on
    stderr and returns None."""
    print(f'{os.path.basename(path)}: skipped, {why}', file=sys.stderr)
    return None


def plot_major_logits(runs, path):
    """Density of each sample's largest logit divided by its logit vector's L2 norm (scale-free 'major logit',
    in [1/sqrt(K), 1]), teacher (as used/adapted in that run) vs student (PESF-KD Figs. 2-3 plot the major-logit
    distribution of teacher and student)."""
    import matplotlib.pyplot as plt
    import numpy as np
    methods = [m for m in runs if first_samples(runs[m]) is not None and 'teacher_logits' in first_samples(runs[m])]
    if not methods:
        return skipped(path, 'no run with a teacher kept per-sample logits (<label>_epoch_samples.pt)')
    fig, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods), 3.6), sharey=True, squeeze=False)
    for ax, method in zip(axes[0], methods):
        samples = first_samples(runs[method])
        for side, color in (('teacher', 'tab:red'), ('student', 'tab:blue')):
            z = samples[f'{side}_logits'].double()
            major = (z.max(dim=1).values / z.norm(dim=1)).numpy()
            ax.hist(major, bins=np.linspace(0, 1, 41), density=True, alpha=0.5, color=color, label=side)
        ax.set_title(label_of(method))
        ax.set_xlabel('max$_k$ z$_k$ / ||z||$_2$')
        ax.legend()
    axes[0][0].set_ylabel('density')
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_mean_std(runs, path):
    """Bivariate histogram of per-sample logit mean and std (Z-score paper Fig. 5): the teacher (from the first
    run with a frozen one) and each method's student."""
    import matplotlib.pyplot as plt
    panels = []
    for method in runs:
        samples = first_samples(runs[method])
        if samples is None:
            continue
        if 'teacher_logits' in samples and not any(p[0] == 'Teacher' for p in panels):
            panels.append(('Teacher', samples['teacher_logits']))
        panels.append((f'{label_of(method)} student', samples['student_logits']))
    if not panels:
        return skipped(path, 'no run kept per-sample logits (<label>_epoch_samples.pt)')
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.5), sharex=True, sharey=True,
                             squeeze=False)
    stats = [(z.double().mean(dim=1).numpy(), z.double().std(dim=1, correction=0).numpy()) for _, z in panels]
    x_range = (min(m.min() for m, _ in stats), max(m.max() for m, _ in stats))
    y_range = (0.0, max(s.max() for _, s in stats))
    for ax, (title, _), (mean, std) in zip(axes[0], panels, stats):
        ax.hist2d(mean, std, bins=30, range=[x_range, y_range], cmap='viridis')
        ax.set_title(title, fontsize=10)
        ax.set_xlabel('logit mean')
    axes[0][0].set_ylabel('logit std')
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def average_cluster_distance(points, labels):
    """Mean Euclidean distance between the class centroids of a 2-D embedding, divided by the mean distance of
    points to their own centroid (larger = better separated classes)."""
    import numpy as np
    classes = np.unique(labels)
    centroids = np.stack([points[labels == c].mean(axis=0) for c in classes])
    between = np.linalg.norm(centroids[:, None] - centroids[None], axis=-1)[np.triu_indices(len(classes), 1)].mean()
    within = np.mean([np.linalg.norm(points[labels == c] - centroids[i], axis=1).mean() for i, c in enumerate(classes)])
    return between / within


def plot_tsne(runs, path, max_points=1000):
    """t-SNE of the students' penultimate features on the validation set (PESF-KD Fig. 9), with the average
    cluster distance (:func:`average_cluster_distance`) in each title."""
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE
    methods = [m for m in runs if (first_samples(runs[m]) or {}).get('student_features') is not None]
    if not methods:
        return skipped(path, 'no run kept per-sample features (<label>_epoch_samples.pt)')
    fig, axes = plt.subplots(1, len(methods), figsize=(3.8 * len(methods), 3.9), squeeze=False)
    for ax, method in zip(axes[0], methods):
        samples = first_samples(runs[method])
        features = samples['student_features'][:max_points].double().numpy()
        labels = samples['labels'][:max_points].numpy()
        points = TSNE(n_components=2, init='pca', random_state=0, perplexity=30).fit_transform(features)
        scatter = ax.scatter(points[:, 0], points[:, 1], c=labels, cmap='tab10', s=4)
        ax.set_title(f'{label_of(method)}\navg. cluster distance {average_cluster_distance(points, labels):.2f}',
                     fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(scatter, ax=list(axes[0]), label='class', ticks=range(10), fraction=0.02)
    fig.savefig(path, dpi=120, bbox_inches='tight')
    plt.close(fig)
    return path


def figures_main(args):
    import matplotlib
    matplotlib.use('Agg')
    runs = read_runs(args.runs, args.seeds)
    runs.pop('teacher_ce', None)
    if args.methods:
        runs = {m: runs[m] for m in args.methods if m in runs}
    if not runs:
        sys.exit(f'--runs: no <label>_epochs.jsonl under {", ".join(d + "/logs" for d in args.runs)}')
    os.makedirs(args.out, exist_ok=True)
    out = lambda name: os.path.join(args.out, name)  # noqa: E731
    written = [
        plot_curves(runs, [('gap', 'sharpness gap S(z_t) - S(z_s) (symlog)', 1.0),
                           ('kl', 'KL(p_t || p_s) at the loss τ (symlog)', 0.1),
                           ('student_top1', 'student top-1 (%)')], out('epochs_gap_kl_accuracy.png'),
                    'Validation set, per epoch'),
        plot_curves(runs, [('cka_logits', 'CKA of logits'), ('cka_features', 'CKA of penultimate features'),
                           ('pl', 'probability loyalty')], out('epochs_cka_pl.png'),
                    'Teacher-student similarity, per epoch (minibatch linear CKA)'),
        plot_curves(runs, [('teacher_top1', 'teacher top-1 (%)'), ('teacher_logit_std', 'teacher logit std'),
                           ('teacher_sharpness', 'teacher sharpness S(z_t)')], out('epochs_teacher.png'),
                    'The (adapted / fine-tuned) teacher on the validation set, per epoch'),
        plot_major_logits(runs, out('major_logit_distribution.png')),
        plot_mean_std(runs, out('logit_mean_std.png')),
        plot_tsne(runs, out('tsne_student_features.png')),
    ]
    written = [path for path in written if path]
    for path in written:
        print(path)
    return written


# ---------------------------------------------------------------------------------------------------- convergence
def window_means(records, window):
    """(mean student top-1 of the ``window`` epochs before the last ``window``, of the last ``window``) of one run."""
    epochs = sorted(records)
    if len(epochs) < 2 * window:
        return None
    top1 = [records[e]['student_top1'] for e in epochs]
    return mean(top1[-2 * window:-window]), mean(top1[-window:])


def convergence_main(args):
    """Markdown table: per method, the validation top-1 averaged over the last two windows of epochs and the paired
    change between them (mean over seeds, 95% t-interval): a plateau is a change near 0."""
    if args.window < 1:
        sys.exit(f'--window: must be >= 1, got {args.window}')
    runs = read_runs(args.runs, args.seeds)
    runs.pop('teacher_ce', None)
    methods = [m for m in (args.methods or runs) if m in runs]
    if not methods:
        sys.exit(f'--runs: no <method>_seed<N>_epochs.jsonl under {", ".join(d + "/logs" for d in args.runs)}')
    w = args.window
    last = max(len(records) for method in methods for records, _ in runs[method].values())  # epochs of a full run
    lines = [f'| method | seeds | val top-1, epochs {last - 2 * w + 1}–{last - w} | val top-1, epochs '
             f'{last - w + 1}–{last} | change, paired 95% CI | best epoch (median over seeds) |',
             '|---|---|---|---|---|---|']
    for method in methods:
        windows = {seed: window_means(records, w) for seed, (records, _) in runs[method].items()
                   if len(records) == last}  # an unfinished run's last epochs are not the last ones
        windows = {seed: pair for seed, pair in windows.items() if pair}
        if not windows:
            continue
        before = {'student': {seed: pair[0] for seed, pair in windows.items()}}
        after = {'student': {seed: pair[1] for seed, pair in windows.items()}}
        change, half, n = paired_interval(after, before)
        best = sorted(max(records, key=lambda e: (records[e]['student_top1'], -e)) + 1
                      for seed, (records, _) in runs[method].items() if seed in windows)
        lines.append(f'| {label_of(method)} | {n} | {mean(list(before["student"].values())):.2f} | '
                     f'{mean(list(after["student"].values())):.2f} | {change:+.2f} ± {"n/a" if n < 2 else f"{half:.2f}"} | '
                     f'{best[(len(best) - 1) // 2]} |')
    text = '\n'.join(lines)
    print(text)
    return text


# ---------------------------------------------------------------------------------------------------- paired
TEST_KEYS = {'test_gap': ('sharpness_gap',), 'test_top1': ('student', 'top1'), 'test_teacher_top1': ('teacher', 'top1')}


def run_value(run_dir, method, seed, records, key):
    """A finished run's value of ``key``: from its summary JSON's test results (:data:`TEST_KEYS`), else from its
    last per-epoch record (validation set). None when the run lacks it or has not finished (no summary JSON)."""
    try:
        with open(summary_path(run_dir, f'{method}_seed{seed}')) as f:
            value = json.load(f)['test']
    except (OSError, KeyError):
        return None  # no summary: the run has not finished
    if key not in TEST_KEYS:
        return records[max(records)].get(key) if records else None
    for part in TEST_KEYS[key]:
        value = value.get(part) if isinstance(value, dict) else None
    return value


def seed_values(run_dirs, key, seeds=None, methods=None):
    """``{method: {seed: value of key}}`` over the finished runs of ``run_dirs`` (the teacher's run left out)."""
    rows = {}
    for run_dir in run_dirs:
        for method, runs in read_runs([run_dir], seeds).items():
            if method == 'teacher_ce' or (methods and method not in methods):
                continue
            values = {seed: run_value(run_dir, method, seed, records, key) for seed, (records, _) in runs.items()}
            rows.setdefault(method, {}).update({s: v for s, v in values.items() if v is not None})
    return rows


def interval_text(values, reference):
    """``+d ± h (n=N)``: the mean per-seed difference ``values - reference`` with its 95% t-interval."""
    diff, half, n = paired_interval({'student': values}, {'student': reference})
    if n == 0:
        return 'no paired seed'
    return f'{diff:+.3f} ± {"n/a" if n < 2 else f"{half:.3f}"} (n={n})'


def paired_main(args):
    """Markdown table: per method, the mean of ``--key`` over seeds and its paired difference to ``--reference``
    with the 95% t-interval (finished runs, seeds both have)."""
    rows = seed_values(args.runs, args.key, args.seeds, args.methods)
    if args.reference not in rows or not rows[args.reference]:
        sys.exit(f'--reference: no finished run of `{args.reference}` with `{args.key}` under {", ".join(args.runs)}')
    lines = [f'| method | {args.key} (mean over seeds) | Δ vs {label_of(args.reference)}, paired 95% CI |',
             '|---|---|---|']
    for method in [m for m in (args.methods or rows) if rows.get(m)]:
        values = rows[method]
        cell = '-' if method == args.reference else interval_text(values, rows[args.reference])
        lines.append(f'| {label_of(method)} | {mean(list(values.values())):.3f} (n={len(values)}) | {cell} |')
    text = '\n'.join(lines)
    print(text)
    return text


def pairs_main(args):
    """Markdown table: one row per ``REFERENCE:METHOD`` pair, and per ``--keys`` key the paired difference
    METHOD - REFERENCE over the seeds both have, with its 95% t-interval (e.g. PESF-KD against KD at each
    temperature, where one reference for all rows would not do)."""
    pairs = [pair.split(':') for pair in args.pairs]
    for text, pair in zip(args.pairs, pairs):
        if len(pair) != 2 or not all(pair):
            sys.exit(f'--pairs: `{text}` is not REFERENCE:METHOD (e.g. kd__temperature-8:pesfkd__temperature-8)')
    methods = {name for pair in pairs for name in pair}
    values = {key: seed_values(args.runs, key, args.seeds, methods) for key in args.keys}
    for name in sorted(methods):
        if not values[args.keys[0]].get(name):
            sys.exit(f'--pairs: no finished run of `{name}` with `{args.keys[0]}` under {", ".join(args.runs)}')
    lines = ['| method | vs | ' + ' | '.join(f'Δ {key}, paired 95% CI' for key in args.keys) + ' |',
             '|' + '---|' * (2 + len(args.keys))]
    for reference, method in pairs:
        cells = [interval_text(values[key].get(method, {}), values[key].get(reference, {})) for key in args.keys]
        lines.append(f'| {label_of(method)} | {label_of(reference)} | ' + ' | '.join(cells) + ' |')
    text = '\n'.join(lines)
    print(text)
    return text


# ---------------------------------------------------------------------------------------------------- grid
def grid_point(method):
    """``zscore__alpha-1.0_beta-3`` -> ``('zscore', {'alpha': '1.0', 'beta': '3'})`` (a tools/compare.py run label)."""
    base, _, point = method.partition('__')
    return base, dict(point_pairs(point, sep='-'))


def same_value(a, b):
    """Grid values as typed: ``1`` and ``1.0`` are the same point."""
    try:
        return float(a) == float(b)
    except ValueError:
        return a == b


def axis_values(text, flag):
    """``temperature=0.5,1,default`` -> ``('temperature', ['0.5', '1', 'default'])``."""
    key, sep, values = text.partition('=')
    if not sep or not key or not values:
        sys.exit(f'{flag}: `{text}` is not KEY=V1,V2,... (e.g. temperature=0.5,1,default:2,3)')
    return key.rsplit('.', 1)[-1], values.split(',')


def is_default(value):
    """``default`` or ``default:2`` (the config's own value, shown as ``2 (default)``)."""
    return value == 'default' or value.startswith('default:')


def shown(value):
    return f'{value.partition(":")[2]} (default)' if value.startswith('default:') else value


def find_cell(methods, base, point):
    """The recorded method whose grid point is exactly ``point`` (``default`` values left out), else None."""
    point = {k: v for k, v in point.items() if not is_default(v)}
    for method in methods:
        name, recorded = grid_point(method)
        if name == base and recorded.keys() == point.keys() and all(same_value(recorded[k], point[k]) for k in point):
            return method
    return None


def is_clear(diff, half, n, full_n=None):
    """A grid cell claims a difference when its 95% interval excludes 0 and it has every seed asked for (``full_n``,
    i.e. ``--seeds``): a cell still short of seeds claims nothing, whatever its interval."""
    return n > 1 and (full_n is None or n >= full_n) and abs(diff) > half


def plot_grid(cells, rows, columns, path, title, full_n=None):
    """Heatmap of the paired mean differences (diverging, centred on 0), each cell annotated with ``d ± h``: full
    colour and bold where the cell is clear (``is_clear``), faded where it is not."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import numpy as np
    (row_key, row_values), (col_key, col_values) = rows, columns
    grid = [[cells.get((r, c), (np.nan, np.nan, 0)) for c in col_values] for r in row_values]
    means = np.array([[diff for diff, _, _ in row] for row in grid])
    span = np.nanmax(np.abs(means)) if np.isfinite(means).any() else 1.0
    colors = plt.get_cmap('RdBu')(matplotlib.colors.Normalize(-span, span)(np.nan_to_num(means)))
    clear = np.array([[is_clear(diff, half, n, full_n) for diff, half, n in row] for row in grid])
    colors[..., 3] = np.where(np.isnan(means), 0.0, np.where(clear, 1.0, 0.35))
    fig, ax = plt.subplots(figsize=(1.3 * len(col_values) + 2.6, 0.75 * len(row_values) + 1.5))
    ax.imshow(colors, aspect='auto')
    for i, row in enumerate(grid):
        for j, (diff, half, n) in enumerate(row):
            text = {0: 'not run', -1: 'reference'}.get(n, f'{diff:+.2f}\n± {half:.2f} (n={n})')
            ax.text(j, i, text, ha='center', va='center', fontsize=8,
                    color='white' if clear[i, j] and abs(diff) > 0.6 * span else 'black',
                    fontweight='bold' if clear[i, j] else 'normal')
    ax.set_xticks(range(len(col_values)), [shown(v) for v in col_values])
    ax.set_yticks(range(len(row_values)), [shown(v) for v in row_values])
    ax.set_xlabel(col_key)
    ax.set_ylabel(row_key)
    mappable = matplotlib.cm.ScalarMappable(matplotlib.colors.Normalize(-span, span), 'RdBu')
    fig.colorbar(mappable, ax=ax, label='paired mean difference')
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def cell_text(method, values, reference):
    if method is None:
        return 'not run'
    return '- (reference)' if method == reference else interval_text(values[method], values[reference])


def grid_main(args):
    """Markdown matrix (and with ``--out`` a heatmap) of a two-knob grid of ``tools/compare.py --grid`` runs: per
    cell (``--rows`` value, ``--columns`` value) of ``--method``'s grid, the paired difference of ``--key`` to
    ``--reference`` with its 95% t-interval. Cells are found by grid point, whatever order the knobs were swept in;
    ``default`` is the config's own value (the knob absent from the label)."""
    rows, columns = axis_values(args.rows, '--rows'), axis_values(args.columns, '--columns')
    values = seed_values(args.runs, args.key, args.seeds)
    if not values.get(args.reference):
        sys.exit(f'--reference: no finished run of `{args.reference}` with `{args.key}` under {", ".join(args.runs)}')
    base, fixed = grid_point(args.method)
    cells, names = {}, {}
    for r in rows[1]:
        for c in columns[1]:
            method = find_cell(values, base, {**fixed, rows[0]: r, columns[0]: c})
            if method:
                names[r, c] = method
                cells[r, c] = (0.0, 0.0, -1) if method == args.reference else \
                    paired_interval({'student': values[method]}, {'student': values[args.reference]})
    if not cells:
        sys.exit(f'--method/--rows/--columns: no finished run of `{args.method}` at any of these grid points '
                 f'under {", ".join(args.runs)}')
    lines = [f'| {rows[0]} \\ {columns[0]} | ' + ' | '.join(map(shown, columns[1])) + ' |',
             '|' + '---|' * (1 + len(columns[1]))]
    for r in rows[1]:
        lines.append(f'| {shown(r)} | ' + ' | '.join(
            cell_text(names.get((r, c)), values, args.reference) for c in columns[1]) + ' |')
    text = '\n'.join(lines)
    print(text)
    if args.out:
        title = (f'{label_of(args.method)} - {label_of(args.reference)}: Δ {args.key}\n'
                 'paired mean ± 95% CI; bold: CI excludes 0' + (f' (all {args.seeds} seeds)' if args.seeds else '')
                 + ', faded: it does not')
        print(plot_grid(cells, rows, columns, args.out, title, args.seeds))
    return text


# ---------------------------------------------------------------------------------------------------- scatter
def scatter_main(args):
    """Markdown table and PNG: one point per method, the mean over seeds of each ``--x`` key (one panel each)
    against the mean of ``--y``, with the 95% t-interval of each mean as error bars (finished runs only)."""
    import numpy as np
    from .compare import paired_interval as interval
    keys = [*args.x, args.y]
    values = {key: seed_values(args.runs, key, args.seeds, args.methods) for key in keys}
    methods = [m for m in (args.methods or values[args.y]) if all(values[key].get(m) for key in keys)]
    if not methods:
        sys.exit(f'--methods: no finished run with {", ".join(keys)} under {", ".join(args.runs)}')

    def mean_and_half(key, method):
        seeds = values[key][method]
        zeros = {seed: 0.0 for seed in seeds}
        centre, half, n = interval({'student': seeds}, {'student': zeros})
        return centre, (half if n > 1 else 0.0)

    stats = {m: {key: mean_and_half(key, m) for key in keys} for m in methods}
    lines = ['| method | seeds | ' + ' | '.join(f'{key} (mean ± 95% CI)' for key in keys) + ' |',
             '|' + '---|' * (2 + len(keys))]
    for m in methods:
        lines.append(f'| {label_of(m)} | {len(values[args.y][m])} | ' +
                     ' | '.join(f'{c:.3f} ± {h:.3f}' for c, h in (stats[m][key] for key in keys)) + ' |')
    text = '\n'.join(lines)
    print(text)
    if args.out:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(1, len(args.x), figsize=(5.2 * len(args.x), 4.2), squeeze=False)
        # past ten methods, tab10's colours repeat: the marker tells the repeats apart
        colors = plt.get_cmap('tab10')(np.arange(len(methods)) % 10)
        markers = ['o', 's', '^', 'D'][:1 + (len(methods) - 1) // 10]
        for ax, key in zip(axes[0], args.x):
            for i, (color, m) in enumerate(zip(colors, methods)):
                (x, xh), (y, yh) = stats[m][key], stats[m][args.y]
                ax.errorbar(x, y, xerr=xh, yerr=yh, fmt=markers[i // 10 % len(markers)], color=color, capsize=3,
                            label=label_of(m))
                if len(methods) <= 5:  # more labels overlap; the legend names the colours
                    ax.annotate(label_of(m), (x, y), textcoords='offset points', xytext=(5, 5), fontsize=8)
            ax.set_xlabel(f'{key} (mean over seeds)' + (', symmetric log scale' if key in args.symlog else ''))
            if key in args.symlog:  # gaps of collapsed runs span orders of magnitude; linear near 0
                ax.set_xscale('symlog', linthresh=1.0)
            ax.set_ylabel(f'{args.y} (mean over seeds)')
            ax.grid(alpha=0.3)
        fig.suptitle('one point per method; bars: 95% t-interval of the mean over seeds', fontsize=9)
        if len(methods) <= 8:
            axes[0][0].legend(fontsize=8, loc='best')
            fig.tight_layout()
        else:  # a legend inside would hide points: beside the panels
            fig.tight_layout(rect=(0, 0, 0.8, 1))
            fig.legend(*axes[0][0].get_legend_handles_labels(), fontsize=8, loc='center left',
                       bbox_to_anchor=(0.8, 0.5))
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        fig.savefig(args.out, dpi=120, bbox_inches='tight')  # the legend beside the panels included
        plt.close(fig)
        print(args.out)
    return text


# ---------------------------------------------------------------------------------------------------- forest
def forest_main(args):
    """Markdown table and forest plot: per method, the paired difference of ``--key`` to ``--reference`` (the mean
    per-seed difference over the seeds both have) with its 95% t-interval. In the plot each method is one row, a dot
    and its interval, with a line at 0; an interval clear of 0 is drawn in colour, one that contains 0 in grey.
    Returns ``[(method, mean difference, half-width, n)]``."""
    methods = list(dict.fromkeys([args.reference, *args.methods])) if args.methods else None
    rows = seed_values(args.runs, args.key, args.seeds, methods)
    if not rows.get(args.reference):
        sys.exit(f'--reference: no finished run of `{args.reference}` with `{args.key}` under {", ".join(args.runs)}')
    order = [m for m in (args.methods or sorted(rows)) if m != args.reference and rows.get(m)]
    if not order:
        sys.exit(f'--methods: no finished run to compare with `{args.reference}` under {", ".join(args.runs)}')
    points = [(m, *paired_interval({'student': rows[m]}, {'student': rows[args.reference]})) for m in order]
    reference = label_of(args.reference)
    lines = [f'| method | Δ {args.key} vs {reference} (paired mean) | 95% CI | seeds |', '|---|---|---|---|']
    for method, diff, half, n in points:
        ci = 'n/a' if n < 2 else f'[{diff - half:+.2f}, {diff + half:+.2f}]'
        lines.append(f'| {label_of(method)} | {diff:+.2f} | {ci} | {n} |')
    text = '\n'.join(lines)
    print(text)
    if args.out:
        plot_forest(points, args.out, f'Δ {args.key} vs {reference}, paired over seeds (95% t-interval)')
        print(f'\n![forest plot]({os.path.relpath(os.path.abspath(args.out), os.path.join(ROOT, "docs"))})')
    return points


def plot_forest(points, path, xlabel):
    """One row per ``(method, diff, half, n)``, top to bottom, with a vertical line at 0."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7.5, 0.38 * len(points) + 1.3))
    for row, (method, diff, half, n) in enumerate(points):
        clear = n > 1 and abs(diff) > half
        color = ('tab:blue' if diff > 0 else 'tab:red') if clear else 'tab:gray'
        ax.errorbar(diff, row, xerr=half if n > 1 else None, fmt='o', color=color, capsize=3)
    ax.axvline(0.0, color='black', linewidth=0.8, linestyle='--')
    ax.set_yticks(range(len(points)), [f'{label_of(m)} (n={n})' for m, _, _, n in points])
    ax.set_ylim(len(points) - 0.5, -0.5)
    ax.set_xlabel(xlabel)
    ax.grid(axis='x', alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------------- Z-score bound
def zscore_bound_main(args):
    """Markdown table: the largest standardized logit and the sharpest target probability Z-score KD can give."""
    from pesf_ext.metrics import zscore_extreme_logits, zscore_max_probability
    lines = ['| classes K | largest Z-scored logit | ' + ' | '.join(f'max p at τ = {t:g}' for t in args.temperatures)
             + ' |', '|' + '---|' * (2 + len(args.temperatures))]
    for k in args.classes:
        _, top = zscore_extreme_logits(k, args.std)
        probs = ' | '.join(f'{zscore_max_probability(k, t, args.std):.3f}' for t in args.temperatures)
        lines.append(f'| {k} | {top:.3f} | {probs} |')
    text = '\n'.join(lines)
    print(text)
    return text


EPILOG = '''examples:
  pesf-analyze figures --runs runs/compare5 --out docs/figures
  pesf-analyze paired --runs docs/results/converged --key test_gap --reference kd
  pesf-analyze zscore_bound --classes 10 100 --temperatures 1 2 4
(each subcommand has its own --help; in a clone, `python tools/analyze.py` takes the same options)'''


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='command', required=True)
    metrics = sub.add_parser('metrics', help='metrics table of a student checkpoint and its teacher on the test set')
    metrics.add_argument('--config', required=True)
    metrics.add_argument('--student_ckpt', help="default: the YAML's dst_ckpt; the teacher side is read beside it")
    metrics.add_argument('--device', default='cpu')
    metrics.add_argument('--keep_samples', type=int, default=0, help='per-sample tensors to keep (--samples_out)')
    metrics.add_argument('--samples_out', help='write per-sample logits/features/labels to this .pt file')
    metrics.add_argument('--set', nargs='+', action='extend', default=[], dest='overrides', metavar='KEY=VALUE')
    figures = sub.add_parser('figures', help='PNG figures from per-epoch records of runs')
    figures.add_argument('--runs', nargs='+', required=True, help='run directories (each with logs/)')
    figures.add_argument('--methods', nargs='+', help='methods to draw, in this order (default: all)')
    figures.add_argument('--out', default=os.path.join(ROOT, 'docs', 'figures'))
    converge = sub.add_parser('convergence', help='has validation accuracy plateaued? (last two windows of epochs)')
    converge.add_argument('--runs', nargs='+', required=True, help='run directories (each with logs/)')
    converge.add_argument('--methods', nargs='+', help='methods, in this order (default: all)')
    converge.add_argument('--window', type=int, default=5, help='epochs per window (default 5)')
    paired = sub.add_parser('paired', help='one metric per method, paired differences to a reference with 95%% CIs')
    paired.add_argument('--runs', nargs='+', required=True, help='run directories (each with logs/ and results/)')
    paired.add_argument('--key', required=True,
                        help=f'{", ".join(TEST_KEYS)} (test set), or a key of the last per-epoch record '
                             '(validation set: teacher_logit_std, kl, agreement, gap, teacher_top1, ...)')
    paired.add_argument('--reference', default='kd')
    paired.add_argument('--methods', nargs='+', help='methods, in this order (default: all)')
    pairs = sub.add_parser('pairs', help='paired differences METHOD - REFERENCE of several keys, one row per pair')
    pairs.add_argument('--runs', nargs='+', required=True, help='run directories (each with logs/ and results/)')
    pairs.add_argument('--pairs', nargs='+', required=True, metavar='REFERENCE:METHOD')
    pairs.add_argument('--keys', nargs='+', default=['test_top1', 'test_gap'], help='as paired --key (default: %(default)s)')
    grid = sub.add_parser('grid', help="a two-knob grid's paired differences to a reference, as a matrix and heatmap")
    grid.add_argument('--runs', nargs='+', required=True, help='run directories (each with logs/ and results/)')
    grid.add_argument('--method', required=True, help='the swept method with its fixed knobs, e.g. zscore__alpha-1.0')
    grid.add_argument('--rows', required=True, metavar='KEY=V1,V2,...',
                      help="e.g. temperature=0.5,1,default:2,3 (default[:V]: the config's value V, the knob absent "
                           'from the run label)')
    grid.add_argument('--columns', required=True, metavar='KEY=V1,V2,...', help='e.g. beta=1,3,default:9')
    grid.add_argument('--key', default='test_top1', help='as paired --key (default: %(default)s)')
    grid.add_argument('--reference', default='kd')
    grid.add_argument('--out', help='also write the heatmap to this PNG')
    scatter = sub.add_parser('scatter', help='one point per method: mean of each --x key against mean of --y')
    scatter.add_argument('--runs', nargs='+', required=True, help='run directories (each with logs/ and results/)')
    scatter.add_argument('--methods', nargs='+', help='methods, in this order (default: all)')
    scatter.add_argument('--x', nargs='+', default=['test_gap', 'teacher_logit_std'],
                         help='as paired --key, one panel each (default: %(default)s)')
    scatter.add_argument('--y', default='test_top1', help='as paired --key (default: %(default)s)')
    scatter.add_argument('--out', help='also write the figure to this PNG')
    scatter.add_argument('--symlog', nargs='+', default=[], metavar='KEY',
                         help='--x keys drawn on a symmetric log axis (linear within ±1)')
    for command in (figures, converge, paired, pairs, grid, scatter):
        command.add_argument('--seeds', type=int, default=None,
                             help='only seeds 0 .. SEEDS-1, as tools/compare.py --seeds (default: every seed recorded)')
    bound = sub.add_parser('zscore_bound', help="the sharpest softened target a Z-scored logit vector can give")
    bound.add_argument('--classes', type=int, nargs='+', default=[10, 100, 1000])
    bound.add_argument('--temperatures', type=float, nargs='+', default=[0.5, 1, 2, 3, 4])
    bound.add_argument('--std', default='unbiased', choices=('unbiased', 'population'))
    forest = sub.add_parser('forest', help="every method's paired difference to a reference: table and forest plot")
    forest.add_argument('--runs', nargs='+', required=True, help='run directories (each with logs/ and results/)')
    forest.add_argument('--key', default='test_top1', help='as paired --key (default: %(default)s)')
    forest.add_argument('--reference', default='kd')
    forest.add_argument('--methods', nargs='+', help='methods, top to bottom (default: all, sorted)')
    forest.add_argument('--seeds', type=int, default=None, help='only seeds 0 .. SEEDS-1 (default: every seed recorded)')
    forest.add_argument('--out', help='also write the forest plot to this PNG')
    args = parser.parse_args(argv)
    if args.command == 'forest':
        return forest_main(args)
    import pesf_ext  # noqa: F401  (registries)
    return {'metrics': metrics_main, 'figures': figures_main, 'convergence': convergence_main, 'paired': paired_main,
            'pairs': pairs_main, 'grid': grid_main, 'scatter': scatter_main,
            'zscore_bound': zscore_bound_main}[args.command](args)


if __name__ == '__main__':
    main()
