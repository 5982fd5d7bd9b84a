"""Catalogue of bad inputs: each raises a pplvi error that names the address and says how to fix it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro.distributions as nd
import pytest

import pplvi

KEY = jax.random.key(0)


def test_non_scalar_objective():
    @pplvi.objective
    def obj(t):
        return pplvi.sample("x", nd.Normal(t, 1.0).expand([3]))

    with pytest.raises(pplvi.ObjectiveError, match="scalar"):
        obj.grad(KEY, 0.0)


def test_enum_on_a_continuous_distribution():
    @pplvi.objective
    def obj(t):
        return pplvi.sample("latent", nd.Normal(t, 1.0), estimator=pplvi.enum)

    with pytest.raises(pplvi.EstimatorError, match="enum at 'latent'.*reparam"):
        obj.grad(KEY, 0.0)


def test_reparam_on_a_distribution_without_rsample():
    @pplvi.objective
    def obj(t):
        return 1.0 * pplvi.sample("coin", nd.Bernoulli(logits=t), estimator=pplvi.reparam)

    with pytest.raises(pplvi.EstimatorError, match="reparam at 'coin'.*reinforce"):
        obj.grad(KEY, 0.0)


def test_mvd_on_an_unsupported_family():
    @pplvi.objective
    def obj(t):
        return pplvi.sample("g", nd.Gamma(jnp.exp(t), 1.0), estimator=pplvi.mvd)

    with pytest.raises(pplvi.EstimatorError, match="mvd at 'g'"):
        obj.grad(KEY, 0.0)


def test_duplicate_address():
    @pplvi.gen
    def model():
        pplvi.sample("z", nd.Normal(0.0, 1.0))
        pplvi.sample("z", nd.Normal(0.0, 1.0))

    with pytest.raises(pplvi.AddressError, match="duplicate address 'z'"):
        model.simulate(KEY)


def test_missing_address_in_assess():
    @pplvi.gen
    def inner():
        return pplvi.sample("w", nd.Normal(0.0, 1.0))

    @pplvi.gen
    def model():
        pplvi.sample("z", nd.Normal(0.0, 1.0))
        pplvi.sample("inner", inner())

    with pytest.raises(pplvi.AddressError, match="'inner/w'"):
        model.assess({"z": 0.0})


def test_unexpected_address_in_assess():
    @pplvi.gen
    def model():
        pplvi.sample("z", nd.Normal(0.0, 1.0))

    with pytest.raises(pplvi.AddressError, match=r"unexpected addresses \['zz'\]"):
        model.assess({"z": 0.0, "zz": 1.0})


def test_observed_value_outside_the_support():
    @pplvi.gen
    def model():
        pplvi.sample("count", nd.Poisson(3.0), obs=-1)

    with pytest.raises(pplvi.SupportError, match="'count'.*Poisson"):
        model.simulate(KEY)


def test_assessed_value_outside_the_support():
    @pplvi.gen
    def model():
        pplvi.sample("p", nd.Beta(1.0, 1.0))

    with pytest.raises(pplvi.SupportError, match="'p'"):
        model.assess({"p": 1.5})


def test_parameter_pytree_mismatch():
    @pplvi.objective
    def obj(params):
        return pplvi.sample("z", nd.Normal(params["loc"], 1.0))

    with pytest.raises(pplvi.ObjectiveError, match="argnums"):
        obj.grad(KEY, {"loc": 0.0}, argnums=1)
    with pytest.raises(pplvi.ObjectiveError, match="no floating-point leaves"):
        obj.grad(KEY, {"loc": 1})
    with pytest.raises(pplvi.ObjectiveError, match="'loc'.*'scale'"):
        obj.grad(KEY, {"scale": 1.0})


def test_continuation_estimator_inside_scan_without_unroll():
    @pplvi.objective
    def obj(t):
        def body(c, _):
            return c + pplvi.sample("flip", nd.Bernoulli(logits=t), estimator=pplvi.enum), None

        return 1.0 * jax.lax.scan(body, 0, None, length=3)[0]

    with pytest.raises(pplvi.EstimatorError, match=r"\['flip'\].*unroll=True"):
        obj.grad(KEY, 0.0)


def test_key_passed_to_simulate_inside_an_objective():
    @pplvi.gen
    def guide(t):
        return pplvi.sample("z", nd.Normal(t, 1.0))

    @pplvi.objective
    def obj(t):
        return guide.simulate(jax.random.key(1), t).retval

    with pytest.raises(pplvi.ObjectiveError, match="without a key"):
        obj.estimate(KEY, 0.0)


def test_sample_outside_a_generative_function():
    with pytest.raises(pplvi.ObjectiveError, match="outside a generative function"):
        pplvi.sample("z", nd.Normal(0.0, 1.0))


def test_with_estimators_naming_an_unknown_address():
    @pplvi.gen
    def model():
        pplvi.sample("z", nd.Normal(0.0, 1.0))

    with pytest.raises(pplvi.AddressError, match="'zz'|zz"):
        pplvi.with_estimators(model, {"zz": pplvi.reinforce}).simulate(KEY)


def test_errors_are_pplvi_errors():
    assert issubclass(pplvi.AddressError, pplvi.PPLVIError)
    assert issubclass(pplvi.EstimatorError, pplvi.PPLVIError)
