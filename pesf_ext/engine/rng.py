"""Paired seeds: with the same ``--seed`` every method gives the student the same initialisation and the same
sequence of training batches (order and augmentations), whatever the teacher side builds or draws.

Three random streams, each derived from the seed, instead of torch's one global generator:

- the **student** is built under ``seed_for(seed, 'student')``;
- the **teacher side** (adapters, CRD heads and memory, any loss module with parameters or buffers) is built
  under ``seed_for(seed, 'teacher_side')`` with the global state restored afterwards, so it draws nothing from
  the other streams however many numbers it needs;
- the **training data** (sampler order, augmentations in the main process, worker seeds) runs on its own state,
  swapped in around each batch fetch by :class:`DataStream`; whatever the training step draws (dropout, CRD's
  negative sampling) stays on the global generator and never shifts the batches.

Several processes (torchrun): the student and the teacher side are built from the same seeds on every rank, so
initialisations are identical everywhere (and paired across methods). The data stream and the global generator
(dropout, CRD's negatives, worker seeds) get a rank term, so each rank draws its own augmentations and masks:
rank 0 keeps exactly the single-process streams, rank k > 0 uses ``seed_for(seed, stream, rank=k)``.
``DistributedSampler``'s order does not come from these streams (it permutes with its own seed + epoch, then
shards), so all ranks agree on it; :func:`seed_distributed_sampler` gives it a seed derived from ``--seed``.
"""
import contextlib
import hashlib
import os
import random

import numpy as np
import torch

STREAMS = ('student', 'teacher_side', 'data')


def seed_for(seed, stream, rank=0):
    """A 63-bit seed for ``stream`` derived from ``seed``: SHA-256 of ``'<seed>/<stream>'`` (``seed`` None = 0), or
    of ``'<seed>/<stream>/rank<k>'`` for a process of rank k > 0 (rank 0 draws what a single process draws)."""
    key = f'{0 if seed is None else seed}/{stream}' + (f'/rank{rank}' if rank else '')
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], 'little') & (2 ** 63 - 1)


def _get_state():
    return {'python': random.getstate(), 'numpy': np.random.get_state(), 'torch': torch.get_rng_state()}


def _set_state(state):
    random.setstate(state['python'])
    np.random.set_state(state['numpy'])
    torch.set_rng_state(state['torch'])


def _seeded_state(seed):
    saved = _get_state()
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
    state = _get_state()
    _set_state(saved)
    return state


@contextlib.contextmanager
def isolated_stream(seed, stream):
    """Runs the block with the CPU generators (python, numpy, torch) seeded for ``stream`` and restores the
    global states afterwards. CUDA generators are forked too (model initialisation happens on CPU in torch,
    so CUDA only matters for code that samples on the GPU)."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        saved = _get_state()
        _set_state(_seeded_state(seed_for(seed, stream)))
        try:
            yield
        finally:
            _set_state(saved)


def seed_global(seed):
    """Seeds python's, numpy's and torch's global generators (torch's seeds every CUDA device too)."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def seed_global_for_rank(seed, rank):
    """Gives rank k > 0 its own global stream (dropout, CRD negatives) from ``seed_for(seed, 'global', k)``; rank 0
    keeps the state the single-process run has. Call it after the models are built (their initialisations must
    stay identical on every rank) and before training."""
    if rank:
        seed_global(seed_for(seed, 'global', rank))


def fresh_streams(seed, epoch, rank):
    """Global and data streams for a run resumed on a different number of processes than it was saved with: the
    saved per-rank states cannot be matched to the new ranks, so each rank seeds anew from (seed, resumed epoch,
    rank). Returns the data state for :meth:`DataStream.load_state_dict`."""
    seed_global(seed_for(seed, f'global/resume{epoch}', rank))
    return _seeded_state(seed_for(seed, f'data/resume{epoch}', rank))


CUBLAS_WORKSPACE = ':4096:8'


def set_cublas_workspace():
    """cuBLAS is deterministic only with a fixed workspace (``CUBLAS_WORKSPACE_CONFIG``), read when its first
    handle is created: set it before any CUDA computation. A value the user exported is kept."""
    os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', CUBLAS_WORKSPACE)


def apply_determinism():
    """``speed.deterministic: True`` / ``-deterministic``: the same seed gives the same result on the same GPU model,
    driver and number of processes. Deterministic algorithms everywhere (an op without one raises an error naming
    it), cuDNN's benchmark off (it picks kernels by timing) and its deterministic kernels on, cuBLAS's fixed
    workspace. Slower on GPUs; on CPUs runs are already deterministic."""
    set_cublas_workspace()
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True


def seed_distributed_sampler(loader, seed):
    """Sets the seed of ``loader``'s ``DistributedSampler`` (torchrun's training loader) from ``seed``: it is 0
    unless set, so without this every ``--seed`` would see the same example order. The same on every rank (each
    rank must shard the same permutation). Returns the sampler's seed, or None for another sampler."""
    sampler = getattr(loader, 'sampler', None)
    if not isinstance(sampler, torch.utils.data.DistributedSampler):
        return None
    sampler.seed = seed_for(seed, 'data') % 2 ** 31
    return sampler.seed


class DataStream:
    """Keeps the training data loader on its own random state: each ``iter()`` and ``next()`` of the wrapped
    loader runs with the data state swapped in, and the global state is put back before the training step.
    ``rank`` > 0 (torchrun) gives a process its own stream (augmentations, worker seeds); rank 0 = single process."""

    def __init__(self, seed, rank=0):
        self.state = _seeded_state(seed_for(seed, 'data', rank))

    @contextlib.contextmanager
    def active(self):
        saved = _get_state()
        _set_state(self.state)
        try:
            yield
        finally:
            self.state = _get_state()
            _set_state(saved)

    def wrap(self, loader):
        return loader if isinstance(loader, StreamLoader) else StreamLoader(loader, self)

    def state_dict(self):
        return self.state

    def load_state_dict(self, state):
        self.state = state


class StreamLoader:
    """A data loader seen through :class:`DataStream`; every other attribute (sampler, dataset, ...) is the
    loader's own."""

    def __init__(self, loader, stream):
        self.loader, self.stream = loader, stream

    def __len__(self):
        return len(self.loader)

    def __getattr__(self, name):
        return getattr(self.__dict__['loader'], name)

    def __iter__(self):
        with self.stream.active():
            iterator = iter(self.loader)
        while True:
            with self.stream.active():
                try:
                    batch = next(iterator)
                except StopIteration:
                    return
            yield batch


__all__ = ['seed_for', 'isolated_stream', 'seed_global', 'seed_global_for_rank', 'fresh_streams', 'seed_distributed_sampler', 'apply_determinism',
           'set_cublas_workspace', 'DataStream',
           'StreamLoader']
