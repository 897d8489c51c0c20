"""Test-only stand-in for the ``classes`` attribute that torchdistill's ``CRDDatasetWrapper`` reads.

``CRDDatasetWrapper.__init__`` does ``len(dataset.classes)`` and indexes ``dataset.targets``. The Fashion-MNIST
split (a ``torch.utils.data.Subset`` from :func:`pesf_ext.data.fashion_mnist`) and the synthetic ``RandomImages`` of
:mod:`pesf_ext.engine.synthetic` have ``targets`` but no ``classes``. Until they do, :func:`give_datasets_classes`
adds a *non-data* descriptor to those classes: an instance's own ``classes`` (the proper fix) still wins, and a
class that defines ``classes`` itself is left alone, so this shim becomes a no-op once the fix lands.
"""
from torch.utils.data import Subset

from pesf_ext.engine.synthetic import RandomImages


class ClassesFromTargets:
    """``dataset.classes``: a Subset's parent classes, else one class per label up to the largest target."""

    def __get__(self, dataset, owner=None):
        if dataset is None:
            return self
        if isinstance(dataset, Subset):
            return dataset.dataset.classes
        return list(range(int(max(dataset.targets)) + 1))


def give_datasets_classes(monkeypatch):
    for cls in (Subset, RandomImages):
        if 'classes' not in vars(cls):
            monkeypatch.setattr(cls, 'classes', ClassesFromTargets(), raising=False)
