r"""Feynman–Kac correctors: sequential Monte Carlo that makes a geometric / product combination of score models
sample the combination of its *noised* marginals exactly (as the step size goes to zero and the particle count
grows), after Skreta et al. (2025), "Feynman-Kac Correctors in Diffusion: Annealing, Guidance, and Product of
Experts" (ICML).

**Target.** Models :math:`k = 1..K` with noised marginals :math:`p_{k,t}` (scores :math:`s_k = \nabla\log
p_{k,t}`) and real weights :math:`c_k` (``weights``) define the unnormalized path

.. math:: \gamma_t(x) = \prod_k p_{k,t}(x)^{c_k} = e^{\phi_t(x)},\qquad \nabla\phi_t = s = \textstyle\sum_k c_k s_k.

RLG (:class:`pplvi.diffusion.guidance.RLG`) is :math:`c = (1 - w, w)` for (reference, fine-tuned); classifier-free
guidance is (unconditional, conditional) with the same weights; a product of experts is :math:`c = (1, 1)`. Plain
guided sampling follows the score :math:`s` and therefore samples neither :math:`\gamma_t` nor, at the end,
:math:`\gamma_0`: :math:`\gamma_t` is not the noised :math:`\gamma_0` and is not transported by the reverse SDE
of :math:`s`. Weights correct this.

**Derivation of the weights.** The forward (noising) SDE of a variance-preserving schedule is :math:`dx = f(t)\,x\,dt
+ g(t)\,dB`, :math:`f = \tfrac12\,d\log\bar\alpha/dt`, :math:`g^2 = -d\log\bar\alpha/dt` (so :math:`f = -g^2/2`).
Each :math:`p_{k,t}` solves its Fokker–Planck equation, which for :math:`\log p` reads

.. math:: \partial_t \log p = -d\,f - f\,x\cdot\nabla\log p + \tfrac{g^2}{2}\big(\Delta\log p +
          |\nabla\log p|^2\big)

(:math:`d` the dimension), so with :math:`C = \sum_k c_k`

.. math:: \partial_t \phi = -C d f - f\,x\cdot s + \tfrac{g^2}{2}\textstyle\sum_k c_k(\Delta\log p_k + |s_k|^2).

We simulate in reverse time :math:`u = 1 - t` the SDE :math:`dx = b\,du + g\,dW` with the *proposal* drift
:math:`b = -f x + g^2 r`, :math:`r = \sum_k \rho_k s_k` (``proposal_weights``; by default :math:`\rho = c`, i.e.
:math:`r = s`: the reverse SDE that plain guided DDPM sampling discretizes). Particles carry log-weights
:math:`\log w` with :math:`d\log w = G\,du`; the weighted empirical measure then solves
:math:`\partial_u\mu = -\nabla\cdot(b\mu) + \tfrac{g^2}{2}\Delta\mu + G\mu` (the Feynman–Kac formula), and
:math:`\mu_u \propto \gamma_{1-u}` holds for all :math:`u` iff :math:`\gamma` solves the same equation, i.e.

.. math:: G = \partial_u\phi + \nabla\cdot b + b\cdot\nabla\phi - \tfrac{g^2}{2}(\Delta\phi + |\nabla\phi|^2).

Substituting (:math:`\partial_u = -\partial_t`, :math:`\nabla\cdot b = -d f + g^2\nabla\cdot r`,
:math:`\Delta\phi = \sum_k c_k\Delta\log p_k`), the :math:`f\,x\cdot s` terms cancel and

.. math:: G = (C - 1)\,d\,f + g^2\,\nabla\cdot(r - s) + \tfrac{g^2}{2}\Big(2\,r\cdot s - |s|^2 - \sum_k c_k
          |s_k|^2\Big).

With the target score as drift (:math:`r = s`) the divergences cancel and

.. math:: G = (C - 1)\,d\,f + \tfrac{g^2}{2}\Big(\big|\textstyle\sum_k c_k s_k\big|^2 - \sum_k c_k |s_k|^2\Big),

which for RLG (:math:`c = (1-w, w)`) is :math:`G = \tfrac{g^2}{2}\,w(w-1)\,|s_{\rm rl} - s_{\rm ref}|^2`: zero at
:math:`w \in \{0, 1\}` (a true noised marginal needs no correction), negative for :math:`0 < w < 1`, positive for
extrapolation :math:`w > 1`. Only a proposal drift that differs from the target score (e.g. the fine-tuned model
alone, one network evaluation a step instead of two) needs score divergences: exactly by forward-mode Jacobian
traces (:math:`d` Jacobian-vector products, low dimension), or Hutchinson's estimator
:math:`\mathbb E_v[v^\top J v]` with Rademacher :math:`v` (``divergence="hutchinson"``; the weight increments are
then unbiased but :math:`e^{\log w}` is not, so the correction is approximate).

**Discretization.** Times are :func:`~pplvi.diffusion.uniform_times` (``steps`` points from 1 to ``t_min``, as
:func:`~pplvi.diffusion.ddpm`) or a given grid (``times``, e.g. :func:`log_snr_times`); the move from :math:`t`
to :math:`t'` is DDPM's ancestral step with
:math:`\hat x_0` from the proposal score (a discretization of the reverse SDE above; with ``proposal_weights``
unset it is exactly :func:`~pplvi.diffusion.ddpm` run on the combined prediction). Because :math:`\int g^2\,du =
\log(\bar\alpha_{t'}/\bar\alpha_t) =: L` over a step and :math:`\int f\,du = -L/2`, the increment is integrated by
the trapezoid rule in :math:`L`: point :math:`i` gets :math:`G_i/g^2` times :math:`(L_{i-1} + L_i)/2`. At
:math:`t = 1` every :math:`p_{k,1}` is taken to be :math:`\mathcal N(0, I)` (exact as :math:`\bar\alpha(1)\to
0`), so :math:`\gamma_1 = \mathcal N(0, I)^C = \mathcal N(0, I/C)\cdot Z_1` with :math:`\log Z_1 =
\tfrac d2[(1 - C)\log 2\pi - \log C]` (so ``weights`` must sum to :math:`C > 0`): particles start as exact draws
from :math:`\mathcal N(0, I/C)` with equal weights (importance weights from :math:`\mathcal N(0, I)` would have
infinite variance for :math:`C < 1`). Order at each time: weight, then systematic resampling when
the effective sample size :math:`(\sum w)^2/\sum w^2` falls below ``ess_threshold * N``, then move; at ``t_min``
the particles are denoised with Tweedie's formula under the target score, as the samplers do, and resampled once
more. The product of the mean weights at the resampling times estimates
:math:`Z = \int\gamma_{t_{\min}}` together with :math:`Z_1` (``log_normalizer``); e.g. for RLG with
:math:`p_{\rm rl} \propto p_{\rm ref} e^{r/\beta}`,
:math:`Z = \mathbb E_{\rm ref}[e^{w r/\beta}] / \mathbb E_{\rm ref}[e^{r/\beta}]^w`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

from pplvi import PPLVIError
from pplvi.diffusion.analytic import GaussianMixture
from pplvi.diffusion.model import Diffusion
from pplvi.diffusion.samplers import ancestral_step, prior_sample, uniform_times
from pplvi.diffusion.schedules import Schedule

DIVERGENCES = ("exact", "hutchinson")


class FKSamples(NamedTuple):
    """What :func:`feynman_kac_sample` returns.

    * ``x`` ``(N, *event)``: the particles after the final resampling (equally weighted samples of the target).
    * ``log_normalizer``: the estimate of :math:`\\log\\int\\gamma_{t_{\\min}}`.
    * ``ess`` ``(steps,)``: the effective sample size as a fraction of ``N`` at each time, before resampling.
    * ``resampled`` ``(steps,)``: whether the particles were resampled at that time (the last always is).
    * ``particles``, ``log_weights``: the weighted particles before the final resampling (normalized log-weights),
      lower-variance for expectations.
    * ``nfe``: score-model evaluations per particle (Jacobian-vector products for divergences counted as one).
    """

    x: jax.Array
    log_normalizer: jax.Array
    ess: jax.Array
    resampled: jax.Array
    particles: jax.Array
    log_weights: jax.Array
    nfe: jax.Array


def score_function(source, schedule: Schedule):
    r"""``score(x, t)`` for a batch from ``source``: a :class:`~pplvi.diffusion.GaussianMixture` (its exact score),
    a :class:`~pplvi.diffusion.Diffusion` (unconditional), a stateless predictor (``init`` returning ``None``, e.g.
    :func:`~pplvi.diffusion.predictor` or :meth:`GaussianMixture.predictor`) or a function ``eps(x, t)``; noise
    predictions become scores by :math:`\nabla\log p_t = -\hat\varepsilon / s_t`."""
    if isinstance(source, GaussianMixture):
        return lambda x, t: source.score(x, t, schedule)

    def from_eps(eps_fn):
        return lambda x, t: -eps_fn(x, t) / schedule.signal_noise(t)[1]

    if isinstance(source, Diffusion):
        return from_eps(lambda x, t: source.eps(x, t, None))
    if hasattr(source, "init") and callable(source):
        def eps_fn(x, t):
            state = source.init(x)
            if state is not None:
                raise PPLVIError(f"feynman_kac_sample: the predictor {type(source).__name__} keeps state; particles "
                                 "are resampled, so only stateless predictors (init -> None) can be used")
            return source(x, t, state)[0]

        return from_eps(eps_fn)
    if callable(source):
        return from_eps(source)
    raise PPLVIError(f"feynman_kac_sample: expected a GaussianMixture, Diffusion, predictor or function eps(x, t), "
                     f"got {type(source).__name__}")


def _divergence(score, x, t, method, key):
    """:math:`\\nabla\\cdot` ``score(., t)`` at each particle: exact (one JVP per event dimension) or Hutchinson."""
    event = x.shape[1:]
    d = math.prod(event)
    if method == "hutchinson":
        v = jax.random.rademacher(key, x.shape, x.dtype)
        jv = jax.jvp(lambda y: score(y, t), (x,), (v,))[1]
        return jnp.sum((v * jv).reshape(x.shape[0], -1), -1)
    basis = jnp.eye(d, dtype=x.dtype).reshape((d, 1) + event)

    def diag(e):
        e = jnp.broadcast_to(e, x.shape)
        return jnp.sum((e * jax.jvp(lambda y: score(y, t), (x,), (e,))[1]).reshape(x.shape[0], -1), -1)

    return jnp.sum(jax.vmap(diag)(basis), 0)


def _systematic(key, log_w):
    """Systematic resampling: ``N`` ancestor indices for normalized-or-not log-weights ``log_w``."""
    n = log_w.shape[0]
    w = jnp.exp(log_w - logsumexp(log_w))
    u = (jax.random.uniform(key) + jnp.arange(n)) / n
    return jnp.clip(jnp.searchsorted(jnp.cumsum(w), u), 0, n - 1)


def _ess_fraction(log_w):
    return jnp.exp(2 * logsumexp(log_w) - logsumexp(2 * log_w)) / log_w.shape[0]


def _static_weights(name, values, k):
    try:
        out = [float(v) for v in values]
    except (TypeError, jax.errors.ConcretizationTypeError) as e:
        raise PPLVIError(f"feynman_kac_sample: {name} must be {k} Python numbers, got {values!r}") from e
    if len(out) != k or not all(math.isfinite(v) for v in out):
        raise PPLVIError(f"feynman_kac_sample: {name} must be {k} finite numbers (one per model), got {values!r}")
    return out


def feynman_kac_sample(key, models, weights, schedule: Schedule, shape, steps: int = 200, *,
                       proposal_weights=None, ess_threshold: float = 0.5, divergence: str = "exact",
                       times=None, check: bool = True) -> FKSamples:
    r"""Sample :math:`\gamma_0 \propto \prod_k p_k^{c_k}` (``weights`` :math:`c`) with ``shape[0]`` particles by the
    Feynman–Kac corrected reverse SDE described in the module docstring; ``models`` are score sources (see
    :func:`score_function`), ``shape = (N, *event)``, ``steps`` times from 1 to ``t_min`` (``steps - 1`` moves).
    ``proposal_weights`` (default: ``weights``) combine the scores for the drift; when they differ, score
    divergences enter the weights (``divergence="exact"`` or the approximate ``"hutchinson"``).
    ``ess_threshold`` in [0, 1]: resample when the ESS fraction falls below it (0: only at the end). ``check``
    raises :class:`~pplvi.PPLVIError` if the weights became non-finite (skipped when traced). ``times``: a
    decreasing grid from 1 to ``t_min`` that replaces ``uniform_times(schedule, steps)`` (``steps`` is then
    ignored); for weights that do not sum to 1 the increments are large where :math:`\log\bar\alpha` moves
    fast (near :math:`t = 1` for the cosine schedule), and a grid uniform in log-SNR (:func:`log_snr_times`)
    needs far fewer steps."""
    models = list(models) if isinstance(models, (list, tuple)) else [models]
    k = len(models)
    if k == 0:
        raise PPLVIError("feynman_kac_sample: need at least one model")
    c = _static_weights("weights", weights, k)
    rho = c if proposal_weights is None else _static_weights("proposal_weights", proposal_weights, k)
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2 or shape[0] < 2 or min(shape) < 1:
        raise PPLVIError(f"feynman_kac_sample: shape must be (num_particles >= 2, *event), got {shape}")
    for m in models:
        if isinstance(m, GaussianMixture) and shape[1:] != (m.dim,):
            raise PPLVIError(f"feynman_kac_sample: a GaussianMixture of dimension {m.dim} needs shape (N, {m.dim}), "
                             f"got {shape}")
    if times is None:
        if int(steps) < 2:
            raise PPLVIError(f"feynman_kac_sample: steps must be >= 2 (one move at least), got {steps}")
        ts = uniform_times(schedule, steps)
    else:
        ts = jnp.asarray(times, jnp.float32)
        if ts.ndim != 1 or ts.shape[0] < 2 or not bool(jnp.all(jnp.diff(ts) < 0)) or float(ts[0]) > 1.0:
            raise PPLVIError(f"feynman_kac_sample: times must be a decreasing 1-D grid (at least 2 times, the first "
                             f"<= 1), got shape {ts.shape}")
    if not 0.0 <= float(ess_threshold) <= 1.0:
        raise PPLVIError(f"feynman_kac_sample: ess_threshold must be in [0, 1], got {ess_threshold}")
    if divergence not in DIVERGENCES:
        raise PPLVIError(f"feynman_kac_sample: divergence must be one of {DIVERGENCES}, got {divergence!r}")

    scores = [score_function(m, schedule) for m in models]
    n, event = shape[0], shape[1:]
    dim = math.prod(event)
    total = sum(c)
    if total <= 0:
        raise PPLVIError(f"feynman_kac_sample: the weights must sum to a positive number C (gamma_1 = N(0, I)^C is "
                         f"then the normalizable N(0, I / C)), got {c} (sum {total})")
    log_z1 = 0.5 * dim * ((1.0 - total) * math.log(2 * math.pi) - math.log(total))  # log of the integral of gamma_1
    div_models = [(j, rho[j] - c[j]) for j in range(k) if rho[j] != c[j]]
    log_ab = jnp.log(schedule.alpha_bar(ts))
    dl = log_ab[1:] - log_ab[:-1]  # L_i = int g^2 du over move i
    quad = 0.5 * (jnp.concatenate([jnp.zeros(1), dl]) + jnp.concatenate([dl, jnp.zeros(1)]))
    per_div = 1 if divergence == "hutchinson" else dim
    nfe = jnp.int32(len(ts) * (k + per_div * len(div_models)))

    def flat_dot(a, b):
        return jnp.sum((a * b).reshape(n, -1), -1)

    def evaluate(x, t, kd):
        """(target score s, proposal score r, G / g^2 per particle) at time t."""
        sk = [f(x, t) for f in scores]
        s = sum(cj * sj for cj, sj in zip(c, sk))
        r = s if proposal_weights is None else sum(rj * sj for rj, sj in zip(rho, sk))
        rate = 0.5 * (2 * flat_dot(r, s) - flat_dot(s, s) - sum(cj * flat_dot(sj, sj) for cj, sj in zip(c, sk)))
        rate = rate - 0.5 * (total - 1.0) * dim  # (C - 1) d f with f = -g^2 / 2
        for (j, coef), kj in zip(div_models, jax.random.split(kd, max(len(div_models), 1))):
            rate = rate + coef * _divergence(scores[j], x, t, divergence, kj)
        return s, r, rate

    def reweight_resample(x, r, log_w, log_z, rate, h, kr):
        log_w = log_w + h * rate
        ess = _ess_fraction(log_w)
        do = ess < ess_threshold
        idx = jnp.where(do, _systematic(kr, log_w), jnp.arange(n))
        log_z = jnp.where(do, log_z + logsumexp(log_w) - jnp.log(n), log_z)
        log_w = jnp.where(do, jnp.zeros_like(log_w), log_w)
        return x[idx], r[idx], log_w, log_z, ess, do

    def move(x, r, t, t_next, kz):
        ab_t = schedule.alpha_bar(t)
        x0 = (x + (1 - ab_t) * r) / jnp.sqrt(ab_t)  # Tweedie with the proposal score
        return ancestral_step(kz, x, x0, t, t_next, schedule)

    def run(key):
        k0, key = jax.random.split(key)  # the same noise stream as pplvi.diffusion.ddpm
        k_resample = jax.random.fold_in(key, 1)
        x = prior_sample(k0, schedule, shape) / math.sqrt(total)  # exact draws from gamma_1 ∝ N(0, I / C)
        log_w = jnp.zeros(n, x.dtype)
        move_keys = jax.random.split(key, len(ts) - 1)
        aux = jax.random.split(k_resample, (len(ts), 2))  # per time: divergence probes, resampling

        def step(carry, inp):
            x, log_w, log_z = carry
            t, t_next, h, kz, ka = inp
            _, r, rate = evaluate(x, t, ka[0])
            x, r, log_w, log_z, ess, do = reweight_resample(x, r, log_w, log_z, rate, h, ka[1])
            return (move(x, r, t, t_next, kz), log_w, log_z), (ess, do)

        inputs = (ts[:-1], ts[1:], quad[:-1], move_keys, aux[:-1])
        (x, log_w, log_z), (ess, done) = jax.lax.scan(step, (x, log_w, jnp.full((), log_z1, x.dtype)), inputs)
        s, r, rate = evaluate(x, ts[-1], aux[-1][0])
        log_w = log_w + quad[-1] * rate
        ab = schedule.alpha_bar(ts[-1])
        particles = (x + (1 - ab) * s) / jnp.sqrt(ab)  # Tweedie with the target score, as the samplers end
        ess_last = _ess_fraction(log_w)
        log_z = log_z + logsumexp(log_w) - jnp.log(n)
        idx = _systematic(aux[-1][1], log_w)
        return FKSamples(particles[idx], log_z, jnp.append(ess, ess_last), jnp.append(done, True), particles,
                         log_w - logsumexp(log_w), nfe)

    out = jax.jit(run)(key)
    if check and not isinstance(out.log_normalizer, jax.core.Tracer):
        bad = ~jnp.isfinite(out.ess)
        if bool(jnp.any(bad)) or not bool(jnp.isfinite(out.log_normalizer)):
            i = int(jnp.argmax(bad)) if bool(jnp.any(bad)) else len(ts) - 1
            raise PPLVIError(f"feynman_kac_sample: the log-weights became non-finite at step {i} (t = "
                             f"{float(ts[i]):.4g}); check the models' scores there (weights {c}, proposal {rho})")
    return out


def log_snr_times(schedule: Schedule, steps: int):
    r"""``steps`` times from 1 to ``t_min`` equally spaced in the log signal-to-noise ratio :math:`\lambda(t)`."""
    if int(steps) < 2:
        raise PPLVIError(f"log_snr_times: steps must be >= 2, got {steps}")
    lam = jnp.linspace(schedule.log_snr(1.0), schedule.log_snr(schedule.t_min), int(steps))
    t = schedule.t_of_sigma(jnp.exp(-0.5 * lam))
    return jnp.clip(t, schedule.t_min, 1.0).at[0].set(1.0).at[-1].set(schedule.t_min)


def rlg_feynman_kac(key, rule, schedule: Schedule, shape, steps: int = 200, **kwargs) -> FKSamples:
    r"""The Feynman–Kac corrected sampler for an :class:`~pplvi.diffusion.guidance.RLG` rule: weights
    :math:`(1 - w, w)` on its (reference, fine-tuned) predictors, so that it samples :math:`p_{\rm ref}^{1-w}
    p_{\rm rl}^{w}` at :math:`t_{\min}` (with the KL-optimal fine-tune, :math:`p_{\rm ref}\,e^{w r/\beta}`).
    ``kwargs`` go to :func:`feynman_kac_sample`."""
    for name in ("reference", "fine_tuned", "w"):
        if not hasattr(rule, name):
            raise PPLVIError(f"rlg_feynman_kac: expected an RLG rule (with reference, fine_tuned, w), got "
                             f"{type(rule).__name__}")
    w = float(rule.w)
    return feynman_kac_sample(key, [rule.reference, rule.fine_tuned], [1.0 - w, w], schedule, shape, steps,
                              **kwargs)


__all__ = ["DIVERGENCES", "FKSamples", "feynman_kac_sample", "log_snr_times", "rlg_feynman_kac", "score_function"]
