"""Multi-stage training (torchdistill's ``train.stage1``, ``train.stage2``, ...): what the runner adds to
torchdistill's ``MultiStagesDistillationBox``.

* ``pre_epoch_process`` / ``post_epoch_process`` at the top of ``train`` apply to every stage that does not set its
  own (the runner's ``distillation_pre_epoch_process`` default included), so ``--set +train.post_epoch_process=...``
  reaches all stages;
* ``-resume`` advances the box to the stage of the epoch it resumes at before loading the state;
* the parameter counts are the most each side trains in any stage (e.g. FT's student trains in stage 2 only).
"""
from .errors import ConfigError


def stage_keys(train_config):
    """``['stage1', 'stage2', ...]`` in order (empty for a single-stage config)."""
    keys = [k for k in train_config if k.startswith('stage')]
    if keys and sorted(keys) != [f'stage{i}' for i in range(1, len(keys) + 1)]:
        raise ConfigError(f'train: stages must be stage1, stage2, ... without gaps, got {sorted(keys)}')
    return [f'stage{i}' for i in range(1, len(keys) + 1)]


def apply_stage_defaults(train_config, pre_epoch_default):
    for key in stage_keys(train_config):
        stage = train_config[key]
        stage.setdefault('pre_epoch_process', train_config.get('pre_epoch_process', pre_epoch_default))
        if 'post_epoch_process' in train_config:
            stage.setdefault('post_epoch_process', train_config['post_epoch_process'])


def is_multi_stage(box):
    return hasattr(box, 'stage_end_epoch')


def advance_to_epoch(box, epoch):
    """Moves a multi-stage box to the stage that trains ``epoch`` (0-based), as if the epochs before had run."""
    if not is_multi_stage(box):
        return
    while box.stage_end_epoch <= epoch < box.num_epochs:
        box.advance_to_next_stage()
    box.current_epoch = epoch


def merge_counts(counts, new_counts):
    """Per model, the (trainable, total) of the stage that trains more (a stage's wrappers add to its total)."""
    return {name: max(count, new_counts.get(name, count)) for name, count in counts.items()}
