"""Run by tests/test_distributed.py under ``torchrun``: trains one config and dumps this rank's weights/metrics."""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pesf_ext.engine import runner  # noqa: E402
from pesf_ext.engine.checkpoint import trainable_state_dict, unwrap  # noqa: E402
from pesf_ext.engine.models import build_model  # noqa: E402


def main():
    out_dir, argv = sys.argv[1], sys.argv[2:]
    rank = int(os.environ['RANK'])
    results = runner.run(runner.get_args(argv), build_model)
    models = results.pop('_models')
    teacher = unwrap(models['teacher'])
    teacher_state = teacher.adapter_state_dict() if hasattr(teacher, 'adapter_state_dict') else teacher.state_dict()
    torch.save({'student': unwrap(models['student']).state_dict(), 'teacher': teacher_state,
                'trainable_teacher_keys': sorted(trainable_state_dict(teacher))},
               os.path.join(out_dir, f'rank{rank}.pt'))
    with open(os.path.join(out_dir, f'rank{rank}.json'), 'w') as f:
        json.dump({'test': results['test'], 'counts': results['counts']}, f)


if __name__ == '__main__':
    main()
