"""Loaders for the small real datasets in ``shared/data`` (see its README.md) and TimeGAN's synthetic sines.

Every loader returns NumPy arrays (images as float32 in [0, 1], labels as int32), reads only local files,
checks each file's sha256 the first time it is read in a process, and raises :class:`~pplvi.DataError` naming
the missing or corrupt file, the data directory it resolved, and how to provide it (``$PPLVI_DATA``).
"""

from __future__ import annotations

import numpy as np

from pplvi.data import _store

_TIMEGAN_FILES = {"stock": "timegan/stock_data.csv", "energy": "timegan/energy_data.csv.gz"}
_OMNIGLOT_FILES = {
    "small1": "omniglot/omniglot_background_small1.npz",
    "small2": "omniglot/omniglot_background_small2.npz",
}


def _choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not one of {list(allowed)}")


def _binarize(x: np.ndarray, binarize: str | None) -> np.ndarray:
    _choice("binarize", binarize, (None, "static"))
    return (x > 0.5).astype(np.float32) if binarize == "static" else x


def load_mnist(split: str = "train", binarize: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """MNIST: ``(images, labels)``, images float32 (N, 28, 28) in [0, 1], labels int32 (N,).

    ``split``: ``"train"`` (60,000) or ``"test"`` (10,000). ``binarize="static"`` thresholds pixels at 0.5 (a
    fixed, deterministic binarization; not the Larochelle "binarized MNIST" set, which is not shipped)."""
    _choice("split", split, ("train", "test"))
    if split == "train":
        raw = np.concatenate([_store.read_idx(f"mnist/train-images-idx3-ubyte.part{i}.gz") for i in range(3)])
        labels = _store.read_idx("mnist/train-labels-idx1-ubyte.gz")
    else:
        raw = _store.read_idx("mnist/t10k-images-idx3-ubyte.gz")
        labels = _store.read_idx("mnist/t10k-labels-idx1-ubyte.gz")
    return _binarize(raw.astype(np.float32) / 255.0, binarize), labels.astype(np.int32)


def load_fashion_mnist(split: str = "train", binarize: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST: ``(images, labels)`` as in :func:`load_mnist`.

    ``"test"`` is the full test set (10,000); ``"train"`` is the first 10,000 training images, the part
    shipped in shared/data (the full set: ``apt-get install dataset-fashion-mnist``)."""
    _choice("split", split, ("train", "test"))
    name = "train" if split == "train" else "t10k"
    parts = [f"fashion-mnist/{name}-images-idx3-ubyte.part{i}.gz" for i in range(2)]
    raw = np.concatenate([_store.read_idx(part) for part in parts])
    labels = _store.read_idx(f"fashion-mnist/{name}-labels-idx1-ubyte.gz")[: len(raw)]
    return _binarize(raw.astype(np.float32) / 255.0, binarize), labels.astype(np.int32)


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """The UCI / scikit-learn 8x8 digits: images float32 (1797, 8, 8) in [0, 1] (pixel / 16), labels int32."""
    d = _store.read_csv("sklearn-digits/digits.csv.gz", header=False)
    return (d[:, :64].reshape(-1, 8, 8) / 16.0).astype(np.float32), d[:, 64].astype(np.int32)


def load_timegan_raw(name: str = "stock") -> np.ndarray:
    """A TimeGAN table as stored: ``"stock"`` (3685, 6) or ``"energy"`` (19735, 28), float64, no header."""
    _choice("name", name, tuple(_TIMEGAN_FILES))
    return _store.read_csv(_TIMEGAN_FILES[name], header=True)


def minmax_windows(x: np.ndarray, seq_len: int = 24, shuffle: bool = True, seed: int = 0) -> np.ndarray:
    """TimeGAN's preprocessing of a (T, D) series: reverse the rows, min-max scale each column to [0, 1]
    (``(x - min) / (max - min + 1e-7)``), cut all ``T - seq_len`` overlapping windows of ``seq_len`` rows, and
    shuffle them. Returns float32 (T - seq_len, seq_len, D)."""
    x = np.asarray(x, np.float64)[::-1]
    lo = x.min(0)
    x = (x - lo) / (x.max(0) - lo + 1e-7)
    if not 0 < seq_len < len(x):
        raise ValueError(f"seq_len={seq_len} must be in 1..{len(x) - 1} for a series of {len(x)} rows")
    idx = np.arange(len(x) - seq_len)[:, None] + np.arange(seq_len)[None, :]
    windows = x[idx]
    if shuffle:
        windows = windows[np.random.default_rng(seed).permutation(len(windows))]
    return windows.astype(np.float32)


def load_timegan(name: str = "stock", seq_len: int = 24, shuffle: bool = True, seed: int = 0) -> np.ndarray:
    """TimeGAN's real datasets, preprocessed as in TimeGAN (:func:`minmax_windows`): float32
    (N - seq_len, seq_len, D) in [0, 1]; ``"stock"`` has D = 6, ``"energy"`` D = 28."""
    return minmax_windows(load_timegan_raw(name), seq_len, shuffle, seed)


def sines(n: int, seq_len: int = 24, dim: int = 5, *, key=None, seed: int = 0) -> np.ndarray:
    """TimeGAN's synthetic "sines": ``(sin(freq * t + phase) + 1) / 2`` for t = 0..seq_len-1 with freq, phase
    ~ U(0, 0.1) drawn per sequence and per feature. Float32 (n, seq_len, dim) in [0, 1]. Randomness from a
    ``jax.random`` ``key`` if given, else from NumPy with ``seed``."""
    if key is not None:
        import jax

        freq, phase = np.asarray(jax.random.uniform(key, (2, n, 1, dim), maxval=0.1), np.float64)
    else:
        freq, phase = np.random.default_rng(seed).uniform(0.0, 0.1, size=(2, n, 1, dim))
    t = np.arange(seq_len, dtype=np.float64)[None, :, None]
    return ((np.sin(freq * t + phase) + 1.0) * 0.5).astype(np.float32)


def _resize(images: np.ndarray, size: int | None) -> np.ndarray:
    if size is None:
        return images
    import jax

    shape = images.shape[:-2] + (size, size)
    return np.asarray(jax.image.resize(images, shape, "linear"), np.float32)


def load_omniglot(split: str = "small1", size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Omniglot "images_background_small1/2": ``(images, labels)``, images float32 (N, 105, 105) with ink = 1
    (``size=28`` resizes linearly to 28x28), labels int32 character classes (0..135 for small1, 0..155 for
    small2). small1 has 2720 images, small2 3120; 20 drawers per class."""
    _choice("split", split, tuple(_OMNIGLOT_FILES))
    d = _store.read_npz(_OMNIGLOT_FILES[split])
    return _resize((~d["images"]).astype(np.float32), size), d["label"].astype(np.int32)


def load_omniglot_oneshot(size: int | None = None) -> dict[str, np.ndarray]:
    """The 20 official 20-way one-shot runs: ``train_images`` / ``test_images`` float32 (20, 20, H, W) with
    ink = 1, ``test_labels`` int32 (20, 20): test item j of run r belongs to training class
    ``test_labels[r, j]``."""
    d = _store.read_npz("omniglot/omniglot_oneshot_runs.npz")
    return {
        "train_images": _resize((~d["train_images"]).astype(np.float32), size),
        "test_images": _resize((~d["test_images"]).astype(np.float32), size),
        "test_labels": d["test_labels"].astype(np.int32),
    }


def load_omniglot_strokes() -> dict[str, np.ndarray]:
    """Pen trajectories of the 2720 small1 drawings (same order as :func:`load_omniglot` ``"small1"``):
    ``xy`` (P, 2), ``t`` (P,) ms, ``stroke`` (P,), ``offsets`` (2721,) so drawing i is rows
    ``offsets[i]:offsets[i+1]``, plus per-drawing ``label``, ``alphabet``, ``character``, ``drawer``,
    ``filename`` and ``alphabet_names``."""
    return _store.read_npz("omniglot/omniglot_strokes_background_small1.npz")
