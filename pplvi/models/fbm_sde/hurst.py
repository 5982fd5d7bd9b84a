r"""Learning the Hurst index of noisy fBM observations by the variational objective (Daems et al., ICLR 2024, the
Hurst-index experiment).

Data: ``paths`` exact paths of :math:`\sigma_\star B^{H_\star}` (standard fBM, :func:`~pplvi.models.fbm_sde.exact.
sample_fbm`) on :math:`[0, T]`, observed at ``observations`` equally spaced times with Gaussian noise of std
``noise``. Model: :math:`dX = \sigma\,d\hat B^H_t`, :math:`X_0 = 0`, with :math:`H = \mathrm{sigmoid}(\text{raw})`
and :math:`\sigma = e^{\log\sigma}` learned; posterior: the controlled augmented SDE with a
:class:`~pplvi.models.fbm_sde.sde.LinearFeedbackControl` whose offsets are separate per path and whose rate is one
over the time to the next observation plus :func:`rate_floor`, started from a learned Gaussian initial OU state
:class:`~pplvi.models.fbm_sde.sde.InitialOUPosterior` (type I; means separate per path, KL to the stationary prior
in the ELBO), on an Euler grid refined towards every observation (a uniform grid's one-step noise floor biases the
ELBO's maximizer towards smooth paths: with 8 uniform substeps the best possible drift-only posterior puts the
maximizer at H = 0.48 for data with H = 0.2, 16 paths; the drift-only family's gap on the uniform parts of the
grid is about proportional to the step and larger for rough H, hence 16 substeps by default). Keeping the prior's
initial state instead costs :math:`\mathrm{KL}(p(Y_0) \| p(Y_0 \mid o))` nats
(:func:`~pplvi.models.fbm_sde.linear.initial_state_gap`: 27.5 at H = 0.8, 26.0 at H = 0.2, 0.26 at H = 0.5 for 64
paths, seed 0, sigma = 1), a gap that grows with :math:`|H - 1/2|` and pulled the learned H towards 1/2 (0.738 for
data with H = 0.8).
:func:`hurst_elbo` is the ELBO summed over paths (averaged over particles) and :func:`fit_hurst` maximizes it over
the model and the posterior together; :func:`baselines` gives the exact-fBM and Markov-model maximum-likelihood
estimates from the same data.
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
from pplvi.models.fbm_sde.exact import fbm_log_likelihood, sample_fbm
from pplvi.models.fbm_sde.linear import family_gap, initial_state_gap, log_likelihood
from pplvi.models.fbm_sde.markov import MarkovFBM, check_hurst, hurst_from_raw, raw_from_hurst
from pplvi.models.fbm_sde.sde import (
    InitialOUPosterior,
    LinearFeedbackControl,
    refined_steps,
    solve,
    time_to_go_rate,
)


class HurstProblem(eqx.Module):
    """Data and discretization of a Hurst-recovery run (see the module docstring). The Euler grid has ``substeps``
    uniform steps per observation interval, refined geometrically towards every observation
    (:func:`~pplvi.models.fbm_sde.sde.refined_steps` with ``refine_ratio`` and ``dt_min``; ``refine_ratio=None``:
    uniform)."""

    hurst: float
    paths: int = 64
    observations: int = 32
    substeps: int = 16
    refine_ratio: float | None = 0.5
    dt_min: float = 1e-4
    T: float = 1.0
    scale: float = 1.0
    noise: float = 0.1
    K: int = 7
    gamma_max: float = 50.0
    kind: str = "I"
    seed: int = 0

    def __check_init__(self):
        check_hurst(self.hurst)

    @property
    def observation_times(self) -> np.ndarray:
        return np.arange(1, self.observations + 1) * self.T / self.observations

    @property
    def dts(self) -> np.ndarray:
        """The step sizes, ``(steps,)``."""
        coarse = self.T / (self.observations * self.substeps)
        if self.refine_ratio is None:
            return np.full(self.observations * self.substeps, coarse)
        return refined_steps(self.observation_times, coarse, self.refine_ratio, self.dt_min)

    @property
    def steps(self) -> int:
        return len(self.dts)

    @property
    def observation_steps(self) -> np.ndarray:
        """The grid indices of the observation times."""
        times = np.concatenate([[0.0], np.cumsum(self.dts)])
        return np.searchsorted(times, self.observation_times - 1e-9)

    @property
    def driver(self) -> MarkovFBM:
        return MarkovFBM(self.K, self.T, self.kind, self.gamma_max)

    def data(self) -> np.ndarray:
        """``(paths, observations)`` noisy observations at ``t_j = j T / observations``, ``j = 1..``, float32."""
        clean = sample_fbm(self.seed, self.observation_times, self.hurst, self.paths, self.scale)
        rng = np.random.default_rng(self.seed + 1)
        return (clean + self.noise * rng.standard_normal(clean.shape)).astype(np.float32)


class FractionalBrownianModel(eqx.Module):
    """The model's parameters (``raw_hurst``, ``log_scale``) and the posterior's: the control and the initial OU
    state's law ``start`` (``None``: the prior's, as for a type II driver)."""

    raw_hurst: jax.Array
    log_scale: jax.Array
    control: LinearFeedbackControl
    start: InitialOUPosterior | None = None

    @property
    def hurst(self):
        return hurst_from_raw(self.raw_hurst)


def initial_model(problem: HurstProblem, hurst: float = 0.5, scale: float = 1.0,
                  learn_start: bool = True) -> FractionalBrownianModel:
    """The model at ``(hurst, scale)`` with the prior as posterior (zero control; ``learn_start`` and a type I driver:
    an :class:`~pplvi.models.fbm_sde.sde.InitialOUPosterior` at the prior, one mean per path)."""
    rate = time_to_go_rate(problem.observation_steps, problem.steps, problem.dts,
                           rate_floor(problem, jnp.asarray(hurst), jnp.asarray(np.log(scale))))
    control = LinearFeedbackControl.zeros(problem.steps, 1, problem.K, batch=(problem.paths,), rate=rate)
    start = InitialOUPosterior.prior(problem.K, 1, (problem.paths,)) if learn_start and problem.kind == "I" else None
    return FractionalBrownianModel(jnp.asarray(raw_from_hurst(hurst)), jnp.asarray(np.log(scale)), control, start)


def rate_floor(problem: HurstProblem, hurst, log_scale):
    r""":math:`\min(s^2 / (\sigma \bar\omega(H))^2, \Delta_{\rm obs} / 4)`: the time scale below which the posterior
    control stops growing towards an observation (:func:`~pplvi.models.fbm_sde.sde.time_to_go_rate`), at most a
    quarter of the observation spacing (smooth noise steers through its slow OU modes, not by a last-moment kick);
    no gradient."""
    w_bar = jnp.sum(problem.driver.weights(hurst))
    floor = problem.noise ** 2 / (jnp.exp(log_scale) * w_bar) ** 2 + 1e-12
    return jax.lax.stop_gradient(jnp.minimum(floor, 0.25 * problem.T / problem.observations))


def hurst_elbo(problem: HurstProblem, particles: int = 2) -> pplvi.Objective:
    r"""The ELBO :math:`\sum_{\text{paths}} \big(\mathbb E_Q[\sum_j \log \mathcal N(o_j; X_{t_j}, s^2) - \int
    \frac12 u^2 dt] - \mathrm{KL}(q(Y_0) \| p(Y_0))\big)`, each expectation averaged over ``particles`` posterior
    paths (the KL term is absent when ``model.start`` is None: then :math:`q(Y_0) = p(Y_0)`). Call as
    ``objective(model, data)`` with ``data`` ``(paths, observations)``."""
    driver = problem.driver
    obs_index = problem.observation_steps

    @pplvi.objective
    def fbm_hurst_elbo(model, data):
        scale = jnp.exp(model.log_scale)
        # the control's rate follows the model (a reparameterization of the same affine family, without gradient)
        rate = time_to_go_rate(obs_index, problem.steps, problem.dts,
                               rate_floor(problem, model.hurst, model.log_scale))
        control = eqx.tree_at(lambda c: c.rate, model.control, rate.astype(model.control.rate.dtype))
        x0 = jnp.zeros((particles, problem.paths, 1))
        y0 = None if model.start is None else model.start.sample(driver, x0.shape)
        path = solve(driver, model.hurst, lambda t, x: jnp.zeros_like(x), lambda t, x: scale * jnp.ones_like(x),
                     x0, dt=problem.dts, steps=problem.steps, control=control, y0=y0)
        at_obs = path.xs[obs_index, :, :, 0]  # (observations, particles, paths)
        log_lik = dist.Normal(at_obs, problem.noise).log_prob(data.T[:, None, :]).sum(0)
        start_kl = 0.0 if model.start is None else jnp.sum(model.start.kl())
        return jnp.sum(jnp.mean(log_lik - path.path_kl, 0)) - start_kl

    return fbm_hurst_elbo


def fit_hurst(problem: HurstProblem, *, steps: int = 3000, warmup: int = 1000, particles: int = 2, lr: float = 2e-2,
              model_lr: float | None = None, seed: int = 0, learn_start: bool = True,
              progress: bool | None = None) -> dict:
    """Fit :math:`H`, :math:`\\sigma` and the posterior on ``problem.data()`` from :math:`H = 0.5`, :math:`\\sigma
    = 1`: first ``warmup`` steps train the posterior alone (the model frozen: an untrained posterior's ELBO favours
    smooth paths and would drag :math:`H` up), then ``steps`` steps train everything, the model with the smaller
    learning rate ``model_lr`` (default ``lr``) so that the posterior keeps up with it (a lagging posterior biases
    the ELBO's maximizer in :math:`H`). ``learn_start=False`` keeps the prior's initial OU state (the posterior
    family before the initial-state posterior was added; for comparison). Returns the learned values."""
    t0 = time.perf_counter()
    data = jnp.asarray(problem.data())
    objective = hurst_elbo(problem, particles)
    model = initial_model(problem, learn_start=learn_start)
    if warmup:
        only_posterior = jax.tree_util.tree_map(lambda _: True, model)
        only_posterior = eqx.tree_at(lambda m: (m.raw_hurst, m.log_scale), only_posterior, (False, False))
        model = pplvi.fit(objective, model, data=(data,), optimizer=optax.adam(lr), steps=warmup,
                          trainable=only_posterior, key=jax.random.key(seed + 1), progress=progress,
                          desc=f"posterior warm-up H={problem.hurst}").params

    def labels(tree):
        out = jax.tree_util.tree_map(lambda _: "posterior", tree)
        return eqx.tree_at(lambda m: (m.raw_hurst, m.log_scale), out, ("model", "model"))

    optimizer = optax.multi_transform(
        {"posterior": optax.adam(optax.cosine_decay_schedule(lr, steps, 0.05)),
         "model": optax.adam(optax.cosine_decay_schedule(lr if model_lr is None else model_lr, steps, 0.05))},
        labels)
    result = pplvi.fit(objective, model, data=(data,), optimizer=optimizer, steps=steps, key=jax.random.key(seed),
                       progress=progress, desc=f"Hurst recovery H={problem.hurst}")
    return {
        "true": problem.hurst,
        "learned": float(result.params.hurst),
        "learned_scale": float(jnp.exp(result.params.log_scale)),
        "elbo_last_100": float(np.nanmean(result.history["objective"][-100:])),
        "seconds": round(time.perf_counter() - t0, 1),
        "model": result.params,
    }


def _grid_argmax(score, hursts, scales) -> tuple[float, float]:
    values = np.array([[score(h, s) for s in scales] for h in hursts])
    i, j = np.unravel_index(np.argmax(values), values.shape)
    return float(hursts[i]), float(scales[j])


def best_control_elbo(problem: HurstProblem, hurst: float, scale: float) -> float:
    """The ELBO of the best posterior of the trained family (drift-only control, learned Gaussian initial OU state)
    at the model ``(hurst, scale)`` on ``problem.data()``: the exact log-likelihood of the discretized model minus
    :func:`~pplvi.models.fbm_sde.linear.family_gap` per path (a learned initial state closes the initial-state part
    of the gap, :func:`prior_start_gap`). A trained ELBO below it measures how far the posterior is from its
    optimum."""
    data = problem.data().astype(np.float64)
    obs = problem.observation_steps
    return (log_likelihood(problem.driver, hurst, scale, problem.dts, obs, data, problem.noise)
            - problem.paths * family_gap(problem.driver, hurst, scale, problem.dts, obs, problem.noise))


def prior_start_gap(problem: HurstProblem, hurst: float, scale: float) -> float:
    """How much lower the best ELBO at the model ``(hurst, scale)`` would be if the posterior kept the prior's
    initial OU state (``learn_start=False``): :func:`~pplvi.models.fbm_sde.linear.initial_state_gap` on
    ``problem.data()``, nats summed over paths."""
    return initial_state_gap(problem.driver, hurst, scale, problem.dts, problem.observation_steps,
                             problem.data().astype(np.float64), problem.noise)


def baselines(problem: HurstProblem, hursts=None, scales=None) -> dict:
    r"""What the data and the model allow, by grid search over :math:`(H, \sigma)` on ``problem.data()``:

    * ``fbm_mle``: the maximum-likelihood :math:`H` under the exact fBM covariance (the data-size limit);
    * ``markov_mle``: the maximizer of the exact likelihood of the Euler-discretized Markov-approximate model
      (:func:`~pplvi.models.fbm_sde.linear.log_likelihood`): the best a variational fit of this model can do;
    * ``best_control_elbo_argmax``: the maximizer of that likelihood minus the smallest ELBO gap of a drift-only
      posterior on the grid (:func:`~pplvi.models.fbm_sde.linear.family_gap`): where the variational objective
      peaks when the posterior is trained to its optimum."""
    data = problem.data().astype(np.float64)
    hursts = np.round(np.arange(0.05, 0.96, 0.01), 2) if hursts is None else np.asarray(hursts)
    scales = np.exp(np.linspace(np.log(0.5), np.log(2.0), 29)) if scales is None else np.asarray(scales)
    fbm = _grid_argmax(lambda h, s: fbm_log_likelihood(data, problem.observation_times, h, s, problem.noise),
                       hursts, scales)
    near = hursts[(np.abs(hursts - problem.hurst) <= 0.12 + 1e-9) & (np.round(hursts * 100) % 2 == 0)]
    coarse = scales[::2]
    driver, obs = problem.driver, problem.observation_steps

    def markov(h, s):
        return log_likelihood(driver, h, s, problem.dts, obs, data, problem.noise)

    def best_elbo(h, s):
        return markov(h, s) - problem.paths * family_gap(driver, h, s, problem.dts, obs, problem.noise)

    return {"fbm_mle": fbm[0], "markov_mle": _grid_argmax(markov, near, coarse)[0],
            "best_control_elbo_argmax": _grid_argmax(best_elbo, near, coarse)[0]}
