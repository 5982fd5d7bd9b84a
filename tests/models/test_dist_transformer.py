"""Distribution Transformers (pplvi.models.dist_transformer): fast versions of its checks.

* Exact pieces: the closed-form mixture posterior equals Bayes' rule on a grid; the log-inverse-gamma density is
  normalized and matches its sampler; the Monte Carlo KL matches the Gaussian closed form within its standard error.
* The network: no positional encodings, so permuting the observations leaves the posterior unchanged and permuting
  the prior's components permutes the posterior's components (the same mixture).
* Training with pplvi.fit on the forward-KL objective lowers KL(exact || q) (a tiny run).
* SVI baseline: the auxiliary-component model makes pplvi's ELBO the marginal mixture ELBO (checked against a direct
  Monte Carlo); its per-problem results are checked from the committed results file.
* Tracking: the particle filter agrees with the exact grid filter; the EKF gives finite scores.
* Bad input raises pplvi errors; the committed results file holds the contract keys and the claims.

The full numbers come from ``python -m pplvi.models.dist_transformer reproduce``.
"""

from __future__ import annotations

import json
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pplvi
from pplvi.models import dist_transformer as D

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "dist_transformer.json"
SMALL = {"width": 16, "depth": 1, "heads": 2, "hidden": 32}


def _sharpened(net):
    """A random network whose head is not near zero, so the posterior differs from the prior."""
    return eqx.tree_at(lambda n: n.head.weight, net, net.head.weight * 100.0)


def _random_prior(key, components: int, dim: int) -> D.GaussianMixture:
    k1, k2, k3 = jax.random.split(key, 3)
    tril = jnp.tril(0.3 * jax.random.normal(k3, (components, dim, dim)), -1)
    return D.GaussianMixture(jax.random.normal(k1, (components,)), 3.0 * jax.random.normal(k2, (components, dim)),
                             tril + jnp.eye(dim) * jnp.linspace(0.5, 2.0, components)[:, None, None])


def test_linear_gaussian_posterior_is_bayes_rule_on_a_grid():
    prior = D.GaussianMixture(jnp.log(jnp.array([0.2, 0.5, 0.3])), jnp.array([[-2.0], [0.5], [3.0]]),
                              jnp.array([[[0.7]], [[1.2]], [[0.4]]]))
    y = jnp.array([[1.1], [2.3]])
    post = D.linear_gaussian_posterior(prior, y, jnp.array([[0.8]]), jnp.array([[0.9]]))
    grid = jnp.linspace(-8.0, 8.0, 4001)[:, None]
    log_unnorm = prior.log_prob(grid) + jnp.sum(jax.scipy.stats.norm.logpdf(y[:, 0], 0.8 * grid, 0.9), -1)
    dx = grid[1, 0] - grid[0, 0]
    numeric = log_unnorm - jnp.log(jnp.sum(jnp.exp(log_unnorm)) * dx)
    np.testing.assert_allclose(post.log_prob(grid)[1000:3000], numeric[1000:3000], atol=2e-4)


def test_log_inverse_gamma_density_is_normalized_and_matches_its_sampler():
    a, b = 1.3, 0.7
    u = np.linspace(-15.0, 25.0, 200001)  # float64 grid and sum: float32 would lose ~1e-3
    density = np.exp(np.asarray(D.log_inverse_gamma_log_prob(jnp.asarray(u), a, b), np.float64))
    mass = density.sum() * (u[1] - u[0])
    assert abs(float(mass) - 1.0) < 1e-4
    draws = D.log_inverse_gamma_sample(jax.random.key(0), a, b, 200_000)
    precision = np.exp(-np.asarray(draws, np.float64))  # 1 / sigma^2 ~ Gamma(a, b): mean a / b
    se = precision.std() / np.sqrt(precision.size)
    assert abs(precision.mean() - a / b) < 4 * se


def test_monte_carlo_kl_matches_the_gaussian_closed_form():
    p, q = D.gaussian(jnp.array([0.3]), jnp.array([[1.5]])), D.gaussian(jnp.array([-0.4]), jnp.array([[0.8]]))
    kl, se = D.kl_monte_carlo(p.log_prob, p.sample(jax.random.key(1), 100_000), q.log_prob)
    exact = np.log(0.8 / 1.5) + (1.5 ** 2 + 0.7 ** 2) / (2 * 0.8 ** 2) - 0.5
    assert abs(float(kl) - exact) < 4 * float(se)


def test_transformer_is_permutation_invariant_in_data_and_equivariant_in_components_with_cholesky_output():
    dim = 2
    net = eqx.filter_jit(_sharpened(D.DistributionTransformer(dim, dim, key=jax.random.key(0), **SMALL)))
    prior = _random_prior(jax.random.key(1), 4, dim)
    y = 2.0 * jax.random.normal(jax.random.key(2), (4, dim))
    post = net(prior, y)
    points = jax.random.normal(jax.random.key(2), (50, dim)) * 3.0
    assert float(jnp.max(jnp.abs(post.log_prob(points) - prior.log_prob(points)))) > 0.1  # it does something
    shuffled = net(prior, y[jnp.array([2, 0, 3, 1])])
    np.testing.assert_allclose(shuffled.log_prob(points), post.log_prob(points), atol=1e-5)
    order = jnp.array([3, 1, 0, 2])
    permuted = net(prior.permute(order), y)
    np.testing.assert_allclose(permuted.means, post.means[order], atol=1e-5)
    np.testing.assert_allclose(permuted.scale_tril, post.scale_tril[order], atol=1e-5)
    np.testing.assert_allclose(permuted.log_prob(points), post.log_prob(points), atol=1e-5)
    # the posterior covariances are Cholesky factors: lower triangular, positive diagonal
    np.testing.assert_array_equal(np.triu(np.asarray(post.scale_tril), 1), 0.0)
    assert bool(jnp.all(jnp.diagonal(post.scale_tril, 0, -2, -1) > 0))


def test_training_on_the_forward_kl_objective_lowers_kl_to_the_exact_posterior():
    family = D.gmm_1d()
    net = D.DistributionTransformer(1, 1, key=jax.random.key(0), location_scale=3.0, observation_scale=3.0, **SMALL)
    # held-out problems: random mixture priors, x from the prior, two observations y ~ N(x, 1)
    priors = jax.vmap(lambda k: _random_prior(k, 4, 1))(jax.random.split(jax.random.key(5), 100))
    x = jax.vmap(lambda p, k: p.sample(k, 1)[0])(priors, jax.random.split(jax.random.key(6), 100))
    ys = x[:, None, :] + jax.random.normal(jax.random.key(7), (100, 2, 1))
    exact = jax.vmap(family.exact_posterior)(priors, ys)

    def kl(network):
        q = eqx.filter_jit(jax.vmap(network))(priors, ys)
        return D.mean_kl(*D.mixture_kl(exact, q, jax.random.key(8), samples=400))

    before = kl(net)
    fit = D.train(net, family, steps=100, batch=48, learning_rate=5e-3, key=9)
    after = kl(fit.params)
    assert np.isfinite(fit.history["objective"]).all()
    assert after["kl"] < 0.6 * before["kl"] - 4 * (before["kl_se"] + after["kl_se"])


def test_svi_auxiliary_model_gives_the_marginal_mixture_elbo():
    prior, y = jnp.array([0.8, 0.6]), jnp.array([[1.7]])
    params = {"logits": jnp.array([0.3, -0.2, 0.0]), "means": jnp.array([[-1.0], [0.0], [1.5]]),
              "log_scales": jnp.array([[-0.3], [0.2], [0.0]])}
    estimates = jax.vmap(lambda k: D.mixture_elbo.estimate(k, params, (prior, y)))(jax.random.split(
        jax.random.key(9), 2000))
    q = D.svi.as_mixture(params)
    x = q.sample(jax.random.key(10), 100_000)
    direct = (D.log_inverse_gamma_log_prob(x[:, 0], prior[0], prior[1])
              + jax.scipy.stats.norm.logpdf(y[0, 0], 0.0, jnp.exp(0.5 * x[:, 0])) - q.log_prob(x))
    se = float(jnp.std(estimates) / jnp.sqrt(estimates.size) + jnp.std(direct) / jnp.sqrt(direct.size))
    assert abs(float(jnp.mean(estimates) - jnp.mean(direct))) < 4 * se


def test_particle_filter_agrees_with_the_exact_grid_filter():
    problem = D.TrackingProblem(steps=8)
    states, obs = problem.simulate(jax.random.key(14), 10)
    grid = jax.vmap(lambda y, x: D.grid_filter(problem, y, x, points=800))(obs, states)
    pf = jax.vmap(lambda k, y, x: D.particle_filter(k, problem, y, x, 4000))(
        jax.random.split(jax.random.key(15), 10), obs, states)
    ekf = jax.vmap(lambda y, x: D.extended_kalman_filter(problem, y, x))(obs, states)
    assert np.all(np.isfinite(pf)) and np.all(np.isfinite(ekf))
    assert abs(float(pf.mean() - grid.mean())) < 0.05  # a 4000-particle estimate of the same densities


def test_bad_input_raises_pplvi_errors():
    net = D.DistributionTransformer(1, 1, key=jax.random.key(0), **SMALL)
    prior = D.gaussian(jnp.zeros(1), jnp.eye(1))
    with pytest.raises(pplvi.PPLVIError, match="observations must have shape"):
        net(prior, jnp.zeros((3, 2)))
    with pytest.raises(pplvi.PPLVIError, match="1 dimensions"):
        net(D.gaussian(jnp.zeros(2), jnp.eye(2)), jnp.zeros((1, 1)))
    with pytest.raises(pplvi.PPLVIError, match="positive diagonals"):
        net(D.gaussian(jnp.zeros(1), -jnp.eye(1)), jnp.zeros((1, 1)))
    with pytest.raises(pplvi.PPLVIError, match="width"):
        D.DistributionTransformer(1, 1, key=jax.random.key(0), width=10, heads=4)
    with pytest.raises(pplvi.PPLVIError, match="exactly one of"):
        D.MixturePrior("bad", dim=1, components=2, observations=1, noise_scale=1.0)
    with pytest.raises(pplvi.PPLVIError, match="positive"):
        D.InverseGammaVariance("bad", (0.0, 1.0), (1.0, 1.0))
    with pytest.raises(pplvi.PPLVIError, match="batch"):
        D.forward_kl_objective(D.gmm_1d(), batch=0)


def test_committed_results_hold_the_contract_and_the_claims():
    assert RESULTS.exists(), f"{RESULTS} is missing: run python -m pplvi.models.dist_transformer reproduce"
    r = json.loads(RESULTS.read_text())
    assert not r["quick"] and "device" in r
    for name in ("invgamma_narrow", "invgamma_wide"):
        row = r[name]
        assert {"dt_kl", "svi_kl", "dt_seconds", "svi_seconds", "problems"} <= set(row)
        assert row["problems"] == 1000
        assert row["dt_kl"] + 4 * row["dt_kl_se"] < row["svi_kl"] - 4 * row["svi_kl_se"]
        assert row["svi_seconds"] >= 1000 * row["dt_seconds"]
    assert r["gmm_1d_kl"] < r["thresholds"]["gmm_1d_kl"] and r["gmm_2d_kl"] < r["thresholds"]["gmm_2d_kl"]
    for name in ("gmm_1d", "gmm_2d"):
        change = r[name]["prior_change"]
        # the new prior moves the exact posterior a lot; the network follows it without retraining
        assert change["dt_kl_to_new_exact"] < 0.1 * change["exact_shift_kl"]
        assert change["dt_kl_to_new_exact"] < 0.1 * change["old_dt_posterior_kl_to_new_exact"]
    tracking = r["tracking"]
    assert {"dt_nll", "ekf_nll", "pf_nll", "dt_seconds", "pf_seconds"} <= set(tracking)
    assert all(np.isfinite(tracking[k]) for k in ("dt_nll", "ekf_nll", "pf_nll", "dt_seconds", "pf_seconds"))
    assert all(r["claims"].values())
