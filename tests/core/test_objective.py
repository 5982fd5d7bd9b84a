"""Objectives as programs: jit, vmap, pytrees and equinox modules as parameters, reverse mode at scale."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as nd

import pplvi


@pplvi.gen
def model(x):
    z = pplvi.sample("z", nd.Normal(jnp.zeros(3), 1.0).to_event(1))
    pplvi.sample("x", nd.Normal(z, 1.0).to_event(1), obs=x)


@pplvi.gen
def guide(params):
    pplvi.sample("z", nd.Normal(params["loc"], jnp.exp(params["log_scale"])).to_event(1))


@pplvi.objective
def elbo(params, x):
    tr = guide.simulate(params)
    return model.assess(tr.choices, x) - tr.score


PARAMS = {"loc": jnp.array([0.1, -0.2, 0.3]), "log_scale": jnp.array([-0.5, 0.0, 0.2])}
X = jnp.array([1.0, 0.5, -1.0])


def exact_elbo(params, x):
    """Closed form: E_q[log N(z;0,1) + log N(x;z,1)] + H[q]."""
    m, s2 = params["loc"], jnp.exp(2 * params["log_scale"])
    c = -0.5 * jnp.log(2 * jnp.pi)
    prior = c - 0.5 * (m**2 + s2)
    lik = c - 0.5 * ((x - m) ** 2 + s2)
    ent = 0.5 * jnp.log(2 * jnp.pi * jnp.e * s2)
    return jnp.sum(prior + lik + ent)


def test_value_and_grad_match_the_closed_form():
    keys = jax.random.split(jax.random.key(0), 4000)
    vals, grads = jax.jit(jax.vmap(lambda k: elbo.value_and_grad(k, PARAMS, X)))(keys)
    exact_v, exact_g = jax.value_and_grad(exact_elbo)(PARAMS, X)
    assert abs(vals.mean() - exact_v) < 5 * vals.std() / 63 + 1e-4
    for name in PARAMS:
        se = grads[name].std(0) / jnp.sqrt(4000.0)
        assert jnp.all(jnp.abs(grads[name].mean(0) - exact_g[name]) < 5 * se + 1e-4), name


def test_jax_grad_of_estimate_is_the_same_estimator():
    key = jax.random.key(1)
    g1 = elbo.grad(key, PARAMS, X)
    g2 = jax.grad(lambda p: elbo.estimate(key, p, X))(PARAMS)
    for name in PARAMS:
        assert jnp.allclose(g1[name], g2[name], atol=1e-6)


def test_forward_mode_agrees_with_reverse_mode():
    key = jax.random.key(2)
    g = elbo.grad(key, PARAMS, X)
    direction = {"loc": jnp.array([1.0, 0.0, 2.0]), "log_scale": jnp.array([0.0, 1.0, 0.0])}
    _, tangent = jax.jvp(lambda p: elbo.estimate(key, p, X), (PARAMS,), (direction,))
    expected = sum(jnp.vdot(g[k], direction[k]) for k in PARAMS)
    assert jnp.allclose(tangent, expected, atol=1e-5)


def test_grad_with_respect_to_several_arguments():
    g_params, g_x = elbo.grad(jax.random.key(3), PARAMS, X, argnums=(0, 1))
    assert g_params["loc"].shape == (3,) and g_x.shape == (3,)


def test_jit_and_vmap_over_data():
    xs = jnp.stack([X, X + 1.0])
    vals = jax.jit(jax.vmap(lambda x: elbo.estimate(jax.random.key(4), PARAMS, x)))(xs)
    assert vals.shape == (2,) and jnp.all(jnp.isfinite(vals))


class Encoder(eqx.Module):
    net: eqx.nn.MLP

    def __call__(self, x):
        out = self.net(x)
        return out[:8], out[8:]


def test_equinox_modules_as_parameters_with_a_million_weights():
    """A VAE-sized network (~1.1M parameters) differentiates in one reverse pass."""
    enc = Encoder(eqx.nn.MLP(784, 16, 1200, 1, key=jax.random.key(0)))
    dec = eqx.nn.MLP(8, 784, 200, 1, key=jax.random.key(1))
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(eqx.filter((enc, dec), eqx.is_array)))
    assert n_params > 1_000_000

    @pplvi.gen
    def vae_guide(enc, x):
        loc, log_scale = enc(x)
        return pplvi.sample("z", nd.Normal(loc, jnp.exp(log_scale)).to_event(1))

    @pplvi.gen
    def vae_model(dec, x):
        z = pplvi.sample("z", nd.Normal(jnp.zeros(8), 1.0).to_event(1))
        pplvi.sample("x", nd.Bernoulli(logits=dec(z)).to_event(1), obs=x)

    @pplvi.objective
    def vae_elbo(nets, x):
        enc, dec = nets
        tr = vae_guide.simulate(enc, x)
        return vae_model.assess(tr.choices, dec, x) - tr.score

    x = (jax.random.uniform(jax.random.key(2), (784,)) > 0.5).astype(jnp.float32)
    value, grads = vae_elbo.value_and_grad(jax.random.key(3), (enc, dec), x)
    leaves = jax.tree_util.tree_leaves(eqx.filter(grads, eqx.is_array))
    assert sum(g.size for g in leaves) == n_params
    assert jnp.isfinite(value) and all(jnp.all(jnp.isfinite(g)) for g in leaves)
    assert any(float(jnp.abs(g).max()) > 0 for g in leaves)


def test_estimates_differ_across_keys_and_repeat_for_the_same_key():
    a = elbo.estimate(jax.random.key(5), PARAMS, X)
    b = elbo.estimate(jax.random.key(5), PARAMS, X)
    c = elbo.estimate(jax.random.key(6), PARAMS, X)
    assert a == b and a != c


def test_bernoulli_guide_keeps_its_score_term():
    """A non-reparameterizable guide site: the ELBO gradient includes the score term (checked by enumeration)."""

    @pplvi.gen
    def coin_guide(t):
        pplvi.sample("c", nd.Bernoulli(logits=t))

    @pplvi.gen
    def coin_model():
        c = pplvi.sample("c", nd.Bernoulli(probs=0.7))
        pplvi.sample("y", nd.Normal(2.0 * c, 1.0), obs=1.5)

    @pplvi.objective
    def coin_elbo(t):
        tr = coin_guide.simulate(t)
        return coin_model.assess(tr.choices) - tr.score

    def exact(t):
        q = jax.nn.sigmoid(t)
        def term(c, qc):
            return qc * (coin_model.assess({"c": c}) - jnp.log(qc))
        return term(1, q) + term(0, 1 - q)

    keys = jax.random.split(jax.random.key(7), 4000)
    g = jax.jit(jax.vmap(lambda k: coin_elbo.grad(k, 0.4)))(keys)
    se = g.std() / jnp.sqrt(4000.0)
    assert abs(g.mean() - jax.grad(exact)(0.4)) < 5 * se
    # The gradient without the score term (what a pathwise-only ELBO reports) is 0 here: the sites do not
    # depend on t except through the entropy term, so a working estimator must be far from it.
    assert abs(jax.grad(exact)(0.4)) > 10 * se


def test_stop_gradient_carries_no_tangent_so_custom_vjp_code_after_it_runs():
    """``g(stop_gradient(x)) * x`` with ``g`` a ``jax.custom_vjp`` (no forward-mode rule): the interpreter must not
    differentiate ``g`` at all. Pathwise gradient: E[sin(x)] = sin(theta) exp(-1/2) for x ~ N(theta, 1); 5 SE."""

    @jax.custom_vjp
    def g(x):
        return jnp.sin(x)

    g.defvjp(lambda x: (jnp.sin(x), x), lambda x, ct: (jnp.cos(x) * ct,))

    @pplvi.objective
    def obj(theta):
        x = pplvi.sample("x", nd.Normal(theta, 1.0))
        return g(jax.lax.stop_gradient(x)) * x

    grads = np.asarray(jax.vmap(lambda k: obj.grad(k, jnp.float32(0.7)))(jax.random.split(jax.random.key(0), 4000)))
    se = grads.std(ddof=1) / np.sqrt(len(grads))
    assert abs(grads.mean() - np.sin(0.7) * np.exp(-0.5)) < 5 * se
