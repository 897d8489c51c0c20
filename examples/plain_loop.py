"""PESF-KD, Z-score KD or KD in a plain PyTorch loop: no torchdistill box, no YAML.

    python examples/plain_loop.py --method pesfkd --steps 200
    python examples/plain_loop.py --method zscore --steps 200

A small CNN teacher is first trained on a synthetic 10-class task (so the example needs no data set), then a
smaller student learns from it. With ``pesfkd`` a zero-initialised bottleneck adapter is hooked onto the teacher's
last block: the teacher's own weights and BatchNorm statistics stay frozen, and only the student and the adapter
(lr 2e-5 by default, the PESF-KD authors' ``--adapter_lr``) train. Replace ``make_models`` and ``batches`` by your
own models and data loader.
"""
import argparse

import torch
from torch import nn

import pesf_ext.plain as pk


class SmallCNN(nn.Module):
    """conv -> BN -> ReLU blocks, then a linear head; ``block2`` is where the teacher's adapter goes."""
    def __init__(self, width, classes=10):
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, stride=2), nn.BatchNorm2d(width), nn.ReLU())
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        return self.fc(self.block2(self.block1(x)).mean(dim=(2, 3)))


def make_models():
    return SmallCNN(32), SmallCNN(8)


def batches(steps, batch_size=32, seed=0):
    """A synthetic task: the class sets which of 10 image rows is bright."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        y = torch.randint(0, 10, (batch_size,), generator=generator)
        x = 0.5 * torch.randn(batch_size, 1, 10, 10, generator=generator)
        x[torch.arange(batch_size), 0, y] += 1.0
        yield x, y


def train_teacher(teacher, steps):
    optimizer = torch.optim.SGD(teacher.parameters(), lr=0.1, momentum=0.9)
    teacher.train()
    for x, y in batches(steps, seed=1):
        loss = nn.functional.cross_entropy(teacher(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def distil(teacher, student, method, steps, lr=0.05, adapter_lr=2e-5):
    """Trains ``student`` from ``teacher`` for ``steps`` batches; returns (adapters or None, last loss)."""
    params = [{'params': student.parameters(), 'lr': lr}]
    adapters = None
    if method == 'pesfkd':
        adapters = pk.add_adapters(teacher, [{'modules': ['block2'], 'kind': 'bottleneck', 'bottleneck': 4}],
                                   input_shape=[1, 1, 10, 10])
        params.append({'params': adapters.parameters(), 'lr': adapter_lr})
        loss_fn = pk.pesfkd_loss(temperature=4.0, alpha=0.1, beta=0.9)
    else:
        for param in teacher.parameters():
            param.requires_grad = False
        teacher.eval()
        loss_fn = pk.zscore_kd_loss() if method == 'zscore' else pk.kd_loss()
    optimizer = torch.optim.SGD(params, momentum=0.9, weight_decay=5e-4)
    student.train()
    loss = None
    for x, y in batches(steps, seed=2):
        teacher_logits = teacher(x)    # PESF-KD: with grad (the adapter trains); the loss detaches what it must
        loss = loss_fn(student(x), teacher_logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return adapters, loss.item()


@torch.no_grad()
def accuracy(model, steps=20):
    model.eval()
    hits = total = 0
    for x, y in batches(steps, seed=3):
        hits += (model(x).argmax(1) == y).sum().item()
        total += len(y)
    return 100.0 * hits / total


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--method', default='pesfkd', choices=('pesfkd', 'zscore', 'kd'))
    parser.add_argument('--steps', type=int, default=200, help='distillation steps (default: %(default)s)')
    parser.add_argument('--teacher_steps', type=int, default=200, help='teacher training steps (default: %(default)s)')
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    teacher, student = make_models()
    train_teacher(teacher, args.teacher_steps)
    adapters, loss = distil(teacher, student, args.method, args.steps)
    trainable = sum(p.numel() for p in adapters.parameters()) if adapters is not None else 0
    print(f'{args.method}: last loss {loss:.4f}, teacher top-1 {accuracy(teacher):.1f}%, '
          f'student top-1 {accuracy(student):.1f}%, trainable teacher parameters {trainable:,}')
    return teacher, student, adapters


if __name__ == '__main__':
    main()
