r"""Exact fractional Brownian motion, and the checks of the Markov approximation against it (NumPy, float64).

* :func:`fbm_covariance` and :func:`sample_fbm`: the standard fBM, :math:`\mathrm{Cov}(B^H_t, B^H_s) =
  \frac12 (t^{2H} + s^{2H} - |t - s|^{2H})`, sampled exactly on any time grid by a Cholesky factor.
* :func:`monte_carlo_cost`: the time-averaged squared error of the type I approximation
  :math:`\hat B^H_t = \sum_k \omega_k (Y^k_t - Y^k_0)` measured on exact paths: the fBM and the OU processes driven by
  the *same* Brownian motion are drawn jointly from their exact Gaussian law on a grid (the fBM block is the textbook
  covariance above; the cross-covariances are derived in :func:`type_one_joint_covariance`), and
  :math:`\frac1T\int_0^T (B^H_t - \hat B^H_t)^2 dt` is averaged over paths.
* :func:`quadrature_cost`: the type II cost by deterministic quadrature of the kernel error,
  :math:`\frac1T \int_0^T (T - u)\,(k_H(u) - \sum_k \omega_k e^{-\gamma_k u})^2\,du` with
  :math:`k_H(u) = \sqrt{2H}\,u^{H - 1/2}` the normalized Riemann-Liouville kernel.

These are independent of the closed forms in :mod:`pplvi.models.fbm_sde.markov` (no incomplete-gamma integrals in
time), so agreement checks those formulas.
"""

from __future__ import annotations

import math

import numpy as np

import pplvi
from pplvi.models.fbm_sde.markov import check_hurst


def fbm_covariance(times, hurst: float) -> np.ndarray:
    r"""The covariance matrix of the standard fBM at ``times``: :math:`\frac12(t^{2H} + s^{2H} - |t - s|^{2H})`."""
    check_hurst(hurst)
    t = np.asarray(times, np.float64)
    h2 = 2.0 * hurst
    return 0.5 * (np.abs(t[:, None]) ** h2 + np.abs(t[None, :]) ** h2 - np.abs(t[:, None] - t[None, :]) ** h2)


def _factor(cov: np.ndarray) -> np.ndarray:
    """A square root ``L`` with ``L @ L.T = cov`` for a positive semi-definite ``cov`` (eigenvalues clipped at 0)."""
    values, vectors = np.linalg.eigh(0.5 * (cov + cov.T))
    return vectors * np.sqrt(np.clip(values, 0.0, None))


def sample_fbm(seed: int, times, hurst: float, n: int = 1, scale: float = 1.0) -> np.ndarray:
    r"""``n`` exact paths of ``scale`` times the standard fBM at ``times`` (``(n, len(times))``, float64): Gaussian
    vectors with the covariance :func:`fbm_covariance`, by a Cholesky factor (an eigendecomposition when a time is 0,
    where the variance vanishes)."""
    cov = fbm_covariance(times, hurst)
    try:
        root = np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        root = _factor(cov)
    normals = np.random.default_rng(seed).standard_normal((n, len(cov)))
    return scale * normals @ root.T


def _scaled_upper_gamma(a: float, x: np.ndarray) -> np.ndarray:
    r""":math:`e^x Q(a, x) = e^x \int_x^\infty v^{a-1} e^{-v} dv / \Gamma(a)` by Gauss-Laguerre quadrature of
    :math:`\int_0^\infty (x + v)^{a - 1} e^{-v} dv / \Gamma(a)` (for ``x > 0``; ``x = 0`` gives 1)."""
    x = np.asarray(x, np.float64)
    out = np.ones_like(x)
    positive = x > 0
    # (x + v)^(a-1) is smooth on v >= 0 when x > 0; near x = 0 use the split e^x (1 - P(a, x)) with a series for P
    small = positive & (x < 0.5)
    big = positive & ~small
    nodes, weights = np.polynomial.laguerre.laggauss(80)
    xb = x[big][:, None]
    out[big] = ((xb + nodes[None, :]) ** (a - 1.0) * weights[None, :]).sum(1) / math.gamma(a)
    xs = x[small]
    # P(a, x) = x^a e^{-x} sum_n x^n / Gamma(a + n + 1)
    series = sum(xs ** n / math.gamma(a + n + 1.0) for n in range(40))
    lower = xs ** a * np.exp(-xs) * series
    out[small] = np.exp(xs) * (1.0 - lower)
    return out


def type_one_joint_covariance(times, hurst: float, gammas) -> np.ndarray:
    r"""The joint covariance of :math:`(B^H_{t_1..t_N}, Y^1_{t_1..t_N}, \dots, Y^K_{t_1..t_N})` for the standard
    Mandelbrot-Van Ness fBM and the stationary OU processes :math:`Y^k_t = \int_{-\infty}^t e^{-\gamma_k (t - s)}
    dB_s` driven by the same Brownian motion (``times >= 0``), a ``((K + 1) N, (K + 1) N)`` array:

    .. math::
        \mathrm{Cov}(Y^i_t, Y^j_s) = \frac{e^{-\gamma_i (t - s)^+ - \gamma_j (s - t)^+}}{\gamma_i + \gamma_j}, \quad
        \mathrm{Cov}(B^H_t, Y^\gamma_s) = \frac{\gamma^{-a}}{\sqrt{V_H}} \Big[\mathbb 1_{s \le t}\,
        e^{\gamma (t - s)} Q(a, \gamma (t - s)) + \mathbb 1_{s > t}\, e^{-\gamma (s - t)} - e^{-\gamma s}\Big],

    :math:`a = H + 1/2`, :math:`V_H = 1 / (\Gamma(2H + 1) \sin \pi H)` (from the Laplace representation of the
    kernel, :math:`\int_x^\infty v^{a - 1} e^{-\gamma v} dv / \Gamma(a) = \gamma^{-a} Q(a, \gamma x)`)."""
    check_hurst(hurst)
    t = np.asarray(times, np.float64)
    g = np.asarray(gammas, np.float64)
    N, K = len(t), len(g)
    a = hurst + 0.5
    variance = 1.0 / (math.gamma(2.0 * hurst + 1.0) * math.sin(math.pi * hurst))
    cov = np.zeros(((K + 1) * N, (K + 1) * N))
    cov[:N, :N] = fbm_covariance(t, hurst)
    lag = t[:, None] - t[None, :]  # t_row - s_col
    for i in range(K):
        rows = slice((i + 1) * N, (i + 2) * N)
        for j in range(K):
            cols = slice((j + 1) * N, (j + 2) * N)
            cov[rows, cols] = np.exp(-g[i] * np.clip(lag, 0, None) - g[j] * np.clip(-lag, 0, None)) / (g[i] + g[j])
        # Cov(B_t, Y_s): rows index t of B, columns index s of Y^i
        tb = t[:, None]
        sy = t[None, :]
        ahead = np.clip(tb - sy, 0.0, None)  # t - s when s <= t
        cross = np.where(sy <= tb, _scaled_upper_gamma(a, g[i] * ahead), np.exp(-g[i] * (sy - tb)))
        cross = g[i] ** (-a) * (cross - np.exp(-g[i] * sy)) / math.sqrt(variance)
        cov[:N, rows] = cross
        cov[rows, :N] = cross.T
    return cov


def monte_carlo_cost(seed: int, hurst: float, gammas, weights, horizon: float = 1.0, paths: int = 2000,
                     steps: int = 200) -> tuple[float, float]:
    r"""Monte Carlo estimate of the type I cost :math:`\frac1T \mathbb E \int_0^T (B^H_t - \hat B^H_t)^2 dt` from
    ``paths`` exact joint paths on ``steps + 1`` equally spaced times (trapezoidal rule in time). Returns
    ``(estimate, standard error)``."""
    t = np.linspace(0.0, horizon, steps + 1)
    root = _factor(type_one_joint_covariance(t, hurst, gammas))
    normals = np.random.default_rng(seed).standard_normal((paths, root.shape[1]))
    sample = (normals @ root.T).reshape(paths, len(np.asarray(gammas)) + 1, len(t))
    fbm, ou = sample[:, 0], sample[:, 1:]
    approx = np.einsum("k,pkt->pt", np.asarray(weights, np.float64), ou - ou[:, :, :1])
    squared = (fbm - approx) ** 2
    per_path = np.trapezoid(squared, t, axis=1) / horizon
    return float(per_path.mean()), float(per_path.std(ddof=1) / math.sqrt(paths))


def quadrature_cost(hurst: float, gammas, weights, horizon: float = 1.0, nodes: int = 400) -> float:
    r"""The type II cost by Gauss-Legendre quadrature of :math:`\frac1T \int_0^T (T - u)\,e(u)^2\,du`,
    :math:`e(u) = \sqrt{2H}\,u^{H - 1/2} - \sum_k \omega_k e^{-\gamma_k u}`, after the substitution
    :math:`u = T x^{1/H}` that removes the singularity at :math:`u = 0`."""
    check_hurst(hurst)
    if nodes < 2:
        raise pplvi.ObjectiveError(f"nodes must be >= 2, got {nodes!r}")
    x, w = np.polynomial.legendre.leggauss(nodes)
    x, w = 0.5 * (x + 1.0), 0.5 * w
    p = 1.0 / hurst
    u = horizon * x ** p
    du = horizon * p * x ** (p - 1.0)
    g = np.asarray(gammas, np.float64)
    err = math.sqrt(2.0 * hurst) * u ** (hurst - 0.5) - np.exp(-np.outer(u, g)) @ np.asarray(weights, np.float64)
    return float(np.sum(w * du * (horizon - u) * err ** 2) / horizon)


def fbm_log_likelihood(data, times, hurst: float, scale: float, noise: float) -> float:
    r"""The exact log-likelihood of ``data`` (``(sequences, len(times))``) under ``scale`` times the standard fBM at
    ``times`` plus independent Gaussian noise of std ``noise``, summed over sequences."""
    cov = scale ** 2 * fbm_covariance(times, hurst) + noise ** 2 * np.eye(len(times))
    root = np.linalg.cholesky(cov)
    white = np.linalg.solve(root, np.asarray(data, np.float64).T)
    return float(-0.5 * np.sum(white ** 2) - np.shape(data)[0] * (np.sum(np.log(np.diag(root)))
                                                                   + 0.5 * len(times) * math.log(2 * math.pi)))
