r"""Guidance rules for conditional diffusion sampling, each a *predictor* (see :mod:`pplvi.diffusion.samplers`):

* ``init(x) -> state`` and ``__call__(x, t, state) -> (eps, state, nfe)``,

so every sampler (:func:`~pplvi.diffusion.ddim`, :func:`~pplvi.diffusion.ddpm`, :func:`~pplvi.diffusion.heun`,
:func:`~pplvi.diffusion.dpm_solver_pp`) runs every rule inside its ``lax.scan`` under ``jit``. A rule asks a
:class:`Denoiser` for the predictions it needs at a step (conditional, unconditional, another model's), combines them
in its declared parameterization space (:attr:`space`: ``"eps"``, ``"x0"`` or ``"v"``; the result is returned as
:math:`\hat\varepsilon`), keeps what it must remember in ``state`` (momentum, switch flags, history) and reports the
network evaluations *per sample* the step cost. The counts are exact: a rule that skips an evaluation at run time
(:class:`AdaptiveGuidance`, :class:`LinearAG`) skips the computation too (``lax.cond``) and reports 1 instead of 2.

Rules (the update rule of each paper is in its docstring):

* :class:`CFG` — classifier-free guidance, Ho & Salimans (2022).
* :class:`APG` — adaptive projected guidance, Sadat, Hilliges & Weber (2024), "Eliminating Oversaturation and
  Artifacts of High Guidance Scales in Diffusion Models".
* :class:`AdaptiveGuidance` and :class:`LinearAG` — Castillo et al. (2023), "Adaptive Guidance: Training-free
  Acceleration of Conditional Diffusion Models"; :func:`fit_linear_ag` fits LinearAG's affine maps.
* :class:`RLG` — reinforcement-learning guidance, "Inference-Time Alignment Control for Diffusion Models with
  Reinforcement Learning Guidance": a geometric mix of a reference and a reward-fine-tuned model;
  :func:`reward_weighted_objective` is the fine-tuning objective (reward-weighted regression) as a pplvi objective.

Denoisers: :func:`denoiser` adapts a class-conditional :class:`~pplvi.diffusion.Diffusion` (labels per sample, the
null token for the unconditional prediction; conditional and unconditional predictions in one batched call, exactly
as :func:`pplvi.diffusion.cfg`) or an exactly known :class:`~pplvi.diffusion.GaussianMixture` with component labels
(one label for the batch).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as nd

import pplvi
from pplvi import PPLVIError
from pplvi.diffusion.analytic import GaussianMixture
from pplvi.diffusion.model import PREDICTIONS, Diffusion
from pplvi.diffusion.samplers import predictor, uniform_times

# ----------------------------------------------------------------------------------------------------------------
# Denoisers: where the predictions come from
# ----------------------------------------------------------------------------------------------------------------


class Denoiser:
    """Conditional and unconditional noise predictions of one model, batch in, batch out, with the schedule that
    converts between parameterizations. Subclasses implement :meth:`conditional` and :meth:`unconditional`;
    :meth:`both` may batch the two into one call (2 NFE either way)."""

    schedule = None

    def conditional(self, x, t, labels):
        raise NotImplementedError

    def unconditional(self, x, t):
        raise NotImplementedError

    def both(self, x, t, labels):
        """``(eps_c, eps_u)``: 2 network evaluations per sample."""
        return self.conditional(x, t, labels), self.unconditional(x, t)

    def to_space(self, eps, x, t, space: str):
        """:math:`\\hat\\varepsilon` -> the prediction in ``space`` (``t`` a scalar)."""
        if space == "eps":
            return eps
        a, s = self.schedule.signal_noise(t)
        x0 = (x - s * eps) / a
        return x0 if space == "x0" else a * eps - s * x0

    def from_space(self, pred, x, t, space: str):
        """The prediction ``pred`` in ``space`` -> :math:`\\hat\\varepsilon`."""
        if space == "eps":
            return pred
        a, s = self.schedule.signal_noise(t)
        return (x - a * pred) / s if space == "x0" else s * x + a * pred


class ModelDenoiser(Denoiser):
    """A class-conditional :class:`~pplvi.diffusion.Diffusion`; ``labels`` an int or ``(B,)``; the unconditional
    prediction uses the null token."""

    def __init__(self, model: Diffusion):
        if model.num_classes < 1:
            raise PPLVIError("guidance: the diffusion model is not class-conditional (num_classes = 0)")
        self.model, self.schedule = model, model.schedule

    def _labels(self, labels, n):
        return jnp.broadcast_to(jnp.asarray(labels, jnp.int32), (n,))

    def conditional(self, x, t, labels):
        return self.model.eps(x, t, self._labels(labels, x.shape[0]))

    def unconditional(self, x, t):
        return self.model.eps(x, t, None)

    def both(self, x, t, labels):
        n = x.shape[0]
        lab = self._labels(labels, n)
        out = self.model.eps(jnp.concatenate([x, x]), t, jnp.concatenate([lab, jnp.full((n,), self.model.null_label)]))
        return out[:n], out[n:]


class MixtureDenoiser(Denoiser):
    """The exact denoiser of a labelled :class:`~pplvi.diffusion.GaussianMixture` under ``schedule``; ``labels`` is
    one class for the whole batch (the class-conditional model is the mixture of that class's components)."""

    def __init__(self, mixture: GaussianMixture, schedule):
        if mixture.labels is None:
            raise PPLVIError("guidance: the Gaussian mixture carries no component labels (pass labels=...)")
        self.mixture, self.schedule = mixture, schedule

    def conditional(self, x, t, labels):
        if jnp.ndim(labels) != 0:
            raise PPLVIError(f"guidance: a Gaussian-mixture denoiser takes one label per batch, got shape "
                             f"{jnp.shape(labels)}")
        return self.mixture.eps(x, t, self.schedule, labels)

    def unconditional(self, x, t):
        return self.mixture.eps(x, t, self.schedule)


def denoiser(source, schedule=None) -> Denoiser:
    """A :class:`Denoiser` for a class-conditional ``Diffusion``, a labelled ``GaussianMixture`` (with its
    ``schedule``), or a :class:`Denoiser` (returned as is)."""
    if isinstance(source, Denoiser):
        return source
    if isinstance(source, Diffusion):
        return ModelDenoiser(source)
    if isinstance(source, GaussianMixture):
        if schedule is None:
            raise PPLVIError("guidance: a GaussianMixture needs the schedule (denoiser(mixture, schedule))")
        return MixtureDenoiser(source, schedule)
    raise PPLVIError(f"guidance: cannot make a denoiser from {type(source).__name__}; pass a class-conditional "
                     "pplvi.diffusion.Diffusion, a labelled GaussianMixture with a schedule, or a Denoiser")


def _check_space(space):
    if space not in PREDICTIONS:
        raise PPLVIError(f"guidance: space must be one of {PREDICTIONS}, got {space!r}")
    return space


def _per_sample(fn, a):
    """Reduce over every axis but the batch axis, keeping dims for broadcasting."""
    return fn(a, axis=tuple(range(1, a.ndim)), keepdims=True)


# ----------------------------------------------------------------------------------------------------------------
# Rules
# ----------------------------------------------------------------------------------------------------------------


class CFG:
    r"""Classifier-free guidance (Ho & Salimans 2022) in ``space`` (default ``"eps"``):

    .. math:: \hat f = f_u + w\,(f_c - f_u),

    with :math:`f` the conditional / unconditional prediction in that space. ``w = 1``: the conditional model;
    ``w = 0``: the unconditional one. 2 NFE per step (one batched call for a diffusion model). Because the maps
    between spaces are affine in the prediction for fixed :math:`x_t`, all spaces give the same
    :math:`\hat\varepsilon` up to rounding."""

    nfe_per_step = 2

    def __init__(self, source, labels, w: float, space: str = "eps", schedule=None):
        self.denoiser, self.labels, self.w, self.space = denoiser(source, schedule), labels, w, _check_space(space)

    def init(self, x):
        return None

    def __call__(self, x, t, state):
        x, t = _fence((x, t))
        e_c, e_u = self.denoiser.both(x, t, self.labels)
        if self.space == "eps":
            return _fence(e_u + self.w * (e_c - e_u)), state, jnp.int32(2)
        d = self.denoiser
        f_c, f_u = d.to_space(e_c, x, t, self.space), d.to_space(e_u, x, t, self.space)
        return d.from_space(f_u + self.w * (f_c - f_u), x, t, self.space), state, jnp.int32(2)


class APG:
    r"""Adaptive projected guidance (Sadat, Hilliges & Weber 2024), in the denoised space (``x0``) by default.

    With the conditional and unconditional denoised predictions :math:`D_c, D_u` at a step:

    1. guidance update :math:`\Delta D_t = D_c - D_u`;
    2. reverse momentum (``momentum`` :math:`\beta`, negative in the paper): :math:`\bar D_t = \Delta D_t + \beta
       \bar D_{t-1}` (:math:`\bar D = 0` before the first step), and :math:`\Delta D_t \leftarrow \bar D_t`;
    3. rescaling (``rescale`` :math:`r`, ``None``: off): :math:`\Delta D_t \leftarrow \Delta D_t \min(1,
       r/\|\Delta D_t\|)`;
    4. projection on the conditional prediction: :math:`\Delta D^\parallel = \frac{\langle \Delta D_t, D_c\rangle}
       {\langle D_c, D_c\rangle} D_c`, :math:`\Delta D^\perp = \Delta D_t - \Delta D^\parallel`;
    5. :math:`\hat D = D_c + (w - 1)(\Delta D^\perp + \eta\,\Delta D^\parallel)`.

    Norms and inner products are per sample over all its coordinates. With ``eta = 1``, no rescaling and no
    momentum, :math:`\hat D = D_u + w (D_c - D_u)`: classifier-free guidance. The paper's defaults are ``eta = 0``
    and a negative ``momentum``. 2 NFE per step; the state is the momentum buffer :math:`\bar D`. ``w``, ``eta``,
    ``rescale`` and ``momentum`` may be traced values (one compilation for a sweep; ``rescale = inf`` is off)."""

    nfe_per_step = 2

    def __init__(self, source, labels, w: float, eta: float = 0.0, rescale: float | None = None,
                 momentum: float = 0.0, space: str = "x0", schedule=None):
        if isinstance(rescale, (int, float)) and rescale <= 0:
            raise PPLVIError(f"APG: rescale (the norm threshold r) must be positive or None, got {rescale}")
        self.denoiser, self.labels, self.w = denoiser(source, schedule), labels, w
        self.eta, self.rescale, self.momentum, self.space = eta, rescale, momentum, _check_space(space)

    def init(self, x):
        return jnp.zeros_like(x)

    def __call__(self, x, t, running):
        d = self.denoiser
        e_c, e_u = d.both(x, t, self.labels)
        f_c, f_u = d.to_space(e_c, x, t, self.space), d.to_space(e_u, x, t, self.space)
        delta = f_c - f_u
        if not (isinstance(self.momentum, (int, float)) and self.momentum == 0):  # may be traced
            delta = delta + self.momentum * running
            running = delta
        if self.rescale is not None:
            norm = jnp.sqrt(_per_sample(jnp.sum, delta**2))
            delta = delta * jnp.minimum(1.0, self.rescale / jnp.maximum(norm, 1e-30))
        unit = f_c / jnp.sqrt(jnp.maximum(_per_sample(jnp.sum, f_c**2), 1e-30))
        parallel = _per_sample(jnp.sum, delta * unit) * unit
        orthogonal = delta - parallel
        guided = f_c + (self.w - 1.0) * (orthogonal + self.eta * parallel)
        return d.from_space(guided, x, t, self.space), running, jnp.int32(2)


def _fence(eps):
    """Keep XLA from fusing the sampler's arithmetic with a rule's inputs and output. Fusion decisions differ
    between a plain computation and one inside ``lax.cond``; with the fences, rules that compute the same numbers
    (CFG and Adaptive Guidance before it switches) produce the same bits under every sampler."""
    return jax.lax.optimization_barrier(eps)


def _cosine(a, b):
    num = _per_sample(jnp.sum, a * b)
    den = jnp.sqrt(_per_sample(jnp.sum, a * a) * _per_sample(jnp.sum, b * b))
    return jnp.clip(num / jnp.maximum(den, 1e-30), -1.0, 1.0).reshape(a.shape[0])


class AdaptiveGuidance:
    r"""Adaptive Guidance (Castillo et al. 2023): classifier-free guidance until the conditional and unconditional
    noise predictions align, then conditional steps only.

    At each guided step, :math:`\gamma_t = \cos(\hat\varepsilon_c, \hat\varepsilon_u)` per sample; once
    :math:`\gamma_t > \bar\gamma` (``threshold``; the paper uses values near 0.99) the sample's later steps use
    :math:`\hat\varepsilon_c` alone. The step that passes the threshold is still a CFG step (its two evaluations are
    already made). The state is the per-sample switch flags. A step costs 1 NFE (the conditional call only, the
    unconditional half is not computed) once *every* sample of the batch has switched, else 2; samples that switched
    while others have not use :math:`\hat\varepsilon_c`. ``space`` is where the cosine is measured (the paper:
    ``"eps"``; on pixel-space models whose noise predictions are dominated by :math:`x_t` early on, ``"x0"``
    discriminates better). ``threshold = 1`` never switches (cosines are clipped to
    [-1, 1] and the test is strict), and then every step is bit-for-bit :class:`CFG`'s."""

    nfe_per_step = 2

    def __init__(self, source, labels, w: float, threshold: float = 0.991, space: str = "eps", schedule=None):
        self.denoiser, self.labels, self.w, self.threshold = denoiser(source, schedule), labels, w, threshold
        self.space = _check_space(space)

    def init(self, x):
        return jnp.zeros((x.shape[0],), bool)

    def __call__(self, x, t, switched):
        d = self.denoiser
        x, t = _fence((x, t))

        def guided(switched):
            e_c, e_u = d.both(x, t, self.labels)
            cfg = e_u + self.w * (e_c - e_u)
            eps = jnp.where(switched.reshape((-1,) + (1,) * (x.ndim - 1)), e_c, cfg)
            f_c, f_u = d.to_space(e_c, x, t, self.space), d.to_space(e_u, x, t, self.space)
            return eps, switched | (_cosine(f_c, f_u) > self.threshold), jnp.int32(2)

        def conditional_only(switched):
            return d.conditional(x, t, self.labels), switched, jnp.int32(1)

        eps, switched, nfe = jax.lax.cond(jnp.all(switched), conditional_only, guided, switched)
        return _fence(eps), switched, nfe


class LinearAG:
    r"""LinearAG (Castillo et al. 2023): on the calls marked in ``replace`` the unconditional prediction is not
    computed but estimated as an affine function of the current conditional prediction and the last ``history``
    steps' conditional and unconditional predictions (estimated ones included),

    .. math:: \tilde\varepsilon_u(t_i) = c_{i,0}\,\hat\varepsilon_c(t_i) + \sum_{j=1}^{L} \big(c_{i,2j-1}
              \hat\varepsilon_c(t_{i-j}) + c_{i,2j}\,\hat\varepsilon_u(t_{i-j})\big) + b_i,

    with per-call scalar coefficients fitted by least squares on recorded CFG trajectories (:func:`fit_linear_ag`);
    then the usual :math:`\hat\varepsilon_u + w(\hat\varepsilon_c - \hat\varepsilon_u)`. Replaced calls cost 1 NFE,
    others 2. The state is the call counter and the last ``history`` predictions. ``coefficients``: ``(calls,
    2 L + 2)`` (the last column is :math:`b_i`), ``replace``: ``(calls,)`` bools; calls past the table are CFG."""

    nfe_per_step = 2

    def __init__(self, source, labels, w: float, coefficients, replace, schedule=None):
        coefficients, replace = jnp.asarray(coefficients, jnp.float32), jnp.asarray(replace, bool)
        if coefficients.ndim != 2 or coefficients.shape[1] % 2 or coefficients.shape[0] != replace.shape[0]:
            raise PPLVIError(f"LinearAG: coefficients must be (calls, 2*history + 2) and replace (calls,), got "
                             f"{coefficients.shape} and {replace.shape}")
        self.denoiser, self.labels, self.w = denoiser(source, schedule), labels, w
        self.coefficients, self.replace = coefficients, replace
        self.history = (coefficients.shape[1] - 2) // 2

    def init(self, x):
        past = jnp.zeros((self.history, 2) + x.shape, x.dtype)
        return jnp.int32(0), past

    def __call__(self, x, t, state):
        i, past = state
        d, calls = self.denoiser, self.replace.shape[0]
        row = self.coefficients[jnp.minimum(i, calls - 1)]
        use_fit = (i < calls) & self.replace[jnp.minimum(i, calls - 1)]

        def estimated(_):
            e_c = d.conditional(x, t, self.labels)
            e_u = row[0] * e_c + row[-1]
            for j in range(self.history):
                e_u = e_u + row[2 * j + 1] * past[j, 0] + row[2 * j + 2] * past[j, 1]
            return e_c, e_u, jnp.int32(1)

        def evaluated(_):
            e_c, e_u = d.both(x, t, self.labels)
            return e_c, e_u, jnp.int32(2)

        e_c, e_u, nfe = jax.lax.cond(use_fit, estimated, evaluated, None)
        if self.history:
            past = jnp.concatenate([jnp.stack([e_c, e_u])[None], past[:-1]])
        return e_u + self.w * (e_c - e_u), (i + 1, past), nfe


def linear_ag_features(e_c, past):
    """The regressors of :class:`LinearAG` for one call: ``(n_values, 2 L + 2)`` columns (current conditional,
    then each past step's conditional and unconditional, then 1)."""
    cols = [e_c.reshape(-1)]
    for j in range(past.shape[0]):
        cols += [past[j, 0].reshape(-1), past[j, 1].reshape(-1)]
    cols.append(jnp.ones_like(cols[0]))
    return jnp.stack(cols, 1)


def fit_linear_ag(source, labels, w: float, shape, key, steps: int = 25, history: int = 1, replace=None,
                  schedule=None):
    r"""Fit :class:`LinearAG`'s coefficients by ordinary least squares on DDIM (``eta = 0``) trajectories of
    :class:`CFG` with scale ``w`` from ``shape`` prior draws: for each call :math:`i` the regression of the
    evaluated :math:`\hat\varepsilon_u(t_i)` (every coordinate of every sample a row) on the regressors of
    :func:`linear_ag_features`. ``replace`` (default: every other call of the first half, as in the paper's
    finding that the early half has the most redundancy) marks the calls LinearAG estimates; returns
    ``(coefficients, replace)`` for ``ddim(..., steps=steps)`` (``steps`` calls)."""
    d = denoiser(source, schedule)
    ts = uniform_times(d.schedule, steps)
    calls = len(ts)
    if replace is None:
        replace = np.zeros(calls, bool)
        replace[1 : calls // 2 : 2] = True
    replace = np.asarray(replace, bool)
    if replace.shape != (calls,):
        raise PPLVIError(f"fit_linear_ag: replace must have {calls} entries (one per DDIM call), got {replace.shape}")
    x = jax.random.normal(key, shape)
    past = jnp.zeros((history, 2) + tuple(shape), x.dtype)
    rows = []

    @jax.jit
    def call(x, t, s, past):
        e_c, e_u = d.both(x, t, labels)
        feats = linear_ag_features(e_c, past)
        coef = jnp.linalg.lstsq(feats, e_u.reshape(-1))[0]
        eps = e_u + w * (e_c - e_u)
        a_t, s_t = d.schedule.signal_noise(t)
        a_s, s_s = d.schedule.signal_noise(s)
        x_next = a_s * (x - s_t * eps) / a_t + s_s * eps
        if history:
            past = jnp.concatenate([jnp.stack([e_c, e_u])[None], past[:-1]])
        return x_next, past, coef

    for i in range(calls):
        s = ts[min(i + 1, calls - 1)]
        x, past, coef = call(x, ts[i], s, past)
        rows.append(np.asarray(coef))
    return jnp.asarray(np.stack(rows)), jnp.asarray(replace)


def as_predictor(p):
    """``p`` if it is a predictor (has ``init``), else the plain function ``eps(x, t)`` wrapped at 1 NFE."""
    if hasattr(p, "init") and callable(p):
        return p
    if callable(p):
        return predictor(p, 1)
    raise PPLVIError(f"guidance: expected a predictor or a function eps(x, t), got {type(p).__name__}")


class RLG:
    r"""Reinforcement-learning guidance: with a reference model's prediction :math:`\hat\varepsilon_{\rm ref}` and a
    reward-fine-tuned model's :math:`\hat\varepsilon_{\rm rl}`,

    .. math:: \hat\varepsilon = \hat\varepsilon_{\rm ref} + w\,(\hat\varepsilon_{\rm rl} - \hat\varepsilon_{\rm ref}),

    the score of the geometric mix :math:`p_{\rm ref}^{1-w} p_{\rm rl}^{w}`. If the fine-tune reaches the
    KL-regularized optimum :math:`p_{\rm rl} \propto p_{\rm ref}\, e^{r/\beta}`, the mix targets
    :math:`p_{\rm ref}\,e^{w r/\beta}`: ``w`` dials the alignment strength at inference time (``w = 0`` the
    reference, ``w = 1`` the fine-tuned model, ``w > 1`` extrapolates). ``reference`` and ``fine_tuned`` are
    predictors or functions ``eps(x, t)``; the cost is the sum of theirs (2 NFE for two plain models)."""

    def __init__(self, reference, fine_tuned, w: float):
        self.reference, self.fine_tuned, self.w = as_predictor(reference), as_predictor(fine_tuned), w

    @property
    def nfe_per_step(self):
        return getattr(self.reference, "nfe", 1) + getattr(self.fine_tuned, "nfe", 1)

    def init(self, x):
        return self.reference.init(x), self.fine_tuned.init(x)

    def __call__(self, x, t, state):
        e_ref, s_ref, n_ref = self.reference(x, t, state[0])
        e_rl, s_rl, n_rl = self.fine_tuned(x, t, state[1])
        return e_ref + self.w * (e_rl - e_ref), (s_ref, s_rl), n_ref + n_rl


def reward_weighted_objective(reward, beta: float) -> pplvi.Objective:
    r"""Reward-weighted regression (Peters & Schaal 2007) for a diffusion model, as a pplvi objective
    ``obj(model, x0)`` on reference samples ``x0`` (maximized):

    .. math:: \sum_i \tilde w_i\,\big(-\|\varepsilon_i - \hat\varepsilon(a_{t_i} x_{0,i} + s_{t_i}\varepsilon_i,
              t_i)\|^2\big),\qquad \tilde w_i = \frac{e^{r(x_{0,i})/\beta}}{\sum_j e^{r(x_{0,j})/\beta}},

    whose population optimum is the denoiser of :math:`p_{\rm ref}(x_0)\,e^{r(x_0)/\beta}/Z`, the optimum of the
    KL-regularized reward objective :math:`\mathbb E_p[r] - \beta\,\mathrm{KL}(p\,\|\,p_{\rm ref})`. ``t`` and
    ``eps`` are random choices as in :func:`pplvi.diffusion.denoising_objective`; the model is unconditional (the
    null token). ``reward(x0)`` maps a batch to ``(B,)``."""
    if beta <= 0:
        raise PPLVIError(f"reward_weighted_objective: beta must be positive, got {beta}")

    @pplvi.objective
    def reward_weighted_denoising(model: Diffusion, x0):
        sched = model.schedule
        weights = jax.nn.softmax(jax.lax.stop_gradient(reward(x0)) / beta)

        def one(x):
            t = pplvi.sample("t", nd.Uniform(sched.t_min, 1.0))
            eps = pplvi.sample("eps", nd.Normal(jnp.zeros_like(x), 1.0).to_event(x.ndim))
            a, s = sched.signal_noise(t)
            x_t = a * x + s * eps
            pred = model.convert(model.net(x_t, t, model.null_label), x_t, t, to="eps")
            return -jnp.sum((pred - eps) ** 2)

        return jnp.sum(weights * jax.vmap(one)(x0))

    return reward_weighted_denoising


def tilted_mixture(mixture: GaussianMixture, component_rewards, scale: float) -> GaussianMixture:
    r"""The mixture with weights :math:`\pi_k e^{\text{scale}\cdot r_k}` (renormalized): the exact target of
    :class:`RLG` with ``scale = w / beta`` when the reward is constant :math:`r_k` on each well-separated
    component."""
    logw = jnp.log(mixture.weights) + scale * jnp.asarray(component_rewards)
    return GaussianMixture(jax.nn.softmax(logw), mixture.means, mixture.covs, mixture.labels)


__all__ = [
    "APG", "CFG", "RLG", "AdaptiveGuidance", "Denoiser", "LinearAG", "MixtureDenoiser", "ModelDenoiser",
    "as_predictor", "denoiser", "fit_linear_ag", "linear_ag_features", "reward_weighted_objective", "tilted_mixture",
]
