"""Kinetic-optimal Gaussian paths (pplvi.models.kinetic_paths): the data separation function against known values,
the KO path against Cond-OT where the theory says they coincide, the kinetic-energy formula against a direct Monte
Carlo of the exact marginal velocity, and flow-matching training with a path as its schedule."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pplvi
from pplvi.models import kinetic_paths as KP

SIGMA_MIN = 1e-2


def mixture(key, n):
    k1, k2 = jax.random.split(key)
    angle = 2 * np.pi * jax.random.randint(k1, (n,), 0, 8) / 8
    return KP.normalize_dataset(2.0 * jnp.stack([jnp.cos(angle), jnp.sin(angle)], -1)
                                + 0.1 * jax.random.normal(k2, (n, 2)))


def test_normalize_dataset_centres_and_scales_to_dimension():
    x = KP.normalize_dataset(jax.random.normal(jax.random.key(0), (50, 3)) * 4.0 + 2.0)
    np.testing.assert_allclose(x.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(jnp.mean(jnp.sum(x**2, -1)), 3.0, rtol=1e-5)
    with pytest.raises(pplvi.DataError, match="normalize_dataset"):
        KP.normalize_dataset(jnp.ones(5))


def test_separation_of_gaussian_data_is_the_linear_estimators():
    # for x1 ~ N(0, 1) the posterior mean is linear and lambda(s) = s^2 / (1 + s^2); 4000 draws of |x - m|^2
    # (variance ~0.5 at s = 1) give a standard error ~0.011: tolerance 3.5 se
    data = KP.normalize_dataset(jax.random.normal(jax.random.key(1), (4000, 1)))
    lam = KP.data_separation(jax.random.key(2), data, jnp.array([0.5, 1.0, 2.0]), num_points=1000, num_noise=4)
    np.testing.assert_allclose(lam, [0.2, 0.5, 0.8], atol=0.04)


def test_separation_tends_to_one_as_n_over_d_shrinks():
    lam = {}
    for d in (2, 1024):
        data = KP.normalize_dataset(jax.random.normal(jax.random.key(d), (16, d)))
        lam[d] = float(KP.data_separation(jax.random.key(3), data, jnp.array([1.0]), num_noise=16)[0])
    assert lam[2] < 0.9
    assert lam[1024] > 0.99


def test_ko_path_is_cond_ot_when_the_data_are_separated():
    theta = jnp.linspace(0.0, float(np.arctan2(1.0, SIGMA_MIN)), 200)
    curve = KP.SeparationCurve.from_values(theta, jnp.ones_like(theta))
    ko, ot = KP.kinetic_optimal_path(curve, SIGMA_MIN), KP.GaussianPath.cond_ot(SIGMA_MIN)
    t = jnp.linspace(0.0, 1.0, 101)
    np.testing.assert_allclose(ko.alpha(t), ot.alpha(t), atol=2e-3)
    np.testing.assert_allclose(ko.sigma(t), ot.sigma(t), atol=2e-3)
    exact = 1.0 + (1.0 - SIGMA_MIN) ** 2  # |x1 - x0|^2 per dimension for the straight line
    assert abs(KP.ko_energy(curve, SIGMA_MIN) - exact) < 1e-4
    assert abs(KP.kinetic_energy(ot, curve) - exact) < 1e-3


def test_ko_path_for_structureless_data_only_rescales():
    # lambda = sin^2(theta) (Gaussian data): w = 0, the path stays Gaussian N(0, rho^2) and only the radius moves
    theta = jnp.linspace(0.0, float(np.arctan2(1.0, SIGMA_MIN)), 400)
    curve = KP.SeparationCurve.from_values(theta, jnp.sin(theta) ** 2)
    rho_end = np.hypot(1.0, SIGMA_MIN)
    assert abs(KP.ko_energy(curve, SIGMA_MIN) - (rho_end - 1.0) ** 2) < 1e-6
    # Cond-OT pays for its radial dip: integral of rho'^2 along the straight line
    t = np.linspace(0, 1, 200001)
    rho = np.hypot(t, 1 - (1 - SIGMA_MIN) * t)
    expected = np.sum(np.diff(rho) ** 2) / (t[1] - t[0])
    assert abs(KP.kinetic_energy(KP.GaussianPath.cond_ot(SIGMA_MIN), curve) - expected) < 2e-3


def test_kinetic_energy_formula_matches_direct_monte_carlo_and_ko_is_lower():
    data = mixture(jax.random.key(4), 128)
    curve = KP.SeparationCurve.estimate(jax.random.key(5), data, grid=96, num_noise=16)
    ko, ot = KP.kinetic_optimal_path(curve), KP.GaussianPath.cond_ot()
    ko_e, ot_e = KP.ko_energy(curve), KP.kinetic_energy(ot, curve)
    for path, formula in ((ko, ko_e), (ot, ot_e)):
        mc, se = KP.kinetic_energy_monte_carlo(jax.random.key(6), path, data, times=64, samples=128)
        # MC standard error plus the separation curve's own Monte Carlo error (~1-2 % of the energy)
        assert abs(mc - formula) < 4 * se + 0.02 * formula, (mc, se, formula)
    assert ko_e < 0.8 * ot_e
    assert abs(KP.kinetic_energy(ko, curve) - ko_e) < 0.01  # the tabulated path has the closed-form energy
    t = jnp.linspace(0.0, 1.0, 101)
    assert float(jnp.max(jnp.abs(ko.alpha(t) - t))) > 0.1  # a different path, not a re-labelled Cond-OT


def test_flow_matching_with_a_path_schedule_trains():
    data = mixture(jax.random.key(7), 256)
    result = KP.train_flow(KP.GaussianPath.cond_ot(), data, steps=150, batch_size=128, width=32)
    h = result.history["objective"]
    assert np.mean(h[-30:]) > np.mean(h[:30]) + 0.1
    x = KP.sample_flow(result.params, jax.random.key(8), 64, steps=8)
    assert x.shape == (64, 2) and bool(jnp.all(jnp.isfinite(x)))
