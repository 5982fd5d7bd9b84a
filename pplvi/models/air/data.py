"""Multi-MNIST: 50 x 50 canvases holding 0, 1 or 2 MNIST digits (Eslami et al. 2016, sec. 3.1), built
deterministically from the MNIST files in ``$PPLVI_DATA`` (never downloaded).

Each canvas draws its number of digits uniformly from ``0 .. max_digits``; each digit is a uniformly chosen MNIST
image of the split, pasted (28 x 28, unscaled) at a uniformly random position that keeps it inside the canvas;
overlapping digits combine by the pixel-wise maximum. The same ``seed`` gives the same canvases.
"""

from __future__ import annotations

import numpy as np

from pplvi.data import load_mnist

CANVAS = 50
DIGIT = 28


def multi_mnist(n: int, split: str = "train", *, max_digits: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` canvases as float32 ``(n, 2500)`` intensities in [0, 1] and their digit counts ``(n,)`` (int32).

    Raises :class:`pplvi.DataError` when the MNIST files are missing from ``$PPLVI_DATA``."""
    if n < 1:
        raise ValueError(f"multi_mnist: n must be at least 1, got {n}")
    if max_digits < 0:
        raise ValueError(f"multi_mnist: max_digits must be >= 0, got {max_digits}")
    digits, _ = load_mnist(split)
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, max_digits + 1, size=n).astype(np.int32)
    canvases = np.zeros((n, CANVAS, CANVAS), np.float32)
    for i, count in enumerate(counts):
        for _ in range(count):
            digit = digits[rng.integers(len(digits))]
            y, x = rng.integers(0, CANVAS - DIGIT + 1, size=2)
            patch = canvases[i, y:y + DIGIT, x:x + DIGIT]
            np.maximum(patch, digit, out=patch)
    return canvases.reshape(n, CANVAS * CANVAS), counts
