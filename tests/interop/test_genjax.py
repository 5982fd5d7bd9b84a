"""genjax 1.0 generative functions as pplvi models and guides (pplvi.interop.from_genjax)."""

import genjax
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from genjax import const

import pplvi
from pplvi.interop import from_genjax, from_genjax_choices, from_numpyro, to_genjax_choices
from pplvi.interop.genjax import GenJAXDistribution

TOL = 0.1  # see conftest.maximize: ~5 standard deviations of the trained parameters' stochastic error


@genjax.gen
def noisy(mu):
    return genjax.normal(mu, 0.5) @ "y"


@genjax.gen
def step(carry, x):
    y = genjax.normal(carry + x, 1.0) @ "y"
    return y, 2 * y


@genjax.gen
def rich(n):
    """Distributions of several families, a nested @gen call, Vmap, repeat, Scan and Cond; ``n`` is a
    ``genjax.const`` (static under genjax.seed's staging)."""
    z = genjax.normal(0.0, 1.0) @ "z"
    genjax.gamma(2.0, 1.0) @ "g"
    genjax.flip(0.3) @ "f"
    genjax.categorical(jnp.array([0.1, 0.5, -0.2])) @ "c"
    w = noisy(z) @ "sub"
    genjax.normal.vmap(in_axes=(0, None))(jnp.arange(3.0), 1.0) @ "xs"
    noisy.vmap(in_axes=(0,))(jnp.arange(2.0)) @ "vs"
    genjax.normal.repeat(n.value)(z, 1.0) @ "obs"
    carry, _ = genjax.Scan(step, length=const(4))(w, jnp.arange(4.0)) @ "chain"
    genjax.Cond(noisy, noisy)(z > 0, carry) @ "branch"
    return z + w


@genjax.gen
def gaussian_model(n):
    z = genjax.normal(0.0, 1.0) @ "z"
    genjax.normal.repeat(n)(z, 1.0) @ "x"  # observed: passed among the choices
    return z


N = const(5)


@pytest.fixture(scope="module")
def rich_choices():
    """Four choice sets of ``rich`` drawn by genjax itself (jitted and vmapped: one compilation)."""
    simulate = jax.jit(jax.vmap(lambda key: genjax.seed(rich.simulate)(key, N).get_choices()))
    batch = from_genjax_choices(simulate(jax.random.split(jax.random.key(0), 4)))
    return [{k: v[i] for k, v in batch.items()} for i in range(4)]


def _genjax_log_density(choices):
    """genjax's own ``rich.assess`` (summed: ``log_density``) of pplvi-style flat choices, jitted."""
    return jax.jit(lambda c: rich.log_density(to_genjax_choices(c), N))(choices)


def test_assess_equals_genjax_assess(rich_choices):
    model = from_genjax(rich)
    assert {"z", "g", "f", "c", "sub/y", "xs", "vs/y", "obs", "chain/y", "branch/y"} == set(rich_choices[0])
    eager = model.assess(rich_choices[0], N)
    np.testing.assert_allclose(eager, _genjax_log_density(rich_choices[0]), rtol=1e-5)
    assess = jax.jit(lambda c: model.assess(c, N))
    for choices in rich_choices:
        np.testing.assert_allclose(assess(choices), _genjax_log_density(choices), rtol=1e-5)


def test_simulate_scores_like_genjax(rich_choices):
    model = from_genjax(rich)
    trace = model.simulate(jax.random.key(7), N)
    assert set(trace.choices) == set(rich_choices[0])
    assert trace.choices["obs"].shape == (5,) and trace.choices["chain/y"].shape == (4,)
    assert trace.choices["f"].dtype == jnp.bool_
    np.testing.assert_allclose(trace.score, _genjax_log_density(trace.choices), rtol=1e-5)
    np.testing.assert_allclose(trace.retval, trace.choices["z"] + trace.choices["sub/y"], rtol=1e-6)

    constraints = {"z": jnp.array(0.4), "chain/y": jnp.ones(4)}
    trace, weight = model.generate(jax.random.key(8), constraints, N)
    assert trace.choices["z"] == 0.4 and jnp.all(trace.choices["chain/y"] == 1.0)
    np.testing.assert_allclose(weight, trace.log_probs["z"] + jnp.sum(trace.log_probs["chain/y"]), rtol=1e-6)


def test_missing_address_raises_address_error(rich_choices):
    model = from_genjax(rich)
    choices = rich_choices[0]
    for missing in ("z", "sub/y", "chain/y", "vs/y"):
        partial = {k: v for k, v in choices.items() if k != missing}
        with pytest.raises(pplvi.AddressError, match=f"'{missing}'"):
            model.assess(partial, N)
    with pytest.raises(pplvi.AddressError, match="unexpected addresses"):
        model.assess({**choices, "zz": 0.0}, N)


def test_genjax_distribution_view():
    normal = GenJAXDistribution(genjax.normal, (jnp.zeros(3), 1.0))
    assert normal.batch_shape == (3,) and normal.event_shape == () and normal.has_rsample
    assert GenJAXDistribution(genjax.gamma, (2.0, 1.0)).has_rsample  # implicit reparameterization (TFP)
    for discrete in (
        GenJAXDistribution(genjax.bernoulli, (), {"logits": 0.0}),
        GenJAXDistribution(genjax.poisson, (3.0,)),
    ):
        assert not discrete.has_rsample
        assert pplvi.default_estimator(discrete) is pplvi.reinforce
    flip = GenJAXDistribution(genjax.flip, (0.3,))
    assert flip.has_enumerate_support and flip.enumerate_support().tolist() == [False, True]
    cat = GenJAXDistribution(genjax.categorical, (jnp.zeros(4),))
    assert cat.enumerate_support().tolist() == [0, 1, 2, 3]
    x = jnp.array([0.1, -0.3, 2.0])
    np.testing.assert_allclose(normal.log_prob(x), genjax.normal.logpdf(x, jnp.zeros(3), 1.0))
    leaves, tree = jax.tree_util.tree_flatten(normal)
    assert len(leaves) == 2 and jax.tree_util.tree_unflatten(tree, leaves).batch_shape == (3,)


def test_pplvi_guide_trained_against_genjax_model(gaussian_data, fit, params0):
    x, post_mean, post_sd = gaussian_data
    model = from_genjax(gaussian_model)
    n = x.shape[0]

    @pplvi.gen
    def guide(params):
        pplvi.sample("z", dist.Normal(params["loc"], jnp.exp(params["log_scale"])))

    @pplvi.objective
    def elbo(params, x):
        trace = guide.simulate(params)
        return model.assess({**trace.choices, "x": x}, n) - trace.score

    learned = fit(elbo, params0, x)
    assert abs(learned["loc"] - post_mean) < TOL
    assert abs(jnp.exp(learned["log_scale"]) - post_sd) < TOL


def test_genjax_guide_trained_against_pplvi_model(gaussian_data, fit, params0):
    x, post_mean, post_sd = gaussian_data

    @pplvi.gen
    def model(x):
        z = pplvi.sample("z", dist.Normal(0.0, 1.0))
        pplvi.sample("x", dist.Normal(jnp.broadcast_to(z, x.shape), 1.0), obs=x)

    @genjax.gen
    def genjax_guide(params):
        genjax.normal(params["loc"], jnp.exp(params["log_scale"])) @ "z"

    guide = from_genjax(genjax_guide)

    @pplvi.objective
    def elbo(params, x):
        trace = guide.simulate(params)  # the genjax choice "z" is a pplvi random choice (reparam: TFP Normal)
        return model.assess(trace.choices, x) - trace.score

    learned = fit(elbo, params0, x)
    assert abs(learned["loc"] - post_mean) < TOL
    assert abs(jnp.exp(learned["log_scale"]) - post_sd) < TOL


def test_numpyro_guide_trained_against_genjax_model(gaussian_data, fit, params0):
    x, post_mean, post_sd = gaussian_data
    model = from_genjax(gaussian_model)
    n = x.shape[0]

    def numpyro_guide(params):
        numpyro.sample("z", dist.Normal(params["loc"], jnp.exp(params["log_scale"])))

    guide = from_numpyro(numpyro_guide)

    @pplvi.objective
    def elbo(params, x):
        trace = guide.simulate(params)
        return model.assess({**trace.choices, "x": x}, n) - trace.score

    learned = fit(elbo, params0, x)
    assert abs(learned["loc"] - post_mean) < TOL
    assert abs(jnp.exp(learned["log_scale"]) - post_sd) < TOL


def test_genjax_discrete_guide_gradients():
    """d/dθ E_{b ~ Bernoulli(σ(θ))}[f(b)] = (f(1) - f(0)) σ'(θ), with f(1) = 2, f(0) = -1."""

    @genjax.gen
    def coin(theta):
        return genjax.bernoulli(logits=theta) @ "b"

    def objective_for(guide):
        @pplvi.objective
        def obj(theta):
            b = guide.simulate(theta).retval
            return jnp.where(b == 1, 2.0, -1.0)

        return obj

    theta = jnp.array(0.3)
    p = jax.nn.sigmoid(theta)
    exact = 3.0 * p * (1 - p)
    enumerated = pplvi.with_estimators(from_genjax(coin), {"b": pplvi.enum})
    np.testing.assert_allclose(objective_for(enumerated).grad(jax.random.key(0), theta), exact, rtol=1e-5)
    # default: REINFORCE (TFP Bernoulli is not reparameterized); the mean of 4000 estimates has sd ~0.002
    keys = jax.random.split(jax.random.key(1), 4000)
    grads = jax.vmap(lambda k: objective_for(from_genjax(coin)).grad(k, theta))(keys)
    assert abs(jnp.mean(grads) - exact) < 0.02
    assert jnp.std(grads) > 0.01


def test_vmap_and_scan_guides_inside_objectives():
    """Pathwise gradients through genjax Vmap and Scan staged as pplvi random choices are exact here:
    d/dlocs E[sum zs] = 1 and d/dinit E[final carry] = 1 (each step adds the previous carry)."""

    @genjax.gen
    def batched(locs):
        return genjax.normal.vmap(in_axes=(0, None))(locs, 1.0) @ "zs"

    @genjax.gen
    def chain(init):
        carry, _ = genjax.Scan(step, length=const(3))(init, jnp.zeros(3)) @ "steps"
        return carry

    @pplvi.objective
    def total(locs):
        return jnp.sum(from_genjax(batched).simulate(locs).choices["zs"])

    @pplvi.objective
    def final(init):
        trace = from_genjax(chain).simulate(init)
        assert trace.choices["steps/y"].shape == (3,)
        return trace.retval

    np.testing.assert_allclose(total.grad(jax.random.key(0), jnp.arange(4.0)), jnp.ones(4), rtol=1e-6)
    np.testing.assert_allclose(final.grad(jax.random.key(0), jnp.array(0.5)), 1.0, rtol=1e-6)


def test_unsupported_uses_raise_clear_errors():
    @genjax.gen
    def branchy(z):
        return genjax.Cond(noisy, noisy)(z > 0, z) @ "branch"

    @pplvi.objective
    def obj(z):
        return from_genjax(branchy).simulate(z).retval

    with pytest.raises(pplvi.ObjectiveError, match="'branch'.*Cond"):
        obj.estimate(jax.random.key(0), jnp.array(0.1))
    with pytest.raises(pplvi.ObjectiveError, match="@genjax.gen function"):
        from_genjax(genjax.normal.vmap(in_axes=(0, None)))
