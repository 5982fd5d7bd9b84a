r"""PPAP — practical plug-and-play guidance (Go et al., CVPR 2023, "Towards Practical Plug-and-Play Diffusion Models",
arXiv:2212.05973).

Classifier guidance (Dhariwal & Nichol 2021) needs :math:`\nabla_{x_t}\log p(y \mid x_t)` at every noise level, but
off-the-shelf classifiers only know clean images. PPAP turns one clean classifier :math:`f` into a guide in three
moves:

1. **Multi-experts.** The noise range is cut into :math:`N` intervals :math:`[t_{i-1}, t_i)`; expert :math:`i` is
   used only there. One network without a time input cannot be right at every noise level (the posterior of the
   class given :math:`x_t` changes with :math:`t`), a specialist per interval can.
2. **Parameter-efficient fine-tuning.** Each expert is the clean classifier plus small low-rank adapters (LoRA, Hu et
   al. 2022) on its linear layers: :math:`W x + \tfrac{\alpha}{r} B A x` with :math:`A \in \mathbb R^{r\times d_{in}}`,
   :math:`B \in \mathbb R^{d_{out}\times r}`, :math:`B = 0` at the start (the expert starts as the clean classifier).
   Only :math:`A, B` train; the classifier's weights are shared and frozen.
3. **Data-free knowledge transfer.** No labelled data: the training inputs are the diffusion model's own
   (unconditional) samples :math:`x_0`, and the target is the clean classifier's output on them. Expert :math:`i`
   maximizes (:func:`distillation_objective`)

   .. math:: \mathbb E_{x_0,\ t \sim \mathcal U[t_{i-1}, t_i),\ \varepsilon}
             \Big[\sum_y p_f(y \mid x_0)\,\log q_i(y \mid a_t x_0 + s_t \varepsilon)\Big],

   minus the cross-entropy to the teacher, i.e. the KL up to the teacher's entropy. Its maximizer over all functions
   is :math:`q(y \mid x_t) = \mathbb E[p_f(y \mid x_0) \mid x_t]` — when :math:`f` is the Bayes classifier, the
   exact noisy posterior :math:`p(y \mid x_t)`, which is what guidance needs (checked on a Gaussian mixture).

Guidance (:class:`ClassifierGuidance`) then uses the unconditional model and the expert for the current step,
:math:`\hat\varepsilon = \hat\varepsilon_u(x_t) - w\,s_t\,\nabla_{x_t}\log q_{i(t)}(y \mid x_t)` — for the exact
posterior and :math:`w = 1` this *is* the class-conditional model's noise prediction (Bayes' rule on scores).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as nd
import optax

import pplvi
from pplvi import DataError, PPLVIError
from pplvi.diffusion.analytic import GaussianMixture
from pplvi.diffusion.classifier_guidance import mixture_classifier
from pplvi.diffusion.guidance import denoiser

# ----------------------------------------------------------------------------------------------------------------
# Low-rank adapters
# ----------------------------------------------------------------------------------------------------------------


class LoRALinear(eqx.Module):
    r"""A frozen-able :class:`equinox.nn.Linear` plus a low-rank update:
    :math:`y = W x + b + \tfrac{\alpha}{r}\,B(Ax)`, :math:`A` Gaussian with variance :math:`1/d_{in}`, :math:`B = 0`
    at initialization (so the adapted layer starts equal to ``base``)."""

    base: eqx.nn.Linear
    down: jax.Array
    up: jax.Array
    scale: float = eqx.field(static=True)

    def __init__(self, base: eqx.nn.Linear, rank: int, *, key, alpha: float | None = None):
        d_in = base.in_features if isinstance(base.in_features, int) else 1
        d_out = base.out_features if isinstance(base.out_features, int) else 1
        self.base = base
        self.down = jax.random.normal(key, (rank, d_in), base.weight.dtype) / np.sqrt(d_in)
        self.up = jnp.zeros((d_out, rank), base.weight.dtype)
        self.scale = float(alpha if alpha is not None else rank) / rank

    def __call__(self, x, *, key=None):
        return self.base(x) + self.scale * (self.up @ (self.down @ x))


def _is_linear(m):
    return isinstance(m, eqx.nn.Linear)


def add_adapters(net, rank: int, *, key, alpha: float | None = None):
    """``net`` with every :class:`equinox.nn.Linear` replaced by a :class:`LoRALinear` of rank ``rank`` (the
    adapted network computes exactly what ``net`` does until its adapters train)."""
    if not (isinstance(rank, (int, np.integer)) and rank >= 1):
        raise PPLVIError(f"add_adapters: rank must be a positive integer, got {rank!r}")
    leaves = [m for m in jax.tree.leaves(net, is_leaf=_is_linear) if _is_linear(m)]
    if not leaves:
        raise PPLVIError(f"add_adapters: {type(net).__name__} has no equinox.nn.Linear layer to adapt")
    keys = iter(jax.random.split(key, len(leaves)))
    return jax.tree.map(lambda m: LoRALinear(m, rank, key=next(keys), alpha=alpha) if _is_linear(m) else m, net,
                        is_leaf=_is_linear)


def adapter_spec(net):
    """The :func:`pplvi.fit` ``trainable`` spec that trains only the adapters' ``down``/``up`` matrices."""
    is_lora = lambda m: isinstance(m, LoRALinear)  # noqa: E731

    def spec(m):
        if is_lora(m):
            frozen = jax.tree.map(lambda _: False, m)
            return eqx.tree_at(lambda l: (l.down, l.up), frozen, (True, True))
        return jax.tree.map(lambda _: False, m)

    return jax.tree.map(spec, net, is_leaf=is_lora)


def count_adapter_parameters(net) -> int:
    spec = adapter_spec(net)
    return int(sum(np.size(leaf) for leaf, train in zip(jax.tree.leaves(net), jax.tree.leaves(spec)) if train))


# ----------------------------------------------------------------------------------------------------------------
# Data-free knowledge distillation
# ----------------------------------------------------------------------------------------------------------------


def distillation_objective(schedule, edges) -> pplvi.Objective:
    r"""PPAP's knowledge-transfer objective for the experts of a partition ``edges`` (``N + 1`` increasing times in
    ``[0, 1]``) as a pplvi objective ``obj(students, x0, teacher_probs)`` (maximized). ``students`` is a tuple of
    ``N`` networks (one example -> logits); for expert :math:`i` and each example, :math:`t \sim \mathcal
    U[t_{i}, t_{i+1})` and :math:`\varepsilon \sim \mathcal N(0, I)` are random choices ``"t{i}"`` and ``"eps{i}"``,
    and its term is the batch mean of :math:`\sum_y p_f(y \mid x_0)\log q_i(y \mid a_t x_0 +
    s_t\varepsilon)` (minus the cross-entropy to the teacher). The value is the sum of the experts' terms; each
    expert's gradient comes from its own term only, so one run trains them all as if separately (on the same
    minibatches). ``teacher_probs`` are the clean classifier's probabilities on ``x0``."""
    edges = np.asarray(edges, np.float64)
    if edges.ndim != 1 or len(edges) < 2 or not (0.0 <= edges[0] and edges[-1] <= 1.0 and np.all(np.diff(edges) > 0)):
        raise PPLVIError(f"distillation_objective: edges must be >= 2 increasing times in [0, 1], got {edges}")
    bounds = [(float(lo), float(hi)) for lo, hi in zip(edges[:-1], edges[1:])]

    @pplvi.objective
    def knowledge_transfer(students, x0, teacher_probs):
        if len(students) != len(bounds):
            raise PPLVIError(f"distillation_objective: {len(bounds)} noise intervals need as many students, got "
                             f"{len(students)}")
        total = 0.0
        for i, (student, (lo, hi)) in enumerate(zip(students, bounds)):
            def one(x, p, student=student, lo=lo, hi=hi, i=i):
                t = pplvi.sample(f"t{i}", nd.Uniform(lo, hi))
                eps = pplvi.sample(f"eps{i}", nd.Normal(jnp.zeros_like(x), 1.0).to_event(x.ndim))
                a, s = schedule.signal_noise(t)
                return jnp.sum(p * jax.nn.log_softmax(student(a * x + s * eps)))

            total = total + jnp.mean(jax.vmap(one)(x0, teacher_probs))
        return total

    return knowledge_transfer


def time_edges(n_experts: int, t_min: float = 0.0) -> np.ndarray:
    """Uniform partition of ``[t_min, 1]`` into ``n_experts`` intervals (PPAP divides the timesteps uniformly)."""
    if not (isinstance(n_experts, (int, np.integer)) and n_experts >= 1):
        raise PPLVIError(f"time_edges: n_experts must be a positive integer, got {n_experts!r}")
    return np.linspace(t_min, 1.0, n_experts + 1)


class GuidanceExperts(eqx.Module):
    """Noise-range experts as one noise-aware classifier ``logits(x_t, t)`` (a batch ``x_t`` and one scalar ``t``):
    expert ``i`` answers for ``t`` in ``[edges[i], edges[i+1])`` (the last interval includes 1). One expert is the
    single-model baseline."""

    nets: tuple
    edges: jax.Array

    def __init__(self, nets, edges):
        nets, edges = tuple(nets), jnp.asarray(edges, jnp.float32)
        if edges.shape != (len(nets) + 1,):
            raise PPLVIError(f"GuidanceExperts: {len(nets)} experts need {len(nets) + 1} edges, got {edges.shape}")
        self.nets, self.edges = nets, edges

    def index(self, t):
        return jnp.clip(jnp.searchsorted(self.edges[1:-1], t, side="right"), 0, len(self.nets) - 1)

    def logits(self, x, t):
        if len(self.nets) == 1:
            return jax.vmap(self.nets[0])(x)
        branches = [lambda x, net=net: jax.vmap(net)(x) for net in self.nets]
        return jax.lax.switch(self.index(t), branches, x)

    def __call__(self, x, t):
        return self.logits(x, t)


def train_experts(base, x0, teacher_probs, schedule, *, n_experts: int, rank: int, steps: int, key,
                  batch_size: int = 256, lr: float = 1e-3, alpha: float | None = None, t_min: float | None = None,
                  progress=None) -> GuidanceExperts:
    """Fit ``n_experts`` adapter sets on ``base`` (the clean classifier, frozen) by :func:`distillation_objective`,
    expert ``i`` on its own noise interval, all in one :func:`pplvi.fit` run of ``steps`` Adam steps that trains only
    the adapters (so each expert gets ``steps`` steps). ``x0``: the diffusion model's own samples ``(N, ...)``;
    ``teacher_probs``: ``(N, C)``."""
    x0, teacher_probs = jnp.asarray(x0), jnp.asarray(teacher_probs)
    if teacher_probs.ndim != 2 or teacher_probs.shape[0] != x0.shape[0]:
        raise DataError(f"train_experts: teacher_probs must be (N, C) with N = {x0.shape[0]} (the samples), got "
                        f"{teacher_probs.shape}")
    if not bool(jnp.all(jnp.isfinite(x0))) or not bool(jnp.all(jnp.isfinite(teacher_probs))):
        raise DataError("train_experts: x0 or teacher_probs has non-finite entries")
    edges = time_edges(n_experts, schedule.t_min if t_min is None else t_min)
    k_init, k_fit = jax.random.split(jax.random.key(key) if isinstance(key, int) else key)
    students = tuple(add_adapters(base, rank, key=k, alpha=alpha) for k in jax.random.split(k_init, n_experts))
    res = pplvi.fit(distillation_objective(schedule, edges), students,
                    optimizer=optax.adam(optax.cosine_decay_schedule(lr, steps, 0.1)), steps=steps, key=k_fit,
                    data=(x0, teacher_probs), batch_size=min(batch_size, x0.shape[0]),
                    trainable=tuple(adapter_spec(st) for st in students), progress=progress,
                    desc=f"ppap {n_experts} expert(s)")
    nets = res.params
    return GuidanceExperts(nets, edges)


def mixture_noisy_classifier(mixture: GaussianMixture, schedule):
    r"""The exact noise-aware classifier of a labelled Gaussian mixture, ``(x_t, t) -> (B, C)`` logits of
    :math:`p(y \mid x_t)`: the Bayes classifier of the noised mixture :math:`\sum_k \pi_k\mathcal N(a_t\mu_k,
    a_t^2\Sigma_k + s_t^2 I)` (the optimum of :func:`distillation_objective` with the clean Bayes classifier as
    teacher)."""
    if mixture.labels is None:
        raise PPLVIError("mixture_noisy_classifier: the Gaussian mixture carries no component labels")

    def logits(x, t):
        a, s = schedule.signal_noise(jnp.asarray(t, jnp.float32))
        noised = GaussianMixture(mixture.weights, a * mixture.means,
                                 a**2 * mixture.covs + s**2 * jnp.eye(mixture.dim), mixture.labels)
        return mixture_classifier(noised)(x)

    return logits


def noisy_cross_entropy(classifier, x0, teacher_probs, schedule, t, key):
    """Mean cross-entropy of ``classifier(x_t, t)`` to ``teacher_probs`` on ``x_t = a_t x0 + s_t eps`` at one
    time ``t`` (the held-out distillation loss at that noise level)."""
    a, s = schedule.signal_noise(jnp.float32(t))
    x_t = a * x0 + s * jax.random.normal(key, x0.shape)
    return -jnp.mean(jnp.sum(teacher_probs * jax.nn.log_softmax(classifier(x_t, t)), -1))


# ----------------------------------------------------------------------------------------------------------------
# Guidance
# ----------------------------------------------------------------------------------------------------------------


class ClassifierGuidance:
    r"""Classifier guidance with a noise-aware classifier (Dhariwal & Nichol 2021), as a predictor:

    .. math:: \hat\varepsilon = \hat\varepsilon_u(x_t) - w\,s_t\,\nabla_{x_t}\log q(y \mid x_t, t).

    ``classifier(x_t, t) -> (B, C)`` logits, e.g. :class:`GuidanceExperts` (PPAP). With the exact posterior
    :math:`p(y \mid x_t)` and ``w = 1`` this equals the class-conditional noise prediction. 1 NFE per step (the
    unconditional call; the classifier's forward and backward pass are not network evaluations of the diffusion
    model). ``labels``: an int or ``(B,)``."""

    nfe_per_step = 1

    def __init__(self, source, labels, classifier, w: float = 1.0, schedule=None):
        if not callable(classifier):
            raise PPLVIError(f"ClassifierGuidance: classifier must be a function (x_t, t) -> logits, got "
                             f"{type(classifier).__name__}")
        if isinstance(w, (int, float)) and w < 0:
            raise PPLVIError(f"ClassifierGuidance: the guidance scale must be >= 0, got {w}")
        self.denoiser, self.labels, self.classifier, self.w = denoiser(source, schedule), labels, classifier, w

    def init(self, x):
        return None

    def __call__(self, x, t, state):
        d, n = self.denoiser, x.shape[0]
        target = jnp.broadcast_to(jnp.asarray(self.labels, jnp.int32), (n,))
        _, s = d.schedule.signal_noise(t)

        def log_prob(xt):
            logp = jax.nn.log_softmax(self.classifier(xt, t), -1)
            return jnp.sum(jnp.take_along_axis(logp, target[:, None], 1))

        e_u = d.unconditional(x, t)
        return e_u - self.w * s * jax.grad(log_prob)(x), state, jnp.int32(1)
