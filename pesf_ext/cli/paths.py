"""Where the command-line programs find the shipped configs and where they run: in a clone, its ``configs/`` and its
root (as ``python tools/<name>.py`` always did); in an installed copy, the configs packed into ``pesf_ext/configs``
by setup.py and the current directory."""
import os

PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKOUT_DIR = os.path.dirname(PACKAGE_DIR)


def checkout_root():
    """The clone this package is imported from (a folder holding configs/ and tools/ beside pesf_ext/), else None."""
    is_clone = all(os.path.isdir(os.path.join(CHECKOUT_DIR, d)) for d in ('configs', 'tools'))
    return CHECKOUT_DIR if is_clone else None


def configs_dir():
    root = checkout_root()
    return os.path.join(root, 'configs') if root else os.path.join(PACKAGE_DIR, 'configs')


def work_dir():
    """The folder runs start in: the clone's root (its configs' ./resource paths), else the current directory."""
    return checkout_root() or os.getcwd()


def tools_dir():
    root = checkout_root()
    return os.path.join(root, 'tools') if root else None
