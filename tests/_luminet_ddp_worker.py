"""Run by tests/test_ttm_luminet.py under ``torch.distributed.run`` (2 CPU processes, gloo): each rank computes
LumiNetLoss on its half of one fixed batch, for both ``batch_statistics`` choices, and rank 0 saves the summed
losses and the student-logit gradients gathered from both ranks."""
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pesf_ext.losses import LumiNetLoss  # noqa: E402

PATHS = dict(student_module_path='.', student_module_io='output', teacher_module_path='.', teacher_module_io='output')


def main():
    out_path = sys.argv[1]
    dist.init_process_group('gloo')
    rank, world = dist.get_rank(), dist.get_world_size()
    generator = torch.Generator().manual_seed(0)
    z_s = torch.randn(8, 5, generator=generator) * 2
    z_t = torch.randn(8, 5, generator=generator) * 3
    targets = torch.randint(0, 5, (8,), generator=generator)
    rows = slice(rank * 8 // world, (rank + 1) * 8 // world)
    results = {}
    for mode in ('local', 'global'):
        leaf = z_s.clone().requires_grad_(True)
        loss_fn = LumiNetLoss(**PATHS, temperature=2.0, alpha=0.0, beta=1.0, batch_statistics=mode)
        loss = loss_fn({'.': {'output': leaf[rows]}}, {'.': {'output': z_t[rows]}}, targets[rows])
        loss.backward()
        total, grad = loss.detach().clone(), leaf.grad.clone()
        dist.all_reduce(total)
        dist.all_reduce(grad)
        results[mode] = {'loss_sum': total, 'grad': grad}
    if rank == 0:
        torch.save(results, out_path)
    dist.destroy_process_group()


if __name__ == '__main__':
    main()
