"""marginal (HVI / IWHVI / DIWHVI) and normalize (SIR) against exact values on a conjugate Gaussian model."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro.distributions as nd
import pytest

import pplvi
from pplvi import objectives as O

N_OBS = 5
X = jnp.linspace(-1.0, 2.0, N_OBS)
LOG_Z = jax.scipy.stats.multivariate_normal.logpdf(X, jnp.zeros(N_OBS), jnp.eye(N_OBS) + jnp.ones((N_OBS, N_OBS)))
P = {"mu": jnp.array(0.4), "tau": jnp.array(0.3), "s": jnp.array(0.3)}
M = 3000


@pplvi.gen
def model(params, x):
    z = pplvi.sample("z", nd.Normal(0.0, 1.0))
    pplvi.sample("x", nd.Normal(z, 1.0).expand([N_OBS]).to_event(1), obs=x)


@pplvi.gen
def hierarchical_guide(params, x):
    """q(z) = integral of N(z; u, s^2) N(u; mu, tau^2) du = N(mu, tau^2 + s^2)."""
    u = pplvi.sample("u", nd.Normal(params["mu"], params["tau"]))
    pplvi.sample("z", nd.Normal(u, params["s"]))


@pplvi.gen
def marginal_guide(params, x):
    pplvi.sample("z", nd.Normal(params["mu"], jnp.sqrt(params["tau"] ** 2 + params["s"] ** 2)))


@pplvi.gen
def wide_proposal(params, x):
    pplvi.sample("z", nd.Normal(0.0, 2.0))


def estimate(obj, params=P, m=M, seed=0):
    keys = jax.random.split(jax.random.key(seed), m)
    v = jax.jit(jax.vmap(lambda k: obj.estimate(k, params, X)))(keys)
    return float(v.mean()), float(v.std() / jnp.sqrt(m))


def expected_log_joint(mu, var):
    c = -0.5 * jnp.log(2 * jnp.pi)
    return c - 0.5 * (mu**2 + var) + N_OBS * c - 0.5 * (jnp.sum((X - mu) ** 2) + N_OBS * var)


def exact_hvi0(params):
    """HVI with the prior of u as auxiliary model: E[log p(x, z) - log q(z | u)]."""
    var = params["tau"] ** 2 + params["s"] ** 2
    return expected_log_joint(params["mu"], var) + 0.5 * jnp.log(2 * jnp.pi * jnp.e * params["s"] ** 2)


def exact_elbo(params):
    var = params["tau"] ** 2 + params["s"] ** 2
    return expected_log_joint(params["mu"], var) + 0.5 * jnp.log(2 * jnp.pi * jnp.e * var)


def test_hvi_value_and_gradient_match_the_closed_form():
    obj = O.elbo(model, pplvi.marginal(hierarchical_guide, ["z"], particles=0))
    mean, se = estimate(obj)
    assert abs(mean - exact_hvi0(P)) < 5 * se
    keys = jax.random.split(jax.random.key(1), M)
    g = jax.jit(jax.vmap(lambda k: obj.grad(k, P, X)))(keys)
    exact = jax.grad(exact_hvi0)(P)
    for name in P:
        assert abs(g[name].mean() - exact[name]) < 5 * g[name].std() / jnp.sqrt(M), name


def test_hvi_below_iwhvi_below_the_exact_marginal_elbo_below_diwhvi():
    hvi = estimate(O.elbo(model, pplvi.marginal(hierarchical_guide, ["z"], particles=0)))
    iwhvi1 = estimate(O.elbo(model, pplvi.marginal(hierarchical_guide, ["z"], particles=1)))
    iwhvi10 = estimate(O.elbo(model, pplvi.marginal(hierarchical_guide, ["z"], particles=10)))
    elbo = exact_elbo(P)
    diwhvi = estimate(O.iwae(model, pplvi.marginal(hierarchical_guide, ["z"], particles=10), 5))
    ordered = [hvi, iwhvi1, iwhvi10]
    for (a, sa), (b, sb) in zip(ordered, ordered[1:]):
        assert a < b - 3 * (sa + sb), (a, b)
    assert iwhvi10[0] < elbo + 3 * iwhvi10[1]
    assert diwhvi[0] > iwhvi10[0] + 3 * (diwhvi[1] + iwhvi10[1])
    assert diwhvi[0] < LOG_Z + 3 * diwhvi[1]


def test_marginal_as_a_model_has_an_unbiased_density():
    """E[p_hat(z)] = q(z) for the hierarchical distribution used as a model (generate with a key)."""
    hier = pplvi.marginal(hierarchical_guide, ["z"], particles=4)
    keys = jax.random.split(jax.random.key(2), 20000)
    w = jax.jit(jax.vmap(lambda k: hier.generate(k, {"z": 0.5}, P, X)[1]))(keys)
    exact = nd.Normal(P["mu"], jnp.sqrt(P["tau"] ** 2 + P["s"] ** 2)).log_prob(0.5)
    dens = jnp.exp(w)
    assert abs(dens.mean() - jnp.exp(exact)) < 5 * dens.std() / jnp.sqrt(20000.0)


def test_marginal_as_a_model_inside_an_objective():
    hier = pplvi.marginal(hierarchical_guide, ["z"], particles=8)

    @pplvi.objective
    def density(params, z):
        return jnp.exp(hier.assess({"z": z}, params, X))

    keys = jax.random.split(jax.random.key(3), 4000)
    v = jax.jit(jax.vmap(lambda k: density.estimate(k, P, 0.5)))(keys)
    exact = jnp.exp(nd.Normal(P["mu"], jnp.sqrt(P["tau"] ** 2 + P["s"] ** 2)).log_prob(0.5))
    assert abs(v.mean() - exact) < 5 * v.std() / jnp.sqrt(4000.0)


def test_assess_of_an_estimated_density_without_a_key_is_a_clear_error():
    with pytest.raises(pplvi.ObjectiveError, match="inside an objective"):
        pplvi.marginal(hierarchical_guide, ["z"]).assess({"z": 0.1}, P, X)


def test_sir_guide_bound_increases_with_particles_towards_log_evidence():
    values = [estimate(O.elbo(model, pplvi.normalize(model, wide_proposal, K)), m=1000) for K in (2, 10, 100)]
    for (a, sa), (b, sb) in zip(values, values[1:]):
        assert a < b - 3 * (sa + sb)
    assert values[-1][0] < LOG_Z + 3 * values[-1][1]
    assert LOG_Z - values[-1][0] < 0.05


def test_sir_guide_gradient_is_unbiased_for_its_bound():
    """K = 1: SIR is the proposal itself, so the bound is the proposal's ELBO in closed form."""

    @pplvi.gen
    def proposal(params, x):
        pplvi.sample("z", nd.Normal(params["mu"], params["s"]))

    obj = O.elbo(model, pplvi.normalize(model, proposal, 1))
    params = {"mu": jnp.array(0.3), "s": jnp.array(0.5)}
    keys = jax.random.split(jax.random.key(4), M)
    g = jax.jit(jax.vmap(lambda k: obj.grad(k, params, X)))(keys)

    def exact(p):
        return expected_log_joint(p["mu"], p["s"] ** 2) + 0.5 * jnp.log(2 * jnp.pi * jnp.e * p["s"] ** 2)

    ex = jax.grad(exact)(params)
    for name in params:
        assert abs(g[name].mean() - ex[name]) < 5 * g[name].std() / jnp.sqrt(M), name


def test_hvi_with_sir_inside_iwae_composes():
    sir = pplvi.normalize(model, wide_proposal, 8)
    nested = O.iwae(model, pplvi.marginal(sir, ["z"], particles=2), 3)
    mean, se = estimate(nested, m=500)
    assert jnp.isfinite(mean) and mean < LOG_Z + 3 * se
    g = nested.grad(jax.random.key(5), P, X)
    assert all(jnp.isfinite(v) for v in jax.tree_util.tree_leaves(g))
