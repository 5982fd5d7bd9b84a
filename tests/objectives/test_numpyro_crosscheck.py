"""The same model and guide under NumPyro and pplvi give the same objective values (within Monte Carlo error).

NumPyro's Trace_ELBO and RenyiELBO report losses (negated bounds) from a single estimate per call; we average many.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as nd
import pytest
from numpyro.infer import RenyiELBO, Trace_ELBO

import pplvi
from pplvi import objectives as O

X = jnp.array([0.3, -0.5, 1.2, 0.8])
LOC, SCALE = 0.4, 0.6
M = 2000


def np_model(x):
    z = numpyro.sample("z", nd.Normal(0.0, 1.0))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("x", nd.Normal(z, 1.0), obs=x)


def np_guide(x):
    numpyro.sample("z", nd.Normal(LOC, SCALE))


@pplvi.gen
def model(params, x):
    z = pplvi.sample("z", nd.Normal(0.0, 1.0))
    pplvi.sample("x", nd.Normal(z, 1.0).expand([x.shape[0]]).to_event(1), obs=x)


@pplvi.gen
def guide(params, x):
    pplvi.sample("z", nd.Normal(params["loc"], params["scale"]))


PARAMS = {"loc": jnp.array(LOC), "scale": jnp.array(SCALE)}


def numpyro_values(loss):
    keys = jax.random.split(jax.random.key(0), M)
    return -jax.vmap(lambda k: loss.loss(k, {}, np_model, np_guide, X))(keys)


def pplvi_values(obj):
    keys = jax.random.split(jax.random.key(1), M)
    return jax.jit(jax.vmap(lambda k: obj.estimate(k, PARAMS, X)))(keys)


def assert_same_mean(a, b):
    se = jnp.sqrt(jnp.var(a) / a.size + jnp.var(b) / b.size)
    assert abs(a.mean() - b.mean()) < 5 * se + 1e-5, (float(a.mean()), float(b.mean()), float(se))


def test_elbo_matches_numpyro_trace_elbo():
    assert_same_mean(pplvi_values(O.elbo(model, guide)), numpyro_values(Trace_ELBO()))


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_renyi_matches_numpyro_renyi_elbo(alpha):
    ours = pplvi_values(O.renyi(model, guide, alpha, 4))
    theirs = numpyro_values(RenyiELBO(alpha=alpha, num_particles=4))
    assert_same_mean(ours, theirs)
