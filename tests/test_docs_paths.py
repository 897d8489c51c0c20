"""Docs that cannot drift: every repository path named in the README, docs/*.md, the docstrings and --help texts of
pesf_ext/ and tools/, and the examples exists; none of them uses words of the project's workshop instead of the user's.

A path is a token that starts with one of the repository's top-level folders (``configs/``, ``docs/``, ``tools/``,
``pesf_ext/``, ``tests/``, ``examples/``) or a Markdown link relative to its page; ``{a,b}`` braces, ``*``/``?``
globs and ``<placeholder>`` parts are expanded and must match at least one file. The ``..._X.yaml`` shorthand is
refused: write the path out.
"""
import ast
import glob
import itertools
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOP = ('configs', 'docs', 'tools', 'pesf_ext', 'tests', 'examples')
PATH = re.compile(r'(?<![\w./-])((?:' + '|'.join(TOP) + r')/[\w.*?{},<>/-]*[\w*?}>/])')
LINK = re.compile(r'\]\((?!https?:|#|mailto:)([^)\s#]+)')
SHORTHAND = re.compile(r'\.\.\._\w')
WORKSHOP = {
    'issue N': re.compile(r'\bissues? #?\d+', re.I),
    "the issue's": re.compile(r"\bthe issue'?s?\b(?! tracker)", re.I),
    'session': re.compile(r'\bsessions?\b', re.I),
    'helper': re.compile(r'\bhelpers?\b(?!/)', re.I),
    '../shared': re.compile(r'\.\./shared'),
    '/work/': re.compile(r'(?<![\w.])/work/'),
    'a second machine': re.compile(r'\ba second machine\b', re.I),
    'stop N': re.compile(r'\bstop \d+\b', re.I),
}
# legitimate uses: a GitHub issue of another project; RepDistiller's and the PESF-KD authors' helper/ folders
ALLOWED = (re.compile(r'GitHub issue', re.I), re.compile(r'\bhelper/'))
# folders whose contents are written by running a command (records, figures) or are inputs the user provides
GENERATED = ('runs/', 'log/', 'resource/')
# a path right after one of these flags is what a command will write
OUTPUT_FLAG = re.compile(r'--(?:out|out_dir|records_dir|run_log|samples_out|summary_json)[ =]$')
# paths in other projects' repositories, named as theirs (prefixes): torchdistill's example runners and official
# configs, the MLKD reference code (docs/baselines.md)
EXTERNAL = ('configs/official/', 'examples/torchvision/', 'examples/hf_transformers', 'tools/train.py',
            'configs/cifar100/mlkd/*.yaml',
            'pesf_ext/configs')   # the last: the configs as packed into an installed copy, not a folder of the repository


def pages():
    found = [os.path.join(ROOT, 'README.md')] + sorted(glob.glob(os.path.join(ROOT, 'docs', '*.md')))
    found += [os.path.join(ROOT, name) for name in ('CHANGELOG.md',) if os.path.exists(os.path.join(ROOT, name))]
    return found


def python_files():
    return sorted(glob.glob(os.path.join(ROOT, 'pesf_ext', '**', '*.py'), recursive=True)
                  + glob.glob(os.path.join(ROOT, 'tools', '*.py')) + glob.glob(os.path.join(ROOT, 'examples', '*.py')))


def user_strings(path):
    """Docstrings, and the ``help=``/``description=``/``epilog=`` strings of argparse calls, of one Python file."""
    with open(path) as f:
        tree = ast.parse(f.read())
    texts = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc:
                texts.append(doc)
        elif isinstance(node, ast.Call):
            for keyword in node.keywords:
                if keyword.arg in ('help', 'description', 'epilog'):
                    texts += [n.value for n in ast.walk(keyword.value)
                              if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    return texts


def sources():
    """(name, text) of every user-facing text checked here."""
    for page in pages():
        with open(page) as f:
            yield os.path.relpath(page, ROOT), f.read()
    for path in python_files():
        for text in user_strings(path):
            yield os.path.relpath(path, ROOT), text


def expansions(pattern):
    """Glob patterns of a path with ``{a,b}`` braces expanded and ``<placeholder>`` parts read as ``*``."""
    pattern = re.sub(r'<[^<>/]*>', '*', pattern)
    parts = re.split(r'(\{[^{}]*\})', pattern)
    choices = [part[1:-1].split(',') if part.startswith('{') else [part] for part in parts]
    return [''.join(combo) for combo in itertools.product(*choices)]


def exists(pattern, base=ROOT):
    pattern = pattern.rstrip('.,;:')
    return all(glob.glob(os.path.join(base, p)) for p in expansions(pattern))


def missing_paths(name, text):
    bad = []
    for match in PATH.finditer(text):
        path = match.group(1)
        if path.rstrip('/').startswith(EXTERNAL) or OUTPUT_FLAG.search(text[max(0, match.start() - 20):match.start()]):
            continue
        if path.endswith('/') and '*' not in path and '{' not in path:
            path = path.rstrip('/')
        if not exists(path):
            bad.append(path)
    if name.endswith('.md'):
        base = os.path.dirname(os.path.join(ROOT, name))
        for match in LINK.finditer(text):
            link = match.group(1)
            if not link.startswith(GENERATED) and not exists(link, base):
                bad.append(link)
    return bad


def workshop_words(text):
    found = []
    for line in text.splitlines():
        cleaned = line
        for allowed in ALLOWED:
            cleaned = allowed.sub('', cleaned)
        found += [f'{word}: {line.strip()[:120]}' for word, rule in WORKSHOP.items() if rule.search(cleaned)]
    return found


SOURCES = list(sources())


def test_every_named_path_exists():
    bad = [f'{name}: {path}' for name, text in SOURCES for path in missing_paths(name, text)]
    assert not bad, 'paths that do not exist:\n' + '\n'.join(sorted(set(bad)))


def test_no_shorthand_paths():
    bad = [f'{name}: {line.strip()[:120]}' for name, text in SOURCES for line in text.splitlines()
           if SHORTHAND.search(line)]
    assert not bad, 'write the path out instead of ..._X:\n' + '\n'.join(bad)


def test_no_workshop_words():
    bad = [f'{name}: {hit}' for name, text in SOURCES for hit in workshop_words(text)]
    assert not bad, 'words for users, not for the workshop:\n' + '\n'.join(sorted(set(bad)))


@pytest.mark.parametrize('text, words', [
    ('as reported in issue 8', ['issue N']), ('a later session resumes', ['session']),
    ('see the GitHub issue of torchdistill', []), ('cv/helper/loops.py', []), ('These helpers extend', ['helper']),
    ('data in ../shared/data/glue', ['../shared']), ('ran on a second machine', ['a second machine']),
])
def test_workshop_rule_examples(text, words):
    assert [hit.split(':')[0] for hit in workshop_words(text)] == words


def test_path_rules_examples():
    assert missing_paths('x.py', 'configs/fashion_mnist/resnet56_resnet20_{kd,pesfkd}.yaml') == []
    assert missing_paths('x.py', 'configs/fashion_mnist/resnet56_resnet20_{kd,nope}.yaml') != []
    assert missing_paths('x.py', 'configs/glue/<task>/') == []
    assert missing_paths('docs/x.md', '[a](figures/forest.png) [b](nope.md)') == ['nope.md']
    assert missing_paths('x.py', 'tools/analyze.py grid --out docs/figures/not_drawn_yet.png') == []


def test_versions_agree():
    import pesf_ext
    with open(os.path.join(ROOT, 'setup.py')) as f:
        assert f"version='{pesf_ext.__version__}'" in f.read()
    with open(os.path.join(ROOT, 'CITATION.cff')) as f:
        assert f'version: "{pesf_ext.__version__}"' in f.read()
    with open(os.path.join(ROOT, 'CHANGELOG.md')) as f:
        assert f'## [{pesf_ext.__version__}]' in f.read()
    with open(os.path.join(ROOT, 'CITATION.bib')) as f:
        assert f'version = {{{pesf_ext.__version__}}}' in f.read()


@pytest.mark.parametrize('page', ['README.md', 'docs/layout.md'])
def test_generated_blocks_are_current(page):
    """The README's method tables and docs/layout.md are what tools/readme_tables.py prints for today's repository."""
    import sys
    sys.path.insert(0, os.path.join(ROOT, 'tools'))
    from refresh_docs import refresh
    with open(os.path.join(ROOT, page)) as f:
        text = f.read()
    _, count, changed = refresh(text)
    assert count >= 1 and not changed, f'stale blocks in {page}; run: python tools/refresh_docs.py {page}'


def test_method_table_coverage_reads_the_configs(tmp_path):
    import sys
    sys.path.insert(0, os.path.join(ROOT, 'tools'))
    import readme_tables
    for path in ('configs/fashion_mnist/resnet56_resnet20_pesfkd.yaml', 'configs/cifar100/vgg13_vgg8_dkd_zscore.yaml',
                 'configs/glue/rte/bert_base_uncased_bert_6l_pesfkd.yaml', 'configs/cifar100/resnet56_teacher_ce.yaml'):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text('')
    assert readme_tables.suffixes('configs/cifar100', str(tmp_path)) == {'dkd_zscore'}   # not 'zscore', not teacher
    rows = readme_tables.table('headline', str(tmp_path)).splitlines()
    assert rows[2].endswith('| `_pesfkd` | ✓ |  |  | ✓ |')
