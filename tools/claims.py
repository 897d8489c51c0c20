"""The one-minute summary of docs/RESULTS.md: each paper claim tested here, the paper's own words or number (another
dataset and scale), this project's paired difference with its 95% interval, and the verdict the interval gives.

    python tools/claims.py          # a Markdown table built from the committed run records, nothing trained

The papers' words below are quotes (source beside each; no paper number is quoted where it was not checked); everything else is computed from ``docs/results/``.
A verdict is "reproduced" when the 95% interval of the paired difference excludes 0 on the side the paper claims,
"opposite" when it excludes 0 on the other side, and "inconclusive" when it contains 0.
"""
import argparse
import glob
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'tools'))

from analyze import label_of, seed_values  # noqa: E402
from compare import paired_interval  # noqa: E402

XEON, EPYC = 'docs/results/converged', 'docs/results/converged_epyc'
LM = 'docs/results/causal_lm_epyc'   # the causal-LM study (tools/lm_compare.py records)
LM_KEY = 'lm:'   # a key read from the causal-LM summaries' test.student (``lm:perplexity``), compared as a difference
RATIO = 'ratio:'   # a key of the run summaries compared as the paired ratio METHOD / REFERENCE (per seed), not a difference
PESF = 'PESF-KD paper (Rao et al., IEEE TMM 2023)'
ZSCORE = 'Z-score paper (Sun et al., CVPR 2024)'
TTM = 'TTM paper (Zheng & Yang, ICLR 2024), zkxufo/TTM README'
# (claim, what the paper reports, records, method, reference, key, sign the paper claims: +1 larger, -1 smaller)
CLAIMS = (
    ('KD beats a student trained on labels alone (the regime can test KD at all)', 'the premise of every method '
     'here (Hinton et al. 2015)', XEON, 'kd', 'student_ce', 'test_top1', +1),
    ('PESF-KD beats KD (student top-1)', f'PESF-KD above vanilla KD in its CIFAR-100 and ImageNet tables ({PESF})', XEON, 'pesfkd', 'kd', 'test_top1', +1),
    ('PESF-KD shrinks the sharpness gap S(z_t) - S(z_s) against KD', f'a smaller gap than KD at every temperature, CIFAR-100 '
     f'({PESF}, Fig. 4)', XEON, 'pesfkd', 'kd', 'test_gap', -1),
    ('PESF-KD at adapter lr 2e-3 shrinks the gap', f'as above ({PESF}, Fig. 4)', XEON, 'pesfkd__lr-2e-3', 'kd',
     'test_gap', -1),
    ('PESF-KD at adapter lr 2e-3 beats KD', f'as above ({PESF})', XEON, 'pesfkd__lr-2e-3', 'kd',
     'test_top1', +1),
    ('FT-KD shrinks the sharpness gap against KD', f'smaller gap, CIFAR-100 ({PESF}, Fig. 4)', XEON, 'ftkd', 'kd',
     'test_gap', -1),
    ('FT-KD beats KD', f'FT-KD above vanilla KD, CIFAR-100 and ImageNet ({PESF})', XEON, 'ftkd', 'kd',
     'test_top1', +1),
    ('Z-score KD beats KD (tau 2, lambda_KD 9, lambda_CE 0.1)', f'"significant superiority" of KD with Z-score over KD, CIFAR-100 and '
     f'ImageNet ({ZSCORE}, abstract)', XEON, 'zscore', 'kd', 'test_top1', +1),
    ('Z-score KD at CE weight 1 beats KD', f'as above ({ZSCORE})', EPYC, 'zscore__alpha-1.0', 'kd', 'test_top1', +1),
    ('FT-KD costs more per step than KD', f'FT-KD 1.44 s/batch against KD 0.46, ImageNet ({PESF}, Table II)', XEON,
     'ftkd', 'kd', RATIO + 'seconds_per_step', +1),
    ('PESF-KD costs less per step than FT-KD', f'PESF-KD 0.47 s/batch against FT-KD 1.44, ImageNet ({PESF}, Table II)',
     XEON, 'pesfkd', 'ftkd', RATIO + 'seconds_per_step', -1),
    ('KD beats the student trained alone, causal LM (held-out perplexity)', 'the premise of LM distillation '
     '(token-level KD: Kim & Rush 2016)', LM, 'kd', 'ce', LM_KEY + 'perplexity', -1),
    ('PESF-KD (LoRA, adapter lr 1e-3) beats KD, causal LM (perplexity)', f'the idea of {PESF}, new at token level here',
     LM, 'pesfkd@lr=1e-3', 'kd', LM_KEY + 'perplexity', -1),
    ('PESF-KD (LoRA, adapter lr 1e-4) beats KD, causal LM (perplexity)', 'as above', LM, 'pesfkd@lr=1e-4', 'kd',
     LM_KEY + 'perplexity', -1),
    ('Z-score on forward KL beats forward KL, causal LM (perplexity)', f'the plug-in claim of the {ZSCORE}, untested '
     'on LMs there', LM, 'zscore', 'kd', LM_KEY + 'perplexity', -1),
    ('TTM beats KD (gamma 0.1, weight 45: the authors\' CIFAR-100 values)', f'TTM 71.83 against KD 70.66, CIFAR-100 '
     f'ResNet-56 → ResNet-20 ({TTM})', EPYC, 'ttm', 'kd', 'test_top1', +1),
    ('WTTM beats KD', f'WTTM 71.92 against KD 70.66, as above ({TTM})', EPYC, 'wttm', 'kd', 'test_top1', +1),
    ('LumiNet beats KD', 'LumiNet 72.29 against KD 70.66, CIFAR-100 ResNet-56 → ResNet-20 (LumiNet (Hossain et al. '
     '2023), ismail31416/LumiNet README)', EPYC, 'luminet', 'kd', 'test_top1', +1),
    ('TTM at weight 4.5 (its gradient on KD\'s scale here; the weight fixed before the runs) beats KD', 'TTM above KD at the '
     f'authors\' weights, as in the TTM row ({TTM})',
     EPYC, 'ttm__beta-4.5', 'kd', 'test_top1', +1),
    ('TTM at weight 1 (the CE term\'s scale) beats KD', 'as in the row above', EPYC, 'ttm__beta-1', 'kd', 'test_top1', +1),
    ('Z-score on TTM beats TTM', f'the plug-in claim of the {ZSCORE}; TTM is not among its methods', EPYC,
     'ttm_zscore', 'ttm', 'test_top1', +1),
    ('Z-score on DKD beats DKD', f'"other distillation variants can obtain considerable gain" ({ZSCORE}, '
     'abstract), DKD among them', XEON, 'dkd_zscore',
     'dkd', 'test_top1', +1),
)


def summary_values(records, key, methods):
    """``{method: {seed: value}}`` of a top-level key of the finished runs' summary JSONs (``results/<label>.json``)."""
    values = {method: {} for method in methods}
    for path in glob.glob(os.path.join(records, 'results', '*_seed*.json')):
        label = os.path.basename(path)[:-len('.json')]
        method, _, seed = label.rpartition('_seed')
        if method in values and seed.isdigit():
            with open(path) as f:
                value = json.load(f).get(key)
            if value is not None:
                values[method][int(seed)] = value
    return values


def lm_values(records, key, methods):
    """``{row: {seed: test.student[key]}}`` of causal-LM study records; a row is a method or ``method@key=value``
    (its run labels: ``method__key-value_seed<N>``)."""
    values = {method: {} for method in methods}
    for method in methods:
        stem = method.replace('@', '__').replace('=', '-')
        for path in glob.glob(os.path.join(records, 'results', f'{stem}_seed*.json')):
            seed = os.path.basename(path)[len(stem) + len('_seed'):-len('.json')]
            if seed.isdigit():
                with open(path) as f:
                    values[method][int(seed)] = json.load(f)['test']['student'][key]
    return values


def lm_label(row):
    from lm_compare import LABELS, point_text, with_point
    method, _, point = row.partition('@')
    return with_point(LABELS.get(method, method), point_text(point) if point else '')


def verdict(diff, half, n, sign):
    if n < 2 or half != half or abs(diff) <= half:
        return 'inconclusive'
    return 'reproduced' if diff * sign > 0 else 'opposite'


def machine(records):
    return {XEON: 'Intel Xeon', EPYC: 'AMD EPYC', LM: 'AMD EPYC'}.get(records, records)


def table(claims=CLAIMS, root=ROOT):
    lines = ['| claim | the paper (other dataset and scale) | here: paired difference, 95% CI (CPU; Fashion-MNIST, '
             'ResNet-56 → ResNet-20 unless the row says otherwise) | verdict |', '|---|---|---|---|']
    for claim, paper, records, method, reference, key, sign in claims:
        if key.startswith(LM_KEY):
            key = key[len(LM_KEY):]
            values = lm_values(os.path.join(root, records), key, (method, reference))
            diff, half, n = paired_interval({'student': values[method]}, {'student': values[reference]})
            here = (f'{lm_label(method)} − {lm_label(reference)}, test {key}: {diff:+.2f} ± {half:.2f} (n={n}, '
                    f'{machine(records)}; causal LM on Python source, 4-layer → 2-layer)') if n else 'not run'
        elif key.startswith(RATIO):
            key = key[len(RATIO):]
            values = summary_values(os.path.join(root, records), key, (method, reference))
            seeds = sorted(set(values[method]) & set(values[reference]))
            ratios = {seed: values[method][seed] / values[reference][seed] for seed in seeds}
            diff, half, n = paired_interval({'student': ratios}, {'student': {seed: 1.0 for seed in seeds}})
            here = (f'{label_of(method)} / {label_of(reference)}, {key}: {1 + diff:.2f}× ± {half:.2f} (n={n}, '
                    f'{machine(records)}; two runs shared the CPU)') if n else 'not run'
        else:
            rows = seed_values([os.path.join(root, records)], key, None, [method, reference])
            diff, half, n = paired_interval({'student': rows.get(method, {})}, {'student': rows.get(reference, {})})
            here = (f'{label_of(method)} − {label_of(reference)}, {key}: {diff:+.2f} ± {half:.2f} (n={n}, '
                    f'{machine(records)})') if n else 'not run'
        lines.append(f'| {claim} | {paper} | {here} | {verdict(diff, half, n, sign) if n else "-"} |')
    return '\n'.join(lines)


def main(argv=None):
    argparse.ArgumentParser(description=__doc__.split('\n\n')[0]).parse_args(argv)
    text = table()
    print(text)
    return text


if __name__ == '__main__':
    main()
