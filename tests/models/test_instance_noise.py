"""Instance noise for singular distributions (pplvi.models.instance_noise): exact Wasserstein-1 on cases with known
answers, the ELBO below the exact log-likelihood (1-D latent by quadrature), and training raising the ELBO."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.special import logsumexp

import pplvi
from pplvi.models import instance_noise as IN


def test_wasserstein1_of_a_translation_is_its_length():
    # W1(mu, mu + v) >= |E x - E y| = |v| and the identity coupling attains it
    x = np.random.default_rng(0).normal(size=(60, 2))
    assert IN.wasserstein1(x, x + np.array([0.3, -0.4])) == pytest.approx(0.5, abs=1e-9)
    assert IN.wasserstein1(x, x[::-1]) == pytest.approx(0.0, abs=1e-12)


def test_wasserstein1_equals_brute_force_over_permutations():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(6, 2)), rng.normal(size=(6, 2))
    cost = np.linalg.norm(x[:, None] - y[None], axis=-1)
    best = min(cost[np.arange(6), list(p)].mean() for p in itertools.permutations(range(6)))
    assert IN.wasserstein1(x, y) == pytest.approx(best, abs=1e-12)


def test_bad_inputs_raise():
    with pytest.raises(pplvi.DataError, match="same shape"):
        IN.wasserstein1(np.zeros((3, 2)), np.zeros((4, 2)))
    with pytest.raises(pplvi.DataError, match="sigma"):
        IN.add_instance_noise(jax.random.key(0), jnp.zeros((3, 2)), 0.0)
    with pytest.raises(pplvi.DataError, match=r"\(n, 2\)"):
        IN.fit_instance_noise(np.zeros((5, 3)), 0.1, steps=1)


def test_circle_points_lie_on_the_circle():
    x = IN.sample_circle(jax.random.key(0), 100, radius=2.0)
    np.testing.assert_allclose(jnp.linalg.norm(x, axis=-1), 2.0, rtol=1e-5)


def test_elbo_is_below_the_exact_log_likelihood():
    sigma = 0.3
    vae = IN.InstanceNoiseVAE(latent=1, width=16, key=jax.random.key(2))
    y = IN.add_instance_noise(jax.random.key(3), IN.sample_circle(jax.random.key(4), 3), sigma)
    # log p(y) = log int N(z; 0, 1) N(y; g(z), sigma^2) dz by quadrature on a fine grid
    z = jnp.linspace(-8.0, 8.0, 8001)[:, None]
    g = vae.generate(z)
    log_joint = (-0.5 * z[:, 0] ** 2 - 0.5 * jnp.log(2 * jnp.pi))[:, None] + jnp.sum(
        -0.5 * ((y[None] - g[:, None]) / sigma) ** 2 - jnp.log(sigma) - 0.5 * jnp.log(2 * jnp.pi), -1)
    log_p = float(jnp.mean(logsumexp(log_joint, 0) + jnp.log(z[1, 0] - z[0, 0])))
    estimates = jax.vmap(lambda k: IN.instance_noise_elbo(sigma).estimate(k, vae, y))(
        jax.random.split(jax.random.key(5), 2000))
    mean, se = float(estimates.mean()), float(estimates.std() / np.sqrt(estimates.shape[0]))
    assert mean < log_p + 3 * se
    assert np.isfinite(mean)


def test_training_raises_the_elbo():
    data = IN.sample_circle(jax.random.key(6), 256)
    result = IN.fit_instance_noise(data, 0.1, steps=200, batch_size=128, width=32, latent=2)
    h = result.history["objective"]
    assert np.mean(h[-40:]) > np.mean(h[:40]) + 0.5
    x = IN.sample_generator(result.params, jax.random.key(7), 256)
    # against the truth W1 improves on the untrained generator's
    untrained = IN.InstanceNoiseVAE(latent=2, width=32, key=jax.random.key(0))
    truth = IN.sample_circle(jax.random.key(8), 256)
    assert IN.wasserstein1(x, truth) < IN.wasserstein1(IN.sample_generator(untrained, jax.random.key(7), 256), truth)
