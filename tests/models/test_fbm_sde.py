"""SDEs driven by Markov-approximate fBM (pplvi.models.fbm_sde): fast versions of its checks.

* The optimal-coefficient cost: ~0 at H = 1/2 (type II), non-increasing in K on nested grids, equal to a Monte Carlo
  estimate from exact joint fBM/OU paths (type I) and to a quadrature of the kernel error (type II); its gradient in
  H matches finite differences.
* The augmented SDE: the Girsanov path KL of the solver equals the closed form for a constant control and the
  log-density ratio of the discretized path measures for a state-dependent one; the control enters the OU drifts.
* Discretization: refined grids hit every observation; on a uniform grid even the best drift-only control cannot bring
  the bridge's std at T down to the posterior's, on the refined grid it nearly does; the Kalman likelihood equals the
  dense Gaussian one; exact moments under a linear-feedback control equal sampled ones.
* The objectives: a few steps of bridge training raise the ELBO; the Hurst and video objectives have finite
  gradients, including in H.
* The learned initial OU state (type I): its KL and its sampled moments match the closed forms; the gap of keeping
  the prior's initial state equals KL(p(Y_0) || p(Y_0 | o)) computed by dense Gaussian conditioning.
* Bad inputs raise pplvi errors that name the problem.
* The committed results (benchmarks/results/fbm_sde.json): the contract keys exist and the Hurst-recovery claim
  |learned H - true H| <= 0.05 holds for H = 0.2, 0.5, 0.8 and every recorded seed.
(The bridge fits, Hurst recovery and the video comparison at full size are ``python -m pplvi.models.fbm_sde
reproduce``.)
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as nd
import optax
import pytest

import pplvi
from pplvi.models import fbm_sde as F


# ---------------------------------------------------------------------------------------------------------------
# Optimal coefficients
# ---------------------------------------------------------------------------------------------------------------
def test_cost_is_near_zero_at_half_for_type_two_and_not_elsewhere():
    with jax.enable_x64(True):
        for K in (5,):
            g = F.speeds(K)
            at_half = float(F.approximation_cost(0.5, g, 1.0, "II"))
            assert abs(at_half) < 1e-4, (K, at_half)
            # the mean square of the target itself is 1 / (2H + 1) = 1/2 here; rough fBM is much harder to approximate
            for H in (0.2, 0.3):
                assert float(F.approximation_cost(H, g, 1.0, "II")) > 100 * abs(at_half)
        assert float(F.approximation_cost(0.5, F.speeds(1), 1.0, "II")) > 1e-2  # one OU process is not enough


@pytest.mark.parametrize("kind", ["I", "II"])
def test_cost_does_not_increase_with_K_on_nested_grids(kind):
    # speeds(K) for K = 1, 3, 5, 9 are nested grids on [1/20, 20]: the optimum over a larger span cannot be worse
    with jax.enable_x64(True):
        for H in (0.2, 0.5, 0.8):
            costs = [float(F.approximation_cost(H, F.speeds(K), 1.0, kind)) for K in (1, 3, 5, 9)]
            assert all(b <= a + 1e-7 for a, b in zip(costs, costs[1:])), (H, costs)
            assert costs[-1] < costs[0]


def test_optimal_weights_minimize_the_cost():
    with jax.enable_x64(True):
        g = F.speeds(4)
        w = np.asarray(F.optimal_weights(0.3, g, 1.0, "I"))
        best = float(F.approximation_cost(0.3, g, 1.0, "I"))
        rng = np.random.default_rng(0)
        for _ in range(10):
            other = w + 0.05 * rng.standard_normal(w.shape)
            assert float(F.approximation_cost(0.3, g, 1.0, "I", weights=other)) > best


@pytest.mark.parametrize("H", [0.3, 0.7])
def test_type_one_cost_matches_monte_carlo_on_exact_paths(H):
    g = F.speeds(3)
    with jax.enable_x64(True):
        w = np.asarray(F.optimal_weights(H, g, 1.0, "I"))
        for weights in (w, 0.7 * w):  # the optimum and a worse approximation: the check can tell them apart
            cost = float(F.approximation_cost(H, g, 1.0, "I", weights=weights))
            mc, se = F.monte_carlo_cost(1, H, g, weights, 1.0, paths=1500, steps=60)
            # 4 standard errors plus 3% for the trapezoidal rule in time (60 steps)
            assert abs(mc - cost) < 4 * se + 0.03 * cost, (H, cost, mc, se)
        assert float(F.approximation_cost(H, g, 1.0, "I", weights=0.7 * w)) > 1.5 * float(
            F.approximation_cost(H, g, 1.0, "I"))


@pytest.mark.parametrize("H", [0.25, 0.5, 0.75])
def test_type_two_cost_matches_quadrature_of_the_kernel_error(H):
    g = F.speeds(5)
    with jax.enable_x64(True):
        w = np.asarray(F.optimal_weights(H, g, 1.0, "II"))
        for weights in (w, w * 1.1):
            cost = float(F.approximation_cost(H, g, 1.0, "II", weights=weights))
            assert cost == pytest.approx(F.quadrature_cost(H, g, weights, 1.0), rel=1e-3, abs=1e-5)


@pytest.mark.parametrize("kind", ["I", "II"])
def test_cost_gradient_in_hurst_matches_finite_differences(kind):
    g = F.speeds(5)
    with jax.enable_x64(True):
        for H in (0.3,):
            grad = float(jax.grad(lambda h: F.approximation_cost(h, g, 1.0, kind))(jnp.asarray(H)))
            eps = 1e-5
            fd = (float(F.approximation_cost(H + eps, g, 1.0, kind))
                  - float(F.approximation_cost(H - eps, g, 1.0, kind))) / (2 * eps)
            assert math.isfinite(grad) and grad == pytest.approx(fd, rel=1e-4, abs=1e-7)
            jac = jax.jacfwd(lambda h: F.optimal_weights(h, g, 1.0, kind))(jnp.asarray(H))
            assert np.all(np.isfinite(np.asarray(jac)))
    # float32 (the training dtype) through H = sigmoid(raw): finite
    raw_grad = jax.grad(lambda r: F.approximation_cost(F.hurst_from_raw(r), g, 1.0, kind))(jnp.asarray(0.3))
    assert np.isfinite(float(raw_grad))


def test_large_speeds_do_not_overflow():
    g = F.speeds(5, gamma_max=2000.0)  # gamma T up to 4000: e^{gamma T} Q(a, gamma T) takes the asymptotic branch
    w = F.optimal_weights(0.4, g, 2.0, "I")
    assert np.all(np.isfinite(np.asarray(w)))
    assert np.isfinite(float(jax.grad(lambda h: F.approximation_cost(h, g, 2.0, "I"))(0.4)))


def test_exact_fbm_has_the_fbm_variance():
    times = np.array([0.25, 0.5, 1.0])
    paths = F.sample_fbm(0, times, 0.3, n=4000)
    var = paths.var(0)
    se = var * math.sqrt(2 / 4000)
    assert np.all(np.abs(var - times ** 0.6) < 4 * se)


# ---------------------------------------------------------------------------------------------------------------
# The augmented SDE and the Girsanov term
# ---------------------------------------------------------------------------------------------------------------
def _zero(t, x):
    return jnp.zeros_like(x)


def _one(t, x):
    return jnp.ones_like(x)


def test_constant_control_has_the_closed_form_path_kl_and_shifts_the_ou_means():
    driver = F.MarkovFBM(3, 1.0, "II")
    c, steps, dt, n = 0.7, 50, 0.02, 4000
    hurst = 0.3
    control = lambda step, t, x, y: jnp.full_like(x, c)  # noqa: E731
    increments = F.sample_increments(jax.random.key(0), steps, (n, 1), dt)
    y0 = jnp.zeros((n, 1, driver.K))
    path = F.solve(driver, hurst, _zero, _one, jnp.zeros((n, 1)), dt=dt, steps=steps, control=control, y0=y0,
                   increments=increments)
    assert np.allclose(np.asarray(path.path_kl), 0.5 * c ** 2 * steps * dt, rtol=1e-5)
    # E[Y^k_T] = c dt sum_j (1 - gamma_k dt)^j under Euler; X_T = sum_k w_k Y^k_T (b = 0, s = 1, type II)
    g = np.asarray(driver.gammas)
    mean_y = c * dt * ((1 - (1 - g * dt) ** steps) / (g * dt))
    w = np.asarray(driver.weights(hurst))
    x_end = np.asarray(path.xs[-1, :, 0])
    assert abs(x_end.mean() - w @ mean_y) < 4 * x_end.std() / math.sqrt(n)
    # the same KL inside an objective (sample sites instead of given increments)

    @pplvi.objective
    def minus_kl(hurst):
        return -jnp.mean(F.solve(driver, hurst, _zero, _one, jnp.zeros((8, 1)), dt=dt, steps=steps,
                                 control=control).path_kl)

    assert float(minus_kl.estimate(jax.random.key(1), hurst)) == pytest.approx(-0.5 * c ** 2, rel=1e-5)


def test_path_kl_is_the_log_density_ratio_of_the_discretized_path_measures():
    # Q: increments dB ~ N(0, dt) and the control u shifts the OU drifts; under P the same path has increments
    # dB + u dt. E_Q[sum_n log N(dB_n; 0, dt) - log N(dB_n + u_n dt; 0, dt)] must equal E_Q[sum_n u_n^2 dt / 2].
    driver = F.MarkovFBM(3, 1.0, "I")
    steps, dt, n = 40, 0.025, 4000

    def control(step, t, x, y):
        return jnp.sin(3 * t) - 0.5 * x + 0.2 * y[..., 0]

    k_y, k_b = jax.random.split(jax.random.key(2))
    y0 = F.sample_initial_ou_state(driver, k_y, (n, 1))
    db = F.sample_increments(k_b, steps, (n, 1), dt)
    path = F.solve(driver, 0.6, lambda t, x: -x, _one, jnp.zeros((n, 1)), dt=dt, steps=steps, control=control,
                   y0=y0, increments=db)
    u = jax.vmap(lambda i, x, y: control(i, i * dt, x, y))(jnp.arange(steps), path.xs[:-1], path.ys[:-1])
    noise = nd.Normal(0.0, math.sqrt(dt))
    log_ratio = np.asarray((noise.log_prob(db) - noise.log_prob(db + u * dt)).sum((0, 2)))
    kl = np.asarray(path.path_kl)
    assert abs(log_ratio.mean() - kl.mean()) < 4 * log_ratio.std() / math.sqrt(n)
    assert kl.mean() > 0.05  # a non-trivial control


def test_zero_control_reproduces_the_prior_variance_of_the_markov_model():
    # the solver's prior X_T variance equals the covariance recursion of bridge.markov_posterior (noise -> infinity)
    problem = F.BridgeProblem(0.7, coarse_steps=40, noise=1e6, gamma_max=5.0)  # refined grid: unequal steps
    n = 4000
    k_y, k_b = jax.random.split(jax.random.key(3))
    path = F.solve(problem.driver, problem.hurst, lambda t, x: -x, _one, jnp.zeros((n, 1)), dt=problem.dts,
                   steps=problem.steps, y0=F.sample_initial_ou_state(problem.driver, k_y, (n, 1)),
                   increments=F.sample_increments(k_b, problem.steps, (n, 1), problem.dts))
    _, std = F.markov_posterior(problem)
    var = float(np.var(np.asarray(path.xs[-1, :, 0])))
    assert abs(var - std[-1] ** 2) < 4 * std[-1] ** 2 * math.sqrt(2 / n)


def test_bridge_references_agree_at_half():
    # at H = 1/2 both references are the (Euler) OU bridge up to the small type I approximation error
    problem = F.BridgeProblem(0.5, coarse_steps=50)
    _, gp = F.gaussian_posterior(problem)
    _, markov = F.markov_posterior(problem)
    assert np.max(np.abs(gp - markov)) < 0.02
    assert gp[-1] < problem.noise


def test_refined_grid_hits_every_observation_and_keeps_steps_below_dt():
    obs = np.array([0.25, 0.5, 0.75, 1.0])
    dts = F.refined_steps(obs, 1 / 16, ratio=0.5, dt_min=1e-4)
    times = np.concatenate([[0.0], np.cumsum(dts)])
    assert np.allclose(times[np.searchsorted(times, obs - 1e-9)], obs, atol=1e-12)
    assert dts.max() <= 1 / 16 + 1e-12 and dts.min() == pytest.approx(1e-4)
    assert F.HurstProblem(0.5, observations=4).observation_steps[-1] == len(F.HurstProblem(0.5, observations=4).dts)


def test_a_uniform_grid_bounds_the_posterior_std_at_the_observation_and_a_refined_grid_does_not():
    # the best drift-only control (exact conditional means, one-step variance dt) on 100 uniform steps cannot bring
    # the std at T below the prior's one-step noise sigma * sum(w) * sqrt(dt); refined towards T it nearly can
    uniform = F.BridgeProblem(0.3, refine_ratio=None)
    refined = F.BridgeProblem(0.3)
    for problem, (low, high) in ((uniform, (0.25, 0.35)), (refined, (0.099, 0.11))):
        std, gap = F.linear.best_control_std(problem.driver, 0.3, 1.0, 1.0, problem.dts, problem.noise)
        exact = F.markov_posterior(problem)[1]
        assert exact[-1] == pytest.approx(0.099, abs=1e-3)
        assert low < std[-1] < high, (problem.steps, std[-1])
    assert refined.steps < 1.5 * uniform.steps


def _observation_map(problem, H, scale):
    """Dense form of the Euler chain: the rows mapping (X_0, Y_0, dB_1..dB_n) to X at the observation steps, the
    stationary initial covariance P0 and the augmented state size K + 1."""
    matrices, column, P0 = F.linear.chain(problem.driver, H, scale, 0.0, problem.dts)
    n, K1 = problem.steps, len(column)
    lin = np.zeros((K1, K1 + n))
    lin[:, :K1] = np.eye(K1)
    rows = []
    for i, M in enumerate(matrices):
        lin = M @ lin
        lin[:, K1 + i] += column
        rows.append(lin[0].copy())
    return np.array(rows)[problem.observation_steps - 1], P0, K1


def test_kalman_likelihood_matches_the_dense_gaussian_and_fbm_likelihood_peaks_near_the_truth():
    problem = F.HurstProblem(0.3, paths=3, observations=4, substeps=4, K=3, gamma_max=5.0, refine_ratio=None)
    data = problem.data().astype(np.float64)
    # dense: X at the observation steps is linear in (Y_0, dB) through the chain
    rows, P0, K1 = _observation_map(problem, 0.3, 1.2)
    n = problem.steps
    prior = np.zeros((K1 + n, K1 + n))
    prior[:K1, :K1] = P0
    prior[K1:, K1:] = np.diag(problem.dts)
    cov = rows @ prior @ rows.T + problem.noise ** 2 * np.eye(4)
    dense = sum(float(nd.MultivariateNormal(jnp.zeros(4), jnp.asarray(cov)).log_prob(jnp.asarray(d))) for d in data)
    kalman = F.linear.log_likelihood(problem.driver, 0.3, 1.2, problem.dts, problem.observation_steps, data,
                                     problem.noise)
    assert kalman == pytest.approx(dense, rel=1e-4)
    big = F.HurstProblem(0.3, paths=16, observations=32)
    d = big.data().astype(np.float64)
    ll = [F.fbm_log_likelihood(d, big.observation_times, h, 1.0, big.noise) for h in (0.2, 0.3, 0.4)]
    assert ll[1] > max(ll[0], ll[2])


def test_exact_controlled_moments_match_sampled_paths():
    problem = F.BridgeProblem(0.4, coarse_steps=20, K=3, gamma_max=5.0)
    control = F.LinearFeedbackControl.zeros(problem.steps, 1, problem.K)
    rng = np.random.default_rng(0)
    control = F.LinearFeedbackControl(jnp.asarray(rng.normal(size=control.offset.shape), jnp.float32),
                                      jnp.asarray(0.5 * rng.normal(size=control.gain.shape), jnp.float32),
                                      control.rate)
    mean, std = F.posterior_moments(problem, control)
    mc_mean, mc_std = F.posterior_moments(problem, control, jax.random.key(0), 20000)
    assert np.all(np.abs(mc_mean - mean) < 5 * std / math.sqrt(20000) + 1e-6)
    assert np.all(np.abs(mc_std - std) < 5 * std / math.sqrt(2 * 20000) + 1e-6)


# ---------------------------------------------------------------------------------------------------------------
# Objectives and training
# ---------------------------------------------------------------------------------------------------------------
def test_a_few_steps_of_bridge_training_raise_the_elbo():
    problem = F.BridgeProblem(0.3, coarse_steps=40, K=3, gamma_max=5.0)
    rate = F.time_to_go_rate([problem.steps], problem.steps, problem.dts)
    control = F.LinearFeedbackControl.zeros(problem.steps, 1, problem.K, rate=rate)
    objective = F.bridge_elbo(problem, particles=32)
    result = pplvi.fit(objective, control, optimizer=optax.adam(3e-2), steps=80, key=0, progress=False)
    h = np.asarray(result.history["objective"])
    assert np.all(np.isfinite(h)) and result.skipped == 0
    keys = jax.random.split(jax.random.key(5), 64)
    before = np.asarray(jax.vmap(lambda k: objective.estimate(k, control))(keys))
    after = np.asarray(jax.vmap(lambda k: objective.estimate(k, result.params))(keys))
    assert after.mean() - before.mean() > 4 * math.sqrt(before.var() / 64 + after.var() / 64)


def test_hurst_objective_has_finite_gradients_in_every_parameter():
    problem = F.HurstProblem(0.7, paths=3, observations=4, substeps=4, K=3, gamma_max=5.0)
    model = F.hurst.initial_model(problem)
    data = jnp.asarray(problem.data())
    value, grads = F.hurst_elbo(problem).value_and_grad(jax.random.key(0), model, data)
    assert np.isfinite(float(value))
    leaves = jax.tree_util.tree_leaves(grads)
    assert all(np.all(np.isfinite(np.asarray(leaf))) for leaf in leaves)
    assert float(grads.raw_hurst) != 0.0
    # the learned initial OU state (type I) is part of the posterior and gets a gradient too
    assert np.any(np.asarray(grads.start.mean) != 0.0) and np.any(np.asarray(grads.start.root) != 0.0)


def test_video_objective_has_finite_values_and_gradients():
    config = F.VideoConfig(frames=4, width=6, substeps=4, K=3, hidden=8, gamma_max=4.0)
    videos = jnp.asarray(F.bar_videos(config, 5))
    assert videos.shape == (5, 4, 6)
    model = F.VideoSDE.init(jax.random.key(0), config)
    value, grads = F.video_elbo(config).value_and_grad(jax.random.key(1), model, videos)
    assert np.isfinite(float(value))
    assert all(np.all(np.isfinite(np.asarray(leaf))) for leaf in jax.tree_util.tree_leaves(grads))
    assert np.isfinite(float(grads.raw_hurst)) and float(grads.raw_hurst) != 0.0


# ---------------------------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("H", [0.0, 1.0, -0.2, 1.5])
def test_hurst_outside_the_unit_interval(H):
    with pytest.raises(pplvi.SupportError, match="Hurst index must lie strictly between 0 and 1"):
        F.optimal_weights(H, F.speeds(3), 1.0)
    with pytest.raises(pplvi.SupportError, match="Hurst"):
        F.BridgeProblem(H)


@pytest.mark.parametrize("K", [0, -1, 2.5, True])
def test_number_of_ou_processes_must_be_a_positive_integer(K):
    with pytest.raises(pplvi.ObjectiveError, match="number of OU processes K"):
        F.speeds(K)
    with pytest.raises(pplvi.ObjectiveError, match="number of OU processes K"):
        F.MarkovFBM(K)


def test_bad_kind_step_and_shapes():
    with pytest.raises(pplvi.ObjectiveError, match="kind must be 'I'"):
        F.MarkovFBM(3, kind="III")
    driver = F.MarkovFBM(3, 1.0, "II", gamma_max=20.0)
    with pytest.raises(pplvi.ObjectiveError, match=r"gamma_max \* dt"):
        F.solve(driver, 0.5, _zero, _one, jnp.zeros((2, 1)), dt=0.1, steps=10,
                increments=jnp.zeros((10, 2, 1)))
    with pytest.raises(pplvi.ObjectiveError, match="trailing latent dimension"):
        F.solve(driver, 0.5, _zero, _one, jnp.zeros(()), dt=0.01, steps=10, increments=jnp.zeros((10,)))
    with pytest.raises(pplvi.ObjectiveError, match=r"increments must have shape \(steps, \*x0.shape\)"):
        F.solve(driver, 0.5, _zero, _one, jnp.zeros((2, 1)), dt=0.01, steps=10, increments=jnp.zeros((9, 2, 1)))
    with pytest.raises(pplvi.ObjectiveError, match="pass y0"):
        F.solve(F.MarkovFBM(3, 1.0, "I"), 0.5, _zero, _one, jnp.zeros((2, 1)), dt=0.01, steps=10,
                increments=jnp.zeros((10, 2, 1)))
    with pytest.raises(pplvi.ObjectiveError, match="rate must have shape"):
        F.LinearFeedbackControl.zeros(10, 1, 3, rate=jnp.ones(9))


# ---------------------------------------------------------------------------------------------------------------
# The learned initial OU state
# ---------------------------------------------------------------------------------------------------------------
def _random_start(K: int, batch: tuple = ()):
    rng = np.random.default_rng(3)
    mean = jnp.asarray(rng.normal(size=(*batch, 1, K)), jnp.float32)
    root = jnp.asarray(np.tril(0.3 * rng.normal(size=(K, K))) + np.diag(rng.uniform(0.5, 1.5, K)), jnp.float32)
    return F.InitialOUPosterior(mean, root)


def test_initial_state_posterior_kl_is_the_gaussian_kl_to_the_stationary_law():
    driver = F.MarkovFBM(4, 1.0, "I", gamma_max=10.0)
    start = _random_start(driver.K)
    R = F.stationary_root(driver)
    S = np.tril(np.asarray(start.root, np.float64))
    q = nd.MultivariateNormal(jnp.asarray(R @ np.asarray(start.mean[0], np.float64)),
                              scale_tril=jnp.asarray(R @ S))
    p = nd.MultivariateNormal(jnp.zeros(driver.K), scale_tril=jnp.asarray(R))
    assert float(start.kl()) == pytest.approx(float(nd.kl_divergence(q, p)), rel=1e-3, abs=1e-4)
    assert float(F.InitialOUPosterior.prior(driver.K).kl()) == 0.0


def test_initial_state_posterior_samples_have_its_mean_and_covariance():
    driver = F.MarkovFBM(3, 1.0, "I", gamma_max=5.0)
    start = _random_start(driver.K)
    R = F.stationary_root(driver)
    S = np.tril(np.asarray(start.root, np.float64))
    mean, cov = R @ np.asarray(start.mean[0], np.float64), R @ S @ S.T @ R.T
    direction = np.array([1.0, -0.5, 2.0])

    @pplvi.objective
    def projection(posterior):
        return jnp.sum(posterior.sample(driver, (1,))[0] * direction)

    n = 4000
    draws = np.asarray(jax.vmap(lambda k: projection.estimate(k, start))(jax.random.split(jax.random.key(0), n)))
    sd = math.sqrt(direction @ cov @ direction)
    assert abs(draws.mean() - direction @ mean) < 5 * sd / math.sqrt(n)
    assert abs(draws.std() - sd) < 5 * sd / math.sqrt(2 * n)
    with pytest.raises(pplvi.ObjectiveError, match="type I driver"):
        F.InitialOUPosterior.prior(3).sample(F.MarkovFBM(3, 1.0, "II"), (1,))


def test_the_gap_of_keeping_the_prior_start_is_the_kl_to_the_posterior_of_the_start():
    # dense Gaussian conditioning: X at the observation steps is linear in (Y_0, dB) through the Euler chain
    problem = F.HurstProblem(0.8, paths=3, observations=4, substeps=4, K=3, gamma_max=5.0, refine_ratio=None)
    data = problem.data().astype(np.float64)
    rows, P0, K1 = _observation_map(problem, 0.8, 1.1)
    A = rows[:, 1:K1]  # dependence of the observations on Y_0
    B = rows[:, K1:]
    P = P0[1:, 1:]
    S = A @ P @ A.T + B @ np.diag(problem.dts) @ B.T + problem.noise ** 2 * np.eye(4)
    gain = P @ A.T @ np.linalg.inv(S)
    post_cov = P - gain @ A @ P
    prior = nd.MultivariateNormal(jnp.zeros(K1 - 1), covariance_matrix=jnp.asarray(P))
    expected = sum(float(nd.kl_divergence(
        prior, nd.MultivariateNormal(jnp.asarray(gain @ d), covariance_matrix=jnp.asarray(post_cov)))) for d in data)
    got = F.linear.initial_state_gap(problem.driver, 0.8, 1.1, problem.dts, problem.observation_steps, data,
                                     problem.noise)
    assert expected > 0.01
    assert got == pytest.approx(expected, rel=2e-3)
    assert F.linear.initial_state_gap(F.MarkovFBM(3, 1.0, "II", 5.0), 0.8, 1.1, problem.dts,
                                      problem.observation_steps, data, problem.noise) == 0.0


# ---------------------------------------------------------------------------------------------------------------
# The committed results
# ---------------------------------------------------------------------------------------------------------------
RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "fbm_sde.json"


@pytest.fixture(scope="module")
def results():
    return json.loads(RESULTS.read_text())


def test_committed_results_have_the_contract_keys(results):
    for key in ("hurst", "bridge", "omega_cost", "video", "checks", "tolerances", "device", "command", "date",
                "hurst_seeds", "section_runs"):
        assert key in results, key
    for row in results["hurst"]:
        for key in ("true", "learned", "learned_scale", "seed", "fbm_mle", "markov_mle", "best_control_elbo_argmax",
                    "elbo_last_100", "best_control_elbo_at_learned", "prior_start_gap_at_learned"):
            assert key in row, key
    assert not results["section_runs"]["hurst"]["quick"]


def test_committed_hurst_recovery_is_within_0_05_for_every_true_h_and_seed(results):
    tolerance = results["tolerances"]["hurst"]
    assert tolerance == 0.05
    seeds = results["hurst_seeds"]
    assert len(seeds) >= 2
    for seed in seeds:
        rows = {row["true"]: row for row in results["hurst"] if row["seed"] == seed}
        assert sorted(rows) == [0.2, 0.5, 0.8], (seed, sorted(rows))
        for true, row in rows.items():
            assert abs(row["learned"] - true) <= tolerance, (seed, true, row["learned"])
            # the data and the Markov model allow it: both maximum-likelihood estimates are within the tolerance too
            assert abs(row["fbm_mle"] - true) <= tolerance and abs(row["markov_mle"] - true) <= tolerance
    assert results["checks"]["hurst_within_0.05"] is True
