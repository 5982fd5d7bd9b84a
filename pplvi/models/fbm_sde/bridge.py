r"""The fractional Ornstein-Uhlenbeck bridge: a posterior with a closed form to check the variational one against.

Prior: :math:`dX = -\theta X\,dt + \sigma\,dB^H_t`, :math:`X_0 = 0`, on :math:`[0, T]`; one observation
:math:`o = X_T + \varepsilon = 0`, :math:`\varepsilon \sim \mathcal N(0, s^2)` (Daems et al., ICLR 2024, Section 5,
the fOU bridge). The posterior is a Gaussian process; :func:`gaussian_posterior` computes its mean and standard
deviation on the solver's grid for the Euler scheme :math:`X_{n+1} = (1 - \theta\Delta t) X_n + \sigma \Delta
B^H_n` with *exact* fractional Gaussian noise increments (:func:`~pplvi.models.fbm_sde.exact.fbm_covariance`), and
:func:`markov_posterior` the same for the Markov-approximate model the variational posterior lives in (so the two
references separate approximation error from variational error).

The variational posterior is the controlled augmented SDE of :mod:`pplvi.models.fbm_sde.sde` with a
:class:`~pplvi.models.fbm_sde.sde.LinearFeedbackControl` (which contains the exact posterior of the continuous-time
Markov-approximate model); :func:`bridge_elbo` is its ELBO and :func:`fit_bridge` trains it with :func:`pplvi.fit`.
The Euler grid is refined geometrically towards :math:`T` (:func:`~pplvi.models.fbm_sde.sde.refined_steps`): on a
uniform grid of 100 steps the best drift-only control cannot bring the std at :math:`T` below about 0.30 at
:math:`H = 0.3` (the exact posterior's is 0.099), because the last steps inject the prior's one-step noise.
"""

from __future__ import annotations

import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import optax

import pplvi
from pplvi.models.fbm_sde.exact import fbm_covariance
from pplvi.models.fbm_sde.linear import best_control_std, controlled_moments, posterior_std
from pplvi.models.fbm_sde.markov import MarkovFBM, check_hurst
from pplvi.models.fbm_sde.sde import (
    LinearFeedbackControl,
    refined_steps,
    sample_increments,
    sample_initial_ou_state,
    solve,
    time_to_go_rate,
)


class BridgeProblem(eqx.Module):
    """The fOU bridge: ``theta``, ``sigma``, horizon ``T``, observation noise std ``noise``, the Markov
    approximation (``K`` OU processes up to ``gamma_max``, ``kind``) and the Euler grid: ``coarse_steps`` uniform
    steps of ``T / coarse_steps``, refined geometrically towards ``T`` (:func:`~pplvi.models.fbm_sde.sde.
    refined_steps` with ``refine_ratio`` and ``dt_min``; ``refine_ratio=None``: the uniform grid)."""

    hurst: float
    theta: float = 1.0
    sigma: float = 1.0
    T: float = 2.0
    noise: float = 0.1
    coarse_steps: int = 100
    refine_ratio: float | None = 0.3
    dt_min: float = 1e-5
    K: int = 5
    gamma_max: float = 20.0
    kind: str = "I"

    def __check_init__(self):
        check_hurst(self.hurst)

    @property
    def dts(self) -> np.ndarray:
        """The step sizes, ``(steps,)``."""
        if self.refine_ratio is None:
            return np.full(self.coarse_steps, self.T / self.coarse_steps)
        return refined_steps([self.T], self.T / self.coarse_steps, self.refine_ratio, self.dt_min)

    @property
    def steps(self) -> int:
        return len(self.dts)

    @property
    def driver(self) -> MarkovFBM:
        return MarkovFBM(self.K, self.T, self.kind, self.gamma_max)

    @property
    def times(self) -> np.ndarray:
        return np.concatenate([[0.0], np.cumsum(self.dts)])


def _condition(cov: np.ndarray, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of ``X`` (prior mean 0, covariance ``cov`` over the grid) given ``X_T + eps = 0``."""
    last = cov[:, -1]
    mean = np.zeros(len(cov))  # the observation and the prior mean are both 0
    var = np.diag(cov) - last ** 2 / (cov[-1, -1] + noise ** 2)
    return mean, np.sqrt(np.clip(var, 0.0, None))


def gaussian_posterior(problem: BridgeProblem) -> tuple[np.ndarray, np.ndarray]:
    r"""The exact posterior mean and std of :math:`X` on the grid (``(steps + 1,)`` each) for the fOU driven by
    exact fBM (Euler in time, exact fractional Gaussian noise increments)."""
    n, dts = problem.steps, problem.dts
    increments_cov = np.diff(np.diff(fbm_covariance(problem.times, problem.hurst), axis=0), axis=1)
    lower = np.zeros((n + 1, n))
    for i in range(n):  # X_{i+1} = (1 - theta dt_i) X_i + sigma dB^H_i
        lower[i + 1] = (1.0 - problem.theta * dts[i]) * lower[i]
        lower[i + 1, i] = problem.sigma
    return _condition(lower @ increments_cov @ lower.T, problem.noise)


def markov_posterior(problem: BridgeProblem) -> tuple[np.ndarray, np.ndarray]:
    r"""The exact posterior mean and std of :math:`X` on the grid for the Euler-discretized Markov-approximate
    model (the augmented linear SDE with the optimal weights at ``problem.hurst``), by propagating covariances of
    :math:`Z = (X, Y)`: :math:`Z_{n+1} = M_n Z_n + g\,\Delta B_n` (:func:`~pplvi.models.fbm_sde.linear.
    posterior_std`)."""
    std = posterior_std(problem.driver, problem.hurst, problem.sigma, problem.theta, problem.dts, problem.noise)
    return np.zeros(len(std)), std


def bridge_paths(problem: BridgeProblem, control, n: int):
    """Inside an objective: ``n`` posterior paths (:class:`~pplvi.models.fbm_sde.sde.Path`, batch ``(n, 1)``)."""
    return solve(problem.driver, problem.hurst, lambda t, x: -problem.theta * x,
                 lambda t, x: problem.sigma * jnp.ones_like(x), jnp.zeros((n, 1)), dt=problem.dts,
                 steps=problem.steps, control=control)


def bridge_elbo(problem: BridgeProblem, particles: int = 64) -> pplvi.Objective:
    r"""The ELBO of the bridge, :math:`\mathbb E_Q[\log \mathcal N(0; X_T, s^2)] - \mathbb E_Q \int \frac12 u^2 dt`,
    averaged over ``particles`` posterior paths; call as ``objective(control)``."""

    @pplvi.objective
    def fou_bridge_elbo(control):
        path = bridge_paths(problem, control, particles)
        log_lik = dist.Normal(path.xs[-1, :, 0], problem.noise).log_prob(0.0)
        return jnp.mean(log_lik - path.path_kl)

    return fou_bridge_elbo


def posterior_moments(problem: BridgeProblem, control, key=None, n: int = 4000):
    """Mean and std of the variational posterior at every grid time (NumPy ``(steps + 1,)`` each): exact (the
    controlled chain is linear-Gaussian, :func:`~pplvi.models.fbm_sde.linear.controlled_moments`) when ``key`` is
    None, else over ``n`` sampled posterior paths."""
    if key is None:
        return controlled_moments(problem.driver, problem.hurst, problem.sigma, problem.theta, problem.dts, control)

    @eqx.filter_jit
    def draw(control, key):
        k_y, k_b = jax.random.split(key)
        y0 = sample_initial_ou_state(problem.driver, k_y, (n, 1))
        increments = sample_increments(k_b, problem.steps, (n, 1), problem.dts)
        return solve(problem.driver, problem.hurst, lambda t, x: -problem.theta * x,
                     lambda t, x: problem.sigma * jnp.ones_like(x), jnp.zeros((n, 1)), dt=problem.dts,
                     steps=problem.steps, control=control, y0=y0, increments=increments).xs[:, :, 0]

    xs = np.asarray(draw(control, key), np.float64)
    return xs.mean(1), xs.std(1, ddof=1)


def fit_bridge(problem: BridgeProblem, *, steps: int = 1500, particles: int = 64, lr: float = 1e-2, seed: int = 0,
               samples: int = 4000, progress: bool | None = None) -> dict:
    """Train the linear-feedback posterior of ``problem`` by the ELBO and compare its mean and std with both
    references. Returns the errors (max over the grid), the trained control and the curves."""
    t0 = time.perf_counter()
    rate = time_to_go_rate([problem.steps], problem.steps, problem.dts)
    control = LinearFeedbackControl.zeros(problem.steps, 1, problem.K, rate=rate)
    optimizer = optax.adam(optax.cosine_decay_schedule(lr, steps, 0.05))
    result = pplvi.fit(bridge_elbo(problem, particles), control, optimizer=optimizer, steps=steps,
                       key=jax.random.key(seed), progress=progress, desc=f"fOU bridge H={problem.hurst}")
    mean, std = posterior_moments(problem, result.params)
    mc_mean, mc_std = posterior_moments(problem, result.params, jax.random.key(seed + 1), samples)
    ref_mean, ref_std = gaussian_posterior(problem)
    mk_mean, mk_std = markov_posterior(problem)
    best_std, best_gap = best_control_std(problem.driver, problem.hurst, problem.sigma, problem.theta, problem.dts,
                                          problem.noise)
    return {
        "H": problem.hurst,
        "max_mean_err": float(np.max(np.abs(mean - ref_mean))),
        "max_std_err": float(np.max(np.abs(std - ref_std))),
        "max_mean_err_vs_markov_model": float(np.max(np.abs(mean - mk_mean))),
        "max_std_err_vs_markov_model": float(np.max(np.abs(std - mk_std))),
        "max_std_err_before_T": float(np.max(np.abs(std - ref_std)[:-1])),
        "max_std_err_sampled": float(np.max(np.abs(mc_std - ref_std))),
        "markov_model_vs_gp_std": float(np.max(np.abs(mk_std - ref_std))),
        "best_control_vs_gp_std": float(np.max(np.abs(best_std - ref_std))),
        "best_control_gap": best_gap,
        "grid_steps": problem.steps,
        "dt_min": float(np.min(problem.dts)),
        "elbo_last_100": float(np.nanmean(result.history["objective"][-100:])),
        "seconds": round(time.perf_counter() - t0, 1),
        "curves": {"t": problem.times.tolist(), "mean": mean.tolist(), "std": std.tolist(),
                   "gp_std": ref_std.tolist(), "markov_std": mk_std.tolist(), "best_control_std": best_std.tolist()},
        "control": result.params,
    }
