r"""Exactly known diffusion models, for tests and for checks with known answers.

For data :math:`x_0 \sim \sum_k \pi_k \mathcal N(\mu_k, \Sigma_k)` the noised marginal is again a mixture,
:math:`p_t = \sum_k \pi_k \mathcal N(a_t \mu_k, a_t^2 \Sigma_k + s_t^2 I)`, so the optimal noise prediction is
:math:`\varepsilon^*(x_t, t) = -s_t \nabla \log p_t(x_t)` and Tweedie's :math:`\mathbb E[x_0 \mid x_t] = (x_t +
s_t^2 \nabla\log p_t(x_t))/a_t`. Components may carry class labels: the class-conditional model restricts the
mixture to that class's components (renormalized weights), which is what classifier-free guidance needs.

:func:`energy_distance` measures how far samples are from a target sample (Székely & Rizzo 2013).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpyro.distributions as nd

from pplvi import PPLVIError
from pplvi.diffusion.samplers import FunctionPredictor
from pplvi.diffusion.schedules import Schedule


class GaussianMixture(eqx.Module):
    """``GaussianMixture(weights (K,), means (K, d), covs (K, d, d), labels (K,) or None)``."""

    weights: jax.Array
    means: jax.Array
    covs: jax.Array
    labels: jax.Array | None

    def __init__(self, weights, means, covs, labels=None):
        weights, means, covs = jnp.asarray(weights), jnp.asarray(means), jnp.asarray(covs)
        k, d = means.shape
        if weights.shape != (k,) or covs.shape != (k, d, d):
            raise PPLVIError(
                f"GaussianMixture: weights {weights.shape}, means {means.shape}, covs {covs.shape} do not agree "
                "(need (K,), (K, d), (K, d, d))"
            )
        self.weights, self.means, self.covs = weights / jnp.sum(weights), means, covs
        self.labels = None if labels is None else jnp.asarray(labels, jnp.int32)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def _log_weights(self, label):
        logw = jnp.log(self.weights)
        if label is None:
            return logw
        if self.labels is None:
            raise PPLVIError("GaussianMixture: a label was given but the components carry no labels")
        return jnp.where(self.labels == label, logw, -1e30)  # finite: numpyro validates logits

    def conditional(self, label) -> GaussianMixture:
        """The mixture restricted to the components of class ``label``."""
        w = jnp.exp(self._log_weights(label))
        return GaussianMixture(w, self.means, self.covs, self.labels)

    def sample(self, key, n: int, label=None):
        k1, k2 = jax.random.split(key)
        comp = jax.random.categorical(k1, self._log_weights(label), shape=(n,))
        z = jax.random.normal(k2, (n, self.dim))
        chol = jnp.linalg.cholesky(self.covs)
        return self.means[comp] + jnp.einsum("nij,nj->ni", chol[comp], z)

    def noised(self, t, schedule: Schedule, label=None):
        """The marginal :math:`p_t` as a numpyro ``MixtureSameFamily``."""
        a, s = schedule.signal_noise(t)
        cov = a**2 * self.covs + s**2 * jnp.eye(self.dim)
        logits = self._log_weights(label)
        return nd.MixtureSameFamily(nd.Categorical(logits=logits), nd.MultivariateNormal(a * self.means, cov))

    def score(self, x_t, t, schedule: Schedule, label=None):
        """:math:`\\nabla_x \\log p_t(x)` for a batch ``x_t`` of shape ``(B, d)``."""
        lp = lambda x: self.noised(t, schedule, label).log_prob(x)  # noqa: E731
        return jax.vmap(jax.grad(lp))(x_t)

    def eps(self, x_t, t, schedule: Schedule, label=None):
        """The optimal noise prediction :math:`-s_t \\nabla\\log p_t(x_t)`."""
        return -schedule.signal_noise(t)[1] * self.score(x_t, t, schedule, label)

    def x0(self, x_t, t, schedule: Schedule, label=None):
        """Tweedie's posterior mean :math:`\\mathbb E[x_0 \\mid x_t]`."""
        a, s = schedule.signal_noise(t)
        return (x_t + s**2 * self.score(x_t, t, schedule, label)) / a

    def predictor(self, schedule: Schedule, label=None) -> FunctionPredictor:
        """The exact noise prediction as a sampler predictor (1 NFE a step)."""
        return FunctionPredictor(lambda x, t: self.eps(x, t, schedule, label), 1)


def gaussian_x0(x_t, t, schedule: Schedule, mean, cov):
    r"""Tweedie's mean for Gaussian data :math:`x_0 \sim \mathcal N(m, C)` (flattened, ``x_t`` shape
    ``(B, d)``): :math:`m + a_t C (a_t^2 C + s_t^2 I)^{-1} (x_t - a_t m)`."""
    a, s = schedule.signal_noise(t)
    d = mean.shape[0]
    gain = a * cov @ jnp.linalg.inv(a**2 * cov + s**2 * jnp.eye(d))
    return mean + (x_t - a * mean) @ gain.T


def geometric_gaussian(means, variances, weights):
    r"""The geometric mix :math:`\prod_k \mathcal N(x; m_k, v_k I)^{c_k}` of isotropic Gaussians in closed form:
    it is :math:`Z\,\mathcal N(\mu, V I)` with :math:`1/V = \sum_k c_k / v_k` (must be positive),
    :math:`\mu = V \sum_k c_k m_k / v_k` and

    .. math:: \log Z = \textstyle\sum_k c_k\big(-\tfrac d2 \log 2\pi v_k - \tfrac{|m_k|^2}{2 v_k}\big)
              + \tfrac d2 \log 2\pi V + \tfrac{|\mu|^2}{2V}.

    ``means`` ``(K, d)``, ``variances`` and ``weights`` ``(K,)``. Returns ``(mu, V, log Z)`` (the exact target and
    normalizer of :func:`pplvi.diffusion.feynman_kac.feynman_kac_sample` for Gaussian models)."""
    means, variances, weights = jnp.asarray(means), jnp.asarray(variances), jnp.asarray(weights)
    if means.ndim != 2 or variances.shape != (means.shape[0],) or weights.shape != (means.shape[0],):
        raise PPLVIError(f"geometric_gaussian: means (K, d), variances (K,), weights (K,); got {means.shape}, "
                         f"{variances.shape}, {weights.shape}")
    precision = jnp.sum(weights / variances)
    if not bool(precision > 0):
        raise PPLVIError(f"geometric_gaussian: sum_k c_k / v_k must be positive (a normalizable product), got "
                         f"{float(precision)}")
    d = means.shape[1]
    var = 1.0 / precision
    mu = var * jnp.sum((weights / variances)[:, None] * means, 0)
    log_z = (jnp.sum(weights * (-0.5 * d * jnp.log(2 * jnp.pi * variances) - 0.5 * jnp.sum(means**2, 1) / variances))
             + 0.5 * d * jnp.log(2 * jnp.pi * var) + 0.5 * jnp.sum(mu**2) / var)
    return mu, var, log_z


def energy_distance(x, y):
    r"""Energy distance :math:`2\mathbb E\|X - Y\| - \mathbb E\|X - X'\| - \mathbb E\|Y - Y'\|` between the
    empirical distributions of ``x (n, d)`` and ``y (m, d)`` (V-statistic; zero iff the distributions agree)."""

    def mean_dist(a, b):
        return jnp.mean(jnp.sqrt(jnp.maximum(jnp.sum((a[:, None] - b[None]) ** 2, -1), 1e-30)))

    return 2 * mean_dist(x, y) - mean_dist(x, x) - mean_dist(y, y)
