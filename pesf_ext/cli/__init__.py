"""Command-line programs, installed as console scripts by ``pip install .`` (see setup.py's ``entry_points``)::

    pesf-image            pesf_ext.cli.image_classification   train/distil/test one image-classification YAML
    pesf-quickstart       pesf_ext.cli.quickstart             CPU quickstart: teacher + KD, PESF-KD, FT-KD, Z-score KD
    pesf-text-quickstart  pesf_ext.cli.text_quickstart        the same on GLUE SST-2/RTE (offline MiniLM configs)
    pesf-text             pesf_ext.cli.text_classification    train/distil/test one GLUE text-classification YAML
    pesf-causal-lm        pesf_ext.cli.causal_lm              train/distil/evaluate one causal-LM YAML
    pesf-compare          pesf_ext.cli.compare                Fashion-MNIST methods x seeds x grid, one paired table
    pesf-glue-compare     pesf_ext.cli.glue_compare           the same on GLUE (offline MiniLM configs)
    pesf-analyze          pesf_ext.cli.analyze                metrics, figures, convergence, paired tests of runs
    pesf-benchmark        pesf_ext.cli.benchmark              seconds per step and activation memory side by side
    pesf-gpu-check        pesf_ext.cli.gpu_check              one markdown report checking the project on a GPU

In a clone, ``python tools/<name>.py`` runs the same ``main()``. The shipped configs are read from the clone's
``configs/`` folder, or, in an installed copy, from the copy packed into ``pesf_ext/configs`` (:mod:`.paths`).
"""
