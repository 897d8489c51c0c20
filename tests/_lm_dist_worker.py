"""Run under ``torchrun`` by tests/test_lm_real_pairs.py: one causal-LM runner run from a pickled spec
(config dict, runner arguments, input ids); rank 0 saves the test-time teacher's logits on those ids.

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/_lm_dist_worker.py SPEC.pkl
"""
import os
import pickle
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pesf_ext.engine.checkpoint import unwrap  # noqa: E402
from pesf_ext.lm.runner import get_lm_args, run_lm  # noqa: E402


def main(spec_path):
    torch.set_num_threads(1)
    with open(spec_path, 'rb') as f:
        spec = pickle.load(f)
    results = run_lm(get_lm_args(spec['args'] + ['--world_size', os.environ.get('WORLD_SIZE', '1')]),
                     config=spec['config'])
    if int(os.environ.get('RANK', '0')) == 0:
        teacher = unwrap(results['_models']['teacher']).eval()
        with torch.no_grad():
            torch.save(teacher(input_ids=spec['input_ids']).logits, spec['out'])


if __name__ == '__main__':
    main(sys.argv[1])
