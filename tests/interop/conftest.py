"""Shared helpers for the interop tests: conjugate Gaussian data with its exact posterior, and a trainer."""

import jax
import jax.numpy as jnp
import optax
import pytest

N_OBS = 10


@pytest.fixture(scope="session")
def gaussian_data():
    """``x_i ~ N(z, 1)``, ``i < 10``, with prior ``z ~ N(0, 1)``: returns ``(x, post. mean, post. sd)``.

    The posterior is ``N(sum(x) / (1 + n), 1 / (1 + n))`` (precision ``1 + n``)."""
    x = jax.random.normal(jax.random.key(42), (N_OBS,)) + 1.0
    return x, jnp.sum(x) / (1 + N_OBS), 1.0 / jnp.sqrt(1.0 + N_OBS)


def maximize(objective, params, *args, steps=300, seed=0, last=50):
    """Ascend ``objective`` (a ``@pplvi.objective``) in ``params`` with Adam for ``steps`` steps and return
    the average of the last ``last`` iterates.

    The learning rate decays exponentially from 0.1 to 0.003, and the whole run is one jitted ``lax.scan`` of
    a step function. With one reparameterized sample per step the conjugate Gaussian example ends, over 20
    seeds, with errors of standard deviation about 0.02 in the posterior mean and in the posterior sd (largest
    0.05), which is what the tests' tolerance of 0.1 is derived from (about 5 standard deviations)."""
    opt = optax.adam(optax.exponential_decay(0.1, steps, 0.03))

    def step(carry, key):
        params, state = carry
        _, grads = objective.value_and_grad(key, params, *args)
        updates, state = opt.update(jax.tree.map(jnp.negative, grads), state, params)  # optax minimizes
        params = optax.apply_updates(params, updates)
        return (params, state), params

    keys = jax.random.split(jax.random.key(seed), steps)
    run = jax.jit(lambda p, k: jax.lax.scan(step, (p, opt.init(p)), k)[1])
    history = run(params, keys)
    return jax.tree.map(lambda h: jnp.mean(h[-last:], axis=0), history)


@pytest.fixture(scope="session")
def fit():
    return maximize


def init_params():
    return {"loc": jnp.array(0.0), "log_scale": jnp.array(0.0)}


@pytest.fixture
def params0():
    return init_params()
