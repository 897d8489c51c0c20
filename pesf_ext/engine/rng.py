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
"""
import contextlib
import hashlib
import random

import numpy as np
import torch

STREAMS = ('student', 'teacher_side', 'data')


def seed_for(seed, stream):
    """A 63-bit seed for ``stream`` derived from ``seed`` (SHA-256 of ``'<seed>/<stream>'``; ``seed`` None = 0)."""
    digest = hashlib.sha256(f'{0 if seed is None else seed}/{stream}'.encode()).digest()
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


class DataStream:
    """Keeps the training data loader on its own random state: each ``iter()`` and ``next()`` of the wrapped
    loader runs with the data state swapped in, and the global state is put back before the training step."""

    def __init__(self, seed):
        self.state = _seeded_state(seed_for(seed, 'data'))

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


__all__ = ['seed_for', 'isolated_stream', 'DataStream', 'StreamLoader']
