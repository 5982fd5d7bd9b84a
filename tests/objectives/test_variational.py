"""The objective library against exact values: a conjugate Gaussian model (closed-form log Z and posterior) and a
discrete model where every bound and gradient is computed exactly by enumeration (K = 2 particles)."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpyro.distributions as nd
import pytest

import pplvi
from pplvi import objectives as O

N_OBS = 5
X = jnp.linspace(-1.0, 2.0, N_OBS)
M = 4000


@pplvi.gen
def gauss_model(params, x):
    z = pplvi.sample("z", nd.Normal(0.0, 1.0))
    pplvi.sample("x", nd.Normal(z, 1.0).expand([N_OBS]).to_event(1), obs=x)


@pplvi.gen
def gauss_guide(params, x):
    pplvi.sample("z", nd.Normal(params["loc"], jnp.exp(params["log_scale"])))


LOG_Z = jax.scipy.stats.multivariate_normal.logpdf(X, jnp.zeros(N_OBS), jnp.eye(N_OBS) + jnp.ones((N_OBS, N_OBS)))
POSTERIOR = {"loc": X.sum() / (N_OBS + 1), "log_scale": -0.5 * jnp.log(N_OBS + 1.0)}
OFF = {"loc": jnp.array(0.2), "log_scale": jnp.array(0.1)}


def estimates(obj, params, m=M, seed=0):
    keys = jax.random.split(jax.random.key(seed), m)
    v = jax.jit(jax.vmap(lambda k: obj.estimate(k, params, X)))(keys)
    return v.mean(), v.std() / jnp.sqrt(m)


def exact_elbo(params):
    m, s2 = params["loc"], jnp.exp(2 * params["log_scale"])
    c = -0.5 * jnp.log(2 * jnp.pi)
    prior = c - 0.5 * (m**2 + s2)
    lik = N_OBS * c - 0.5 * (jnp.sum((X - m) ** 2) + N_OBS * s2)
    return prior + lik + 0.5 * jnp.log(2 * jnp.pi * jnp.e * s2)


def test_elbo_equals_log_evidence_at_the_exact_posterior():
    mean, se = estimates(O.elbo(gauss_model, gauss_guide), POSTERIOR, m=64)
    assert abs(mean - LOG_Z) < 1e-4 and se < 1e-5


def test_elbo_value_and_gradient_match_the_closed_form():
    obj = O.elbo(gauss_model, gauss_guide)
    mean, se = estimates(obj, OFF)
    assert abs(mean - exact_elbo(OFF)) < 5 * se
    keys = jax.random.split(jax.random.key(1), M)
    g = jax.jit(jax.vmap(lambda k: obj.grad(k, OFF, X)))(keys)
    exact = jax.grad(exact_elbo)(OFF)
    for name in OFF:
        assert abs(g[name].mean() - exact[name]) < 5 * g[name].std() / jnp.sqrt(M), name


def test_iwae_increases_with_k_towards_log_evidence():
    values = [estimates(O.iwae(gauss_model, gauss_guide, K), OFF, m=1000) for K in (1, 4, 32)]
    means = [float(v[0]) for v in values]
    ses = [float(v[1]) for v in values]
    assert means[0] < means[1] - 3 * ses[1] and means[1] < means[2] - 3 * ses[2]
    assert means[2] < LOG_Z + 3 * ses[2]
    assert LOG_Z - means[2] < 0.1 * (LOG_Z - means[0])


def test_cubo_is_an_upper_bound():
    mean, se = estimates(O.cubo_bound(gauss_model, gauss_guide, 2.0, 2000), OFF, m=200)
    assert mean > LOG_Z + 3 * se


def test_renyi_bound_is_monotone_in_alpha():
    alphas = [-1.0, 0.0, 0.5, 0.9]
    means = [float(estimates(O.renyi(gauss_model, gauss_guide, a, 16), OFF, m=1000)[0]) for a in alphas]
    assert all(a > b for a, b in zip(means, means[1:])), means
    # alpha = 0 is IWAE with the same K
    iw = float(estimates(O.iwae(gauss_model, gauss_guide, 16), OFF, m=1000)[0])
    assert means[1] == pytest.approx(iw, abs=1e-4)


def test_stl_has_zero_variance_at_the_exact_posterior_and_is_unbiased_elsewhere():
    obj = O.stl(gauss_model, gauss_guide)
    keys = jax.random.split(jax.random.key(2), M)
    at_post = jax.jit(jax.vmap(lambda k: obj.grad(k, POSTERIOR, X)))(keys[:64])
    assert float(jnp.max(jnp.abs(at_post["loc"]))) < 1e-4
    g = jax.jit(jax.vmap(lambda k: obj.grad(k, OFF, X)))(keys)
    exact = jax.grad(exact_elbo)(OFF)
    for name in OFF:
        assert abs(g[name].mean() - exact[name]) < 5 * g[name].std() / jnp.sqrt(M), name


def test_dreg_and_stl_reduce_iwae_gradient_variance_at_k64():
    near = {"loc": POSTERIOR["loc"] + 0.05, "log_scale": POSTERIOR["log_scale"] + 0.05}
    keys = jax.random.split(jax.random.key(3), 400)

    def variance(obj):
        g = jax.jit(jax.vmap(lambda k: obj.grad(k, near, X)))(keys)
        return float(jnp.var(g["loc"]) + jnp.var(g["log_scale"]))

    plain = variance(O.iwae(gauss_model, gauss_guide, 64))
    assert variance(O.dreg(gauss_model, gauss_guide, 64)) * 5 < plain
    assert variance(O.stl(gauss_model, gauss_guide, 64)) * 2 < plain


def test_dreg_gradient_is_unbiased_for_the_iwae_bound():
    """Reference: the plain IWAE gradient (unbiased for the same bound), averaged over many keys."""
    keys = jax.random.split(jax.random.key(4), M)
    g_dreg = jax.jit(jax.vmap(lambda k: O.dreg(gauss_model, gauss_guide, 4).grad(k, OFF, X)))(keys)
    g_iwae = jax.jit(jax.vmap(lambda k: O.iwae(gauss_model, gauss_guide, 4).grad(k, OFF, X)))(keys[::-1])
    for name in OFF:
        se = jnp.sqrt(jnp.var(g_dreg[name]) / M + jnp.var(g_iwae[name]) / M)
        assert abs(g_dreg[name].mean() - g_iwae[name].mean()) < 5 * se, name


# -- discrete latents, exact by enumeration ------------------------------------------------------------------------
@pplvi.gen
def coin_model(params, y):
    c = pplvi.sample("c", nd.Bernoulli(probs=0.3))
    pplvi.sample("y", nd.Normal(2.0 * c, 1.0), obs=y)


@pplvi.gen
def coin_guide(params, y):
    pplvi.sample("c", nd.Bernoulli(logits=params["t"]))


Y = 1.2
COIN = {"t": jnp.array(-0.4)}


def exact_bound(fn, t, K=2):
    """E over all K-tuples of guide draws of fn(log weights), exactly."""
    total = 0.0
    for cs in itertools.product([0, 1], repeat=K):
        lq = jnp.stack([nd.Bernoulli(logits=t).log_prob(c) for c in cs])
        lp = jnp.stack([coin_model.assess({"c": c}, None, Y) for c in cs])
        total = total + jnp.exp(lq.sum()) * fn(lp - lq)
    return total


BOUNDS = {
    "elbo": (lambda g: O.elbo(coin_model, g), lambda lw: lw[0], 1),
    "iwae": (lambda g: O.iwae(coin_model, g, 2), O.log_mean_exp, 2),
    "renyi_0.5": (lambda g: O.renyi(coin_model, g, 0.5, 2), lambda lw: 2 * O.log_mean_exp(0.5 * lw), 2),
    "renyi_-1": (lambda g: O.renyi(coin_model, g, -1.0, 2), lambda lw: 0.5 * O.log_mean_exp(2 * lw), 2),
    "cubo": (lambda g: O.cubo(coin_model, g, 2.0, 2), lambda lw: -jnp.mean(jnp.exp(2 * lw)) / 2, 2),
}


@pytest.mark.parametrize("name", list(BOUNDS))
@pytest.mark.parametrize("estimator", ["reinforce", "enum", "mvd"])
def test_discrete_latent_bounds_have_unbiased_values_and_gradients(name, estimator):
    make, fn, K = BOUNDS[name]
    est = {"reinforce": pplvi.reinforce, "enum": pplvi.enum, "mvd": pplvi.mvd}[estimator]
    obj = make(pplvi.with_estimators(coin_guide, {"c": est}))
    exact_value, exact_grad = jax.value_and_grad(lambda t: exact_bound(fn, t, K))(COIN["t"])
    keys = jax.random.split(jax.random.key(5), M)
    v, g = jax.jit(jax.vmap(lambda k: obj.value_and_grad(k, COIN, Y)))(keys)
    assert abs(v.mean() - exact_value) < 5 * v.std() / jnp.sqrt(M) + 1e-4
    assert abs(g["t"].mean() - exact_grad) < 5 * g["t"].std() / jnp.sqrt(M) + 1e-4


@pytest.mark.parametrize("estimator", ["reinforce", "enum"])
def test_vimco_is_unbiased_for_the_iwae_bound_and_beats_reinforce(estimator):
    guide = pplvi.with_estimators(coin_guide, {"c": {"reinforce": pplvi.reinforce, "enum": pplvi.enum}[estimator]})
    obj = O.vimco(coin_model, guide, 2)
    exact_value, exact_grad = jax.value_and_grad(lambda t: exact_bound(O.log_mean_exp, t, 2))(COIN["t"])
    keys = jax.random.split(jax.random.key(6), M)
    v, g = jax.jit(jax.vmap(lambda k: obj.value_and_grad(k, COIN, Y)))(keys)
    assert abs(v.mean() - exact_value) < 5 * v.std() / jnp.sqrt(M)
    assert abs(g["t"].mean() - exact_grad) < 5 * g["t"].std() / jnp.sqrt(M)
    plain = O.iwae(coin_model, pplvi.with_estimators(coin_guide, {"c": pplvi.reinforce}), 2)
    g_plain = jax.jit(jax.vmap(lambda k: plain.grad(k, COIN, Y)))(keys)
    assert jnp.var(g["t"]) < jnp.var(g_plain["t"])


def test_analytic_kl_elbo_is_unbiased_with_lower_variance():
    obj = O.elbo(gauss_model, gauss_guide, analytic_kl=True)
    keys = jax.random.split(jax.random.key(7), M)
    v, g = jax.jit(jax.vmap(lambda k: obj.value_and_grad(k, OFF, X)))(keys)
    exact_v, exact_g = jax.value_and_grad(exact_elbo)(OFF)
    assert abs(v.mean() - exact_v) < 5 * v.std() / jnp.sqrt(M) + 1e-4
    for name in OFF:
        assert abs(g[name].mean() - exact_g[name]) < 5 * g[name].std() / jnp.sqrt(M) + 1e-4, name
    _, g_sampled = jax.jit(jax.vmap(lambda k: O.elbo(gauss_model, gauss_guide).value_and_grad(k, OFF, X)))(keys)
    assert jnp.var(g["log_scale"]) < jnp.var(g_sampled["log_scale"])


def test_beta_weights_the_kl_term():
    """beta-ELBO = likelihood + beta * (prior - guide): linear in beta, checked at beta = 0 and 2 on one key."""
    key = jax.random.key(8)
    values = {b: O.elbo(gauss_model, gauss_guide, beta=b).estimate(key, OFF, X) for b in (0.0, 1.0, 2.0)}
    assert jnp.allclose(values[2.0] - values[1.0], values[1.0] - values[0.0], atol=1e-4)


def test_tail_adaptive_fits_the_posterior():
    import optax

    obj = O.tail_adaptive(gauss_model, gauss_guide, 16)
    opt = optax.adam(0.02)

    def step(carry, key):
        params, state = carry
        g = jax.tree_util.tree_map(jnp.negative, obj.grad(key, params, X))
        updates, state = opt.update(g, state, params)
        params = optax.apply_updates(params, updates)
        return (params, state), params

    params = {"loc": jnp.array(0.0), "log_scale": jnp.array(0.0)}
    _, hist = jax.jit(lambda p: jax.lax.scan(step, (p, opt.init(p)), jax.random.split(jax.random.key(9), 1500)))(
        params
    )
    fitted = jax.tree_util.tree_map(lambda h: h[-200:].mean(), hist)
    assert abs(fitted["loc"] - POSTERIOR["loc"]) < 0.05
    assert abs(fitted["log_scale"] - POSTERIOR["log_scale"]) < 0.1


def test_stopped_parameter_objectives_accept_equinox_modules():
    """stl/dreg/vimco/q_wake stop gradients of the parameters; an equinox module's non-array leaves pass through."""
    import equinox as eqx

    net = eqx.nn.MLP(1, 2, 4, 1, key=jax.random.key(0))

    @pplvi.gen
    def net_guide(params, x):
        out = params(jnp.ones(1))
        pplvi.sample("z", nd.Normal(out[0], jnp.exp(out[1])))

    for obj in (O.stl(gauss_model, net_guide), O.dreg(gauss_model, net_guide, 4), O.q_wake(gauss_model, net_guide, 4)):
        g = obj.grad(jax.random.key(1), net, X)
        assert all(jnp.all(jnp.isfinite(v)) for v in jax.tree_util.tree_leaves(eqx.filter(g, eqx.is_array)))
