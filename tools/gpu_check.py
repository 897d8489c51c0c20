"""One command that checks the project on a GPU and prints one markdown report: a thin script around
:mod:`pesf_ext.cli.gpu_check` (installed as ``pesf-gpu-check``)::

    python tools/gpu_check.py                    # one CUDA GPU: under 8 minutes on an H100 (--budget_s 450)
    python tools/gpu_check.py --device cpu       # tiny sizes, gloo, fp16 autocast on the CPU (a smoke run)

The report goes to --output (default gpu_check.md) section by section; the sections' logs to <its stem>_logs/.

``import gpu_check`` (the tests) gets the package module itself.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pesf_ext.cli import gpu_check as _gpu_check  # noqa: E402

if __name__ == '__main__':
    sys.exit(_gpu_check.main())
else:
    sys.modules[__name__] = _gpu_check
