"""Memory of a loss path measured at the tensor level, the same on every device (CPU included): what autograd saves
for backward, and the peak of the tensors the loss creates that are alive at one time, in forward and in backward.

:func:`loss_memory` is the entry point (``tests/test_lm_chunked_loss.py`` compares the chunked and the unchunked
token-level losses with it)::

    from pesf_ext.losses.memory import loss_memory
    report = loss_memory(lambda s, t: loss_fn(s, t, labels), student_logits, teacher_logits)
    report['saved_bytes'], report['forward_peak_bytes'], report['backward_peak_bytes']

and from the command line, a side-by-side table of ``TokenKDLoss`` with and without ``chunk_tokens``::

    python -m pesf_ext.losses.memory --tokens 2048 --vocab 32768 --chunk_tokens 256 1024

Kernels' internal scratch space is not seen (only tensors are), nor the caching allocator's rounding: the figures
are the tensors' own bytes, so they do not depend on the machine.
"""
import argparse
import time
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


def storage_key(tensor):
    storage = tensor.untyped_storage()
    return storage, (storage.device.type, storage.device.index, storage.data_ptr())


class LiveTensorMeter(TorchDispatchMode):
    """Bytes of the distinct storages that the operators run inside it create and that are still alive, and their
    peak (:meth:`reset_peak` restarts the peak from the present). Storages that exist before are never counted."""
    def __init__(self, known=()):
        super().__init__()
        self.known = {storage_key(tensor)[1] for tensor in known}
        self.live, self.peak, self.tracked = 0, 0, set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                self.track(tensor)
        return out

    def track(self, tensor):
        storage, key = storage_key(tensor)
        if key[2] == 0 or key in self.known or key in self.tracked:
            return
        size = storage.nbytes()
        self.tracked.add(key)
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self.release, key, size)

    def release(self, key, size):
        self.tracked.discard(key)
        self.live -= size

    def reset_peak(self):
        self.peak = self.live


class SavedTensor:
    """What the graph holds for one saved tensor while :class:`SavedBytesMeter` is on (its lifetime is the graph's)."""
    __slots__ = ('tensor', '__weakref__')

    def __init__(self, tensor):
        self.tensor = tensor


class SavedBytesMeter:
    """Bytes of the distinct storages that some autograd graph still holds for backward (:attr:`bytes`), the
    storages of ``known`` tensors excluded. A graph freed before the end (e.g. a chunk's, differentiated inside the
    forward and dropped) no longer counts, even when the storage itself lives on."""
    def __init__(self, known=()):
        self.known = {storage_key(tensor)[1] for tensor in known}
        self.holders, self.sizes = dict(), dict()

    def pack(self, tensor):
        storage, key = storage_key(tensor)
        holder = SavedTensor(tensor)
        if key[2] != 0 and key not in self.known:
            self.holders[key] = self.holders.get(key, 0) + 1
            self.sizes[key] = storage.nbytes()
            weakref.finalize(holder, self.release, key)
        return holder

    def release(self, key):
        self.holders[key] -= 1
        if not self.holders[key]:
            del self.holders[key], self.sizes[key]

    @property
    def bytes(self):
        return sum(self.sizes.values())

    def context(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda holder: holder.tensor)


def loss_memory(loss_fn, *inputs, backward=True):
    """Runs ``loss_fn(*inputs)`` (and its backward unless ``backward`` is False) and returns a dict of bytes:

    * ``saved_bytes``: distinct storages autograd saved for backward and still held when the forward returns, the
      inputs' own storages excluded (they exist whatever the loss does);
    * ``forward_peak_bytes``: the most bytes of tensors created by the forward alive at one time;
    * ``backward_peak_bytes``: the same over the backward, counting what the forward left alive (saved tensors)
      and the gradients it produces.
    """
    saved = SavedBytesMeter(inputs)
    meter = LiveTensorMeter(inputs)
    with meter, saved.context():
        loss = loss_fn(*inputs)
    report = {'saved_bytes': saved.bytes, 'forward_peak_bytes': meter.peak}
    if backward:
        meter.reset_peak()
        with meter:
            loss.backward()
        report['backward_peak_bytes'] = meter.peak
    return report


def token_kd_inputs(tokens, vocab, update, dtype=torch.float32, seed=0, sequences=2):
    """Random (student logits, teacher logits, labels) of ``sequences`` causal-LM rows holding ``tokens`` predicted
    positions in all (after the shift), with the first eighth of each row a prompt (label -100)."""
    generator = torch.Generator().manual_seed(seed)
    length = tokens // sequences + 1
    student = torch.randn(sequences, length, vocab, generator=generator).to(dtype).requires_grad_()
    teacher = torch.randn(sequences, length, vocab, generator=generator).to(dtype)
    teacher.requires_grad_(update != 'frozen')
    labels = torch.randint(0, vocab, (sequences, length), generator=generator)
    labels[:, :length // 8] = -100
    return student, teacher, labels


def chunked_loss_comparison(tokens=2048, vocab=8192, chunk_tokens=(None, 256), updates=('frozen', 'adapters'),
                            divergence='forward_kl', logit_standardization=False, dtype=torch.float32, repeats=3):
    """Side by side, for each ``teacher_update`` and chunk size (None: unchunked), one ``TokenKDLoss`` (alpha = beta
    = 0.5) on random logits: :func:`loss_memory`'s bytes and the median seconds of forward + backward."""
    from .divergences import TokenKDLoss
    rows = []
    for update in updates:
        for chunk in chunk_tokens:
            loss = TokenKDLoss(alpha=0.5, beta=0.5, divergence=divergence, teacher_update=update,
                               logit_standardization=logit_standardization, chunk_tokens=chunk).eval()
            student, teacher, labels = token_kd_inputs(tokens, vocab, update, dtype)

            def run(s, t):
                return loss({'.': {'output': s}}, {'.': {'output': t}}, labels)

            row = {'teacher_update': update, 'chunk_tokens': chunk, **loss_memory(run, student, teacher)}
            seconds = []
            for _ in range(repeats):
                student.grad = teacher.grad = None
                start = time.perf_counter()
                run(student, teacher).backward()
                seconds.append(time.perf_counter() - start)
            row['seconds'] = sorted(seconds)[len(seconds) // 2]
            rows.append(row)
    return rows


def comparison_table(rows, tokens, vocab):
    """Markdown table of :func:`chunked_loss_comparison`'s rows, MiB and each row's ratio to the unchunked one."""
    lines = [f'{tokens} tokens x {vocab} vocabulary; one (tokens x vocabulary) float32 tensor = '
             f'{tokens * vocab * 4 / 2 ** 20:.0f} MiB', '',
             '| teacher_update | chunk_tokens | saved for backward MiB | forward peak MiB | backward peak MiB | '
             's (fwd+bwd) |', '|---|---|---|---|---|---|']
    base = {}
    for row in rows:
        base.setdefault(row['teacher_update'], row)
        ref = base[row['teacher_update']]
        cells = [f"{row[key] / 2 ** 20:.0f} ({row[key] / max(ref[key], 1):.2f}x)"
                 for key in ('saved_bytes', 'forward_peak_bytes', 'backward_peak_bytes')]
        lines.append(f"| {row['teacher_update']} | {row['chunk_tokens'] or 'off'} | {' | '.join(cells)} | "
                     f"{row['seconds']:.3f} ({row['seconds'] / ref['seconds']:.2f}x) |")
    return '\n'.join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description='Memory and time of TokenKDLoss with and without chunk_tokens')
    parser.add_argument('--tokens', type=int, default=2048)
    parser.add_argument('--vocab', type=int, default=8192)
    parser.add_argument('--chunk_tokens', type=int, nargs='+', default=[256])
    parser.add_argument('--divergence', default='forward_kl')
    parser.add_argument('--zscore', action='store_true', help='logit_standardization: True')
    parser.add_argument('--updates', nargs='+', default=['frozen', 'adapters'])
    parser.add_argument('--repeats', type=int, default=3)
    args = parser.parse_args(argv)
    rows = chunked_loss_comparison(args.tokens, args.vocab, [None] + args.chunk_tokens, args.updates, args.divergence,
                                   args.zscore, repeats=args.repeats)
    print(f'{torch.get_num_threads()} CPU threads, torch {torch.__version__}')
    print(comparison_table(rows, args.tokens, args.vocab))


if __name__ == '__main__':
    main()
