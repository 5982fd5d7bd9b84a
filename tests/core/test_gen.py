"""The generative function interface: simulate / assess / generate, nesting, combinators, estimator overrides."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro.distributions as nd
import pytest

import pplvi


@pplvi.gen
def encoder(x):
    h = pplvi.sample("h", nd.Normal(x, 1.0))
    return h


@pplvi.gen
def model(x):
    h = pplvi.sample("encoder", encoder(x))
    z = pplvi.sample("z", nd.Bernoulli(logits=h))
    pplvi.sample("y", nd.Normal(z.astype(jnp.float32), 0.5), obs=0.3)
    return h + z


def test_simulate_records_nested_addresses_and_scores():
    tr = model.simulate(jax.random.key(0), 0.2)
    assert set(tr.choices) == {"encoder/h", "z"}
    assert set(tr.log_probs) == {"encoder/h", "z", "y"}
    h, z = tr["encoder/h"], tr["z"]
    expected = (
        nd.Normal(0.2, 1.0).log_prob(h) + nd.Bernoulli(logits=h).log_prob(z) + nd.Normal(1.0 * z, 0.5).log_prob(0.3)
    )
    assert jnp.allclose(tr.score, expected)
    assert jnp.allclose(tr.retval, h + z)


def test_assess_matches_simulate_score():
    tr = model.simulate(jax.random.key(1), -0.4)
    assert jnp.allclose(model.assess(tr.choices, -0.4), tr.score)
    assert jnp.allclose(model.assess(tr, -0.4), tr.score)


def test_generate_weight_is_the_log_density_of_the_constraints():
    tr, w = model.generate(jax.random.key(2), {"z": 1}, 0.1)
    assert tr["z"] == 1
    observed = nd.Normal(1.0, 0.5).log_prob(0.3)
    assert jnp.allclose(w, nd.Bernoulli(logits=tr["encoder/h"]).log_prob(1) + observed)
    tr_all, w_all = model.generate(jax.random.key(3), {"z": 0, "encoder/h": 0.5}, 0.1)
    assert jnp.allclose(w_all, model.assess({"z": 0, "encoder/h": 0.5}, 0.1))


def test_simulate_is_jittable_and_vmappable():
    keys = jax.random.split(jax.random.key(4), 16)
    trs = jax.jit(jax.vmap(lambda k: model.simulate(k, 0.0)))(keys)
    assert trs.choices["encoder/h"].shape == (16,)
    assert len(set(map(float, trs.choices["encoder/h"]))) == 16


@pplvi.gen
def step(carry, x):
    z = pplvi.sample("z", nd.Normal(carry + x, 1.0))
    return z, 2 * z


def test_scan_combinator_stacks_choices():
    chain = pplvi.scan(step)
    xs = jnp.arange(5.0)
    tr = chain.simulate(jax.random.key(5), 0.0, xs)
    assert tr.choices["z"].shape == (5,)
    carry, ys = tr.retval
    assert jnp.allclose(ys, 2 * tr.choices["z"])
    z = tr.choices["z"]
    prev = jnp.concatenate([jnp.zeros(1), z[:-1]])
    assert jnp.allclose(tr.score, nd.Normal(prev + xs, 1.0).log_prob(z).sum())
    assert jnp.allclose(chain.assess(tr.choices, 0.0, xs), tr.score)


def test_vmap_combinator_stacks_choices_and_nests():
    batch = pplvi.vmap(model)

    @pplvi.gen
    def outer(xs):
        return pplvi.sample("data", batch(xs))

    tr = outer.simulate(jax.random.key(6), jnp.linspace(-1, 1, 7))
    assert tr.choices["data/encoder/h"].shape == (7,)
    assert tr.choices["data/z"].shape == (7,)
    assert jnp.allclose(outer.assess(tr.choices, jnp.linspace(-1, 1, 7)), tr.score)


def test_with_estimators_reaches_nested_addresses():
    """Overriding the estimator of 'encoder/h' from outside changes the gradient's variance, not its mean."""
    base = pplvi.with_estimators(model, {"z": pplvi.enum})
    alt = pplvi.with_estimators(base, {"encoder/h": pplvi.reinforce})

    def make(gf):
        @pplvi.objective
        def obj(x):
            return gf.simulate(x).score

        return obj

    keys = jax.random.split(jax.random.key(7), 3000)
    g1 = jax.jit(jax.vmap(lambda k: make(base).grad(k, 0.2)))(keys)
    g2 = jax.jit(jax.vmap(lambda k: make(alt).grad(k, 0.2)))(keys)
    se = jnp.sqrt(jnp.var(g1) / 3000 + jnp.var(g2) / 3000)
    assert abs(g1.mean() - g2.mean()) < 5 * se
    assert jnp.var(g1) != pytest.approx(float(jnp.var(g2)))


@pplvi.gen
def walk(carry, _):
    z = pplvi.sample("z", nd.Normal(carry, 1.0))
    return z, None


def test_scan_combinator_inside_an_objective_is_differentiable():
    chain = pplvi.scan(walk, length=4)

    @pplvi.objective
    def obj(mu):
        tr = chain.simulate(mu, None)
        return jnp.sum(tr.choices["z"])

    # z_0 ~ N(mu, 1), z_t ~ N(z_{t-1}, 1): every z_t = mu + noise, so d/dmu sum z = 4 exactly (reparam)
    keys = jax.random.split(jax.random.key(8), 500)
    g = jax.vmap(lambda k: obj.grad(k, 0.5))(keys)
    assert jnp.allclose(g, 4.0)


@pplvi.gen
def heads(x):
    return pplvi.sample("z", nd.Normal(x, 1.0)) + pplvi.sample("extra", nd.Normal(0.0, 1.0))


@pplvi.gen
def tails(x):
    return pplvi.sample("z", nd.Normal(-x, 2.0))


def test_cond_combinator_records_the_taken_branch():
    coin_flip = pplvi.cond(heads, tails)

    @pplvi.gen
    def model(x):
        c = pplvi.sample("c", nd.Bernoulli(probs=0.5))
        return pplvi.sample("branch", coin_flip(c, x))

    for seed in range(4):
        tr = model.simulate(jax.random.key(seed), 1.0)
        c, z, extra = tr["c"], tr["branch/z"], tr["branch/extra"]
        heads_lp = nd.Normal(1.0, 1.0).log_prob(z) + nd.Normal(0.0, 1.0).log_prob(extra)
        lp = jnp.log(0.5) + jnp.where(c == 1, heads_lp, nd.Normal(-1.0, 2.0).log_prob(z))
        assert jnp.allclose(tr.score, lp)
        assert jnp.allclose(model.assess(tr.choices, 1.0), lp)


def test_cond_combinator_inside_an_objective_is_unbiased():
    coin_flip = pplvi.cond(heads, tails)

    @pplvi.objective
    def obj(t):
        c = pplvi.sample("c", nd.Bernoulli(logits=t))
        return coin_flip.simulate(c, t).retval ** 2

    # E[ret^2 | c=1] = t^2 + 2 (heads: z + extra ~ N(t, 2));  E[ret^2 | c=0] = t^2 + 4
    def exact(t):
        p = jax.nn.sigmoid(t)
        return p * (t**2 + 2) + (1 - p) * (t**2 + 4)

    keys = jax.random.split(jax.random.key(9), 4000)
    g = jax.jit(jax.vmap(lambda k: obj.grad(k, 0.3)))(keys)
    assert abs(g.mean() - jax.grad(exact)(0.3)) < 5 * g.std() / jnp.sqrt(4000.0)


def test_raw_control_flow_in_a_generative_function_is_a_clear_error():
    @pplvi.gen
    def bad(x):
        return jax.lax.cond(x > 0, lambda: pplvi.sample("z", nd.Normal(0.0, 1.0)), lambda: 0.0)

    with pytest.raises(pplvi.ObjectiveError, match="'z'.*pplvi.scan"):
        bad.simulate(jax.random.key(0), 1.0)
