r"""Sequential inference with a Distribution Transformer: the posterior after each observation becomes the next
prior (the sensor-fusion use of Whittle et al., arXiv:2502.02463), compared with an extended Kalman filter,
a bootstrap particle filter and an exact grid filter on a small nonlinear tracking problem.

State-space model (1-D, :class:`TrackingProblem`):

.. math:: x_0 \sim \textstyle\sum_k \pi_k \mathcal N(m_k, 1), \qquad x_t = x_{t-1} + \mathcal N(0, q^2), \qquad
          y_t = x_t^2 / 4 + \mathcal N(0, r^2).

The squared measurement cannot tell :math:`x` from :math:`-x`, so filtering posteriors are often bimodal. The
prediction step of a mixture is exact (every component's variance grows by :math:`q^2`); the measurement update is
the nonlinear step: the Distribution Transformer does it in one forward pass, trained on random mixture priors
(:func:`tracking_family`); the EKF linearizes :math:`h(x) = x^2/4` at its mean; the particle filter reweights and
resamples. Scores: the mean negative log density of the true state under each filter's posterior, and wall time.

The particle filter's density at the true state is the exact filtering density given its previous particles,
:math:`\hat p(x \mid y_{1:t}) = p(y_t \mid x) \sum_i \bar w_i \mathcal N(x; x^{(i)}_{t-1}, q^2) / \hat p(y_t \mid
y_{1:t-1})`, with the normalizer its usual estimate :math:`\sum_i \bar w_i p(y_t \mid \tilde x^{(i)}_t)` (consistent
as the particles grow).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.stats import norm

import pplvi
from pplvi.models.dist_transformer.mixture import GaussianMixture
from pplvi.models.dist_transformer.problems import MixturePrior


def squared_measurement(x):
    r""":math:`h(x) = x^2 / 4`."""
    return x ** 2 / 4.0


@dataclass(frozen=True)
class TrackingProblem:
    """The state-space model above; ``initial_means`` are the prior components' means (unit variances, equal
    weights)."""

    steps: int = 25
    process_scale: float = 0.5
    noise_scale: float = 1.0
    initial_means: tuple[float, ...] = (-2.0, 1.0, 3.0, 5.0)

    def __post_init__(self):
        if self.steps < 1 or self.process_scale <= 0 or self.noise_scale <= 0:
            raise pplvi.DataError(f"TrackingProblem: steps >= 1 and positive scales needed (got {self})")

    def initial_prior(self) -> GaussianMixture:
        k = len(self.initial_means)
        return GaussianMixture(jnp.zeros(k), jnp.asarray(self.initial_means, jnp.float32)[:, None],
                               jnp.ones((k, 1, 1)))

    def simulate(self, key, trajectories: int):
        """True states ``(M, T)`` and observations ``(M, T)``."""
        k0, k1, k2, k3 = jax.random.split(key, 4)
        prior = self.initial_prior()
        component = jax.random.categorical(k0, prior.logits, shape=(trajectories,))
        x0 = prior.means[component, 0] + jax.random.normal(k1, (trajectories,))
        steps = self.process_scale * jax.random.normal(k2, (trajectories, self.steps))
        states = x0[:, None] + jnp.cumsum(steps, 1)
        return states, squared_measurement(states) + self.noise_scale * jax.random.normal(k3, states.shape)

    def predict(self, posterior: GaussianMixture) -> GaussianMixture:
        """Exact prediction of a mixture through the random walk."""
        var = posterior.scale_tril[..., 0, 0] ** 2 + self.process_scale ** 2
        return GaussianMixture(posterior.logits, posterior.means, jnp.sqrt(var)[..., None, None])


def tracking_family(problem: TrackingProblem) -> MixturePrior:
    """Training problems for the measurement update: random 4-component mixtures covering the states the tracker
    visits (means ``N(0, 5^2)``, scales in ``[0.3, 5]``), one observation ``y ~ N(x^2/4, r^2)``."""
    return MixturePrior("tracking", dim=1, components=len(problem.initial_means), observations=1,
                        noise_scale=problem.noise_scale, measurement=squared_measurement, mean_scale=5.0,
                        scale_range=(0.3, 5.0), weight_concentration=0.7)


def distribution_transformer_filter(network, problem: TrackingProblem, observations, states):
    """Filter one trajectory: predict, then the network's update; returns the NLL of the true state per step."""

    def step(posterior, inputs):
        y, x = inputs
        posterior = network(problem.predict(posterior), y[None, None])
        return posterior, -posterior.log_prob(x[None])

    # the first prediction is applied to the initial prior: x_1 = x_0 + noise
    _, nll = jax.lax.scan(step, problem.initial_prior(), (observations, states))
    return nll


def extended_kalman_filter(problem: TrackingProblem, observations, states):
    """EKF from the moment-matched initial Gaussian; linearization :math:`H = x/2` at the predicted mean."""
    prior = problem.initial_prior()
    mean0 = prior.mean()[0]
    var0 = prior.variance()[0]
    q2, r2 = problem.process_scale ** 2, problem.noise_scale ** 2

    def step(carry, inputs):
        m, p = carry
        y, x = inputs
        p = p + q2
        h = m / 2.0
        s = h * h * p + r2
        gain = p * h / s
        m = m + gain * (y - squared_measurement(m))
        p = (1.0 - gain * h) * p
        return (m, p), -norm.logpdf(x, m, jnp.sqrt(p))

    _, nll = jax.lax.scan(step, (mean0, var0), (observations, states))
    return nll


def particle_filter(key, problem: TrackingProblem, observations, states, particles: int = 1000):
    """Bootstrap particle filter (systematic resampling every step); NLL of the true state per step."""
    prior = problem.initial_prior()
    k0, k1, key = jax.random.split(key, 3)
    component = jax.random.categorical(k0, prior.logits, shape=(particles,))
    x = prior.means[component, 0] + jax.random.normal(k1, (particles,))
    q, r = problem.process_scale, problem.noise_scale

    def step(x, inputs):
        y, truth, k = inputs
        k_move, k_resample = jax.random.split(k)
        moved = x + q * jax.random.normal(k_move, x.shape)
        log_w = norm.logpdf(y, squared_measurement(moved), r)
        log_evidence = jax.nn.logsumexp(log_w) - jnp.log(particles)
        log_density = (norm.logpdf(y, squared_measurement(truth), r)
                       + jax.nn.logsumexp(norm.logpdf(truth, x, q)) - jnp.log(particles) - log_evidence)
        cumulative = jnp.cumsum(jax.nn.softmax(log_w))
        positions = (jax.random.uniform(k_resample) + jnp.arange(particles)) / particles
        x = moved[jnp.minimum(jnp.searchsorted(cumulative, positions), particles - 1)]
        return x, -log_density

    keys = jax.random.split(key, observations.shape[0])
    _, nll = jax.lax.scan(step, x, (observations, states, keys))
    return nll


def grid_filter(problem: TrackingProblem, observations, states, points: int = 1500, half_width: float = 25.0):
    """The exact filter on a uniform grid (reference: the best NLL any filter can expect)."""
    grid = jnp.linspace(-half_width, half_width, points)
    dx = grid[1] - grid[0]
    kernel = norm.pdf(grid[:, None], grid[None, :], problem.process_scale) * dx
    density = jnp.exp(problem.initial_prior().log_prob(grid[:, None]))

    def step(density, inputs):
        y, x = inputs
        density = kernel @ density
        density = density * norm.pdf(y, squared_measurement(grid), problem.noise_scale)
        density = density / (jnp.sum(density) * dx)
        return density, -jnp.log(jnp.interp(x, grid, density) + 1e-30)

    _, nll = jax.lax.scan(step, density, (observations, states))
    return nll


def _timed(fn, *args, repeats: int = 3):
    compiled = jax.jit(fn).lower(*args).compile()
    out = jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t0)
    return np.asarray(out), float(np.median(times))


def compare_filters(network, problem: TrackingProblem, key, *, trajectories: int = 200, particles: int = 1000):
    """Every filter on the same ``trajectories`` simulated trajectories: mean NLL per step (and its standard error
    over trajectories) and the wall time to filter all of them (compiled, median of 3)."""
    k_sim, k_pf = jax.random.split(key)
    states, observations = problem.simulate(k_sim, trajectories)
    pf_keys = jax.random.split(k_pf, trajectories)
    runs = {
        "dt": _timed(jax.vmap(lambda y, x: distribution_transformer_filter(network, problem, y, x)),
                     observations, states),
        "ekf": _timed(jax.vmap(lambda y, x: extended_kalman_filter(problem, y, x)), observations, states),
        "pf": _timed(jax.vmap(lambda k, y, x: particle_filter(k, problem, y, x, particles)), pf_keys,
                     observations, states),
        "grid": _timed(jax.vmap(lambda y, x: grid_filter(problem, y, x)), observations, states),
    }
    out = {}
    for name, (nll, seconds) in runs.items():
        per_trajectory = nll.mean(1)
        out[f"{name}_nll"] = float(per_trajectory.mean())
        out[f"{name}_nll_se"] = float(per_trajectory.std(ddof=1) / np.sqrt(trajectories))
        out[f"{name}_nll_median_trajectory"] = float(np.median(per_trajectory))
        out[f"{name}_nll_worst_trajectory"] = float(per_trajectory.max())
        out[f"{name}_seconds"] = seconds
    out.update(trajectories=trajectories, steps=problem.steps, particles=particles)
    return out
