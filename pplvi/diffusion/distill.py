r"""Score distillation: fitting a generator (free particles, or a one-step network :math:`x = g_\theta(z, y)`) to a
frozen diffusion teacher, as pplvi objectives.

Every objective here draws, per example, a time :math:`t \sim \mathcal U(t_0, t_1)` (site ``"t"``), a noise
:math:`\varepsilon \sim \mathcal N(0, I)` (site ``"eps"``) and, where the guidance scale is random, a scale
:math:`\kappa \sim \mathcal U(\kappa_0, \kappa_1)` (site ``"scale"``); a one-step generator's latent is site
``"z"``. It noises the generator's sample, :math:`x_t = a_t x + s_t \varepsilon`, and ascends the *surrogate*

.. math:: -\tfrac1B \textstyle\sum_i \langle \operatorname{sg}[d_i],\, x_i \rangle,

where :math:`\operatorname{sg}` is ``jax.lax.stop_gradient`` and :math:`d_i` a method's update direction, so the
gradient is exactly :math:`-\tfrac1B\sum_i d_i\,\partial x_i/\partial\theta`: the teacher's Jacobian
:math:`\partial\hat\varepsilon/\partial x_t` is never formed. With :math:`w(t) = s_t^2 = 1 - \bar\alpha_t` (the
weighting of Poole et al.) the directions are

* **SDS** (score distillation sampling; Poole et al. 2022, DreamFusion):
  :math:`d = w(t)\,(\hat\varepsilon^{\kappa}_T(x_t, y) - \varepsilon)`, with the classifier-free guided teacher
  :math:`\hat\varepsilon^\kappa = \hat\varepsilon(x_t, \varnothing) + \kappa(\hat\varepsilon(x_t, y) -
  \hat\varepsilon(x_t, \varnothing))`. Its expectation over :math:`\varepsilon` is :math:`-w\,s_t\,a_t^{-1}`
  times the gradient of a Gaussian-smoothed log density: SDS is mode seeking, every particle climbs to a mode.
* **VSD** (variational score distillation; Wang et al. 2023, ProlificDreamer):
  :math:`d = w(t)\,(\hat\varepsilon^{\kappa}_T(x_t, y) - \hat\varepsilon_F(x_t, y))`, where the *fake* denoiser
  :math:`\hat\varepsilon_F` is trained, in the same objective, by denoising the generator's own (stopped) samples:
  the objective also contains :math:`-\lambda_F \|\hat\varepsilon_F(\operatorname{sg}[x_t], y') -
  \varepsilon\|^2` at the same :math:`(t, \varepsilon)` (when the fake is itself guided, as in PG-SB, its label
  :math:`y'` is replaced by the null token with probability ``p_uncond``, site ``"drop"``, so it learns an
  unconditional branch).
  Because the generator term stops the fake's output and the fake term stops the sample, one gradient of the
  joint objective updates both correctly. At the fixed point :math:`\hat\varepsilon_F = \hat\varepsilon_T`, i.e.
  the generator's noised marginals equal the teacher's (the KL between them is stationary), so the spread of the
  target is kept. The fake denoiser here is :class:`ScoreAdapter`: the frozen teacher's prediction plus a small
  zero-initialised residual network (the role of ProlificDreamer's LoRA: the fake starts as the teacher).
* **DSD** (domain score distillation; Cheng et al. 2024, DreamPolish): guidance toward both the classifier-free
  domain and the variational domain,
  :math:`d = w(t)\,[\lambda_{\text{var}}(\hat\varepsilon_T(x_t, y) - \hat\varepsilon_F(x_t, y)) +
  \lambda_{\text{cfg}}(\hat\varepsilon_T(x_t, y) - \hat\varepsilon_T(x_t, \varnothing))]`. The first term is VSD's
  distribution matching, the second the classifier-free direction (:math:`\propto -\nabla\log p_t(y\mid x_t)`,
  mode seeking: it pushes samples to where their class is most distinguishable at every noise level). With
  :math:`\lambda_{\text{cfg}} = 0` this is VSD; the ratio :math:`\lambda_{\text{cfg}}/\lambda_{\text{var}}` sets
  where the result sits between VSD's spread and SDS's collapse.
* **PG-SB** (proper guidance SwiftBrush; Nguyen et al. 2024, SNOOPI): VSD with one random scale
  :math:`\kappa \sim \mathcal U(\kappa_0, \kappa_1)` applied to *both* branches,
  :math:`d = w(t)\,(\hat\varepsilon^{\kappa}_T - \hat\varepsilon^{\kappa}_F)`, so the fake needs its
  unconditional branch (hence ``p_uncond > 0``).
* **NASA** (negative-away steer attention; SNOOPI) is training-free: at sampling time a one-step generator's
  conditioning is steered away from a negative prompt. SNOOPI subtracts the cross-attention output of the negative
  prompt, :math:`\mathrm{CA}(Q, K_+, V_+) - \alpha\,\mathrm{CA}(Q, K_-, V_-)`. Our generators have no attention:
  the class enters every hidden layer as an added embedding :math:`c_\ell(y)` (the analogue of the cross-attention
  output added to the residual stream), and :func:`nasa` replaces it by :math:`c_\ell(y) - \alpha\,c_\ell(y_-)`
  in every layer.

* **DMD** (distribution matching distillation; Yin et al. 2024) is VSD plus a regression of a one-step generator
  onto the teacher's own ODE samples from the same noise (:func:`dmd`, pairs from :func:`teacher_pairs`): the
  regression ties each latent to one teacher sample, which keeps a one-step network out of the mode collapse that
  VSD alone can start in and stay in.

:func:`cluster_variance_ratio` measures collapse on mixtures with known modes.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpyro.distributions as nd

import pplvi
from pplvi import DataError, PPLVIError
from pplvi.diffusion import samplers
from pplvi.diffusion.analytic import GaussianMixture
from pplvi.diffusion.model import Diffusion
from pplvi.diffusion.networks import time_features
from pplvi.diffusion.schedules import Schedule

WEIGHTINGS = ("dreamfusion", "constant")


# --------------------------------------------------------------------------------------------------------------
# teachers


class Teacher(eqx.Module):
    """A frozen noise predictor for batches: ``teacher.eps(x_t, t, labels)`` with ``x_t`` ``(B, *shape)``, ``t``
    ``(B,)`` and ``labels`` ``(B,)`` ints, ``num_classes`` meaning the null token (unconditional). Build with
    :func:`as_teacher`."""

    model: eqx.Module
    schedule: Schedule = eqx.field(static=True)
    num_classes: int = eqx.field(static=True)

    def eps(self, x_t, t, labels):
        return _frozen(self._eps, x_t, t, labels)

    def _eps(self, x_t, t, labels):
        model = self.model
        if isinstance(model, Diffusion):
            return model.eps(x_t, t, labels)
        null = self.num_classes

        def one(x, u, y):  # the exact mixture: the class's components, or all of them for the null token
            cond = model.eps(x[None], u, self.schedule, label=jnp.minimum(y, null - 1))[0]
            uncond = model.eps(x[None], u, self.schedule)[0]
            return jnp.where(y == null, uncond, cond)

        return jax.vmap(one)(x_t, t, labels)


def ring_mixture():
    r"""The 2-D check problem of the distillation benchmark and tests: class 0 is three narrow modes
    (:math:`\sigma = 0.3`) on a circle of radius 2, class 1 a broad :math:`\mathcal N(0, 2^2 I)` background, weights
    (1/6, 1/6, 1/6, 1/2). Mode-seeking objectives (SDS) collapse onto the class-0 modes, VSD keeps their spread.
    Returns ``(mixture, class-0 means (3, 2))``."""
    ang = jnp.deg2rad(jnp.array([90.0, 210.0, 330.0]))
    means = jnp.concatenate([2.0 * jnp.stack([jnp.cos(ang), jnp.sin(ang)], 1), jnp.zeros((1, 2))])
    covs = jnp.concatenate([jnp.tile(0.3**2 * jnp.eye(2), (3, 1, 1)), 2.0**2 * jnp.eye(2)[None]])
    gmm = GaussianMixture(jnp.array([1 / 6, 1 / 6, 1 / 6, 0.5]), means, covs, labels=jnp.array([0, 0, 0, 1]))
    return gmm, means[:3]


def _frozen(fn, *args):
    """``fn(*args)`` with a zero derivative, declared by a custom JVP rule: forward-mode differentiation (pplvi's
    estimators run in forward mode) never enters ``fn``, so neither its Jacobian nor its parameters' tangents are
    ever computed. ``jax.lax.stop_gradient`` alone is not enough for that: its tangent is an explicit zero that the
    teacher's layers would still propagate (and a custom-VJP layer cannot take forward mode at all)."""

    @jax.custom_jvp
    def frozen(*xs):
        return fn(*xs)

    @frozen.defjvp
    def _(primals, tangents):
        out = fn(*primals)
        return out, jax.tree_util.tree_map(jnp.zeros_like, out)

    return frozen(*args)


def as_teacher(model, schedule: Schedule | None = None) -> Teacher:
    """Wrap a trained :class:`~pplvi.diffusion.Diffusion` (its own schedule) or an exact
    :class:`~pplvi.diffusion.GaussianMixture` (``schedule`` required; its component labels are the classes) as a
    :class:`Teacher`. A :class:`Teacher` is returned unchanged."""
    if isinstance(model, Teacher):
        return model
    if isinstance(model, Diffusion):
        if schedule is not None and schedule != model.schedule:
            raise PPLVIError("as_teacher: a Diffusion model carries its own schedule; do not pass another one")
        return Teacher(model, model.schedule, model.num_classes)
    if isinstance(model, GaussianMixture):
        if schedule is None:
            raise PPLVIError("as_teacher: a GaussianMixture teacher needs schedule= (e.g. D.CosineSchedule())")
        if model.labels is None:
            raise PPLVIError(
                "as_teacher: the GaussianMixture's components carry no labels; give labels= (one class per "
                "component) so the teacher has conditional and unconditional predictions"
            )
        return Teacher(model, schedule, int(jnp.max(model.labels)) + 1)
    raise PPLVIError(
        f"as_teacher: expected a pplvi.diffusion.Diffusion or GaussianMixture, got {type(model).__name__}"
    )


# --------------------------------------------------------------------------------------------------------------
# networks: the fake (variational) denoiser and a one-step generator


class ScoreAdapter(eqx.Module):
    r"""The fake denoiser of VSD/DSD/PG-SB as an adapter on the frozen teacher:
    :math:`\hat\varepsilon_F(x_t, t, y) = \operatorname{sg}[\hat\varepsilon_T(x_t, t, y)] + r_\psi(x_t, t, y)` with a
    residual MLP :math:`r_\psi` on ``[flatten(x_t), time features, class embedding]`` whose last layer starts at
    zero, so the fake starts equal to the teacher (as ProlificDreamer's LoRA does)."""

    mlp: eqx.nn.MLP
    label_embedding: eqx.nn.Embedding
    shape: tuple = eqx.field(static=True)
    time_dim: int = eqx.field(static=True)

    def __init__(self, shape, num_classes: int, *, key, width: int = 256, depth: int = 3, time_dim: int = 32,
                 label_dim: int = 32):
        self.shape = tuple(int(s) for s in shape)
        self.time_dim = time_dim
        dim = math.prod(self.shape)
        k1, k2 = jax.random.split(key)
        mlp = eqx.nn.MLP(dim + time_dim + label_dim, dim, width, depth, activation=jax.nn.silu, key=k1)
        last = mlp.layers[-1]
        self.mlp = eqx.tree_at(lambda m: (m.layers[-1].weight, m.layers[-1].bias), mlp,
                               (jnp.zeros_like(last.weight), jnp.zeros_like(last.bias)))
        self.label_embedding = eqx.nn.Embedding(num_classes + 1, label_dim, key=k2)

    def residual(self, x_t, t, label):
        """:math:`r_\\psi` for one example."""
        h = jnp.concatenate([jnp.ravel(x_t), time_features(t, self.time_dim), self.label_embedding(label)])
        return jnp.reshape(self.mlp(h), self.shape)

    def eps(self, teacher_eps, x_t, t, labels):
        """The fake prediction for a batch, given the teacher's (stopped) prediction at the same inputs."""
        return jax.lax.stop_gradient(teacher_eps) + jax.vmap(self.residual)(x_t, t, labels)


class OneStepGenerator(eqx.Module):
    r"""A class-conditional one-step generator :math:`x = g_\theta(z, y)`: an MLP whose every hidden layer adds a
    class embedding, :math:`h_{\ell+1} = \mathrm{SiLU}(W_\ell h_\ell + c_\ell(y))`, output ``tanh`` reshaped to
    ``shape`` (pixels in [-1, 1], the teacher's space). Label ``num_classes`` is the null (unconditional) class.

    ``negative``/``nasa_scale``: NASA steering, :math:`c_\ell(y) - \alpha\,c_\ell(y_-)` (see :func:`nasa`)."""

    layers: list
    embeddings: list
    out: eqx.nn.Linear
    shape: tuple = eqx.field(static=True)
    latent_dim: int = eqx.field(static=True)
    num_classes: int = eqx.field(static=True)

    def __init__(self, shape, num_classes: int, *, key, latent_dim: int = 64, width: int = 512, depth: int = 3):
        self.shape = tuple(int(s) for s in shape)
        self.latent_dim, self.num_classes = int(latent_dim), int(num_classes)
        keys = jax.random.split(key, 2 * depth + 1)
        sizes = [latent_dim] + [width] * depth
        self.layers = [eqx.nn.Linear(sizes[i], sizes[i + 1], key=keys[i]) for i in range(depth)]
        self.embeddings = [eqx.nn.Embedding(num_classes + 1, width, key=keys[depth + i]) for i in range(depth)]
        self.out = eqx.nn.Linear(width, math.prod(self.shape), key=keys[-1])

    def __call__(self, z, label, negative=None, nasa_scale=0.0):
        label = jnp.asarray(label, jnp.int32)
        h = z
        for layer, emb in zip(self.layers, self.embeddings):
            c = emb(label)
            if negative is not None:
                c = c - nasa_scale * emb(jnp.asarray(negative, jnp.int32))
            h = jax.nn.silu(layer(h) + c)
        return jnp.reshape(jnp.tanh(self.out(h)), self.shape)


def nasa(generator: OneStepGenerator, key, labels, negative: int, scale: float = 1.0):
    r"""Sample a one-step generator with NASA (negative-away steer attention; SNOOPI, Nguyen et al. 2024), training
    free: every layer's class conditioning :math:`c_\ell(y)` becomes :math:`c_\ell(y) - \alpha\,c_\ell(y_-)` for the
    negative class :math:`y_-` (``scale`` is :math:`\alpha`; 0 is plain sampling). Returns ``(B, *shape)``."""
    if not isinstance(generator, OneStepGenerator):
        raise PPLVIError(f"nasa: needs a OneStepGenerator, got {type(generator).__name__}")
    if not 0 <= int(negative) < generator.num_classes:
        raise PPLVIError(f"nasa: negative class must be in [0, {generator.num_classes}), got {negative}")
    labels = jnp.asarray(labels, jnp.int32)
    z = jax.random.normal(key, (labels.shape[0], generator.latent_dim))
    return jax.vmap(lambda zi, yi: generator(zi, yi, negative, scale))(z, labels)


def generate(generator, labels):
    """The generator's samples for ``labels`` inside an objective: particles (an array ``(B, *shape)``) are their
    own samples; a :class:`OneStepGenerator` draws its latents at site ``"z"``."""
    if eqx.is_array(generator):
        return generator
    if isinstance(generator, OneStepGenerator):
        z = pplvi.sample("z", nd.Normal(jnp.zeros((labels.shape[0], generator.latent_dim)), 1.0).to_event(2))
        return jax.vmap(generator)(z, labels)
    raise PPLVIError(
        f"score distillation: the generator must be an array of particles or a OneStepGenerator, got "
        f"{type(generator).__name__}; pass generate= to use another generator"
    )


# --------------------------------------------------------------------------------------------------------------
# the objectives


def _check_scale(name, scale):
    if isinstance(scale, tuple):
        if len(scale) != 2 or not 0.0 <= float(scale[0]) < float(scale[1]):
            raise PPLVIError(f"{name}: a random guidance scale is a pair (low, high) with 0 <= low < high, got "
                             f"{scale}")
        return (float(scale[0]), float(scale[1]))
    if not isinstance(scale, (int, float)) or scale < 0:
        raise PPLVIError(f"{name}: guidance scale must be a number >= 0 or a pair (low, high), got {scale!r}")
    return float(scale)


def _check_t_range(name, t_range, schedule):
    lo, hi = (float(v) for v in t_range)
    if not schedule.t_min <= lo < hi <= 1.0:
        raise PPLVIError(f"{name}: t_range must satisfy t_min={schedule.t_min} <= low < high <= 1, got {t_range}")
    return lo, hi


def _guide(cond, uncond, scale):
    """Classifier-free guidance :math:`\\hat\\varepsilon(\\varnothing) + \\kappa(\\hat\\varepsilon(y) -
    \\hat\\varepsilon(\\varnothing))`, ``scale`` a number or one per example."""
    k = jnp.reshape(scale, (-1,) + (1,) * (cond.ndim - 1)) if jnp.ndim(scale) else scale
    return uncond + k * (cond - uncond)


def score_distillation(teacher, *, method: str = "sds", guidance=1.0, fake_guidance=None, cfg_weight: float = 0.0,
                       var_weight: float = 1.0, fake_weight: float = 1.0, p_uncond: float = 0.1,
                       t_range=(0.02, 0.98), weighting: str = "dreamfusion",
                       generate: Callable = generate) -> pplvi.Objective:
    r"""The general score-distillation objective ``obj(params, labels)`` (maximized); see the module docstring for
    the directions. ``method="sds"``: ``params`` is the generator; otherwise (``"vsd"``) ``params`` is
    ``{"generator": ..., "fake": ScoreAdapter}``.

    ``guidance``: the teacher's classifier-free scale :math:`\kappa` (a number, or ``(low, high)`` for a uniform
    random scale drawn per example at site ``"scale"``). ``fake_guidance``: the fake branch's scale (``None``: 1,
    the conditional fake; ``"same"``: the teacher's :math:`\kappa`, PG-SB). ``cfg_weight``/``var_weight``: DSD's
    :math:`\lambda_{\text{cfg}}, \lambda_{\text{var}}`. ``fake_weight``: :math:`\lambda_F` on the fake's denoising
    loss. ``labels``: ``(B,)`` ints, ``num_classes`` = unconditional. ``generate(generator, labels)`` returns the
    batch of samples (default :func:`generate`)."""
    teacher = as_teacher(teacher)
    name = {"sds": "sds", "vsd": "vsd"}.get(method)
    if name is None:
        raise PPLVIError(f"score_distillation: method must be 'sds' or 'vsd', got {method!r}")
    if weighting not in WEIGHTINGS:
        raise PPLVIError(f"score_distillation: weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    scale = _check_scale(name, guidance)
    if fake_guidance not in (None, "same"):
        raise PPLVIError(f"{name}: fake_guidance must be None (conditional fake) or 'same', got {fake_guidance!r}")
    if not 0.0 <= p_uncond < 1.0:
        raise PPLVIError(f"{name}: p_uncond must be in [0, 1), got {p_uncond}")
    if fake_guidance == "same" and p_uncond == 0.0:
        raise PPLVIError(f"{name}: a guided fake needs its unconditional branch: train it with p_uncond > 0")
    t_lo, t_hi = _check_t_range(name, t_range, teacher.schedule)
    null, sched = teacher.num_classes, teacher.schedule

    def unpack(params):
        if method == "sds":
            return params, None
        if not isinstance(params, dict) or set(params) != {"generator", "fake"}:
            raise PPLVIError(f"{name}: params must be a dict {{'generator': ..., 'fake': ScoreAdapter}}, got "
                             f"{type(params).__name__}" + (f" with keys {sorted(params)}" if isinstance(params, dict)
                                                           else ""))
        return params["generator"], params["fake"]

    @pplvi.objective
    def distill(params, labels):
        generator, fake = unpack(params)
        labels = jnp.asarray(labels, jnp.int32)
        if labels.ndim != 1:
            raise DataError(f"{name}: labels must be a vector (B,) of class ids, got shape {labels.shape}")
        x = generate(generator, labels)
        if x.shape[0] != labels.shape[0]:
            raise DataError(f"{name}: the generator gave {x.shape[0]} samples for {labels.shape[0]} labels")
        b, event = x.shape[0], x.ndim - 1
        t = pplvi.sample("t", nd.Uniform(jnp.full((b,), t_lo), t_hi).to_event(1))
        eps = pplvi.sample("eps", nd.Normal(jnp.zeros_like(x), 1.0).to_event(x.ndim))
        if isinstance(scale, tuple):
            kappa = pplvi.sample("scale", nd.Uniform(jnp.full((b,), scale[0]), scale[1]).to_event(1))
        else:
            kappa = scale
        a, s = sched.signal_noise(t)
        bshape = (-1,) + (1,) * event
        a, s = jnp.reshape(a, bshape), jnp.reshape(s, bshape)
        x_t = jax.lax.stop_gradient(a * x + s * eps)  # the teacher and the fake see x_t, never differentiate it
        w = s**2 if weighting == "dreamfusion" else jnp.ones_like(s)

        eps_c = teacher.eps(x_t, t, labels)  # null-label rows are unconditional already
        fake_scale = kappa if fake_guidance == "same" else 1.0
        guided = not (isinstance(kappa, float) and kappa == 1.0)
        fake_guided = not (isinstance(fake_scale, float) and fake_scale == 1.0)
        nulls = jnp.full_like(labels, null)
        eps_u = teacher.eps(x_t, t, nulls) if (guided or fake_guided or cfg_weight) else None
        target = _guide(eps_c, eps_u, kappa) if guided else eps_c
        if fake is None:
            direction = w * (target - eps)
            value = 0.0
        else:
            fake_c = fake.eps(eps_c, x_t, t, labels)
            fake_pred = _guide(fake_c, fake.eps(eps_u, x_t, t, nulls), fake_scale) if fake_guided else fake_c
            direction = var_weight * (target - fake_pred)
            if cfg_weight:
                direction = direction + cfg_weight * (eps_c - eps_u)
            direction = w * direction
            # the fake's own denoising loss on the stopped samples; a guided fake also learns its unconditional
            # branch (label dropout, site "drop")
            y_fake, teacher_fake = labels, eps_c
            if fake_guided:
                drop = pplvi.sample("drop", nd.Bernoulli(probs=jnp.full((b,), p_uncond)).to_event(1))
                y_fake = jnp.where(drop > 0, null, labels)
                teacher_fake = jnp.where(jnp.reshape(drop > 0, bshape), eps_u, eps_c)
            fake_eps = fake.eps(teacher_fake, x_t, t, y_fake)
            value = -fake_weight * jnp.mean(jnp.sum(jnp.reshape((fake_eps - eps) ** 2, (b, -1)), -1))
        surrogate = -jnp.mean(jnp.sum(jnp.reshape(jax.lax.stop_gradient(direction) * x, (b, -1)), -1))
        return surrogate + value

    distill.name = name
    return distill


def sds(teacher, *, guidance=1.0, t_range=(0.02, 0.98), weighting: str = "dreamfusion",
        generate: Callable = generate) -> pplvi.Objective:
    """SDS (Poole et al. 2022): ``obj(generator, labels)``; direction :math:`w(t)(\\hat\\varepsilon^\\kappa_T -
    \\varepsilon)`."""
    return score_distillation(teacher, method="sds", guidance=guidance, t_range=t_range, weighting=weighting,
                              generate=generate)


def vsd(teacher, *, guidance=1.0, fake_weight: float = 1.0, p_uncond: float = 0.1, t_range=(0.02, 0.98),
        weighting: str = "dreamfusion", generate: Callable = generate) -> pplvi.Objective:
    """VSD (Wang et al. 2023): ``obj({"generator", "fake"}, labels)``; direction :math:`w(t)(\\hat\\varepsilon^\\kappa_T
    - \\hat\\varepsilon_F)`, the fake (conditional) trained on the generator's samples in the same objective."""
    return score_distillation(teacher, method="vsd", guidance=guidance, fake_weight=fake_weight, p_uncond=p_uncond,
                              t_range=t_range, weighting=weighting, generate=generate)


def dsd(teacher, *, cfg_weight: float = 1.0, var_weight: float = 1.0, fake_weight: float = 1.0,
        p_uncond: float = 0.1, t_range=(0.02, 0.98), weighting: str = "dreamfusion",
        generate: Callable = generate) -> pplvi.Objective:
    """DSD (Cheng et al. 2024, DreamPolish): direction :math:`w(t)[\\lambda_{var}(\\hat\\varepsilon_T(y) -
    \\hat\\varepsilon_F(y)) + \\lambda_{cfg}(\\hat\\varepsilon_T(y) - \\hat\\varepsilon_T(\\varnothing))]`."""
    if cfg_weight < 0 or var_weight <= 0:
        raise PPLVIError(f"dsd: need cfg_weight >= 0 and var_weight > 0, got {cfg_weight}, {var_weight}")
    obj = score_distillation(teacher, method="vsd", cfg_weight=float(cfg_weight), var_weight=float(var_weight),
                             fake_weight=fake_weight, p_uncond=p_uncond, t_range=t_range, weighting=weighting,
                             generate=generate)
    obj.name = "dsd"
    return obj


def pgsb(teacher, *, guidance=(2.0, 6.0), fake_weight: float = 1.0, p_uncond: float = 0.1, t_range=(0.02, 0.98),
         weighting: str = "dreamfusion", generate: Callable = generate) -> pplvi.Objective:
    """PG-SB (Nguyen et al. 2024, SNOOPI): VSD whose random scale :math:`\\kappa \\sim \\mathcal U(` ``guidance``
    :math:`)` (site ``"scale"``) guides both the teacher and the fake."""
    if not isinstance(guidance, tuple):
        raise PPLVIError(f"pgsb: guidance must be a range (low, high) for the random scale, got {guidance!r}; a "
                         "fixed scale is vsd(..., guidance=k)")
    obj = score_distillation(teacher, method="vsd", guidance=guidance, fake_guidance="same", fake_weight=fake_weight,
                             p_uncond=p_uncond, t_range=t_range, weighting=weighting, generate=generate)
    obj.name = "pgsb"
    return obj


def pair_regression_error(generator, labels, latents, images):
    r""":math:`\tfrac1B\sum_i \|g(z_i, y_i) - \Phi_T(z_i, y_i)\|^2`: the mean squared error (summed over pixels) of
    the generator's image for each pair's noise against the teacher's ODE sample (:func:`teacher_pairs`); DMD's
    regression term, and on its own the regression warm start / ablation."""
    pred = jax.vmap(generator)(latents, labels)
    return jnp.mean(jnp.sum(jnp.reshape((pred - images) ** 2, (labels.shape[0], -1)), -1))


def dmd(teacher, *, regression_weight: float = 0.25, guidance=1.0, fake_weight: float = 1.0,
        t_range=(0.02, 0.98), weighting: str = "dreamfusion") -> pplvi.Objective:
    r"""DMD (distribution matching distillation; Yin et al. 2024, "One-step Diffusion with Distribution Matching
    Distillation"): VSD's distribution-matching direction plus a regression of the generator onto the teacher's own
    deterministic (ODE) samples from the *same* noise, ``obj({"generator", "fake"}, labels, pair_latents,
    pair_images)`` (maximized):

    .. math:: \mathcal L_{\text{VSD}}(\theta, \psi; y) - \lambda_{\text{reg}}\,\tfrac1B \textstyle\sum_i
              \|g_\theta(z_i, y_i) - \Phi_T(z_i, y_i)\|^2,

    where :math:`\Phi_T` maps the prior noise :math:`z` to the teacher's ODE sample (:func:`teacher_pairs`). The
    VSD term alone has the generator's noised marginals equal the teacher's as a fixed point but does not prevent
    the generator from starting (and staying) mode collapsed; the regression ties every latent to one teacher sample,
    so the latent cannot be ignored. The generator's latent must be the teacher's noise (``latent_dim`` =
    the image size). The VSD part draws fresh latents (site ``"z"``) with the same ``labels``. DMD uses LPIPS for
    the regression; here it is the squared error in pixel space."""
    if regression_weight < 0:
        raise PPLVIError(f"dmd: regression_weight must be >= 0, got {regression_weight}")
    matching = vsd(teacher, guidance=guidance, fake_weight=fake_weight, t_range=t_range, weighting=weighting)

    @pplvi.objective
    def dmd_objective(params, labels, pair_latents, pair_images):
        generator = params["generator"] if isinstance(params, dict) else None
        if not isinstance(generator, OneStepGenerator):
            raise PPLVIError("dmd: params must be {'generator': OneStepGenerator, 'fake': ScoreAdapter}")
        labels = jnp.asarray(labels, jnp.int32)
        if pair_latents.shape != (labels.shape[0], generator.latent_dim):
            raise DataError(f"dmd: pair_latents must be (B, latent_dim) = ({labels.shape[0]}, "
                            f"{generator.latent_dim}), got {pair_latents.shape}")
        if pair_images.shape != (labels.shape[0], *generator.shape):
            raise DataError(f"dmd: pair_images must be (B, *shape) = ({labels.shape[0]}, *{generator.shape}), got "
                            f"{pair_images.shape}")
        return matching(params, labels) - regression_weight * pair_regression_error(generator, labels, pair_latents,
                                                                                    pair_images)

    return dmd_objective


def teacher_pairs(model: Diffusion, key, labels, shape, *, steps: int = 10, batch_size: int = 256):
    r"""Noise-image pairs :math:`(z, \Phi_T(z, y))` for :func:`dmd`: :math:`z \sim \mathcal N(0, I)` in image shape
    and the teacher's DPM-Solver++(2M) sample from it (deterministic, ``steps`` steps, one conditional evaluation
    per step; label ``num_classes`` = unconditional; ``shape`` the image shape, e.g. ``(1, 28, 28)``). Returns
    ``(latents (N, prod(shape)), images (N, *shape))``."""
    labels = jnp.asarray(labels, jnp.int32)
    shape = tuple(int(d) for d in shape)
    if labels.ndim != 1 or labels.shape[0] == 0:
        raise DataError(f"teacher_pairs: labels must be a non-empty vector (N,), got shape {labels.shape}")

    @jax.jit
    def batch(k, ys):
        z = jax.random.normal(k, (ys.shape[0], *shape))
        x = samplers.dpm_solver_pp(k, samplers.conditional(model, ys), model.schedule, z.shape, steps=steps,
                                   x_init=z).x
        return jnp.reshape(z, (ys.shape[0], -1)), x

    zs, xs = [], []
    keys = jax.random.split(key, -(-labels.shape[0] // batch_size))
    for i, k in enumerate(keys):
        ys = labels[i * batch_size:(i + 1) * batch_size]
        z, x = batch(k, jnp.pad(ys, (0, batch_size - ys.shape[0]), constant_values=model.num_classes))
        zs.append(z[: ys.shape[0]])
        xs.append(x[: ys.shape[0]])
    return jnp.concatenate(zs), jnp.concatenate(xs)


# --------------------------------------------------------------------------------------------------------------
# measuring collapse


def cluster_variance_ratio(particles, target_samples, modes):
    r"""How much of the target's spread within its modes the particles keep: both point sets are assigned to their
    nearest mode (``modes`` ``(K, d)``), and the ratio is

    .. math:: \frac{\sum_k \sum_{i \in C_k} \|x_i - \bar x_k\|^2 / n}{\sum_k \sum_{j \in C'_k}
              \|y_j - \bar y_k\|^2 / m}

    (within-cluster variance about each cluster's own mean, so a shifted cluster is not counted as spread).
    ``particles`` ``(n, d)``, ``target_samples`` ``(m, d)`` exact draws from the target. 1 keeps the target's
    variance; 0 is collapse onto points."""
    particles, target_samples, modes = (jnp.asarray(v, jnp.float32) for v in (particles, target_samples, modes))
    if particles.ndim != 2 or target_samples.ndim != 2 or modes.ndim != 2 or not (
            particles.shape[1] == target_samples.shape[1] == modes.shape[1]):
        raise DataError(f"cluster_variance_ratio: need (n, d), (m, d), (K, d) arrays, got {particles.shape}, "
                        f"{target_samples.shape}, {modes.shape}")

    def within(x):
        k = jnp.argmin(jnp.sum((x[:, None] - modes[None]) ** 2, -1), -1)
        onehot = jax.nn.one_hot(k, modes.shape[0])
        count = jnp.sum(onehot, 0)
        centers = (onehot.T @ x) / jnp.maximum(count, 1.0)[:, None]
        return jnp.mean(jnp.sum((x - centers[k]) ** 2, -1))

    return float(within(particles) / within(target_samples))
