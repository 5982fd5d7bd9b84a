"""Rao-Blackwellization through jax.vmap and add_cost: unbiased, and per-datum variance independent of batch size."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as nd
import pytest
from numpyro.infer import TraceGraph_ELBO

import pplvi
from pplvi.diagnostics import gradient_variance

BASE = jnp.array([-1.2, -0.4, 0.1, 0.5, 0.9, 1.4, 2.0, 2.3, 2.9, 3.1, -0.8, 0.3, 1.1, 1.7, 2.6, 3.4])
N = 3000


def batch(B):
    return jnp.tile(BASE, B // BASE.size)


def per_datum_cost(c, y, t):
    return nd.Normal(2.0 * c, 1.0).log_prob(y) + t * c


def exact_objective(t, ys):
    """sum_i E_{c ~ Bern(sigmoid(t))}[cost(c, y_i)] / B, by enumeration."""
    p = jax.nn.sigmoid(t)
    return jnp.mean(p * per_datum_cost(1.0, ys, t) + (1 - p) * per_datum_cost(0.0, ys, t))


def make(B, rao_blackwell=True, estimator=pplvi.reinforce):
    @pplvi.objective
    def obj(t, ys):
        def one(y):
            c = pplvi.sample("c", nd.Bernoulli(logits=t), estimator=estimator).astype(jnp.float32)
            cost = per_datum_cost(c, y, t) / B
            return pplvi.add_cost(cost) if rao_blackwell else cost

        costs = jax.vmap(one)(ys)
        return 0.0 * t if rao_blackwell else jnp.sum(costs)

    return obj


def grads(obj, ys, n=N, seed=0):
    keys = jax.random.split(jax.random.key(seed), n)
    return jax.jit(jax.vmap(lambda k: obj.grad(k, 0.2, ys)))(keys)


@pytest.mark.parametrize("rao_blackwell", [True, False])
def test_batch_objective_gradient_is_unbiased(rao_blackwell):
    ys = batch(32)
    g = grads(make(32, rao_blackwell), ys)
    exact = jax.grad(exact_objective)(0.2, ys)
    assert abs(g.mean() - exact) < 5 * g.std() / jnp.sqrt(N)


def test_rao_blackwellized_per_datum_variance_does_not_grow_with_batch_size():
    per_datum = {}
    for B in (16, 128):
        for rb in (True, False):
            per_datum[B, rb] = float(jnp.var(grads(make(B, rb), batch(B))) * B)
    assert abs(per_datum[128, True] / per_datum[16, True] - 1) < 0.2, per_datum
    # naive: each lane's score multiplies the whole batch's cost, so per-datum variance grows ~linearly in B
    assert per_datum[128, False] / per_datum[16, False] > 4, per_datum


def test_costs_before_a_choice_do_not_multiply_its_score():
    """A cost emitted before the choice changes the value but not the gradient's distribution."""

    @pplvi.objective
    def obj(t, shift):
        pplvi.add_cost(shift)
        c = pplvi.sample("c", nd.Bernoulli(logits=t), estimator=pplvi.reinforce).astype(jnp.float32)
        pplvi.add_cost(per_datum_cost(c, 1.0, t))
        return 0.0 * t

    keys = jax.random.split(jax.random.key(1), N)
    g0 = jax.jit(jax.vmap(lambda k: obj.grad(k, 0.2, 0.0)))(keys)
    g1 = jax.jit(jax.vmap(lambda k: obj.grad(k, 0.2, 100.0)))(keys)
    v = jax.jit(jax.vmap(lambda k: obj.estimate(k, 0.2, 100.0)))(keys)
    assert jnp.allclose(g0, g1)
    exact = jax.grad(lambda t: exact_objective(t, jnp.array([1.0])))(0.2)
    assert abs(g0.mean() - exact) < 5 * g0.std() / jnp.sqrt(N)
    assert abs(v.mean() - 100.0 - exact_objective(0.2, jnp.array([1.0]))) < 5 * v.std() / jnp.sqrt(N)


def test_costs_inside_a_scan_count_downstream():
    @pplvi.objective
    def obj(t):
        def body(c, _):
            x = pplvi.sample("x", nd.Bernoulli(logits=t), estimator=pplvi.reinforce).astype(jnp.float32)
            pplvi.add_cost((x + 1.0) ** 2)
            return c, None

        jax.lax.scan(body, 0.0, None, length=3)
        return 0.0 * t

    keys = jax.random.split(jax.random.key(2), N)
    g = jax.jit(jax.vmap(lambda k: obj.grad(k, 0.3)))(keys)
    exact = 3 * jax.grad(lambda t: 1 + 3 * jax.nn.sigmoid(t))(0.3)
    assert abs(g.mean() - exact) < 5 * g.std() / jnp.sqrt(N)


def test_vmapped_categorical_with_baseline_is_unbiased():
    ys = batch(32)

    @pplvi.objective
    def obj(t, ys):
        def one(y):
            logits = jnp.stack([t, 0.0 * t, -t])
            k = pplvi.sample("k", nd.Categorical(logits=logits), estimator=pplvi.baseline(pplvi.reinforce, -2.0))
            pplvi.add_cost(nd.Normal(k.astype(jnp.float32), 1.0).log_prob(y) / ys.size)

        jax.vmap(one)(ys)
        return 0.0 * t

    def exact(t):
        p = jax.nn.softmax(jnp.stack([t, 0.0, -t]))
        return jnp.mean(sum(p[k] * nd.Normal(float(k), 1.0).log_prob(ys) for k in range(3)))

    keys = jax.random.split(jax.random.key(3), N)
    g = jax.jit(jax.vmap(lambda k: obj.grad(k, 0.2, ys)))(keys)
    assert abs(g.mean() - jax.grad(exact)(0.2)) < 5 * g.std() / jnp.sqrt(N)


def test_gradient_variance_diagnostic():
    ys = batch(16)
    out = gradient_variance(make(16), 0.2, jax.random.key(4), 500, ys)
    assert out["variance"].shape == () and out["total_variance"] == out["variance"]
    assert out["snr"] > 0


# -- against NumPyro's TraceGraph_ELBO on the same model, guide and parameters ---------------------------------------
B_TG, D_TG = 64, 10
Y_TG = jax.random.normal(jax.random.key(7), (B_TG, D_TG)) + 0.5 * (jnp.arange(B_TG) % 2)[:, None]
PHI_TG = jnp.linspace(-1.0, 1.0, B_TG)


def tg_log_joint(c, y):
    """A two-component mixture of 10-dimensional Gaussians, means 0 and 0.5."""
    return nd.Bernoulli(probs=0.4).log_prob(c) + jnp.sum(nd.Normal(0.5 * c[..., None], 1.0).log_prob(y), -1)


def np_model(ys):
    with numpyro.plate("data", ys.shape[0]):
        c = numpyro.sample("c", nd.Bernoulli(probs=0.4))
        numpyro.sample("y", nd.Normal(0.5 * c[:, None], 1.0).to_event(1), obs=ys)


def np_guide(ys, phi):
    with numpyro.plate("data", ys.shape[0]):
        numpyro.sample("c", nd.Bernoulli(logits=phi))


def test_rao_blackwellized_reinforce_with_baseline_beats_tracegraph_elbo_tenfold():
    keys = jax.random.split(jax.random.key(5), 2000)

    def tg_loss(k, phi):
        return TraceGraph_ELBO().loss(k, {}, np_model, lambda ys: np_guide(ys, phi), Y_TG)

    g_tg = jax.jit(jax.vmap(lambda k: -jax.grad(tg_loss, argnums=1)(k, PHI_TG)))(keys)

    @pplvi.objective
    def elbo(phi, baselines, ys):
        def one(phi_i, b_i, y):
            est = pplvi.baseline(pplvi.reinforce, b_i)
            c = pplvi.sample("c", nd.Bernoulli(logits=phi_i), estimator=est).astype(jnp.float32)
            pplvi.add_cost(tg_log_joint(c, y) - nd.Bernoulli(logits=phi_i).log_prob(c))

        jax.vmap(one)(phi, baselines, ys)
        return jnp.zeros(())

    # A running-average baseline at these parameters: each datum's mean cost over 200 earlier draws.
    def datum_costs(k):
        c = jax.random.bernoulli(k, jax.nn.sigmoid(PHI_TG)).astype(jnp.float32)
        return tg_log_joint(c, Y_TG) - nd.Bernoulli(logits=PHI_TG).log_prob(c)

    running_average = jnp.mean(jax.vmap(datum_costs)(jax.random.split(jax.random.key(6), 200)), axis=0)
    g_ours = jax.jit(jax.vmap(lambda k: elbo.grad(k, PHI_TG, running_average, Y_TG)))(keys)

    se = jnp.sqrt(jnp.var(g_ours, 0) / 2000 + jnp.var(g_tg, 0) / 2000)
    assert jnp.all(jnp.abs(jnp.mean(g_ours, 0) - jnp.mean(g_tg, 0)) < 5 * se + 1e-4)  # same gradient in mean
    ratio = float(jnp.sum(jnp.var(g_tg, axis=0)) / jnp.sum(jnp.var(g_ours, axis=0)))
    assert ratio > 10, ratio


# -- lane-local continuation evaluations (enum / mvd under vmap) -------------------------------------------------
def make_lane_local(B, estimator, extra=None, downstream=False):
    """Per-datum costs via add_cost; ``extra(cs, t)`` adds a returned term that depends on the choices;
    ``downstream``: a second (reparameterized) choice after the discrete one, depending on it, adds to the cost."""

    @pplvi.objective
    def obj(t, ys):
        def one(y):
            c = pplvi.sample("c", nd.Bernoulli(logits=t), estimator=estimator).astype(jnp.float32)
            cost = per_datum_cost(c, y, t)
            if downstream:
                w = pplvi.sample("w", nd.Normal(c * t, 1.0))
                cost = cost - 0.5 * (w - y) ** 2
            pplvi.add_cost(cost / B)
            return c

        cs = jax.vmap(one)(ys)
        return 0.0 * t if extra is None else extra(cs, t)

    return obj


@pytest.mark.parametrize("downstream", [False, True], ids=["last", "downstream"])
@pytest.mark.parametrize("estimator", [pplvi.enum, pplvi.mvd], ids=["enum", "mvd"])
def test_lane_local_evaluations_equal_whole_batch_evaluations(estimator, downstream):
    # A returned 0 * sum(c) makes the rest of the program depend on the choices, which forces one whole-batch
    # evaluation per component; without it each lane's cost is read from evaluations shared by all lanes.
    ys = batch(16)
    local = grads(make_lane_local(16, estimator, downstream=downstream), ys, n=64)
    zero = lambda cs, t: 0.0 * jnp.sum(cs)  # noqa: E731
    whole = grads(make_lane_local(16, estimator, extra=zero, downstream=downstream), ys, n=64)
    assert jnp.allclose(local, whole, rtol=1e-5, atol=1e-6), jnp.max(jnp.abs(local - whole))


@pytest.mark.parametrize("estimator", [pplvi.enum, pplvi.mvd], ids=["enum", "mvd"])
def test_lane_local_and_fallback_gradients_are_unbiased(estimator):
    ys = batch(32)
    exact = jax.grad(exact_objective)(0.2, ys)
    g = grads(make_lane_local(32, estimator), ys)
    assert abs(g.mean() - exact) < 5 * g.std() / jnp.sqrt(N) + 1e-6
    # the returned 0.3 * mean(c) depends on every lane's choice: the estimator must see it (fallback path)
    g = grads(make_lane_local(32, estimator, extra=lambda cs, t: 0.3 * jnp.mean(cs)), ys)
    p = jax.nn.sigmoid(0.2)
    exact = exact + 0.3 * p * (1 - p)
    assert abs(g.mean() - exact) < 5 * g.std() / jnp.sqrt(N) + 1e-6


def test_lane_local_enumeration_cost_is_linear_in_the_batch():
    def flops(B):
        ys = batch(B)
        obj = make_lane_local(B, pplvi.enum)
        compiled = jax.jit(lambda k: obj.grad(k, 0.2, ys)).lower(jax.random.key(0)).compile()
        return compiled.cost_analysis()["flops"]

    ratio = flops(128) / flops(16)
    assert ratio < 8 * 1.5, ratio  # linear: ~8x; whole-batch evaluations per component would be ~64x
