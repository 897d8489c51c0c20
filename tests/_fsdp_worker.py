"""Worker of tests/test_fsdp.py, started by torchrun: runs each case of a pickled list through the causal-LM runner
(``run_lm``) one after the other in the same processes and writes, per case and rank, the training losses of every
step, the validation scores, the test figures and this rank's ROUGE-L generations to ``<out_dir>/<tag>_rank<r>.json``.

    python -m torch.distributed.run --nproc_per_node=2 tests/_fsdp_worker.py cases.pkl out_dir
"""
import faulthandler
import json
import os
import pickle
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
HANG_SECONDS = 60


def record_losses(runner, losses):
    """Wraps ``apply_speed`` so that every training step's loss (this rank's batch) is appended to ``losses``."""
    apply_speed = runner.apply_speed

    def recording(box, options, device):
        box = apply_speed(box, options, device)
        forward_process = box.forward_process

        def forward_and_record(*args, **kwargs):
            loss = forward_process(*args, **kwargs)
            losses.append(loss.item())
            return loss
        box.forward_process = forward_and_record
        return box
    runner.apply_speed = recording


def one_process_group(dist):
    """The runner joins and leaves the process group in every run; here the runs share one (joining again after
    each run, in the same torchrun processes, hung now and then)."""
    init_process_group, destroy_process_group = dist.init_process_group, dist.destroy_process_group

    def init_once(*args, **kwargs):
        if not dist.is_initialized():
            init_process_group(*args, **kwargs)
    dist.init_process_group, dist.destroy_process_group = init_once, lambda *args, **kwargs: None
    return destroy_process_group


def main(cases_path, out_dir):
    import torch
    from torch import distributed as dist
    torch.set_num_threads(1)
    destroy_process_group = one_process_group(dist)
    from pesf_ext.engine import runner
    from pesf_ext.engine.fsdp import is_sharded
    from pesf_ext.lm.runner import get_lm_args, run_lm
    losses = []
    record_losses(runner, losses)
    evaluation_run = runner.Evaluation.run
    validations = []

    def run_and_keep(self, models, data_loader, device, header, log_freq):
        results = evaluation_run(self, models, data_loader, device, header, log_freq)
        if header.startswith('Validation'):
            validations.append(results['student']['score'])
        return results
    runner.Evaluation.run = run_and_keep
    from pesf_ext.lm import metrics
    responses, greedy_responses = [], metrics.greedy_responses

    def respond_and_keep(*args, **kwargs):
        texts = greedy_responses(*args, **kwargs)
        responses.append(texts)
        return texts
    metrics.greedy_responses = respond_and_keep
    with open(cases_path, 'rb') as f:
        cases = pickle.load(f)
    for case in cases:
        faulthandler.dump_traceback_later(HANG_SECONDS, exit=True)  # a hang shows where every thread waits
        del losses[:], validations[:], responses[:]
        if case.get('copy') and dist.is_initialized():  # e.g. resume from another case's checkpoints, kept apart
            if dist.get_rank() == 0:
                shutil.copytree(*case['copy'])
            dist.barrier()
        args = get_lm_args(['--config', 'unused.yaml', '--seed', '0', '--device', 'cpu', *case['args']])
        results = run_lm(args, config=case['config'])
        rank = int(os.environ.get('RANK', 0))
        out = {'losses': list(losses), 'validation': list(validations), 'test': results['test'],
               'rouge_l': results['lm'].get('rouge_l'), 'responses': list(responses),
               'teacher_adapter_dir': results['lm'].get('teacher_adapter_dir'),
               'counts': results['counts'],
               'sharded': {name: is_sharded(model) for name, model in results['_models'].items()},
               'checkpointing': {name: any(getattr(m, 'gradient_checkpointing', False) for m in model.modules())
                                 for name, model in results['_models'].items()}}
        with open(os.path.join(out_dir, f'{case["tag"]}_rank{rank}.json'), 'w') as f:
            json.dump(out, f, default=float)
    faulthandler.cancel_dump_traceback_later()
    destroy_process_group()


if __name__ == '__main__':
    main(sys.argv[1], sys.argv[2])
