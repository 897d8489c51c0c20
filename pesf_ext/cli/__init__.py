"""Command-line programs, installed as console scripts by ``pip install .`` (see setup.py's ``entry_points``)::

    pesf-image            pesf_ext.cli.image_classification   train/distil/test one image-classification YAML
    pesf-quickstart       pesf_ext.cli.quickstart             CPU quickstart: teacher + KD, PESF-KD, FT-KD, Z-score KD
    pesf-text-quickstart  pesf_ext.cli.text_quickstart        the same on GLUE SST-2/RTE (offline MiniLM configs)

In a clone, ``python tools/<name>.py`` runs the same ``main()``. The shipped configs are read from the clone's
``configs/`` folder, or, in an installed copy, from the copy packed into ``pesf_ext/configs`` (:mod:`.paths`).
"""
