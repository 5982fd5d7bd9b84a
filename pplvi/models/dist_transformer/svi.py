r"""Per-problem stochastic variational inference with a mixture guide, written in pplvi — the baseline the
Distribution Transformer is compared with on the inverse-gamma variance problem (Whittle et al., arXiv:2502.02463,
inverse-gamma experiment: SVI with a 5-component mixture, 2000 iterations per problem).

Guide: a component :math:`c \sim \mathrm{Categorical}(\mathrm{softmax}(\ell))` (estimator: :data:`pplvi.enum`, so
the gradient of the mixture weights is summed exactly over the components), then
:math:`x \mid c \sim \mathcal N(m_c, s_c^2)` (reparameterized); :math:`x = \log\sigma^2`.

The guide's joint density :math:`q(c, x)` is not the marginal :math:`q(x)` an ELBO needs. The model therefore carries
the auxiliary choice :math:`c \sim r(c \mid x) = q(c \mid x)` (the guide's own responsibilities; Agakov & Barber
2004, Ranganath et al. 2016): then

.. math:: \log p(x, y) + \log r(c \mid x) - \log q(c, x) = \log p(x, y) - \log q(x)

for *every* :math:`c`, so :func:`pplvi.objectives.elbo` of this model and guide is exactly the ELBO of the mixture
:math:`q(x) = \sum_c \pi_c \mathcal N(x; m_c, s_c^2)`. Each step averages ``particles`` independent gradient
estimates (``jax.vmap`` over keys); Adam with an exponentially decaying step size.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import optax

import pplvi
from pplvi import objectives as O
from pplvi.models.dist_transformer.mixture import GaussianMixture
from pplvi.models.dist_transformer.problems import LogInverseGamma


def responsibility_logits(params, x):
    r""":math:`\log \pi_c + \log \mathcal N(x; m_c, s_c^2)` (unnormalized :math:`\log q(c \mid x)`)."""
    return jax.nn.log_softmax(params["logits"]) + jnp.sum(
        dist.Normal(params["means"], jnp.exp(params["log_scales"])).log_prob(x), -1)


@pplvi.gen
def inverse_gamma_model(params, problem):
    """:math:`x \\sim \\log\\mathrm{InvGamma}(a, b)`, auxiliary :math:`c \\sim q(c \\mid x)`, :math:`y \\sim
    \\mathcal N(0, e^x)`; ``problem = (prior (a, b), y (N, 1))``."""
    prior, y = problem
    x = pplvi.sample("x", LogInverseGamma(prior[0], prior[1]).expand([1]).to_event(1))
    pplvi.sample("component", dist.Categorical(logits=responsibility_logits(params, x)))
    pplvi.sample("y", dist.Normal(0.0, jnp.exp(0.5 * x)).expand(y.shape).to_event(2), obs=y)


@pplvi.gen
def _mixture_guide(params, problem):
    c = pplvi.sample("component", dist.Categorical(logits=params["logits"]))
    pplvi.sample("x", dist.Normal(params["means"][c], jnp.exp(params["log_scales"][c])).to_event(1))


mixture_guide = pplvi.with_estimators(_mixture_guide, {"component": pplvi.enum})
mixture_elbo = O.elbo(inverse_gamma_model, mixture_guide)


def initial_guide(prior, y, components: int = 5):
    r"""Equal weights, unit scales, means spread evenly from 1 below to 1 above the interval between the prior's
    mode :math:`\log(b/a)` and the maximum-likelihood estimate :math:`\log \overline{y^2}` (data-informed, so that
    SVI starts near the posterior even for extreme observations; no conjugate formula is used)."""
    mode, mle = jnp.log(prior[1] / prior[0]), jnp.log(jnp.mean(y ** 2) + 1e-6)
    lo, hi = jnp.minimum(mode, mle) - 1.0, jnp.maximum(mode, mle) + 1.0
    return {"logits": jnp.zeros(components), "means": jnp.linspace(lo, hi, components)[:, None],
            "log_scales": jnp.zeros((components, 1))}


def fit_one(key, prior, y, *, steps: int = 1000, particles: int = 4, learning_rate: float = 0.05,
            components: int = 5):
    """SVI on one problem: returns the guide's parameters after ``steps`` Adam steps."""
    optimizer = optax.adam(optax.exponential_decay(learning_rate, steps, 0.05))
    params = initial_guide(prior, y, components)

    def step(carry, k):
        params, state = carry
        _, grads = jax.vmap(lambda kk: mixture_elbo.value_and_grad(kk, params, (prior, y)))(
            jax.random.split(k, particles))
        grads = jax.tree_util.tree_map(lambda g: -jnp.mean(g, 0), grads)  # optax minimizes: ascend the ELBO
        updates, state = optimizer.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), None

    (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)), jax.random.split(key, steps))
    return params


def as_mixture(params) -> GaussianMixture:
    """The guide's marginal :math:`q(x)` as a mixture (batched parameters give a batched mixture)."""
    return GaussianMixture(params["logits"], params["means"], jnp.exp(params["log_scales"])[..., None])


def run_sequential(key, priors, ys, **options):
    """Per-problem SVI, one problem after another (one compiled program reused): ``(mixtures, seconds)``; the time
    excludes the single compilation."""
    keys = jax.random.split(key, priors.shape[0])
    fit = jax.jit(lambda k, p, y: fit_one(k, p, y, **options)).lower(keys[0], priors[0], ys[0]).compile()
    out, t0 = [], time.perf_counter()
    for i in range(priors.shape[0]):
        out.append(jax.block_until_ready(fit(keys[i], priors[i], ys[i])))
    seconds = time.perf_counter() - t0
    params = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *out)
    return as_mixture(params), seconds


def run_vectorized(key, priors, ys, **options):
    """The same SVI for every problem at once (``jax.vmap`` over problems): ``(mixtures, seconds)`` without the
    compilation. Same keys as :func:`run_sequential`, so the same algorithm per problem."""
    keys = jax.random.split(key, priors.shape[0])
    fit = jax.jit(jax.vmap(lambda k, p, y: fit_one(k, p, y, **options))).lower(keys, priors, ys).compile()
    t0 = time.perf_counter()
    params = jax.block_until_ready(fit(keys, priors, ys))
    return as_mixture(params), time.perf_counter() - t0


def finite_rows(mixture: GaussianMixture) -> np.ndarray:
    return np.asarray(jnp.all(jnp.isfinite(mixture.means), (-1, -2)) & jnp.all(jnp.isfinite(mixture.logits), -1))
