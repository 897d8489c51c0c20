"""-resume on another number of processes keeps step-wise schedules at the same fraction of training: a causal-LM
run (linear warm-down lr, TAID's linear t) saved after epoch 1 of 2 on one process and resumed on two gloo
processes takes, step by step, the learning rates and t of a two-process run from scratch (their formulas); unsound
remaps stop with one line."""
import json
import os
import subprocess
import sys
import types

import pytest
import torch

from test_lm_configs import ROOT, shrink, tiny_dirs  # noqa: F401 (tiny_dirs: the module-scoped fixture)
from pesf_ext.engine.checkpoint import remap_steps
from pesf_ext.engine.config import load_config
from pesf_ext.engine.errors import ConfigError

WORKER = os.path.join(ROOT, 'tests', '_multinode_worker.py')
CONFIG = os.path.join(ROOT, 'configs/causal_lm_offline/gpt2_4l_gpt2_2l_stdlib_taid.yaml')
TRAIN, BATCH, EPOCHS = 16, 2, 2  # 8 steps per epoch on one process, 4 on two


def taid_config(dirs, tmp_path):
    config = shrink(load_config(CONFIG), dirs, tmp_path)
    config['train']['num_epochs'] = EPOCHS
    taid = config['train']['criterion']['kwargs']['sub_terms']['taid']['criterion']['kwargs']['taid']
    taid['adaptive'] = False  # t = t_start + (t_end - t_start) * step / total_steps: a function of the step alone
    path = tmp_path / 'config.pt'
    torch.save(config, path)
    return str(path)


def runner_args(tmp_path, ckpt_dir, *extra):
    return ['--config', 'unused.yaml', '--seed', '0', '--device', 'cpu', '--cache_dir', str(tmp_path / 'cache'),
            '--set', f'models.student_model.dst_ckpt={ckpt_dir}/student.pt', *extra]


def torchrun(nproc, config, out_dir, tag, argv):
    command = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={nproc}', WORKER,
               config, str(out_dir), tag, *argv]
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300,
                          cwd=ROOT, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert done.returncode == 0, done.stdout[-4000:]
    return done.stdout, [json.load(open(out_dir / f'{tag}_rank{rank}.json')) for rank in range(nproc)]


def test_one_to_two_processes_keeps_the_schedule(tiny_dirs, tmp_path):  # noqa: F811
    import _multinode_worker
    config = taid_config(tiny_dirs, tmp_path)
    first = _multinode_worker.run(config, str(tmp_path), 'first', runner_args(tmp_path, tmp_path / 'saved'),
                                  stop_after_epoch=0)
    assert first['epochs'] == [0] and len(first['lr']) == TRAIN // BATCH
    saved = torch.load(tmp_path / 'saved' / 'student_last.pt', weights_only=False)
    assert saved['steps'] == {'world_size': 1, 'steps_per_epoch': 8, 'total_steps': 16, 'stage_grad_count': 8}
    log, resumed = torchrun(2, config, tmp_path, 'resumed', runner_args(tmp_path, tmp_path / 'saved', '-resume'))
    assert 'step-wise scheduler moved from step 8 to 4' in log and 'TAID step moved from 8 to 4' in log
    per_epoch, total = TRAIN // BATCH // 2, EPOCHS * TRAIN // BATCH // 2
    lr0, t_start, t_end = first['lr'][0], 0.4, 1.0
    # what a 2-process run from scratch takes at its steps 4..7 of 8: the linear schedule lr_k = lr0 (1 - k / N), and
    # TAID's linear t after step k, t_start + (t_end - t_start) k / N (the progress before the step)
    for rank in range(2):
        assert resumed[rank]['lr'] == pytest.approx([lr0 * (1 - k / total) for k in range(per_epoch, total)],
                                                    rel=1e-12)
        assert min(resumed[rank]['lr']) > 0  # the schedule reaches 0 after the last step, not an epoch early
        assert [t for (t,) in resumed[rank]['taid_t']] == pytest.approx(
            [t_start + (t_end - t_start) * k / total for k in range(per_epoch, total)], rel=1e-12)
    assert first['lr'] == pytest.approx([lr0 * (1 - k / 16) for k in range(8)], rel=1e-12)  # 1 process: N = 16
    end = torch.load(tmp_path / 'saved' / 'student_last.pt', weights_only=False)
    assert end['lr_scheduler']['last_epoch'] == total and end['epoch'] == 1
    assert end['steps'] == {'world_size': 2, 'steps_per_epoch': 4, 'total_steps': 8, 'stage_grad_count': 8}
    taid_state = {k: v for k, v in end['criterion'].items() if k.startswith('term_dict.taid.taid.')}
    assert int(taid_state['term_dict.taid.taid.step']) == total


def box_with(scheduler_cls, steps_per_epoch, **kwargs):
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=0.1)
    return types.SimpleNamespace(optimizer=optimizer, lr_scheduler=scheduler_cls(optimizer, **kwargs),
                                 scheduling_step=1, criterion=None, train_data_loader=range(steps_per_epoch),
                                 num_epochs=2, stage_grad_count=0)


def saved_state():
    """The step record of a one-process run saved after epoch 1 of 2 at 8 steps per epoch."""
    return {'world_size': 1, 'rng_per_rank': [{}], 'steps': {'world_size': 1, 'steps_per_epoch': 8,
                                                             'total_steps': 16, 'stage_grad_count': 8}}


def test_linear_lambda_schedule_moves_to_the_same_fraction():
    from transformers import get_linear_schedule_with_warmup
    box = box_with(lambda opt: get_linear_schedule_with_warmup(opt, 2, 8), 4)  # resumed: 4 steps x 2 epochs
    state = saved_state()
    base = list(box.lr_scheduler.base_lrs)
    box.lr_scheduler.last_epoch = 8  # where the one-process run stopped (half of its 16 steps)
    remap_steps(box, state, base)
    assert box.lr_scheduler.last_epoch == 4 and box.stage_grad_count == 4
    assert box.optimizer.param_groups[0]['lr'] == pytest.approx(0.1 * (8 - 4) / (8 - 2))  # HF: (N - k) / (N - w)


def test_unsound_remaps_stop_with_one_line():
    box = box_with(torch.optim.lr_scheduler.MultiplicativeLR, 4, lr_lambda=lambda step: 0.9)
    state = saved_state()
    with pytest.raises(ConfigError, match=r'train.scheduler: saved with 1 process\(es\) at 8 steps per epoch.*'
                                          r'MultiplicativeLR does not give its learning rate from the step count'):
        remap_steps(box, state, [0.1])
    state = {'world_size': 1, 'rng': None}  # written before step counts were recorded, read on 2 processes
    with pytest.raises(ConfigError, match='cannot be remapped to 2: resume with 1'):
        import pesf_ext.engine.checkpoint as checkpoint
        original = checkpoint.get_world_size
        checkpoint.get_world_size = lambda: 2
        try:
            remap_steps(box, state, [0.1])
        finally:
            checkpoint.get_world_size = original
    epoch_wise = box_with(torch.optim.lr_scheduler.MultiplicativeLR, 4, lr_lambda=lambda step: 0.9)
    epoch_wise.scheduling_step = 0  # stepped once per epoch: nothing to remap, no error
    remap_steps(epoch_wise, saved_state(), [0.1])
    assert epoch_wise.lr_scheduler.last_epoch == 0 and epoch_wise.stage_grad_count == 4
