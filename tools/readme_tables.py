"""The README's tables, read from the repository itself so they cannot drift: the method tables (with the data sets
each method has configs for) and the layout of the package.

    python tools/readme_tables.py headline      # PESF-KD, FT-KD, Z-score KD
    python tools/readme_tables.py baselines     # the papers' baselines and other distillation methods
    python tools/readme_tables.py variants      # combinations, ablations and the released-code variants
    python tools/readme_tables.py methods       # the three, each under its caption (the README's block)
    python tools/readme_tables.py layout        # every package folder and tools/, with their modules

A config is ``configs/<data>/<teacher>_<student>_<suffix>.yaml`` for images (Fashion-MNIST, CIFAR-100, ImageNet) and
``configs/glue/<task>/bert_base_uncased_bert_6l_<suffix>.yaml`` for GLUE; a ✓ means at least one such file exists
for every suffix of the row.
"""
import argparse
import glob
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARXIV = 'https://arxiv.org/abs/'
CVF = 'https://openaccess.thecvf.com/'
PAPERS = {
    'PESF-KD': ARXIV + '2205.15308', 'Z-score': ARXIV + '2403.01427', 'KD': ARXIV + '1503.02531',
    'DML': ARXIV + '1706.00384', 'KDCL': CVF + 'content_CVPR_2020/html/Guo_Online_Knowledge_Distillation_via_'
                                          'Collaborative_Learning_CVPR_2020_paper.html',
    'DKD': ARXIV + '2203.08679', 'CTKD': ARXIV + '2211.16231',
    'MLKD': CVF + 'content/CVPR2023/html/Jin_Multi-Level_Logit_Distillation_CVPR_2023_paper.html',
    'DIST': ARXIV + '2205.10536', 'TTM': ARXIV + '2402.11148', 'LumiNet': ARXIV + '2310.03669',
    'TAKD': ARXIV + '1902.03393', 'RCO': ARXIV + '1904.09149', 'PKD': ARXIV + '1908.09355',
    'FitNet': ARXIV + '1412.6550', 'AT': ARXIV + '1612.03928', 'SP': ARXIV + '1907.09682',
    'VID': ARXIV + '1904.05835', 'CC': ARXIV + '1904.01802', 'AB': ARXIV + '1811.03233', 'FT': ARXIV + '1802.04977',
    'FSP': CVF + 'content_cvpr_2017/html/Yim_A_Gift_From_CVPR_2017_paper.html', 'PKT': ARXIV + '1803.10837',
    'RKD': ARXIV + '1904.05068', 'CRD': 'https://openreview.net/forum?id=SkgpBJrtvS',
    'MiniLLM': ARXIV + '2306.08543', 'GKD': ARXIV + '2306.13649', 'DistiLLM': ARXIV + '2402.03898',
    'f-DISTILL': ARXIV + '2307.15190', 'TAID': ARXIV + '2501.16937',
}
FROZEN = 'frozen'
# (name, paper key, loss key and options, teacher side, config suffixes)
TABLES = {
    'headline': (
        ('PESF-KD', 'PESF-KD', '`PESFKDLoss`', '`AdapterTeacher` wrapper, `requires_grad: True`, adapters in '
         '`module_wise_configs`', ('pesfkd',)),
        ('FT-KD', 'PESF-KD', '`FTKDLoss`', 'whole teacher trained (`requires_grad: True`)', ('ftkd',)),
        ('Z-score KD', 'Z-score', '`ZScoreKDLoss`', FROZEN, ('zscore',)),
    ),
    'baselines': (
        ('KD', 'KD', "`KDLoss` (torchdistill's) or `LogitKDLoss`", FROZEN, ('kd',)),
        ('DML', 'DML', '`DMLLoss`', 'whole teacher trained', ('dml',)),
        ('KDCL', 'KDCL', '`KDCLLoss`', 'whole teacher trained', ('kdcl',)),
        ('DKD', 'DKD', '`DKDLoss`', FROZEN, ('dkd',)),
        ('CTKD', 'CTKD', '`CTKDLoss`', FROZEN + '; student wrapped by `CurriculumTemperature`', ('ctkd',)),
        ('MLKD', 'MLKD', '`MLKDLoss`', FROZEN + '; `forward_two_views` on both sides', ('mlkd',)),
        ('DIST', 'DIST', '`LogitDISTLoss`', FROZEN, ('dist',)),
        ('TTM', 'TTM', '`TTMLoss`', FROZEN, ('ttm',)),
        ('WTTM', 'TTM', '`WTTMLoss`', FROZEN, ('wttm',)),
        ('LumiNet', 'LumiNet', '`LumiNetLoss`', FROZEN, ('luminet',)),
        ('Reverse KL (MiniLLM)', 'MiniLLM', "`TokenKDLoss`, `divergence: 'reverse_kl'`", FROZEN, ('rkl',)),
        ('Generalized JSD (GKD)', 'GKD', "`TokenKDLoss`, `divergence: 'jsd'`, `jsd_beta`", FROZEN, ('jsd',)),
        ('Skew KL, skew reverse KL (DistiLLM)', 'DistiLLM',
         "`TokenKDLoss`, `divergence: 'skew_forward_kl'` / `'skew_reverse_kl'`, `skew`", FROZEN, ('skew_kl', 'skew_rkl')),
        ('Total variation', 'f-DISTILL', "`TokenKDLoss`, `divergence: 'tv'`", FROZEN, ('tv',)),
        ('TAID', 'TAID', "`TokenKDLoss`, `divergence: 'taid'`, `taid: {t_start, ...}`", FROZEN, ('taid',)),
        ('TAKD', 'TAKD', '`KDLoss`, two chained configs', 'the assistant is the second config\'s teacher',
         ('takd_assistant', 'takd')),
        ('RCO', 'RCO', '`KDLoss` + `rco_pre_epoch_process`', 'stepped along a saved training route', ('rco',)),
        ('PKD', 'PKD', '`PKDLoss`', FROZEN, ('pkd',)),
        ('FitNet', 'FitNet', "torchdistill's `MSELoss` on a hint regressor", FROZEN, ('fitnet',)),
        ('AT', 'AT', "torchdistill's `ATLoss` (`PooledATLoss`)", FROZEN, ('at',)),
        ('SP', 'SP', '`SimilarityPreservingLoss`', FROZEN, ('sp',)),
        ('VID', 'VID', "torchdistill's `VIDLoss` (`PooledVIDLoss`)", FROZEN, ('vid',)),
        ('CC', 'CC', '`CorrelationCongruenceLoss`', FROZEN, ('cc',)),
        ('AB', 'AB', "torchdistill's `AltActTransferLoss`, two stages", FROZEN, ('ab',)),
        ('FT', 'FT', '`FactorTransferLoss`, two stages', FROZEN + '; `ParaphraserTeacher`', ('ft',)),
        ('FSP', 'FSP', '`FSPMatrixLoss`, two stages', FROZEN, ('fsp',)),
        ('PKT', 'PKT', "torchdistill's `PKTLoss`", FROZEN, ('pkt',)),
        ('RKD', 'RKD', "torchdistill's `RKDLoss`", FROZEN, ('rkd',)),
        ('CRD', 'CRD', "torchdistill's `CRDLoss`", FROZEN + '; `Linear4CRD` heads', ('crd',)),
    ),
    'variants': (
        ('PESF-KD + Z-score', 'PESF-KD', '`PESFKDLoss`, `logit_standardization: True`', 'adapters', ('pesfkd_zscore',)),
        ('FT-KD + Z-score', 'PESF-KD', '`FTKDLoss`, `logit_standardization: True`', 'whole teacher trained',
         ('ftkd_zscore',)),
        ('DKD / CTKD / MLKD / DIST + Z-score', 'Z-score', '`logit_standardization: True` on that loss',
         'as the method', ('dkd_zscore', 'ctkd_zscore', 'mlkd_zscore', 'dist_zscore')),
        ('TTM / WTTM + Z-score', 'Z-score', '`logit_standardization: True` on `TTMLoss` / `WTTMLoss`', FROZEN,
         ('ttm_zscore', 'wttm_zscore')),
        ('Reverse KL / JSD / skew KLs / TV / TAID + Z-score', 'Z-score',
         "`logit_standardization: True` on `TokenKDLoss`: Z-score KD with another divergence", FROZEN,
         ('rkl_zscore', 'jsd_zscore', 'skew_kl_zscore', 'skew_rkl_zscore', 'tv_zscore', 'taid_zscore')),
        ('PESF-KD + PKT / RKD / CRD', 'PESF-KD', '`PESFKDLoss` + that loss in one `WeightedSumLoss`', 'adapters',
         ('pesfkd_pkt', 'pesfkd_rkd', 'pesfkd_crd')),
        ('PKD + PESF-KD', 'PESF-KD', '`PKDLoss` + `PESFKDLoss`', 'adapters', ('pkd_pesfkd',)),
        ('PESF-KD, head adapter on `fc` (the released code\'s placement)', 'PESF-KD', '`PESFKDLoss`',
         "adapter `kind: 'head'`", ('pesfkd_head',)),
        ('PESF-KD as the authors\' released code trains it', 'PESF-KD',
         "`PESFKDLoss`, `teacher_kl: 'released'`, `target_correction: 'swap'`", 'head adapter, `grad_accum_step: 4`',
         ('pesfkd_released',)),
        ('KDCL with the naive ensemble target', 'KDCL', "`KDCLLoss`, `target: 'naive'`", 'whole teacher trained',
         ('kdcl_naive',)),
        ('PESF-KD with a warm-up of the adapters\' KL term (not in the papers)', 'PESF-KD',
         '`PESFKDLoss`, `teacher_warmup_epochs: E`', 'adapters', ()),
        ('label correction of the released code', 'PESF-KD', "`target_correction: 'swap'` on any logit loss",
         'as the method', ()),
    ),
}
CAPTIONS = {'headline': 'Headline methods', 'baselines': 'Baselines and other methods',
            'variants': 'Combinations, ablations and the released-code variants'}
DATA = (('Fashion-MNIST', 'configs/fashion_mnist'), ('CIFAR-100', 'configs/cifar100'),
        ('ImageNet', 'configs/imagenet'), ('GLUE', 'configs/glue'))
IMAGE_NAME = re.compile(r'^(?:(?:resnet|vgg|r)\d+_){2}(?P<suffix>.+)\.yaml$')
GLUE_NAME = re.compile(r'^bert_base_uncased_bert_6l_(?P<suffix>.+)\.yaml$')


def repo_files(pattern, root=ROOT):
    """Files matching the glob ``pattern`` (relative to ``root``): those git tracks when ``root`` is a git checkout,
    so a file not committed yet does not reach the README; every file on disk otherwise."""
    import fnmatch
    import subprocess
    done = subprocess.run(['git', 'ls-files'], cwd=root, capture_output=True, text=True)
    if done.returncode != 0:
        return sorted(glob.glob(os.path.join(root, pattern), recursive=True))
    depth = pattern.count('/')
    return sorted(os.path.join(root, f) for f in done.stdout.splitlines()
                  if (f.count('/') == depth or '**' in pattern)
                  and (fnmatch.fnmatch(f, pattern) or fnmatch.fnmatch(f, pattern.replace('**/', ''))))


def suffixes(folder, root=ROOT):
    """Config suffixes present under ``folder`` (GLUE: over every task)."""
    pattern = '*/*.yaml' if folder.endswith('glue') else '*.yaml'
    rule = GLUE_NAME if folder.endswith('glue') else IMAGE_NAME
    found = set()
    for path in repo_files(f'{folder}/{pattern}', root):
        match = rule.match(os.path.basename(path))
        if match:
            found.add(match['suffix'])
    return found


def table(name, root=ROOT):
    present = {label: suffixes(folder, root) for label, folder in DATA}
    lines = ['| method | YAML switch: loss `key` | teacher side | config suffix | '
             + ' | '.join(label for label, _ in DATA) + ' |', '|' + '---|' * (4 + len(DATA))]
    for method, paper, loss, teacher, names in TABLES[name]:
        marks = [('✓' if names and all(n in present[label] for n in names) else '') for label, _ in DATA]
        configs = ', '.join(f'`_{n}`' for n in names) or '`--set` on the method\'s configs'
        lines.append(f'| [{method}]({PAPERS[paper]}) | {loss} | {teacher} | {configs} | ' + ' | '.join(marks) + ' |')
    return '\n'.join(lines)


def first_line(path):
    """The first sentence-line of a Python file's module docstring ('' when it has none)."""
    import ast
    with open(path) as f:
        doc = ast.get_docstring(ast.parse(f.read())) or ''
    line = doc.strip().split('\n')[0].strip()
    return line if len(line) <= 100 else line[:97].rsplit(' ', 1)[0] + ' ...'


def layout(root=ROOT):
    """A Markdown list: each folder of pesf_ext/ and tools/, what its ``__init__`` docstring says, and its modules."""
    lines = []
    files = repo_files('pesf_ext/**/*.py', root) + repo_files('tools/*.py', root)
    folders = sorted({os.path.dirname(p) for p in files if p.startswith(os.path.join(root, 'pesf_ext'))})
    folders.append(os.path.join(root, 'tools'))
    for folder in folders:
        rel = os.path.relpath(folder, root)
        init = os.path.join(folder, '__init__.py')
        about = first_line(init) if os.path.exists(init) else ''
        names = [os.path.basename(p) for p in files
                 if os.path.dirname(p) == folder and os.path.basename(p) != '__init__.py']
        lines.append(f'- `{rel}/`' + (f' ({about})' if about else '') + ': ' + ', '.join(f'`{n}`' for n in names))
    return '\n'.join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('table', choices=(*TABLES, 'methods', 'layout'))
    args = parser.parse_args(argv)
    if args.table == 'methods':
        text = '\n\n'.join(f'**{CAPTIONS[name]}**\n\n{table(name)}' for name in TABLES)
    else:
        text = layout() if args.table == 'layout' else table(args.table)
    print(text)
    return text


if __name__ == '__main__':
    main()
