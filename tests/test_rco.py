"""RCO's schedule: which anchor each epoch loads, that it really loads its weights, and the YAML errors."""
import pytest
import torch
from torch import nn

from pesf_ext.engine.errors import ConfigError
from pesf_ext.rco import RCOSchedule, anchor_epochs, anchor_path, rco_schedule


def anchors(tmp_path, count):
    paths = []
    for i in range(count):
        torch.manual_seed(i)
        path = tmp_path / f'a{i}.pt'
        torch.save({'model': nn.Linear(3, 2).state_dict()}, path)
        paths.append(str(path))
    return paths


def test_each_epoch_loads_its_anchor_once(tmp_path):
    paths = anchors(tmp_path, 3)
    schedule = RCOSchedule(paths, [0, 2, 5], num_epochs=8)
    teacher = nn.Linear(3, 2)
    for epoch, expected in [(0, 0), (1, 0), (2, 1), (4, 1), (5, 2), (7, 2)]:
        assert schedule.apply(teacher, epoch) == expected
        torch.testing.assert_close(teacher.weight, torch.load(paths[expected])['model']['weight'])
    teacher.weight.data.zero_()
    schedule.apply(teacher, 7)             # already on anchor 2: not reloaded
    assert teacher.weight.abs().sum() == 0
    resumed = RCOSchedule(paths, [0, 2, 5], num_epochs=8)
    assert resumed.apply(teacher, 3) == 1  # a resumed run starts on its epoch's anchor


@pytest.mark.parametrize('switch,match', [([1, 2], 'switch_epochs'), ([0, 0], 'switch_epochs'), ([0], 'one epoch per'),
                                          ([0, 9], 'switch_epochs')])
def test_bad_schedules_name_the_key(tmp_path, switch, match):
    with pytest.raises(ConfigError, match=match):
        RCOSchedule(anchors(tmp_path, 2), switch, num_epochs=8)


def test_missing_anchor_and_process_mismatch(tmp_path):
    with pytest.raises(ConfigError, match=r'train.rco.anchors\[1\]: no such file'):
        RCOSchedule([anchors(tmp_path, 1)[0], str(tmp_path / 'missing.pt')], [0, 3], num_epochs=8)
    with pytest.raises(ConfigError, match='rco_pre_epoch_process'):
        rco_schedule({'rco': {'anchors': [], 'switch_epochs': []}}, 8)
    with pytest.raises(ConfigError, match='needs'):
        rco_schedule({'pre_epoch_process': 'rco_pre_epoch_process'}, 8)
    assert rco_schedule({}, 8) is None


def test_anchor_epochs_and_paths():
    assert anchor_epochs({'anchor_epochs': [5, 10]}, 30) == [5, 10]
    assert anchor_epochs({}, 30) == []
    for bad in ([0], [10, 5], [31], [2.5], 'x'):
        with pytest.raises(ConfigError, match='anchor_epochs'):
            anchor_epochs({'anchor_epochs': bad}, 30)
    assert anchor_path('/a/b/teacher.pt', 5) == '/a/b/teacher_ep5.pt'
