r"""Markov approximation of fractional Brownian motion by OU processes driven by one Brownian motion.

Fractional Brownian motion (fBM) :math:`B^H` with Hurst index :math:`H \in (0, 1)` is a Gaussian process with
stationary increments and :math:`\mathbb E (B^H_t - B^H_s)^2 \propto |t - s|^{2H}`; it is not Markov (its increments
are correlated unless :math:`H = 1/2`). Its power-law kernel is a mixture of exponentials,

.. math:: \frac{u^{H - 1/2}}{\Gamma(H + 1/2)} = \int_0^\infty e^{-\gamma u}\,\mu(\gamma)\,d\gamma, \qquad
          \mu(\gamma) = \frac{\gamma^{-(H + 1/2)}}{\Gamma(H + 1/2)\,\Gamma(1/2 - H)},

so fBM is a superposition of Ornstein-Uhlenbeck processes :math:`dY^\gamma_t = -\gamma Y^\gamma_t\,dt + dB_t` that all
share one Brownian motion :math:`B` (Carmona & Coutin 1998; Harms & Stefanovits 2019). Keeping ``K`` speeds on a
geometric grid gives the Markov-approximate fBM of Daems, Opper, Crevecoeur & Birdal, "Variational Inference for
SDEs Driven by Fractional Noise", ICLR 2024, Section 3:

* **type I** (Mandelbrot-Van Ness fBM, :math:`B^H_t = \frac{1}{\Gamma(H + 1/2)} \int_{-\infty}^t
  [(t - s)_+^{H - 1/2} - (-s)_+^{H - 1/2}]\,dB_s`): :math:`\hat B^H_t = \sum_k \omega_k (Y^k_t - Y^k_0)` with the
  :math:`Y^k` started from their joint stationary law, :math:`\mathrm{Cov}(Y^i_0, Y^j_0) = 1 / (\gamma_i + \gamma_j)`;
* **type II** (Riemann-Liouville fBM, :math:`B^H_t = \frac{1}{\Gamma(H + 1/2)} \int_0^t (t - s)^{H - 1/2}\,dB_s`):
  :math:`\hat B^H_t = \sum_k \omega_k Y^k_t` with :math:`Y^k_0 = 0`.

The weights :math:`\omega` minimize the time-averaged mean squared error (the paper's Proposition on optimal
coefficients)

.. math:: \mathcal E(\omega) = \frac1T \int_0^T \mathbb E\,(B^H_t - \hat B^H_t)^2\,dt
          = \frac1T \left(c - 2\,b^\top\omega + \omega^\top A\,\omega\right), \qquad \omega^\star = A^{-1} b,

with :math:`A_{ij} = \int_0^T \mathbb E[\hat Y^i_t \hat Y^j_t]\,dt`, :math:`b_i = \int_0^T \mathbb E[B^H_t \hat Y^i_t]
\,dt` and :math:`c = \int_0^T \mathbb E[(B^H_t)^2]\,dt` (:math:`\hat Y^k = Y^k - Y^k_0` for type I, :math:`Y^k` for
type II). With :math:`a = H + 1/2`, :math:`P` / :math:`Q` the regularized lower / upper incomplete gamma functions
and :math:`s_{ij} = \gamma_i + \gamma_j`:

.. math::
    \text{type II:}\quad A_{ij} &= \frac{T - (1 - e^{-s_{ij} T}) / s_{ij}}{s_{ij}}, \quad
        b_i = \gamma_i^{-a}\Big[T\,P(a, \gamma_i T) - \frac{a}{\gamma_i} P(a + 1, \gamma_i T)\Big], \quad
        c = \frac{T^{2H + 1}}{2H (2H + 1)\,\Gamma(a)^2}, \\
    \text{type I:}\quad A_{ij} &= \frac{2T - (1 - e^{-\gamma_i T}) / \gamma_i - (1 - e^{-\gamma_j T}) / \gamma_j}
        {s_{ij}}, \quad
        b_i = \frac{2T}{\gamma_i^{a}} + \frac{e^{-\gamma_i T} - e^{\gamma_i T} Q(a, \gamma_i T)}{\gamma_i^{a + 1}}
        - \frac{T^{a}}{\gamma_i\,\Gamma(a + 1)}, \quad
        c = \frac{T^{2H + 1}}{(2H + 1)\,\Gamma(2H + 1) \sin(\pi H)}.

Everything here is normalized to the *standard* fBM, :math:`\mathbb E (B^H_t)^2 = t^{2H}` (``b`` divided by and
``c`` divided by the square of :math:`\sqrt{\mathbb E (B^H_1)^2}` of the kernel definition), so :math:`H` and a
diffusion scale stay separate parameters. All functions are differentiable in :math:`H` (``jax.scipy.special``
``gammainc``/``gammaincc`` have derivatives in their first argument), so :math:`H = \sigma(\text{raw})` is learned by
gradient ascent with the rest of a model.

Numerics: :math:`A` is close to a Cauchy matrix and badly conditioned for many or widely spread speeds. The weights
are solved after symmetric (Jacobi) scaling with a relative ridge of ``100 * eps`` of the floating type, which keeps
float32 weights usable for training; the cost :math:`\mathcal E`, a difference of nearly equal numbers when the
approximation is good, needs float64 (``with jax.enable_x64(True): ...``) to be resolved below about
:math:`10^{-5}\,c/T`.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gamma as gamma_function
from jax.scipy.special import gammainc, gammaincc

import pplvi

KINDS = ("I", "II")
_ASYMPTOTIC_FROM = 30.0  # e^x Q(a, x) switches to its asymptotic series above this x (no overflow of e^x)


def check_hurst(hurst) -> None:
    """Raise :class:`pplvi.SupportError` when a concrete Hurst index is not inside (0, 1) (traced values pass)."""
    try:
        values = np.asarray(hurst, dtype=float)
    except (TypeError, jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return
    if not np.all((values > 0.0) & (values < 1.0)):
        raise pplvi.SupportError(
            f"the Hurst index must lie strictly between 0 and 1, got {hurst!r}. Learn it through "
            "H = sigmoid(raw) (see hurst_from_raw) to keep it inside (0, 1)."
        )


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise pplvi.ObjectiveError(
            f"kind must be 'I' (Mandelbrot-Van Ness fBM, stationary OU start) or 'II' (Riemann-Liouville fBM, OU "
            f"started at 0), got {kind!r}."
        )
    return kind


def hurst_from_raw(raw):
    r""":math:`H = \sigma(\text{raw}) = 1 / (1 + e^{-\text{raw}})`, always inside (0, 1)."""
    return jax.nn.sigmoid(raw)


def raw_from_hurst(hurst: float) -> float:
    """The inverse of :func:`hurst_from_raw`: ``log(H / (1 - H))``."""
    check_hurst(hurst)
    return float(math.log(hurst / (1.0 - hurst)))


def speeds(K: int, gamma_max: float = 20.0) -> np.ndarray:
    r"""The geometric grid of ``K`` mean-reversion speeds :math:`\gamma_k = r^{k - (K + 1)/2}`, :math:`k = 1..K`,
    with :math:`r = \gamma_{\max}^{2 / (K - 1)}`: from :math:`1/\gamma_{\max}` to :math:`\gamma_{\max}`, symmetric
    around 1 on a log scale (``K = 1``: the single speed 1). A NumPy array (the grid is a fixed, static choice; only
    the weights depend on :math:`H`)."""
    if isinstance(K, bool) or not isinstance(K, (int, np.integer)) or K < 1:
        raise pplvi.ObjectiveError(f"the number of OU processes K must be an integer >= 1, got {K!r}.")
    if not (isinstance(gamma_max, (int, float)) and gamma_max > 1.0):
        raise pplvi.ObjectiveError(f"gamma_max must be a number > 1, got {gamma_max!r}.")
    if K == 1:
        return np.ones(1)
    return float(gamma_max) ** ((2.0 * np.arange(1, K + 1) - K - 1) / (K - 1))


def _scaled_upper_gamma(a, x):
    r""":math:`e^{x} Q(a, x)` without overflow: directly below ``x = 30``, above it the asymptotic series
    :math:`\frac{x^{a - 1}}{\Gamma(a)}\sum_{n=0}^{5} \frac{(a-1)(a-2)\cdots(a-n)}{x^n}` (relative error below
    :math:`10^{-9}` for :math:`a \in (1/2, 3/2)`). Both branches see clamped arguments, so gradients stay finite."""
    near = jnp.minimum(x, _ASYMPTOTIC_FROM)
    far = jnp.maximum(x, _ASYMPTOTIC_FROM)
    direct = jnp.exp(near) * gammaincc(a, near)
    term, series = jnp.ones_like(far), jnp.ones_like(far)
    for n in range(1, 6):
        term = term * (a - n) / far
        series = series + term
    asymptotic = far ** (a - 1.0) / gamma_function(a) * series
    return jnp.where(x < _ASYMPTOTIC_FROM, direct, asymptotic)


def kernel_variance(hurst, kind: str):
    r""":math:`\mathbb E (B^H_1)^2` of the kernel definitions (before normalization): type I
    :math:`1 / (\Gamma(2H + 1)\sin \pi H)`, type II :math:`1 / (2H\,\Gamma(H + 1/2)^2)`."""
    if check_kind(kind) == "I":
        return 1.0 / (gamma_function(2.0 * hurst + 1.0) * jnp.sin(jnp.pi * hurst))
    return 1.0 / (2.0 * hurst * gamma_function(hurst + 0.5) ** 2)


def weight_system(hurst, gammas, horizon, kind: str = "I"):
    r"""``(A, b, c)`` of the quadratic :math:`\int_0^T \mathbb E(B^H_t - \hat B^H_t)^2 dt = c - 2 b^\top\omega +
    \omega^\top A \omega` for the standard fBM (see the module docstring for the formulas). ``gammas``: ``(K,)``."""
    check_hurst(hurst)
    check_kind(kind)
    # the default float (float64 under jax_enable_x64) unless H itself is wider; never narrowed by a weak type
    dtype = jnp.promote_types(jnp.asarray(hurst).dtype, jnp.result_type(float))
    hurst = jnp.asarray(hurst, dtype)
    g = jnp.asarray(gammas, dtype)
    T = jnp.asarray(horizon, dtype)
    a = hurst + 0.5
    gi, gj = g[:, None], g[None, :]
    s = gi + gj
    if kind == "II":
        A = (T + jnp.expm1(-s * T) / s) / s
        b = g ** (-a) * (T * gammainc(a, g * T) - a / g * gammainc(a + 1.0, g * T))
        c = T ** (2.0 * hurst + 1.0) / (2.0 * hurst * (2.0 * hurst + 1.0) * gamma_function(a) ** 2)
    else:
        decay = -jnp.expm1(-g * T) / g  # (1 - e^{-gT}) / g
        A = (2.0 * T - decay[:, None] - decay[None, :]) / s
        b = (2.0 * T * g ** (-a) + (jnp.exp(-g * T) - _scaled_upper_gamma(a, g * T)) * g ** (-a - 1.0)
             - T ** a / (g * gamma_function(a + 1.0)))
        c = T ** (2.0 * hurst + 1.0) / ((2.0 * hurst + 1.0) * gamma_function(2.0 * hurst + 1.0)
                                       * jnp.sin(jnp.pi * hurst))
    variance = kernel_variance(hurst, kind)
    return A, b / jnp.sqrt(variance), c / variance


def _solve(A, b):
    """``A^{-1} b`` for a symmetric positive definite, badly conditioned ``A``: Jacobi scaling, a relative ridge of
    ``100 * eps``, Cholesky."""
    d = jnp.sqrt(jnp.diag(A))
    scaled = A / (d[:, None] * d[None, :])
    ridge = 100.0 * jnp.finfo(A.dtype).eps
    chol = jnp.linalg.cholesky(scaled + ridge * jnp.eye(A.shape[0], dtype=A.dtype))
    return jax.scipy.linalg.cho_solve((chol, True), b / d) / d


def optimal_weights(hurst, gammas, horizon, kind: str = "I"):
    r"""The optimal coefficients :math:`\omega^\star = A^{-1} b` (``(K,)``) of the Markov approximation of the
    standard fBM on :math:`[0, T]`, ``T = horizon``; differentiable in ``hurst``."""
    A, b, _ = weight_system(hurst, gammas, horizon, kind)
    return _solve(A, b)


def approximation_cost(hurst, gammas, horizon, kind: str = "I", weights=None):
    r"""The time-averaged mean squared error :math:`\frac1T \int_0^T \mathbb E (B^H_t - \hat B^H_t)^2 dt` of the
    Markov approximation with ``weights`` (default: the optimal ones), for the standard fBM. Use float64
    (``with jax.enable_x64(True)``) to resolve small costs."""
    A, b, c = weight_system(hurst, gammas, horizon, kind)
    w = _solve(A, b) if weights is None else jnp.asarray(weights, A.dtype)
    return (c - 2.0 * b @ w + w @ A @ w) / jnp.asarray(horizon, A.dtype)


class MarkovFBM(eqx.Module):
    r"""The Markov-approximate fBM driver of an SDE: ``K`` OU speeds (:func:`speeds`), the variant ``kind`` ("I" or
    "II") and the horizon :math:`T` over which the weights are optimal. Holds no parameters: :math:`H` is passed in.

    Per latent dimension the driver's state is :math:`Y \in \mathbb R^K`, :math:`dY^k = (-\gamma_k Y^k + u)\,dt +
    dB` (``u = 0`` under the prior) and :math:`d\hat B^H = \sum_k \omega_k\,dY^k`."""

    gammas: tuple = eqx.field(static=True)
    kind: str = eqx.field(static=True)
    horizon: float = eqx.field(static=True)

    def __init__(self, K: int = 5, horizon: float = 1.0, kind: str = "I", gamma_max: float = 20.0):
        self.gammas = tuple(float(g) for g in speeds(K, gamma_max))
        self.kind = check_kind(kind)
        if not (isinstance(horizon, (int, float)) and horizon > 0):
            raise pplvi.ObjectiveError(f"horizon must be a positive number, got {horizon!r}.")
        self.horizon = float(horizon)

    @property
    def K(self) -> int:
        return len(self.gammas)

    def speed_array(self, dtype=None):
        return jnp.asarray(self.gammas, dtype or jnp.result_type(float))

    def weights(self, hurst):
        """:func:`optimal_weights` at ``hurst`` for this grid, kind and horizon."""
        return optimal_weights(hurst, self.speed_array(), self.horizon, self.kind)

    def cost(self, hurst):
        """:func:`approximation_cost` at ``hurst`` for this grid, kind and horizon."""
        return approximation_cost(hurst, self.speed_array(), self.horizon, self.kind)

    def initial_covariance(self):
        r"""Covariance of :math:`Y_0`: the stationary :math:`1 / (\gamma_i + \gamma_j)` (type I) or zeros (type II)."""
        g = self.speed_array()
        if self.kind == "II":
            return jnp.zeros((self.K, self.K))
        return 1.0 / (g[:, None] + g[None, :])
