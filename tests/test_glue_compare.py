"""tools/glue_compare.py without training: records kept across machines (--records_dir) and the teacher check."""
import json
import os

import pytest

import glue_compare
from quickstart import summary_path


def summary(accuracy, teacher=None):
    test = {'student': {'accuracy': accuracy}}
    counts = {'student': [100, 100]}
    if teacher is not None:
        test.update(teacher={'accuracy': teacher}, sharpness_gap=0.1)
        counts['teacher'] = [0, 200]
    return {'test': test, 'seconds_per_step': 1.0, 'counts': counts}


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        json.dump(data, f)


@pytest.fixture
def fake_runs(monkeypatch):
    calls = []

    def fake_run(config, out_dir, label, seed, overrides, resume=True, script=None):
        calls.append(label)
        if label == 'teacher':
            ckpt = next(o.split('=', 1)[1] for o in overrides if o.startswith('models.model.dst_ckpt='))
            write(ckpt, {})
            write(summary_path(out_dir, label), summary(fake_run.teacher_accuracy))
        else:
            write(summary_path(out_dir, label), summary(70.0 + seed, teacher=80.0))
    fake_run.teacher_accuracy = 80.0
    monkeypatch.setattr(glue_compare, 'run', fake_run)
    return fake_run, calls


def test_records_dir_resumes_on_a_fresh_machine(tmp_path, fake_runs):
    fake_run, calls = fake_runs
    records = tmp_path / 'records'
    write(summary_path(str(records), 'teacher'), summary(80.0))
    write(summary_path(str(records), 'kd_seed0'), summary(70.0, teacher=80.0))
    args = ['--task', 'rte', '--methods', 'kd', '--out_dir', str(tmp_path / 'runs'), '--records_dir', str(records)]
    glue_compare.main(args + ['--seeds', '1'])
    assert calls == []                              # everything finished already: nothing reruns
    glue_compare.main(args + ['--seeds', '2'])
    assert calls == ['teacher', 'kd_seed1']         # the missing teacher checkpoint is made again, first
    assert os.path.isfile(summary_path(str(records), 'kd_seed1'))   # and the new run is kept in the records


def test_a_teacher_that_does_not_reproduce_stops_the_comparison(tmp_path, fake_runs):
    fake_run, calls = fake_runs
    records = tmp_path / 'records'
    write(summary_path(str(records), 'teacher'), summary(80.0))
    write(summary_path(str(records), 'kd_seed0'), summary(70.0, teacher=80.0))
    fake_run.teacher_accuracy = 79.0
    with pytest.raises(SystemExit, match='another teacher'):
        glue_compare.main(['--task', 'rte', '--methods', 'kd', '--seeds', '2', '--out_dir', str(tmp_path / 'runs'),
                           '--records_dir', str(records)])
    assert calls == ['teacher']


def test_only_finished_runs_are_copied(tmp_path):
    source, target = tmp_path / 'a', tmp_path / 'b'
    write(summary_path(str(source), 'kd_seed0'), summary(70.0, teacher=80.0))
    for label in ('kd_seed0', 'ftkd_seed0'):    # ftkd_seed0 is still running: records without a summary
        (source / 'logs').mkdir(parents=True, exist_ok=True)
        (source / 'logs' / f'{label}_epochs.jsonl').write_text('{"epoch": 0}\n')
    glue_compare.copy_records(str(source), str(target))
    assert os.path.isfile(summary_path(str(target), 'kd_seed0'))
    assert (target / 'logs' / 'kd_seed0_epochs.jsonl').is_file()
    assert not (target / 'logs' / 'ftkd_seed0_epochs.jsonl').exists()
