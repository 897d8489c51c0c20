"""Run under ``torchrun`` (or in-process) by tests/test_multinode.py and tests/test_dist_world_size_resume.py: one
causal-LM runner run of a config saved with ``torch.save`` (tiny models, local data), recording per rank

* ``lr``: the learning rate of every training step (read before the step), ``taid_t``: TAID's t after it;
* ``saved``: every file this process wrote with ``torch.save`` (the checkpoints);
* ``test``: the test results.

    python -m torch.distributed.run ... tests/_multinode_worker.py CONFIG.pt OUT_DIR TAG <runner args>

Results go to ``OUT_DIR/TAG_rank<global rank>.json``. ``--stop_after_epoch K`` (before the runner arguments)
raises :class:`Interrupted` once the last checkpoint after epoch K is written, as a crash would.
"""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Interrupted(RuntimeError):
    """The simulated crash after a chosen epoch."""


def taid_t(box):
    from pesf_ext.engine.checkpoint import loss_terms
    from pesf_ext.losses.divergences import TAIDSchedule
    return [float(m.t) for term in loss_terms(box.criterion).values() for m in term.modules()
            if isinstance(m, TAIDSchedule)]


def run(config_path, out_dir, tag, argv, stop_after_epoch=None):
    from pesf_ext.engine import loop, runner
    from pesf_ext.lm.runner import get_lm_args, run_lm
    record = {'lr': [], 'taid_t': [], 'saved': [], 'epochs': []}
    step_call = loop.TrainStep.__call__

    def recording_step(self, step, batch):
        record['lr'].append(self.box.optimizer.param_groups[0]['lr'])
        step_call(self, step, batch)
        record['taid_t'].append(taid_t(self.box))

    save = torch.save

    def recording_save(obj, f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)):
            record['saved'].append(os.path.abspath(f))
        elif isinstance(getattr(f, 'name', None), int):  # os.fdopen: the file behind the descriptor
            record['saved'].append(os.readlink(f'/proc/self/fd/{f.name}'))  # in-memory buffers (pickling) skipped
        return save(obj, f, *args, **kwargs)

    save_last = runner.save_last

    def interrupting_save_last(box, epoch, *args, **kwargs):
        save_last(box, epoch, *args, **kwargs)
        record['epochs'].append(epoch)
        if stop_after_epoch is not None and epoch >= stop_after_epoch:
            raise Interrupted(f'stopped after epoch {epoch}')

    loop.TrainStep.__call__, torch.save, runner.save_last = recording_step, recording_save, interrupting_save_last
    rank = int(os.environ.get('RANK', 0))
    try:
        results = run_lm(get_lm_args(argv), config=torch.load(config_path, weights_only=False))
        record['test'] = {k: v for k, v in results['test'].items()}
        record['rouge_l'] = results['lm'].get('rouge_l')
    except Interrupted:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    finally:
        loop.TrainStep.__call__, torch.save, runner.save_last = step_call, save, save_last
    with open(os.path.join(out_dir, f'{tag}_rank{rank}.json'), 'w') as f:
        json.dump(record, f, default=str)
    return record


if __name__ == '__main__':
    config_file, out, run_tag, rest = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    stop = None
    if rest[:1] == ['--stop_after_epoch']:
        stop, rest = int(rest[1]), rest[2:]
    run(config_file, out, run_tag, rest, stop)
