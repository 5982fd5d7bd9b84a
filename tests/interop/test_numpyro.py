"""NumPyro programs as pplvi models and guides (pplvi.interop.from_numpyro)."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro import handlers
from numpyro.infer.util import log_density

import pplvi
from pplvi.interop import from_numpyro

TOL = 0.1  # see conftest.maximize: ~5 standard deviations of the trained parameters' stochastic error


def rich_model(x):
    """Plates, local and positive latents, sample_shape, factor, scale and mask handlers, deterministic."""
    z = numpyro.sample("z", dist.Normal(0.0, 1.0))
    s = numpyro.sample("s", dist.LogNormal(0.0, 0.5))
    u = numpyro.sample("u", dist.Normal(0.0, 1.0), sample_shape=(2,))
    k = numpyro.sample("k", dist.Bernoulli(0.3))
    with numpyro.plate("n", x.shape[0]):
        w = numpyro.sample("w", dist.Normal(z, 1.0))
        with handlers.mask(mask=jnp.arange(x.shape[0]) < 2):
            numpyro.sample("x", dist.Normal(w + k, s), obs=x)
    with handlers.scale(scale=3.0):
        numpyro.sample("v", dist.Gamma(2.0, 1.0))
    numpyro.factor("penalty", -jnp.sum(u**2))
    numpyro.deterministic("double", 2 * z)
    return z + jnp.sum(u)


def gaussian_model(x):
    z = numpyro.sample("z", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("x", dist.Normal(z, 1.0), obs=x)


X3 = jnp.array([0.5, -1.0, 2.0])


def _latents(model, *args, seed=0):
    tr = handlers.trace(handlers.seed(model, jax.random.key(seed))).get_trace(*args)
    return {k: v["value"] for k, v in tr.items() if v["type"] == "sample" and not v["is_observed"]}


def test_assess_equals_numpyro_log_density():
    model = from_numpyro(rich_model)
    for seed in range(3):
        choices = _latents(rich_model, X3, seed=seed)
        assert set(choices) == {"z", "s", "u", "k", "w", "v"}
        expected, _ = log_density(rich_model, (X3,), {}, choices)
        np.testing.assert_allclose(model.assess(choices, X3), expected, rtol=1e-6)
        jitted = jax.jit(lambda c, x: model.assess(c, x))(choices, X3)
        np.testing.assert_allclose(jitted, expected, rtol=1e-6)


def test_simulate_and_generate_record_numpyro_sites():
    model = from_numpyro(rich_model)
    trace = model.simulate(jax.random.key(3), X3)
    assert set(trace.choices) == {"z", "s", "u", "k", "w", "v"}  # latent sites only
    assert set(trace.log_probs) == {"z", "s", "u", "k", "w", "x", "v", "penalty"}  # observed sites too
    assert trace.choices["u"].shape == (2,) and trace.choices["w"].shape == (3,)
    np.testing.assert_allclose(trace.retval, trace.choices["z"] + jnp.sum(trace.choices["u"]), rtol=1e-6)
    np.testing.assert_allclose(trace.score, log_density(rich_model, (X3,), {}, trace.choices)[0], rtol=1e-6)

    fixed = {"z": jnp.array(0.7), "s": jnp.array(1.3)}
    trace, weight = model.generate(jax.random.key(4), fixed, X3)
    assert trace.choices["z"] == 0.7 and trace.choices["s"] == 1.3
    # importance weight: the constrained latents plus every observed site (the factor included)
    constrained = ["z", "s", "x", "penalty"]
    np.testing.assert_allclose(weight, sum(jnp.sum(trace.log_probs[a]) for a in constrained), rtol=1e-6)


def test_obs_mask_imputes_masked_entries():
    def imputing(x, mask):
        rate = numpyro.sample("rate", dist.LogNormal(0.0, 1.0))
        with numpyro.plate("n", x.shape[0]):
            numpyro.sample("x", dist.Exponential(rate), obs=x, obs_mask=mask)

    x, mask = jnp.array([1.0, jnp.nan, 2.0]), jnp.array([True, False, True])  # masked entries may be anything
    model = from_numpyro(imputing)
    trace = model.simulate(jax.random.key(0), x, mask)
    assert set(trace.choices) == {"rate", "x_unobserved"} and "x_observed" in trace.log_probs
    expected = log_density(imputing, (x, mask), {}, trace.choices)[0]
    np.testing.assert_allclose(model.assess(trace.choices, x, mask), expected, rtol=1e-6)


def test_numpyro_guide_with_plates_and_sample_shape():
    """Sites inside plates and with sample_shape are staged with their full shape (pathwise gradients):
    d/dloc E[sum w + sum u] = 3 + 2."""

    def plated(loc):
        with numpyro.plate("rows", 3):
            numpyro.sample("w", dist.Normal(loc, 1.0))
        numpyro.sample("u", dist.Normal(loc, 1.0), sample_shape=(2,))

    guide = from_numpyro(plated)

    @pplvi.objective
    def total(loc):
        trace = guide.simulate(loc)
        assert trace.choices["w"].shape == (3,) and trace.choices["u"].shape == (2,)
        return jnp.sum(trace.choices["w"]) + jnp.sum(trace.choices["u"])

    np.testing.assert_allclose(total.grad(jax.random.key(0), jnp.array(0.5)), 5.0, rtol=1e-6)


def test_missing_latent_site_raises_address_error():
    model = from_numpyro(rich_model)
    choices = _latents(rich_model, X3)
    del choices["w"]
    with pytest.raises(pplvi.AddressError, match="'w'"):
        model.assess(choices, X3)
    with pytest.raises(pplvi.AddressError, match="unexpected addresses \\['typo'\\]"):
        model.assess({**_latents(rich_model, X3), "typo": 1.0}, X3)


def test_nested_under_a_pplvi_generative_function():
    inner = from_numpyro(gaussian_model)

    @pplvi.gen
    def outer(x):
        shift = pplvi.sample("shift", dist.Normal(0.0, 1.0))
        pplvi.sample("inner", inner(x - shift))

    trace = outer.simulate(jax.random.key(0), X3)
    assert set(trace.choices) == {"shift", "inner/z"}
    expected = (
        dist.Normal(0.0, 1.0).log_prob(trace["shift"])
        + log_density(gaussian_model, (X3 - trace["shift"],), {}, {"z": trace["inner/z"]})[0]
    )
    np.testing.assert_allclose(outer.assess(trace.choices, X3), expected, rtol=1e-6)


def test_pplvi_guide_trained_against_numpyro_model(gaussian_data, fit, params0):
    x, post_mean, post_sd = gaussian_data
    model = from_numpyro(gaussian_model)

    @pplvi.gen
    def guide(params):
        pplvi.sample("z", dist.Normal(params["loc"], jnp.exp(params["log_scale"])))

    @pplvi.objective
    def elbo(params, x):
        trace = guide.simulate(params)
        return model.assess(trace.choices, x) - trace.score

    learned = fit(elbo, params0, x)
    assert abs(learned["loc"] - post_mean) < TOL
    assert abs(jnp.exp(learned["log_scale"]) - post_sd) < TOL


def test_numpyro_guide_trained_against_pplvi_model(gaussian_data, fit, params0):
    x, post_mean, post_sd = gaussian_data

    @pplvi.gen
    def model(x):
        z = pplvi.sample("z", dist.Normal(0.0, 1.0))
        pplvi.sample("x", dist.Normal(jnp.broadcast_to(z, x.shape), 1.0), obs=x)

    def numpyro_guide(params):
        numpyro.sample("z", dist.Normal(params["loc"], jnp.exp(params["log_scale"])))

    guide = from_numpyro(numpyro_guide)

    @pplvi.objective
    def elbo(params, x):
        trace = guide.simulate(params)  # each NumPyro latent site is a pplvi random choice (reparam here)
        return model.assess(trace.choices, x) - trace.score

    learned = fit(elbo, params0, x)
    assert abs(learned["loc"] - post_mean) < TOL
    assert abs(jnp.exp(learned["log_scale"]) - post_sd) < TOL


def test_numpyro_guide_discrete_sites_use_pplvi_estimators():
    """d/dθ E_{b ~ Bernoulli(σ(θ))}[f(b)] = (f(1) - f(0)) σ'(θ), with f(1) = 2, f(0) = -1."""

    def make(infer=None):
        def coin(theta):
            numpyro.sample("b", dist.Bernoulli(logits=theta), infer=infer)

        return from_numpyro(coin)

    def objective_for(guide):
        @pplvi.objective
        def obj(theta):
            b = guide.simulate(theta).choices["b"]
            return jnp.where(b == 1, 2.0, -1.0)

        return obj

    theta = jnp.array(0.3)
    p = jax.nn.sigmoid(theta)
    exact = 3.0 * p * (1 - p)
    # enumeration is exact: chosen on the site (infer) or from outside (with_estimators)
    for guide in (make({"pplvi_estimator": pplvi.enum}), pplvi.with_estimators(make(), {"b": pplvi.enum})):
        np.testing.assert_allclose(objective_for(guide).grad(jax.random.key(0), theta), exact, rtol=1e-5)
    # the default for a Bernoulli (no rsample) is REINFORCE: unbiased; the mean of 4000 draws has sd ~0.002
    keys = jax.random.split(jax.random.key(1), 4000)
    grads = jax.vmap(lambda k: objective_for(make()).grad(k, theta))(keys)
    assert abs(jnp.mean(grads) - exact) < 0.02
    assert jnp.std(grads) > 0.01  # genuinely stochastic, i.e. not enumerated


def test_control_flow_is_rejected_with_a_clear_error():
    from numpyro.contrib.control_flow import scan

    def looped(x):
        def step(c, xi):
            z = numpyro.sample("z", dist.Normal(c, 1.0))
            return z, z

        scan(step, 0.0, x)

    with pytest.raises(pplvi.ObjectiveError, match="control_flow"):
        from_numpyro(looped).simulate(jax.random.key(0), X3)
