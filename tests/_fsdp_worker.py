"""Worker of tests/test_fsdp.py, started by torchrun: runs each case of a pickled list through the causal-LM runner
(``run_lm``) one after the other in the same processes and writes, per case and rank, the training losses of every
step, the validation scores and the test figures to ``<out_dir>/<tag>_rank<r>.json``.

    python -m torch.distributed.run --nproc_per_node=2 tests/_fsdp_worker.py cases.pkl out_dir
"""
import json
import os
import pickle
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


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


def main(cases_path, out_dir):
    import torch
    torch.set_num_threads(1)
    from pesf_ext.engine import runner
    from pesf_ext.lm.runner import get_lm_args, run_lm
    losses = []
    record_losses(runner, losses)
    evaluate_lm = runner.Evaluation.run
    validations = []

    def run_and_keep(self, models, data_loader, device, header, log_freq):
        results = evaluate_lm(self, models, data_loader, device, header, log_freq)
        if header.startswith('Validation'):
            validations.append(results['student']['score'])
        return results
    runner.Evaluation.run = run_and_keep
    with open(cases_path, 'rb') as f:
        cases = pickle.load(f)
    for case in cases:
        del losses[:], validations[:]
        args = get_lm_args(['--config', 'unused.yaml', '--seed', '0', '--device', 'cpu', '--max_new_tokens', '4',
                            *case['args']])
        results = run_lm(args, config=case['config'])
        rank = int(os.environ.get('RANK', 0))
        test = {name: value for name, value in results['test'].items()}
        out = {'losses': list(losses), 'validation': list(validations), 'test': test,
               'rouge_l': results['lm'].get('rouge_l'), 'teacher_adapter_dir': results['lm'].get('teacher_adapter_dir'),
               'counts': results['counts']}
        with open(os.path.join(out_dir, f'{case["tag"]}_rank{rank}.json'), 'w') as f:
            json.dump(out, f, default=float)


if __name__ == '__main__':
    main(sys.argv[1], sys.argv[2])
