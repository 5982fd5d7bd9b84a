r"""Problem families: a meta-prior over priors, the latent, and the data, written as pplvi generative functions
(Whittle et al., arXiv:2502.02463, experiments).

Every family's :attr:`joint` is a generative function with the sites of one simulated problem: the prior's
parameters :math:`\phi \sim p(\phi)`, the latent ``"x"`` :math:`\sim p(x \mid \phi)` and the data ``"y"``
:math:`\sim p(y \mid x)`. :meth:`split` turns its choices into ``(prior, x, y)``, where ``prior`` is what the network
takes (a :class:`~pplvi.models.dist_transformer.mixture.GaussianMixture`, or a parameter vector).

* :class:`InverseGammaVariance`: :math:`a \sim \Gamma(\alpha_a, \beta_a)`, :math:`b \sim \Gamma(\alpha_b,
  \beta_b)`, :math:`\sigma^2 \sim \mathrm{InvGamma}(a, b)`, :math:`y \sim \mathcal N(0, \sigma^2)`; the latent is
  :math:`x = \log \sigma^2` and the exact posterior is :math:`\mathrm{InvGamma}(a + \tfrac12, b + \tfrac{y^2}2)`.
  The paper's meta-priors: **narrow** :math:`\Gamma(10^4, 2\cdot10^4)` for both :math:`a` and :math:`b` (mean 0.5,
  sd 0.005), **wide** :math:`\Gamma(4, 6)` (mean 0.67, sd 0.33).
* :class:`MixturePrior`: random ``K``-component mixtures in ``D`` dimensions (Dirichlet weights, normal means,
  log-uniform scales, random correlations), observed through a linear-Gaussian map (closed-form posterior,
  :func:`~pplvi.models.dist_transformer.mixture.linear_gaussian_posterior`) or any nonlinear mean function with
  Gaussian noise (the tracking demo's measurement :math:`y = x^2/4 + \varepsilon`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from numpyro.distributions import constraints

import pplvi
from pplvi.models.dist_transformer.mixture import (
    GaussianMixture,
    linear_gaussian_posterior,
    log_inverse_gamma_log_prob,
)


class LogInverseGamma(dist.Distribution):
    r""":math:`u = \log\sigma^2`, :math:`\sigma^2 \sim \mathrm{InvGamma}(a, b)`: density
    :math:`a \log b - \log\Gamma(a) - a u - b e^{-u}` on the real line. Sampled as :math:`-\log g`,
    :math:`g \sim \Gamma(a, b)` (implicit reparameterization through the gamma sampler)."""

    arg_constraints = {"concentration": constraints.positive, "rate": constraints.positive}
    support = constraints.real
    reparametrized_params = ["concentration", "rate"]

    def __init__(self, concentration, rate, *, validate_args=None):
        self.concentration, self.rate = jnp.broadcast_arrays(jnp.asarray(concentration), jnp.asarray(rate))
        super().__init__(batch_shape=jnp.shape(self.concentration), validate_args=validate_args)

    def sample(self, key, sample_shape=()):
        shape = sample_shape + self.batch_shape
        return -(jnp.log(jax.random.gamma(key, self.concentration, shape)) - jnp.log(self.rate))

    def log_prob(self, value):
        return log_inverse_gamma_log_prob(value, self.concentration, self.rate)


@dataclass(frozen=True)
class InverseGammaVariance:
    """The conjugate inverse-gamma variance problem with a gamma meta-prior on the concentration ``a`` and the rate
    ``b`` (each ``(shape, rate)``); one observation per problem. Use :func:`narrow` / :func:`wide`."""

    name: str
    concentration_prior: tuple[float, float]
    rate_prior: tuple[float, float]
    observations: int = 1
    dim: int = 1
    observation_dim: int = 1

    def __post_init__(self):
        if min(*self.concentration_prior, *self.rate_prior) <= 0 or self.observations < 1:
            raise pplvi.DataError(f"{self.name}: gamma meta-prior parameters must be positive and observations >= 1 "
                                  f"(got {self.concentration_prior}, {self.rate_prior}, {self.observations})")

    @cached_property
    def joint(self) -> pplvi.GenerativeFunction:
        (ca, cb), (ra, rb), n = self.concentration_prior, self.rate_prior, self.observations

        @pplvi.gen
        def inverse_gamma_problem():
            a = pplvi.sample("concentration", dist.Gamma(ca, cb))
            b = pplvi.sample("rate", dist.Gamma(ra, rb))
            u = pplvi.sample("x", LogInverseGamma(a, b).expand([1]).to_event(1))
            pplvi.sample("y", dist.Normal(0.0, jnp.exp(0.5 * u)).expand([n, 1]).to_event(2))

        return inverse_gamma_problem

    def split(self, choices):
        """``(prior parameters (a, b), x = log variance (1,), y (N, 1))``."""
        return jnp.stack([choices["concentration"], choices["rate"]], -1), choices["x"], choices["y"]

    def posterior_parameters(self, prior, y):
        r"""Conjugacy: :math:`(a + N/2,\; b + \sum_n y_n^2 / 2)`."""
        return prior[..., 0] + 0.5 * y.shape[-2], prior[..., 1] + 0.5 * jnp.sum(y[..., 0] ** 2, -1)

    def exact_log_prob(self, prior, y, x):
        """Exact posterior log density of ``x (..., 1)`` (log variance)."""
        a, b = self.posterior_parameters(prior, y)
        return log_inverse_gamma_log_prob(x[..., 0], a, b)

    def exact_sample(self, key, prior, y, n: int):
        a, b = self.posterior_parameters(prior, y)
        return LogInverseGamma(a, b).sample(key, (n,))[..., None]


def narrow() -> InverseGammaVariance:
    """The paper's narrow meta-prior: ``a, b ~ Gamma(10000, 20000)``."""
    return InverseGammaVariance("invgamma_narrow", (10000.0, 20000.0), (10000.0, 20000.0))


def wide() -> InverseGammaVariance:
    """The paper's wide meta-prior: ``a, b ~ Gamma(4, 6)``."""
    return InverseGammaVariance("invgamma_wide", (4.0, 6.0), (4.0, 6.0))


def _unit_lower(offdiag, d):
    rows, cols = jnp.tril_indices(d, -1)
    return jnp.eye(d) + jnp.zeros(offdiag.shape[:-1] + (d, d)).at[..., rows, cols].set(offdiag)


@dataclass(frozen=True)
class MixturePrior:
    r"""Random mixture priors, ``observations`` measurements each :math:`y_n \sim \mathcal N(h(x), R)`.

    Meta-prior: weights :math:`\sim \mathrm{Dirichlet}(c\,\mathbf 1)`, means :math:`\sim \mathcal N(0, s_\mu^2)`,
    per-dimension scales log-uniform on ``scale_range``, and :math:`L_k = \mathrm{diag}(s_k) U_k` with unit
    lower-triangular :math:`U_k` (off-diagonals :math:`\mathcal N(0, 0.5^2)`). ``matrix`` :math:`H` gives the linear
    map :math:`h(x) = Hx` (exact posterior available); ``measurement`` a nonlinear one."""

    name: str
    dim: int
    components: int
    observations: int
    noise_scale: float
    matrix: tuple | None = None
    measurement: Callable | None = field(default=None, compare=False)
    mean_scale: float = 3.0
    scale_range: tuple[float, float] = (0.3, 3.0)
    weight_concentration: float = 1.0

    def __post_init__(self):
        if (self.matrix is None) == (self.measurement is None):
            raise pplvi.DataError(f"{self.name}: give exactly one of matrix (linear-Gaussian) or measurement")
        if min(self.dim, self.components, self.observations) < 1 or self.noise_scale <= 0:
            raise pplvi.DataError(f"{self.name}: dim, components, observations must be >= 1 and noise_scale > 0")
        if self.matrix is not None and jnp.asarray(self.matrix).shape[-1] != self.dim:
            raise pplvi.DataError(f"{self.name}: matrix {jnp.asarray(self.matrix).shape} must have {self.dim} columns")

    @property
    def observation_dim(self) -> int:
        return self.dim if self.matrix is None else jnp.asarray(self.matrix).shape[0]

    def mean_function(self, x):
        return x @ jnp.asarray(self.matrix, jnp.float32).T if self.matrix is not None else self.measurement(x)

    @cached_property
    def joint(self) -> pplvi.GenerativeFunction:
        k, d, n, m = self.components, self.dim, self.observations, self.observation_dim
        lo, hi = jnp.log(self.scale_range[0]), jnp.log(self.scale_range[1])

        @pplvi.gen
        def mixture_problem():
            weights = pplvi.sample("weights", dist.Dirichlet(jnp.full(k, self.weight_concentration)))
            means = pplvi.sample("means", dist.Normal(0.0, self.mean_scale).expand([k, d]).to_event(2))
            log_scales = pplvi.sample("log_scales", dist.Uniform(lo, hi).expand([k, d]).to_event(2))
            offdiag = pplvi.sample("offdiag", dist.Normal(0.0, 0.5).expand([k, d * (d - 1) // 2]).to_event(2))
            prior = self.assemble(weights, means, log_scales, offdiag)
            x = pplvi.sample("x", prior.distribution())
            mean = jnp.broadcast_to(self.mean_function(x), (n, m))
            pplvi.sample("y", dist.Normal(mean, self.noise_scale).to_event(2))

        return mixture_problem

    def assemble(self, weights, means, log_scales, offdiag) -> GaussianMixture:
        scale_tril = jnp.exp(log_scales)[..., :, None] * _unit_lower(offdiag, self.dim)
        return GaussianMixture(jnp.log(jnp.maximum(weights, 1e-30)), means, scale_tril)

    def split(self, choices):
        prior = self.assemble(choices["weights"], choices["means"], choices["log_scales"], choices["offdiag"])
        return prior, choices["x"], choices["y"]

    def exact_posterior(self, prior: GaussianMixture, y) -> GaussianMixture:
        """Closed form (linear-Gaussian families only); one problem, ``jax.vmap`` for batches."""
        if self.matrix is None:
            raise pplvi.DataError(f"{self.name}: no closed-form posterior for a nonlinear measurement")
        m = self.observation_dim
        return linear_gaussian_posterior(prior, y, jnp.asarray(self.matrix, jnp.float32),
                                         self.noise_scale * jnp.eye(m))


def gmm_1d() -> MixturePrior:
    """1-D: 4-component mixture priors, two observations ``y ~ N(x, 1)``."""
    return MixturePrior("gmm_1d", dim=1, components=4, observations=2, noise_scale=1.0, matrix=((1.0,),))


def gmm_2d() -> MixturePrior:
    """2-D: 4-component mixture priors, two observations ``y ~ N(x, I)``."""
    return MixturePrior("gmm_2d", dim=2, components=4, observations=2, noise_scale=1.0,
                        matrix=((1.0, 0.0), (0.0, 1.0)))


def simulate_problems(family, key, n: int):
    """``n`` problems from the family's joint (outside any objective): ``(prior, x, y)`` with a leading axis."""
    choices = jax.vmap(lambda k: family.joint.simulate(k).choices)(jax.random.split(key, n))
    return family.split(choices)
