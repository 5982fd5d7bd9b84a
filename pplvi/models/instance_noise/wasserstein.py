"""Exact Wasserstein-1 between two equal-size point clouds: the optimal assignment (Hungarian algorithm, SciPy's
``linear_sum_assignment``) of the Euclidean cost matrix, :math:`W_1 = \\min_\\pi \\frac1n\\sum_i \\|x_i -
y_{\\pi(i)}\\|` over permutations, which is the optimal transport between uniform empirical measures."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

import pplvi


def wasserstein1(x, y) -> float:
    """Exact :math:`W_1` between the empirical measures of ``x`` and ``y`` (both ``(n, d)``, the same n)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 2 or x.shape != y.shape:
        raise pplvi.DataError(f"wasserstein1: need two (n, d) arrays of the same shape, got {x.shape} and {y.shape}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise pplvi.DataError("wasserstein1: the point clouds contain NaN or inf")
    cost = np.sqrt(np.sum((x[:, None, :] - y[None, :, :]) ** 2, -1))
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].mean())
