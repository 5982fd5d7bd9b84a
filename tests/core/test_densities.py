"""pplvi's log densities equal numpyro's in value, with the right derivative at logits = 0."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro.distributions as nd
import pytest

import pplvi
from pplvi.core.densities import log_prob

CASES = [
    (lambda t: nd.Bernoulli(logits=t), 1.0),
    (lambda t: nd.Bernoulli(logits=t), 0.0),
    (lambda t: nd.Binomial(3, logits=t), 2.0),
    (lambda t: nd.Bernoulli(logits=jnp.full(3, t)).to_event(1), jnp.array([1.0, 0.0, 1.0])),
    (lambda t: nd.Bernoulli(logits=t).expand([4]), jnp.array([1.0, 0.0, 1.0, 1.0])),
]


@pytest.mark.parametrize("make,value", CASES)
def test_values_match_numpyro_and_derivative_is_smooth_at_zero(make, value):
    for t in (-0.7, 0.0, 1.3):
        assert jnp.allclose(log_prob(make(t), value), make(t).log_prob(value), atol=1e-6)
    at_zero = jax.grad(lambda t: jnp.sum(log_prob(make(t), value)))(0.0)
    near_zero = jax.grad(lambda t: jnp.sum(make(t).log_prob(value)))(1e-6)
    assert jnp.allclose(at_zero, near_zero, atol=1e-4)


def test_score_function_gradient_is_unbiased_at_logits_zero():
    @pplvi.objective
    def obj(t):
        c = pplvi.sample("c", nd.Bernoulli(logits=t), estimator=pplvi.reinforce)
        return (c + 1.0) ** 2

    keys = jax.random.split(jax.random.key(0), 4000)
    g = jax.jit(jax.vmap(lambda k: obj.grad(k, 0.0)))(keys)
    assert abs(g.mean() - 0.75) < 5 * g.std() / jnp.sqrt(4000.0)  # d/dt (1 + 3 sigmoid(t)) at 0
