"""Log densities of numpyro distributions, with the derivative fixed where numpyro's formula has a kink.

numpyro writes the logits-parameterized Bernoulli and Binomial log densities with ``clip(x, 0)`` and ``abs(x)``;
JAX differentiates those one-sidedly at ``x = 0``, so ``d/dlogits log p(1 | logits)`` at ``logits = 0`` comes out
as 1.0 instead of 0.5 — a silently biased score and pathwise gradient at the most common initialization. pplvi
evaluates these two families with ``softplus`` (same values, smooth derivative) everywhere it computes a log density
itself: trace scores, ``assess``/``generate`` weights, and the estimators' scores.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro.distributions as nd
from jax.scipy.special import gammaln


@jax.custom_jvp
def softplus(x):
    """``log(1 + exp(x))``, stably, with derivative ``sigmoid(x)`` computed from the same ``exp(-|x|)``."""
    return jnp.maximum(x, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(x)))


@softplus.defjvp
def _softplus_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    e = jnp.exp(-jnp.abs(x))
    sigmoid = jnp.where(x >= 0, 1.0, e) / (1.0 + e)
    return jnp.maximum(x, 0.0) + jnp.log1p(e), sigmoid * dx


def log_prob(dist, value):
    """``dist.log_prob(value)`` with correct derivatives at ``logits = 0`` for Bernoulli and Binomial."""
    if isinstance(dist, nd.BernoulliLogits):
        return value * dist.logits - softplus(dist.logits)
    if isinstance(dist, nd.BinomialLogits):
        n = dist.total_count
        norm = gammaln(n + 1.0) - gammaln(value + 1.0) - gammaln(n - value + 1.0)
        return norm + value * dist.logits - n * softplus(dist.logits)
    if isinstance(dist, nd.Independent):
        lp = log_prob(dist.base_dist, value)
        ndims = dist.reinterpreted_batch_ndims
        return jnp.sum(lp, axis=tuple(range(-ndims, 0))) if ndims else lp
    if isinstance(dist, nd.ExpandedDistribution):
        shape = jax.eval_shape(dist.log_prob, value).shape
        return jnp.broadcast_to(log_prob(dist.base_dist, value), shape)
    return dist.log_prob(value)
