r"""Samplers for diffusion models, each one ``jax.lax.scan`` over its steps, jit-compatible, counting network
evaluations (NFE).

A sampler asks a *predictor* for :math:`\hat\varepsilon(x_t, t)`; a predictor is any object with

* ``init(x) -> state`` (any pytree; ``None`` for stateless predictors), and
* ``__call__(x, t, state) -> (eps, state, nfe)``: the prediction for the batch ``x`` at the scalar time ``t``,
  the new state, and the network evaluations *per sample* this call cost (an int, possibly traced).

:func:`predictor` wraps a plain function ``eps_fn(x, t)``; :func:`conditional` and :func:`cfg` wrap a
:class:`~pplvi.diffusion.Diffusion` (classifier-free guidance costs two evaluations a step). Guidance rules
(:mod:`pplvi.diffusion.guidance`) are predictors with state.

Samplers (all return :class:`Samples` with the final ``x`` and the total NFE per sample):

* :func:`ddpm` — ancestral sampling from the reverse posteriors :math:`q(x_s \mid x_t, \hat x_0)` (Ho et al. 2020).
* :func:`ddim` — Song, Meng & Ermon (2021), with stochasticity ``eta`` (0: deterministic, 1: DDPM's posterior).
* :func:`heun` — the probability-flow ODE in the variance-exploding variables :math:`y = x/\sqrt{\bar\alpha}`,
  :math:`\sigma`, by Heun's second-order method on Karras et al.'s (2022) :math:`\sigma` grid (EDM Algorithm 1).
* :func:`dpm_solver_pp` — DPM-Solver++(2M) (Lu et al. 2022), multistep second order in :math:`\log\sigma`.

Every sampler ends with the denoised :math:`\hat x_0` at the last noise level (``t_min`` of the schedule).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from pplvi import PPLVIError
from pplvi.diffusion.schedules import Schedule


class Samples(NamedTuple):
    x: jax.Array
    nfe: jax.Array  # network evaluations per sample


class FunctionPredictor:
    """A stateless predictor from ``eps_fn(x, t) -> eps`` costing ``nfe`` evaluations a call."""

    def __init__(self, eps_fn, nfe: int = 1):
        self.eps_fn, self.nfe = eps_fn, int(nfe)

    def init(self, x):
        return None

    def __call__(self, x, t, state):
        return self.eps_fn(x, t), state, jnp.asarray(self.nfe, jnp.int32)


def predictor(eps_fn, nfe: int = 1) -> FunctionPredictor:
    """Wrap ``eps_fn(x, t) -> eps`` (a batch, a scalar time) as a predictor."""
    return FunctionPredictor(eps_fn, nfe)


def conditional(model, labels=None) -> FunctionPredictor:
    """The model's own prediction for ``labels`` (``None``: unconditional, the null token); 1 NFE a step."""
    return FunctionPredictor(lambda x, t: model.eps(x, t, labels), 1)


def cfg(model, labels, w: float) -> FunctionPredictor:
    r"""Classifier-free guidance (Ho & Salimans 2022): :math:`\hat\varepsilon = \hat\varepsilon_u +
    w(\hat\varepsilon_c - \hat\varepsilon_u)`. ``w = 1`` is the conditional model, ``w = 0`` the unconditional
    one. Two evaluations per step (one batched call over ``[x, x]``)."""

    def eps_fn(x, t):
        n = x.shape[0]
        lab = jnp.broadcast_to(jnp.asarray(labels, jnp.int32), (n,))
        both = model.eps(jnp.concatenate([x, x]), t, jnp.concatenate([lab, jnp.full((n,), model.null_label)]))
        e_c, e_u = both[:n], both[n:]
        return e_u + w * (e_c - e_u)

    return FunctionPredictor(eps_fn, 2)


def _as_predictor(p):
    if hasattr(p, "init") and callable(p):
        return p
    if callable(p):
        return FunctionPredictor(p)
    raise PPLVIError(f"sampler: expected a predictor or a function eps_fn(x, t), got {type(p).__name__}")


def _x0(x, eps, t, schedule):
    a, s = schedule.signal_noise(t)
    return (x - s * eps) / a


def _check_steps(name, steps):
    if int(steps) < 1:
        raise PPLVIError(f"{name}: steps must be >= 1, got {steps}")


def uniform_times(schedule: Schedule, steps: int):
    """``steps`` times from 1 down to ``t_min``, equally spaced (``steps - 1`` transitions, then the final
    :math:`\\hat x_0` at ``t_min``)."""
    return jnp.linspace(1.0, schedule.t_min, max(int(steps), 2))


def karras_times(schedule: Schedule, steps: int, rho: float = 7.0):
    """``steps + 1`` times whose noise levels follow Karras et al.'s spacing from :math:`\\sigma(1)` to
    :math:`\\sigma(t_{\\min})`."""
    hi, lo = schedule.sigma(1.0), schedule.sigma(schedule.t_min)
    r = jnp.linspace(0.0, 1.0, steps + 1)
    sig = (hi ** (1 / rho) + r * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    return jnp.clip(schedule.t_of_sigma(sig), schedule.t_min, 1.0).at[0].set(1.0).at[-1].set(schedule.t_min)


def prior_sample(key, schedule: Schedule, shape):
    """:math:`x_1 \\sim \\mathcal N(0, I)`, the variance-preserving prior (exact as :math:`\\bar\\alpha(1) \\to 0`)."""
    del schedule
    return jax.random.normal(key, shape)


def _uniform_time_sampler(name, key, pred, schedule, shape, steps, x_init, transition) -> Samples:
    """The loop shared by DDIM and DDPM: ``steps`` uniform times, ``transition(x, x0_hat, eps, t, s, key)`` from
    ``t`` to the next time ``s``, then :math:`\\hat x_0` at ``t_min``."""
    _check_steps(name, steps)
    pred = _as_predictor(pred)
    k0, key = jax.random.split(key)
    x = prior_sample(k0, schedule, shape) if x_init is None else x_init
    ts = uniform_times(schedule, steps)

    def step(carry, inp):
        x, state, nfe = carry
        t, s, k = inp
        eps, state, n = pred(x, t, state)
        return (transition(x, _x0(x, eps, t, schedule), eps, t, s, k), state, nfe + n), None

    keys = jax.random.split(key, len(ts) - 1)
    (x, state, nfe), _ = jax.lax.scan(step, (x, pred.init(x), jnp.int32(0)), (ts[:-1], ts[1:], keys))
    eps, _, n = pred(x, ts[-1], state)
    return Samples(_x0(x, eps, ts[-1], schedule), nfe + n)


def ddim(key, pred, schedule: Schedule, shape, steps: int = 50, eta: float = 0.0, x_init=None) -> Samples:
    r"""DDIM: from :math:`t` to :math:`s < t`,

    .. math:: x_s = a_s \hat x_0 + \sqrt{s_s^2 - \varsigma^2}\,\hat\varepsilon + \varsigma z,\quad
              \varsigma = \eta \sqrt{(1 - \bar\alpha_s)/(1 - \bar\alpha_t)}\sqrt{1 - \bar\alpha_t/\bar\alpha_s}."""

    def transition(x, x0, eps, t, s, k):
        ab_t, ab_s = schedule.alpha_bar(t), schedule.alpha_bar(s)
        var = eta**2 * (1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s)
        x = jnp.sqrt(ab_s) * x0 + jnp.sqrt(jnp.maximum(1 - ab_s - var, 0.0)) * eps
        return x + jnp.sqrt(var) * jax.random.normal(k, x.shape)

    return _uniform_time_sampler("ddim", key, pred, schedule, shape, steps, x_init, transition)


def ancestral_step(key, x, x0, t, s, schedule: Schedule):
    r"""One ancestral step from time :math:`t` to :math:`s < t`: a draw of :math:`q(x_s \mid x_t, \hat x_0)`, the
    Gaussian with mean :math:`\frac{a_{t|s} s_s^2}{s_t^2} x_t + \frac{a_s \sigma_{t|s}^2}{s_t^2}\hat x_0` and
    variance :math:`\sigma_{t|s}^2 s_s^2 / s_t^2`, where :math:`a_{t|s} = a_t/a_s`, :math:`\sigma_{t|s}^2 = s_t^2
    - a_{t|s}^2 s_s^2` (Kingma et al. 2021's notation)."""
    ab_t, ab_s = schedule.alpha_bar(t), schedule.alpha_bar(s)
    a_ts2 = ab_t / ab_s
    var_ts = (1 - ab_t) - a_ts2 * (1 - ab_s)
    mean = jnp.sqrt(a_ts2) * (1 - ab_s) / (1 - ab_t) * x + jnp.sqrt(ab_s) * var_ts / (1 - ab_t) * x0
    return mean + jnp.sqrt(var_ts * (1 - ab_s) / (1 - ab_t)) * jax.random.normal(key, x.shape)


def ddpm(key, pred, schedule: Schedule, shape, steps: int = 1000, x_init=None) -> Samples:
    r"""Ancestral sampling (:func:`ancestral_step` at every step); the last step returns :math:`\hat x_0`."""

    def transition(x, x0, eps, t, s, k):
        return ancestral_step(k, x, x0, t, s, schedule)

    return _uniform_time_sampler("ddpm", key, pred, schedule, shape, steps, x_init, transition)


def _denoiser(pred, schedule):
    """``D(y, sigma, state) -> (x0_hat, state, nfe)`` in the variance-exploding variables."""

    def D(y, t, state):
        a = jnp.sqrt(schedule.alpha_bar(t))
        eps, state, n = pred(a * y, t, state)
        return y - schedule.sigma(t) * eps, state, n

    return D


def heun(key, pred, schedule: Schedule, shape, steps: int = 18, x_init=None) -> Samples:
    r"""Deterministic Heun integration of the probability-flow ODE :math:`dy/d\sigma = (y - D(y, \sigma))/\sigma`
    (Karras et al. 2022, Algorithm 1) over ``steps`` intervals of the Karras grid, then :math:`\hat x_0` at
    :math:`\sigma(t_{\min})`: ``2 * steps + 1`` evaluations."""
    _check_steps("heun", steps)
    pred = _as_predictor(pred)
    x = prior_sample(key, schedule, shape) if x_init is None else x_init
    ts = karras_times(schedule, steps)
    D = _denoiser(pred, schedule)
    y = x / jnp.sqrt(schedule.alpha_bar(ts[0]))

    def step(carry, inp):
        y, state, nfe = carry
        t, s = inp
        sig_t, sig_s = schedule.sigma(t), schedule.sigma(s)
        d0, state, n0 = D(y, t, state)
        d = (y - d0) / sig_t
        y1 = y + (sig_s - sig_t) * d
        d1, state, n1 = D(y1, s, state)
        y = y + (sig_s - sig_t) * 0.5 * (d + (y1 - d1) / sig_s)
        return (y, state, nfe + n0 + n1), None

    (y, state, nfe), _ = jax.lax.scan(step, (y, pred.init(x), jnp.int32(0)), (ts[:-1], ts[1:]))
    x0, _, n = D(y, ts[-1], state)
    return Samples(x0, nfe + n)


def dpm_solver_pp(key, pred, schedule: Schedule, shape, steps: int = 20, x_init=None) -> Samples:
    r"""DPM-Solver++(2M) (Lu et al. 2022) on the Karras grid: with :math:`h_i = \log(\sigma_{i}/\sigma_{i+1})`,
    :math:`r = h_{i-1}/h_i` and :math:`D_i = \hat x_0` at step :math:`i`,

    .. math:: y_{i+1} = \tfrac{\sigma_{i+1}}{\sigma_i} y_i + (1 - \tfrac{\sigma_{i+1}}{\sigma_i})
              \big[(1 + \tfrac{1}{2r}) D_i - \tfrac{1}{2r} D_{i-1}\big]

    (first order at the first step), then :math:`\hat x_0` at :math:`\sigma(t_{\min})`: ``steps + 1`` evaluations."""
    _check_steps("dpm_solver_pp", steps)
    pred = _as_predictor(pred)
    x = prior_sample(key, schedule, shape) if x_init is None else x_init
    ts = karras_times(schedule, steps)
    D = _denoiser(pred, schedule)
    y = x / jnp.sqrt(schedule.alpha_bar(ts[0]))
    sig = schedule.sigma(ts)
    h = jnp.log(sig[:-1] / sig[1:])
    h_prev = jnp.concatenate([h[:1], h[:-1]])

    def step(carry, inp):
        y, d_prev, state, nfe = carry
        t, s_t, s_s, h_i, h_p, first = inp
        d, state, n = D(y, t, state)
        r = h_p / h_i
        d_mix = jnp.where(first, d, (1 + 1 / (2 * r)) * d - 1 / (2 * r) * d_prev)
        y = (s_s / s_t) * y + (1 - s_s / s_t) * d_mix
        return (y, d, state, nfe + n), None

    first = jnp.arange(steps) == 0
    init = (y, jnp.zeros_like(y), pred.init(x), jnp.int32(0))
    (y, _, state, nfe), _ = jax.lax.scan(step, init, (ts[:-1], sig[:-1], sig[1:], h, h_prev, first))
    x0, _, n = D(y, ts[-1], state)
    return Samples(x0, nfe + n)


SAMPLERS = {"ddpm": ddpm, "ddim": ddim, "heun": heun, "dpm_solver_pp": dpm_solver_pp}


def sample(name: str, key, pred, schedule: Schedule, shape, steps: int, **kwargs) -> Samples:
    """A sampler by name (``"ddpm"``, ``"ddim"``, ``"heun"``, ``"dpm_solver_pp"``)."""
    if name not in SAMPLERS:
        raise PPLVIError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}")
    return SAMPLERS[name](key, pred, schedule, shape, steps=steps, **kwargs)
