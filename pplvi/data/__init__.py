"""Offline datasets for examples, tests and benchmarks, read from ``$PPLVI_DATA`` (default: the nearest
``shared/data`` folder above the current directory or the package). Nothing is ever downloaded; a missing or
corrupt file raises :class:`pplvi.DataError` saying which file, where it was looked for, and how to provide
it.

>>> from pplvi.data import load_mnist
>>> images, labels = load_mnist("test", binarize="static")  # (10000, 28, 28) in {0, 1}, (10000,) int32
"""

from pplvi.data._store import ENV_VAR, SHA256, data_dir
from pplvi.data.datasets import (
    load_digits,
    load_fashion_mnist,
    load_mnist,
    load_omniglot,
    load_omniglot_oneshot,
    load_omniglot_strokes,
    load_timegan,
    load_timegan_raw,
    minmax_windows,
    sines,
)

__all__ = [
    "ENV_VAR", "SHA256", "data_dir", "load_digits", "load_fashion_mnist", "load_mnist", "load_omniglot",
    "load_omniglot_oneshot", "load_omniglot_strokes", "load_timegan", "load_timegan_raw", "minmax_windows",
    "sines",
]
