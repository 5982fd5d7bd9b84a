r"""Gaussian mixtures with Cholesky-parameterized covariances, and the exact posteriors the Distribution Transformer
is compared with (Whittle et al., "Distribution Transformers: Fast Approximate Bayesian Inference With On-The-Fly
Prior Adaptation", arXiv:2502.02463).

A mixture :math:`q(x) = \sum_k \pi_k \, \mathcal N(x; \mu_k, L_k L_k^\top)` is stored as its logits
(:math:`\pi = \mathrm{softmax}(\ell)`), means and lower-triangular Cholesky factors with positive diagonals; leading
batch axes are allowed on every field.

* :func:`linear_gaussian_posterior`: a mixture prior and observations :math:`y_n = H x + \varepsilon_n`,
  :math:`\varepsilon_n \sim \mathcal N(0, R)`. Each component is updated by the Kalman equations and reweighted by its
  evidence, :math:`\pi_k' \propto \pi_k \prod_n \mathcal N(y_n; H \mu_k^{(n-1)}, H \Sigma_k^{(n-1)} H^\top + R)` —
  the posterior is again a mixture, in closed form.
* :func:`log_inverse_gamma_log_prob` / :func:`log_inverse_gamma_sample`: :math:`u = \log \sigma^2` with
  :math:`\sigma^2 \sim \mathrm{InvGamma}(a, b)`, density :math:`a \log b - \log\Gamma(a) - a u - b e^{-u}`.
* :func:`kl_monte_carlo`: :math:`\mathrm{KL}(p \| q) = \mathbb E_p[\log p - \log q]` from samples of the exact
  :math:`p`, with its standard error.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from jax.scipy.special import gammaln

import pplvi


class GaussianMixture(eqx.Module):
    """A Gaussian mixture: ``logits (..., K)``, ``means (..., K, D)``, ``scale_tril (..., K, D, D)``."""

    logits: jax.Array
    means: jax.Array
    scale_tril: jax.Array

    @property
    def components(self) -> int:
        return self.logits.shape[-1]

    @property
    def dim(self) -> int:
        return self.means.shape[-1]

    @property
    def weights(self) -> jax.Array:
        return jax.nn.softmax(self.logits, axis=-1)

    @property
    def covariances(self) -> jax.Array:
        return self.scale_tril @ jnp.swapaxes(self.scale_tril, -1, -2)

    def distribution(self) -> dist.MixtureSameFamily:
        """The mixture as a numpyro distribution (event shape ``(D,)``)."""
        return dist.MixtureSameFamily(dist.Categorical(logits=self.logits),
                                      dist.MultivariateNormal(self.means, scale_tril=self.scale_tril))

    def log_prob(self, x: jax.Array) -> jax.Array:
        r""":math:`\log \sum_k \pi_k \mathcal N(x; \mu_k, \Sigma_k)` for ``x`` of shape ``(..., D)``."""
        components = dist.MultivariateNormal(self.means, scale_tril=self.scale_tril)
        return jax.nn.logsumexp(jax.nn.log_softmax(self.logits, -1) + components.log_prob(x[..., None, :]), -1)

    def sample(self, key, n: int) -> jax.Array:
        """``n`` draws, shape ``(n, ..., D)``."""
        return self.distribution().sample(key, (n,))

    def mean(self) -> jax.Array:
        return jnp.sum(self.weights[..., None] * self.means, -2)

    def variance(self) -> jax.Array:
        """Marginal variances of the mixture, shape ``(..., D)``."""
        second = jnp.sum(self.weights[..., None] * (jnp.diagonal(self.covariances, 0, -2, -1) + self.means ** 2), -2)
        return second - self.mean() ** 2

    def permute(self, order) -> GaussianMixture:
        """The same mixture with its components listed in ``order``."""
        return GaussianMixture(self.logits[..., order], self.means[..., order, :], self.scale_tril[..., order, :, :])


def gaussian(mean, scale_tril) -> GaussianMixture:
    """A single Gaussian as a one-component mixture."""
    mean = jnp.asarray(mean, jnp.float32)
    scale_tril = jnp.asarray(scale_tril, jnp.float32)
    return GaussianMixture(jnp.zeros(mean.shape[:-1] + (1,)), mean[..., None, :], scale_tril[..., None, :, :])


def check_mixture(mixture: GaussianMixture, where: str = "mixture") -> GaussianMixture:
    """Raise :class:`pplvi.DataError` unless the shapes agree and the Cholesky diagonals are positive."""
    k, d = mixture.logits.shape[-1], mixture.means.shape[-1]
    if mixture.means.shape[-2] != k or mixture.scale_tril.shape[-3:] != (k, d, d):
        raise pplvi.DataError(
            f"{where}: logits {mixture.logits.shape}, means {mixture.means.shape} and scale_tril "
            f"{mixture.scale_tril.shape} must have shapes (..., K), (..., K, D), (..., K, D, D)")
    diag = jnp.diagonal(mixture.scale_tril, 0, -2, -1)
    if not isinstance(diag, jax.core.Tracer) and not bool(jnp.all(diag > 0)):
        raise pplvi.DataError(f"{where}: the Cholesky factors need positive diagonals (got min {float(diag.min())})")
    return mixture


def linear_gaussian_posterior(prior: GaussianMixture, observations, matrix, noise_scale_tril) -> GaussianMixture:
    r"""The exact posterior of a mixture prior (no batch axes) given ``observations (N, M)`` with
    :math:`y_n \sim \mathcal N(H x, R)`, ``matrix`` :math:`H` ``(M, D)``, ``noise_scale_tril`` :math:`R^{1/2}`
    ``(M, M)``: every component takes the Kalman update, its weight is multiplied by its evidence."""
    R = noise_scale_tril @ noise_scale_tril.T

    def update(state, y):
        logits, means, covs = state
        S = jnp.einsum("md,kde,ne->kmn", matrix, covs, matrix) + R
        pred = means @ matrix.T
        evidence = dist.MultivariateNormal(pred, covariance_matrix=S).log_prob(y)
        gain = jnp.einsum("kde,me,kmn->kdn", covs, matrix, jnp.linalg.inv(S))
        means = means + jnp.einsum("kdm,km->kd", gain, y - pred)
        covs = covs - jnp.einsum("kdm,me,kef->kdf", gain, matrix, covs)
        covs = 0.5 * (covs + jnp.swapaxes(covs, -1, -2))
        return (logits + evidence, means, covs), None

    (logits, means, covs), _ = jax.lax.scan(update, (prior.logits, prior.means, prior.covariances),
                                            jnp.asarray(observations))
    return GaussianMixture(logits - jax.nn.logsumexp(logits), means, jnp.linalg.cholesky(covs))


def log_inverse_gamma_log_prob(u, concentration, rate):
    r"""Log density of :math:`u = \log\sigma^2`, :math:`\sigma^2 \sim \mathrm{InvGamma}(a, b)`:
    :math:`a \log b - \log\Gamma(a) - a u - b e^{-u}`."""
    return concentration * jnp.log(rate) - gammaln(concentration) - concentration * u - rate * jnp.exp(-u)


def log_inverse_gamma_sample(key, concentration, rate, n: int):
    r"""``n`` draws of :math:`u = \log\sigma^2 = -\log g`, :math:`g \sim \mathrm{Gamma}(a, b)` (rate ``b``)."""
    shape = (n,) + jnp.shape(concentration)
    return -(jnp.log(jax.random.gamma(key, concentration, shape)) - jnp.log(rate))


def kl_monte_carlo(log_p, samples, q_log_prob):
    r""":math:`\mathrm{KL}(p\|q) \approx \frac1n \sum_i [\log p(x_i) - \log q(x_i)]`, :math:`x_i \sim p`.

    ``samples`` has the sample axis first; ``log_p`` and ``q_log_prob`` map samples to log densities. Returns the
    estimate and its standard error (sample standard deviation of the log ratio over :math:`\sqrt n`)."""
    ratio = log_p(samples) - q_log_prob(samples)
    n = ratio.shape[0]
    return jnp.mean(ratio, 0), jnp.std(ratio, 0, ddof=1) / jnp.sqrt(n)
