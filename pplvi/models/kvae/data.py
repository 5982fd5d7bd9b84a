"""The time-series benchmarks of TimeGAN (Yoon, Jarrett & van der Schaar, NeurIPS 2019), used by the Koopman VAE
paper, and the irregular-sampling protocol of GT-GAN (Jeon et al., NeurIPS 2022).

* ``"sines"``: 5 features :math:`(\\sin(f t + \\phi) + 1) / 2`, :math:`f, \\phi \\sim U(0, 0.1)` per sequence and
  feature, generated in code (:func:`pplvi.data.sines`);
* ``"stocks"`` (6 features, daily Google prices) and ``"energy"`` (28 features, UCI appliances energy), read
  from ``$PPLVI_DATA/timegan`` (:func:`pplvi.data.load_timegan`), with TimeGAN's preprocessing: rows reversed,
  each column min-max scaled to [0, 1], every window of 24 consecutive rows, windows shuffled.

Irregular versions drop a fraction of the time points of every sequence (:func:`drop_time_points`): the same
``round(rate * T)`` points of all features, chosen uniformly per sequence.
"""

from __future__ import annotations

import numpy as np

import pplvi
from pplvi.data import load_timegan, sines

DATASETS = ("sines", "stocks", "energy")
_TIMEGAN_NAMES = {"stocks": "stock", "energy": "energy"}


def load_sequences(name: str, *, n: int | None = None, seq_len: int = 24, seed: int = 0) -> np.ndarray:
    """``(N, seq_len, D)`` float32 windows in [0, 1] of dataset ``name`` (see the module docstring). ``n``: the
    number of sines to generate (default 10,000, TimeGAN's), or the first ``n`` shuffled windows of a real
    dataset (default: all). Raises :class:`pplvi.DataError` when a data file is missing."""
    if name not in DATASETS:
        raise ValueError(f"dataset={name!r} is not one of {list(DATASETS)}")
    if name == "sines":
        return sines(10_000 if n is None else n, seq_len, 5, seed=seed)
    x = load_timegan(_TIMEGAN_NAMES[name], seq_len=seq_len, shuffle=True, seed=seed)
    return x if n is None else x[:n]


def drop_time_points(n: int, length: int, rate: float, seed: int = 0) -> np.ndarray:
    """Observation masks ``(n, length)`` float32 (1 = observed) with ``round(rate * length)`` time points of each
    sequence dropped, chosen uniformly at random (NumPy's generator seeded by ``seed``)."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"rate={rate} must be in [0, 1): the fraction of time points dropped")
    drop = int(round(rate * length))
    rng = np.random.default_rng(seed)
    mask = np.ones((n, length), np.float32)
    for row in mask:
        row[rng.permutation(length)[:drop]] = 0.0
    return mask


def with_missing(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``x`` with NaN at the unobserved time points (what an irregular dataset holds)."""
    return np.where(np.asarray(mask, bool)[..., None], x, np.nan).astype(np.float32)


def check_sequences(x, mask=None, *, name: str = "x") -> tuple[np.ndarray, np.ndarray]:
    """Validate training data: ``x`` ``(N, T, D)`` finite at every observed point, ``mask`` ``(N, T)`` of 0/1 with
    at least two observed points per sequence. Returns float32 ``(x, mask)``; raises :class:`pplvi.DataError`
    naming the argument and the first offending index."""
    x = np.asarray(x, np.float32)
    if x.ndim != 3 or min(x.shape) < 1:
        raise pplvi.DataError(f"{name} must be sequences of shape (N, T, D), got shape {x.shape}")
    if x.shape[1] < 2:
        raise pplvi.DataError(f"{name} has sequences of {x.shape[1]} step; the Koopman fit needs T >= 2")
    mask = np.ones(x.shape[:2], np.float32) if mask is None else np.asarray(mask, np.float32)
    if mask.shape != x.shape[:2]:
        raise pplvi.DataError(f"mask must have shape (N, T) = {x.shape[:2]} to match {name}, got {mask.shape}")
    bad = np.argwhere((mask != 0) & (mask != 1))
    if bad.size:
        raise pplvi.DataError(f"mask must hold 0 (missing) or 1 (observed); mask[{', '.join(map(str, bad[0]))}] "
                              f"is {mask[tuple(bad[0])]}")
    bad = np.argwhere(~np.isfinite(x) & (mask[..., None] == 1))
    if bad.size:
        i = tuple(int(v) for v in bad[0])
        raise pplvi.DataError(f"{name}[{i[0]}, {i[1]}, {i[2]}] is {x[i]} at an observed time point; observed values "
                              "must be finite (mark missing points with mask = 0)")
    few = np.flatnonzero(mask.sum(1) < 2)
    if few.size:
        raise pplvi.DataError(f"{name}[{few[0]}] has fewer than 2 observed time points")
    return x, mask
