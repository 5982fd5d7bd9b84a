r"""Gaussian probability paths, their kinetic energy through the data separation function, and the kinetic-optimal
(KO) path (Shaul, Chen, Nickel, Le & Lipman, "On Kinetic Optimal Probability Paths for Generative Models", ICML 2023).

**Gaussian paths.** :math:`x_t = \alpha_t x_1 + \sigma_t x_0`, :math:`x_0 \sim \mathcal N(0, I_d)`, :math:`x_1` a
data point, :math:`(\alpha_0, \sigma_0) = (0, 1)` and :math:`(\alpha_1, \sigma_1) = (1, \sigma_{\min})`. The marginal
velocity is :math:`u_t(x) = \dot\alpha_t\,\mathbb E[x_1 \mid x_t = x] + \dot\sigma_t\,\mathbb E[x_0 \mid x_t = x]`.

**Kinetic energy.** With the signal-to-noise ratio :math:`s = \alpha/\sigma` and :math:`y = x_t/\sigma_t =
s x_1 + x_0`, write :math:`m(y) = \mathbb E[x_1 \mid y]` and :math:`u = \dot\sigma y + \sigma \dot s\, m`. Using
:math:`\mathbb E[y \cdot m] = s\,\mathbb E\|x_1\|^2` and :math:`\mathbb E\|m\|^2 = \mathbb E\|x_1\|^2 -
\mathrm{mmse}(s)`, for a normalized dataset (:math:`\mathbb E\|x_1\|^2 = d`) the kinetic energy per dimension is

.. math:: \frac1d\,\mathbb E\|u_t(x_t)\|^2 = \dot\alpha^2 + \dot\sigma^2 - \sigma^2 \dot s^2\,(1 - \lambda(s)),
          \qquad \lambda(s) = \frac{\mathbb E\,\|\mathbb E[x_1 \mid s x_1 + x_0]\|^2}{\mathbb E\|x_1\|^2},

so the data enter only through the scalar **data separation function** :math:`\lambda(s) \in [0, 1]`: the share of
the data's second moment that the posterior mean recovers at SNR :math:`s` (1 when every data point is identified
from its noisy version). :math:`\lambda \equiv 1` gives :math:`\dot\alpha^2 + \dot\sigma^2`, minimized by the
straight line in the :math:`(\sigma, \alpha)` plane: the Cond-OT path :math:`\alpha_t = t, \sigma_t = 1 -
(1 - \sigma_{\min}) t`. This is the paper's conclusion that Cond-OT is kinetic optimal as :math:`n/\sqrt d \to 0`.

**The KO path.** In polar coordinates :math:`\sigma = \rho\cos\theta, \alpha = \rho\sin\theta` (:math:`s =
\tan\theta`) the integrand becomes :math:`\dot\rho^2 + \rho^2 w(\theta)^2 \dot\theta^2` with
:math:`w(\theta)^2 = (\lambda(\tan\theta) - \sin^2\theta)/\cos^2\theta \in [0, 1]` (the linear estimator gives
:math:`\lambda(s) \ge s^2/(1+s^2)`). With :math:`\varphi(\theta) = \int_0^\theta w` the metric is the flat
:math:`d\rho^2 + \rho^2 d\varphi^2`, so the KO path is the constant-speed straight line between the end points in the
:math:`(\rho, \varphi)` plane, mapped back through the one-dimensional :math:`\theta = \varphi^{-1}(\cdot)` (our
closed form of the paper's 1-D ODE), and its energy per dimension is the squared chord
:math:`1 + \rho_1^2 - 2\rho_1\cos\varphi_1`. Everything here is per dimension (divide :math:`\mathbb E\|u\|^2` by d).
"""

from __future__ import annotations

from functools import partial

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import pplvi


def normalize_dataset(data) -> jnp.ndarray:
    """Center the rows of ``data`` ``(n, d)`` and scale them so that :math:`\\frac1n\\sum_i\\|x_i\\|^2 = d`."""
    data = jnp.asarray(data, dtype=jnp.float32)
    if data.ndim != 2 or data.shape[0] < 2:
        raise pplvi.DataError(f"normalize_dataset: data must be (n >= 2, d), got shape {data.shape}")
    centered = data - data.mean(0)
    scale = jnp.sqrt(jnp.mean(jnp.sum(centered**2, -1)) / data.shape[1])
    return centered / scale


def posterior_mean(y, snr, data):
    """:math:`\\mathbb E[x_1 \\mid s x_1 + x_0 = y]` for :math:`x_1` uniform on the rows of ``data``."""
    logits = snr * y @ data.T - 0.5 * snr**2 * jnp.sum(data**2, -1)
    return jax.nn.softmax(logits, -1) @ data


@partial(jax.jit, static_argnames=("num_points", "num_noise"))
def data_separation(key, data, snr, *, num_points: int = 512, num_noise: int = 4) -> jnp.ndarray:
    r"""Monte Carlo :math:`\lambda(s)` (module docstring) for the empirical distribution of ``data`` ``(n, d)``
    (normalize it first) at each SNR in ``snr``: ``num_points`` data rows (all when fewer) times ``num_noise`` noise
    draws, the same draws at every SNR (common random numbers: a smooth curve in s).

    It estimates :math:`1 - \mathrm{mmse}(s)/\mathbb E\|x_1\|^2` with the linear estimator as a control variate:
    :math:`\mathrm{mmse} = \mathrm{mmse}_{\mathrm{lin}} + \mathbb E[\|x_1 - m(y)\|^2 - \|x_1 - m_{\mathrm{lin}}(y)
    \|^2]`, with :math:`m_{\mathrm{lin}}(y) = s\Sigma(I + s^2\Sigma)^{-1}y` and the exact
    :math:`\mathrm{mmse}_{\mathrm{lin}} = \mathrm{tr}\,\Sigma(I + s^2\Sigma)^{-1}` (:math:`\Sigma` the second-moment
    matrix of the rows). The difference has small variance at small s, where :math:`\lambda` is close to its linear
    value and the KO path needs :math:`\lambda - \sin^2\theta` accurately, and at large s, where both errors vanish
    and the KO path needs :math:`1 - \lambda` accurately."""
    data = jnp.asarray(data)
    snr = jnp.atleast_1d(jnp.asarray(snr, dtype=data.dtype))
    if data.ndim != 2:
        raise pplvi.DataError(f"data_separation: data must be (n, d), got shape {data.shape}")
    k_rows, k_noise = jax.random.split(key)
    n, d = data.shape
    rows = data if n <= num_points else data[jax.random.choice(k_rows, n, (num_points,), replace=False)]
    noise = jax.random.normal(k_noise, (num_noise,) + rows.shape, data.dtype)
    # Sigma = rows^T rows / n = U diag(c) U^T from a thin SVD: O(min(n, d)^2 max(n, d)) however large d is
    _, singular, u_t = jnp.linalg.svd(rows / jnp.sqrt(rows.shape[0]), full_matrices=False)
    c = singular**2

    def at(s):
        y = s * rows[None] + noise
        m = posterior_mean(y.reshape(-1, d), s, data).reshape(y.shape)
        m_lin = ((y @ u_t.T) * (s * c / (1.0 + s**2 * c))) @ u_t
        mmse_lin = jnp.sum(c / (1.0 + s**2 * c))
        excess = jnp.mean(jnp.sum((rows[None] - m) ** 2, -1) - jnp.sum((rows[None] - m_lin) ** 2, -1))
        return 1.0 - (mmse_lin + excess) / jnp.sum(c)

    return jax.lax.map(at, snr)


class SeparationCurve(eqx.Module):
    r""":math:`\lambda` tabulated on an angle grid :math:`\theta_k \in [0, \theta_1]` (:math:`s = \tan\theta`), with
    :math:`w(\theta)` and :math:`\varphi(\theta) = \int_0^\theta w` (module docstring)."""

    theta: jnp.ndarray
    lam: jnp.ndarray
    w: jnp.ndarray
    phi: jnp.ndarray

    @staticmethod
    def estimate(key, data, *, sigma_min: float = 1e-2, grid: int = 256, **mc) -> SeparationCurve:
        """Estimate :math:`\\lambda` on ``grid`` angles (uniform, then denser towards :math:`\\pi/2`) up to
        :math:`\\theta_1 = \\arctan(1/\\sigma_{\\min})`
        with :func:`data_separation` (``mc`` goes there)."""
        theta_end = float(np.arctan2(1.0, sigma_min))
        # uniform up to 1.3 rad, then geometric in pi/2 - theta (~ sigma): 1 - lambda changes on the scale of sigma
        knee = min(1.3, 0.5 * theta_end)
        theta = np.concatenate([np.linspace(0.0, knee, grid // 2, endpoint=False),
                                np.pi / 2 - np.geomspace(np.pi / 2 - knee, np.pi / 2 - theta_end, grid - grid // 2)])
        theta = jnp.asarray(theta, jnp.asarray(data).dtype)
        lam = data_separation(key, data, jnp.tan(theta), **mc)
        return SeparationCurve.from_values(theta, lam)

    @staticmethod
    @jax.jit
    def from_values(theta, lam) -> SeparationCurve:
        """The curve from :math:`\\lambda` values on an increasing angle grid (clipped to [0, 1])."""
        theta, lam = jnp.asarray(theta), jnp.clip(jnp.asarray(lam), 0.0, 1.0)
        # Monte Carlo noise can put lambda a hair below the linear-estimator bound sin^2: clip w^2 at 0
        w2 = jnp.clip((lam - jnp.sin(theta) ** 2) / jnp.cos(theta) ** 2, 0.0, 1.0)
        w = jnp.sqrt(w2)
        phi = jnp.concatenate([jnp.zeros(1), jnp.cumsum(0.5 * (w[1:] + w[:-1]) * jnp.diff(theta))])
        return SeparationCurve(theta, lam, w, phi)

    def w_squared(self, theta):
        return jnp.interp(theta, self.theta, self.w) ** 2


class GaussianPath(eqx.Module):
    """A Gaussian path :math:`(\\alpha_t, \\sigma_t)` tabulated on increasing knots ``t`` from 0 to 1; values and
    derivatives by linear interpolation of the table and of its (non-uniform) central differences."""

    t: jnp.ndarray
    alpha_table: jnp.ndarray
    sigma_table: jnp.ndarray
    dalpha_table: jnp.ndarray
    dsigma_table: jnp.ndarray

    @staticmethod
    def from_table(t, alpha, sigma) -> GaussianPath:
        t, alpha, sigma = (jnp.asarray(a, jnp.float32) for a in (t, alpha, sigma))
        return GaussianPath(t, alpha, sigma, jnp.gradient(alpha, t), jnp.gradient(sigma, t))

    @staticmethod
    def cond_ot(sigma_min: float = 1e-2, grid: int = 4096) -> GaussianPath:
        """Cond-OT: :math:`\\alpha_t = t`, :math:`\\sigma_t = 1 - (1 - \\sigma_{\\min}) t`."""
        t = jnp.linspace(0.0, 1.0, grid)
        return GaussianPath.from_table(t, t, 1.0 - (1.0 - sigma_min) * t)

    def alpha(self, t):
        return jnp.interp(t, self.t, self.alpha_table)

    def sigma(self, t):
        return jnp.interp(t, self.t, self.sigma_table)

    def dalpha(self, t):
        return jnp.interp(t, self.t, self.dalpha_table)

    def dsigma(self, t):
        return jnp.interp(t, self.t, self.dsigma_table)


@partial(jax.jit, static_argnames=("sigma_min", "grid"))
def kinetic_optimal_path(curve: SeparationCurve, sigma_min: float = 1e-2, grid: int = 4096) -> GaussianPath:
    """The KO path for the separation curve (module docstring): a straight chord in the :math:`(\\rho, \\varphi)`
    plane from :math:`(1, 0)` to :math:`(\\sqrt{1 + \\sigma_{\\min}^2}, \\varphi(\\theta_1))`."""
    rho_end = float(np.hypot(1.0, sigma_min))
    phi_end = curve.phi[-1]
    # knots t = u^3: where w is ~0 (low SNR, the data look Gaussian) the path turns almost instantly near t = 0, and
    # a linear segment across that turn would pay sum(w^2) dtheta^2 / dt instead of (int w dtheta)^2 / dt
    t = jnp.linspace(0.0, 1.0, grid) ** 3
    px = (1.0 - t) + t * rho_end * jnp.cos(phi_end)
    py = t * rho_end * jnp.sin(phi_end)
    rho, phi = jnp.hypot(px, py), jnp.arctan2(py, px)
    # phi(theta) is non-decreasing (flat where w = 0): invert it on a strictly increasing copy
    phi_strict = curve.phi + 1e-9 * jnp.arange(curve.phi.shape[0])
    theta = jnp.interp(phi, phi_strict, curve.theta)
    return GaussianPath.from_table(t, rho * jnp.sin(theta), rho * jnp.cos(theta))


def ko_energy(curve: SeparationCurve, sigma_min: float = 1e-2) -> float:
    """Kinetic energy per dimension of the KO path: the squared chord :math:`1 + \\rho_1^2 - 2\\rho_1\\cos
    \\varphi_1`."""
    rho_end = float(np.hypot(1.0, sigma_min))
    return float(1.0 + rho_end**2 - 2.0 * rho_end * jnp.cos(curve.phi[-1]))


def kinetic_energy(path: GaussianPath, curve: SeparationCurve, *, grid: int = 8192) -> float:
    r"""Kinetic energy per dimension :math:`\int_0^1 \dot\rho^2 + \rho^2 w(\theta)^2\dot\theta^2\,dt` of ``path``
    (midpoint rule on its own knots merged with ``grid`` uniform steps, in polar coordinates)."""
    return float(_polar_energy(path, curve, grid))


@partial(jax.jit, static_argnames="grid")
def _polar_energy(path, curve, grid):
    t = jnp.sort(jnp.concatenate([path.t, jnp.linspace(0.0, 1.0, grid + 1)]))
    a, s = path.alpha(t), path.sigma(t)
    rho, theta = jnp.hypot(a, s), jnp.arctan2(a, s)
    dt = jnp.diff(t)
    safe = jnp.where(dt > 0, dt, 1.0)  # repeated knots: zero-length steps contribute nothing
    drho, dtheta = jnp.diff(rho) / safe, jnp.diff(theta) / safe
    rho_mid, theta_mid = 0.5 * (rho[1:] + rho[:-1]), 0.5 * (theta[1:] + theta[:-1])
    return jnp.sum(jnp.where(dt > 0, (drho**2 + rho_mid**2 * curve.w_squared(theta_mid) * dtheta**2) * dt, 0.0))


def kinetic_energy_monte_carlo(key, path: GaussianPath, data, *, times: int = 64, samples: int = 256) -> tuple:
    r"""Direct Monte Carlo :math:`\frac1d\int_0^1 \mathbb E\|u_t(x_t)\|^2 dt` with the exact marginal velocity of the
    empirical data (midpoint times, fresh samples per time): an independent check of the separation-function formula.
    Returns ``(estimate, standard_error)``."""
    estimate, se = _kinetic_energy_monte_carlo(key, path, jnp.asarray(data), times, samples)
    return float(estimate), float(se)


@partial(jax.jit, static_argnames=("times", "samples"))
def _kinetic_energy_monte_carlo(key, path, data, times, samples):
    n, d = data.shape
    t = (jnp.arange(times) + 0.5) / times

    def at(k, tt):
        k1, k2 = jax.random.split(k)
        x1 = data[jax.random.randint(k1, (samples,), 0, n)]
        x0 = jax.random.normal(k2, x1.shape)
        a, s, da, ds = path.alpha(tt), path.sigma(tt), path.dalpha(tt), path.dsigma(tt)
        y = (a * x1 + s * x0) / s
        m = posterior_mean(y, a / s, data)
        u = da * m + ds * (y - (a / s) * m)
        return jnp.sum(u**2, -1) / d

    vals = jax.vmap(at)(jax.random.split(key, times), t)  # (times, samples)
    per_time = vals.mean(1)
    se = jnp.sqrt(jnp.sum(vals.var(1) / samples)) / times
    return per_time.mean(), se
