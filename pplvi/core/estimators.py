r"""Gradient estimators: how each random choice contributes to the derivative of an expectation.

pplvi differentiates :math:`L(\theta) = \mathbb{E}_{x \sim p_\theta}[f_\theta(x)]` in forward mode (ADEV, Lew et
al., POPL 2023). At a random choice the interpreter hands the choice's estimator three things: a key, the
distribution as a :class:`~pplvi.core.dual.DualDistribution` (parameters with tangents), and the
:class:`~pplvi.core.dual.Continuation` ``kont`` — the rest of the program as a function of the choice's value. The
estimator returns a :class:`~pplvi.core.dual.Dual` ``(v, dv)`` whose tangent is an unbiased estimate of the
directional derivative of the expectation. Reverse mode comes for free: every rule is linear in the tangents, so
``jax.grad`` transposes it.

Two ways to write an estimator (subclass :class:`Estimator`, an ``equinox.Module``):

* ``local(key, dist) -> (x, S, Sb)`` for estimators that need only the *value* of the continuation
  (pathwise and score-function families). ``x`` is the draw (a Dual); ``S`` and ``Sb`` are per-lane tangents (shape
  ``dist.lanes``, or ``None``) and the contribution to the tangent is :math:`\sum_\ell v_\ell S_\ell - Sb_\ell`.
  Here :math:`v_\ell` is the value of everything downstream that lane :math:`\ell` can influence: the costs that
  lane emits with ``pplvi.add_cost`` inside the same ``jax.vmap``, plus every other downstream cost and the return
  value (Rao-Blackwellization; without ``add_cost`` it is the whole objective). Such estimators also work inside
  ``lax.scan``, ``cond`` and ``while_loop``, where pplvi accumulates ``S`` and ``Sb`` through the loop.
* ``jvp(key, dist, kont) -> Dual`` for estimators that need to call the continuation (enumeration, measure-valued
  derivatives, multi-sample estimators). Set ``needs_continuation = True``.

Array fields of an estimator (e.g. a baseline's value) arrive inside ``jvp``/``local`` as Duals.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpyro.distributions as nd

from pplvi.core import densities
from pplvi.core.dual import Continuation, Dual, DualDistribution, add_tangents
from pplvi.core.errors import EstimatorError


class Estimator(eqx.Module):
    """Base class of gradient estimators. See the module docstring for the contract."""

    needs_continuation: ClassVar[bool] = False

    def check(self, dist: DualDistribution) -> None:
        """Raise :class:`EstimatorError` at trace time when the estimator cannot apply to ``dist``."""

    def local(self, key, dist: DualDistribution) -> tuple[Dual, Any, Any]:
        raise EstimatorError(
            f"{type(self).__name__} at '{dist.addr}' needs the rest of the program (its continuation), which does "
            "not exist per iteration inside lax.scan / fori_loop / while_loop / cond. Use reparam, reinforce or "
            "baseline(...) there, write the loop as a Python loop, or pass unroll=True to @pplvi.objective to "
            "unroll scans of static length."
        )

    def jvp(self, key, dist: DualDistribution, kont: Continuation) -> Dual:
        x, score, offset = self.local(key, dist)
        return rao_blackwellize(kont(x), dist, score, offset)


def rao_blackwellize(out: Dual, dist: DualDistribution, score, offset) -> Dual:
    r"""Add per-lane score terms to the continuation's dual ``out``: :math:`\sum_\ell v_\ell S_\ell - Sb_\ell`.

    When the continuation reports per-lane costs for the ``vmap`` that batched this choice (outermost lane axis),
    lane :math:`\ell`'s score multiplies its own costs plus the rest (costs outside that ``vmap`` and the return
    value), not the other lanes' costs: those do not depend on lane :math:`\ell`'s draw, so dropping them keeps the
    estimator unbiased and removes variance that would otherwise grow with the batch size."""
    tangent = out.tangent
    if score is not None:
        costs = out.costs or {}
        lane_costs = costs.get(dist.lane_ids[0]) if dist.lane_ids else None
        if lane_costs is not None and lane_costs.shape == (dist.lanes[0],):
            per_lane = score.reshape(dist.lanes[0], -1).sum(-1)
            rest = out.primal - jnp.sum(lane_costs)
            tangent = add_tangents(tangent, jnp.sum(per_lane * lane_costs) + rest * jnp.sum(score))
        else:
            tangent = add_tangents(tangent, out.primal * jnp.sum(score))
    if offset is not None:
        tangent = add_tangents(tangent, -jnp.sum(offset))
    return Dual(out.primal, tangent, out.costs)


class Reparam(Estimator):
    r"""Pathwise (reparameterization) gradient: :math:`x = g_\theta(\epsilon)`, :math:`\nabla \mathbb{E}[f(x)] =
    \mathbb{E}[\nabla_x f \, \nabla_\theta g]` (Kingma & Welling 2014; Rezende et al. 2014). Covers every numpyro
    distribution with ``has_rsample``, including implicitly reparameterized Gamma, Beta and Dirichlet (Figurnov et al.
    2018). Requires ``f`` continuous in ``x``."""

    def check(self, dist):
        if not dist.example.has_rsample:
            raise EstimatorError(
                f"reparam at '{dist.addr}': {type(dist.example).__name__} has no reparameterized sampler "
                "(has_rsample is False). Use reinforce, baseline(reinforce, b), enum or mvd for this choice."
            )

    def local(self, key, dist):
        return dist.rsample(key), None, None


class Reinforce(Estimator):
    r"""Score-function (REINFORCE / likelihood-ratio) gradient (Williams 1992):
    :math:`\nabla \mathbb{E}[f(x)] = \mathbb{E}[\nabla f(x) + f(x)\,\nabla_\theta \log p_\theta(x)]`."""

    def local(self, key, dist):
        x = dist.sample(key)
        return Dual(x, None), dist.score(x), None


class Baseline(Estimator):
    r"""A control variate for a score-function estimator: :math:`(f(x) - b)\,\nabla \log p(x)`.

    ``b`` may be any value computed before the choice (a constant, a running average kept by the user, a network's
    output); under ``jax.vmap`` it may differ per lane. With ``learned=True`` the gradient reported for whatever ``b``
    depends on is :math:`\nabla_\phi -\tfrac12 (f - b_\phi)^2` (NVIL, Mnih & Gregor 2014), so one optimizer maximizing
    the objective also fits the baseline; ``b`` must then depend only on the baseline's own parameters. With plain
    SGD on a scalar ``b`` this is a running average of ``f``."""

    estimator: Estimator
    value: Any
    learned: bool = eqx.field(static=True, default=False)

    def check(self, dist):
        if not isinstance(self.estimator, Reinforce):
            raise EstimatorError(
                f"baseline at '{dist.addr}' wraps {type(self.estimator).__name__}; baselines apply to "
                "score-function estimators: use baseline(reinforce, b)."
            )

    def local(self, key, dist):
        x = dist.sample(key)
        b = self.value if isinstance(self.value, Dual) else Dual(self.value, None)
        b_lane = jnp.broadcast_to(b.primal, dist.lanes) if jnp.ndim(b.primal) <= len(dist.lanes) else None
        if b_lane is None:
            raise EstimatorError(
                f"baseline at '{dist.addr}': the baseline has shape {jnp.shape(b.primal)} but must be a scalar "
                f"per lane (lanes {dist.lanes})."
            )
        score = dist.score(x)
        offset = None if score is None else jax.lax.stop_gradient(b_lane) * score
        if self.learned and b.tangent is not None:
            db = jnp.broadcast_to(b.tangent, dist.lanes)
            score = add_tangents(score, db)
            offset = add_tangents(offset, jax.lax.stop_gradient(b_lane) * db)
        return Dual(x, None), score, offset


def _support_values(dist: DualDistribution) -> jax.Array:
    """The support shared by every component, shape ``(K,) + event_shape``."""
    vals = dist.example.enumerate_support(expand=False)
    return vals.reshape((vals.shape[0],) + dist.event_shape)


def _component_evals(dist: DualDistribution, x, candidates, kont: Continuation, out: Dual) -> jax.Array:
    r"""``f[c, k]``: the continuation's value with component ``c`` of ``x`` replaced by ``candidates[c, k]``.

    ``candidates`` has shape ``(C, K) + event_shape``; the other components keep their sampled values. ``out`` is the
    continuation's dual at ``x`` itself.

    When the choice is batched by a ``vmap`` whose lanes emit their terms with ``pplvi.add_cost`` and nothing else
    downstream depends on the choice (checked on the continuation's dataflow, :meth:`Continuation.rest_depends_on`),
    lane :math:`\ell`'s components change only lane :math:`\ell`'s costs. Then one evaluation replaces component
    ``j`` in *every* lane at once and reads each lane's own cost, so ``C / lanes * K`` evaluations replace ``C * K``:
    linear instead of quadratic in the batch size, and exactly the same values."""
    C = dist.components
    event_axes = (1,) * len(dist.event_shape)
    lane_id = dist.lane_ids[0] if dist.lane_ids else None
    lane_costs = (out.costs or {}).get(lane_id) if lane_id is not None else None
    L = dist.lanes[0] if dist.lanes else 1
    if lane_costs is not None and lane_costs.shape == (L,) and L > 1 and not kont.rest_depends_on(x, lane_id):
        W = C // L  # components per lane
        flat = x.reshape((L, W) + dist.event_shape)
        cands = candidates.reshape((L, W) + candidates.shape[1:])

        def every_lane(j, values):  # values: (L,) + event_shape, component j of every lane
            hit = (jnp.arange(W) == j).reshape((1, W) + event_axes)
            changed = jnp.where(hit, jnp.expand_dims(values, 1), flat).reshape(x.shape)
            costs = kont.primal_with_costs(changed).costs or {}
            if lane_id not in costs:  # the same program as `out`, which reported them: an interpreter bug
                raise AssertionError(f"pplvi: per-lane costs at '{dist.addr}' vanished in a primal evaluation")
            return costs[lane_id]

        per_lane = jax.vmap(jax.vmap(every_lane, in_axes=(None, 1)), in_axes=(0, 0))(
            jnp.arange(W), jnp.moveaxis(cands, 0, 1)
        )  # (W, K, L): lane l's own cost with its component j replaced by candidate k
        f = out.primal - lane_costs[:, None, None] + jnp.moveaxis(per_lane, 2, 0)
        return f.reshape((C,) + f.shape[2:])
    flat = x.reshape((C,) + dist.event_shape)

    def one(c, value):
        # select instead of a scatter (.at[c].set): same result, much faster on XLA:CPU
        hit = (jnp.arange(C) == c).reshape((C,) + event_axes)
        return kont.primal(jnp.where(hit, value, flat).reshape(x.shape))

    return jax.vmap(jax.vmap(one, in_axes=(None, 0)), in_axes=(0, 0))(jnp.arange(C), candidates)


class Enum(Estimator):
    r"""Enumeration over a finite support: :math:`\mathbb{E}[f] = \sum_k p_\theta(k) f(k)`, exactly, with derivative
    :math:`\sum_k \nabla p_\theta(k) f(k) + p_\theta(k) \nabla f(k)`.

    A choice with one component (no batch dims, not under ``vmap``) is summed exactly: zero variance. A choice with
    ``C`` independent components (batch dims or ``vmap`` lanes) would need :math:`K^C` evaluations; pplvi instead
    uses the per-component Rao-Blackwellized form :math:`\nabla f(x) + \sum_c \sum_k \nabla p_c(k)\, f(x_{-c}, k)`,
    which is unbiased and costs :math:`C K` evaluations. ``parallel=True`` evaluates the branches with ``vmap``,
    ``parallel=False`` one after another."""

    needs_continuation: ClassVar[bool] = True
    parallel: bool = eqx.field(static=True, default=True)

    def check(self, dist):
        dist = dist.without_independent()
        if not dist.example.has_enumerate_support:
            raise EstimatorError(
                f"enum at '{dist.addr}': {type(dist.example).__name__} has no finite support to enumerate. "
                "Use reparam (continuous, has_rsample), reinforce, baseline(reinforce, b) or mvd."
            )

    def jvp(self, key, dist, kont):
        dist = dist.without_independent()  # .to_event(k): every element is a component
        vals = _support_values(dist)
        if dist.components == 1:
            lp = dist.log_prob(vals.reshape(vals.shape[:1] + (1,) * len(dist.batch_shape) + dist.event_shape))
            p = jnp.exp(lp.primal).reshape(-1)
            dp = None if lp.tangent is None else (p * lp.tangent.reshape(-1))
            if self.parallel:
                outs = jax.vmap(lambda v: kont(v.reshape(dist.value_shape)))(vals)
                v_all, dv_all = outs.primal, outs.tangent
            else:
                outs = [kont(vals[k].reshape(dist.value_shape)) for k in range(vals.shape[0])]
                v_all = jnp.stack([o.primal for o in outs])
                dv_all = None if outs[0].tangent is None else jnp.stack([o.tangent for o in outs])
            primal = jnp.sum(p * v_all)
            tangent = None if dv_all is None else jnp.sum(p * dv_all)
            if dp is not None:
                tangent = add_tangents(tangent, jnp.sum(dp * v_all))
            return Dual(primal, tangent)
        x = dist.sample(key)
        out = kont(x)
        if not dist.has_tangent:
            return out
        K = vals.shape[0]
        nb = len(dist.batch_shape)
        shaped = vals.reshape((K,) + (1,) * nb + dist.event_shape)
        lp = dist.map(lambda d: densities.log_prob(d, shaped))  # lanes + (K,) + batch
        lpk = jnp.moveaxis(lp.primal, len(dist.lanes), -1).reshape(dist.components, K)
        dlpk = jnp.moveaxis(lp.tangent, len(dist.lanes), -1).reshape(dist.components, K)
        dp = jnp.exp(lpk) * dlpk
        candidates = jnp.broadcast_to(vals, (dist.components,) + vals.shape)
        f = _component_evals(dist, x, candidates, kont, out)
        return Dual(out.primal, add_tangents(out.tangent, jnp.sum(dp * f)), out.costs)


_MVD_FAMILIES = (nd.BernoulliProbs, nd.BernoulliLogits, nd.CategoricalProbs, nd.CategoricalLogits, nd.Normal)


class MVD(Estimator):
    r"""Measure-valued derivative (Pflug 1989; Mohamed et al. 2020, sec. 6): the derivative of a density in one
    parameter is written as :math:`c\,(p^+ - p^-)` and :math:`\nabla\mathbb{E}[f] \approx c\,(f(x^+) - f(x^-))`,
    per component, coupled with the primal draw.

    * Bernoulli(p): :math:`\partial_p = \delta_1 - \delta_0`.
    * Categorical(:math:`\pi`): :math:`\partial \pi_k` puts mass on :math:`\delta_k`; the primal draw is the
      negative part (a control variate, since :math:`\sum_k \partial\pi_k = 0`).
    * Normal(:math:`\mu,\sigma`): :math:`\partial_\mu`: :math:`c = 1/(\sigma\sqrt{2\pi})`,
      :math:`x^\pm = \mu \pm \sigma W`, :math:`W \sim` Weibull(scale :math:`\sqrt2`, shape 2);
      :math:`\partial_\sigma`: :math:`c = 1/\sigma`, :math:`x^+ = \mu + \sigma M` with :math:`M` double-sided
      Maxwell, :math:`x^- = x` (the primal draw).
    """

    needs_continuation: ClassVar[bool] = True

    def check(self, dist):
        dist = dist.without_independent()
        if not isinstance(dist.example, _MVD_FAMILIES):
            raise EstimatorError(
                f"mvd at '{dist.addr}': no measure-valued derivative for {type(dist.example).__name__}. "
                "Supported: Bernoulli, Categorical, Normal. Use reparam, reinforce or enum instead."
            )

    def jvp(self, key, dist, kont):
        dist = dist.without_independent()  # .to_event(k): every element is a component
        k_sample, k_aux = jax.random.split(key)
        x = dist.sample(k_sample)
        out = kont(x)
        if not dist.has_tangent:
            return out
        C = dist.components
        v = out.primal
        ex = dist.example
        if isinstance(ex, (nd.BernoulliProbs, nd.BernoulliLogits)):
            p = dist.params(lambda d: d.probs)
            flipped = (1 - x.reshape(C, 1)).astype(x.dtype)
            f_other = _component_evals(dist, x, flipped, kont, out)[:, 0]
            sign = 2.0 * x.reshape(C) - 1.0
            extra = jnp.sum(p.tangent.reshape(C) * sign * (v - f_other))
        elif isinstance(ex, (nd.CategoricalProbs, nd.CategoricalLogits)):
            p = dist.params(lambda d: d.probs)
            K = p.primal.shape[-1]
            cands = jnp.broadcast_to(jnp.arange(K, dtype=x.dtype), (C, K))
            f = _component_evals(dist, x, cands, kont, out)
            extra = jnp.sum(p.tangent.reshape(C, K) * (f - v))
        else:  # Normal
            loc = dist.params(lambda d: jnp.broadcast_to(d.loc, d.batch_shape))
            scale = dist.params(lambda d: jnp.broadcast_to(d.scale, d.batch_shape))
            mu, sigma = loc.primal.reshape(C), scale.primal.reshape(C)
            kw, km, ks = jax.random.split(k_aux, 3)
            w = nd.Weibull(jnp.sqrt(2.0), 2.0).sample(kw, (C,))
            maxwell = jnp.linalg.norm(jax.random.normal(km, (C, 3)), axis=-1)
            maxwell = maxwell * jnp.where(jax.random.bernoulli(ks, 0.5, (C,)), 1.0, -1.0)
            cands = jnp.stack([mu + sigma * w, mu - sigma * w, mu + sigma * maxwell], axis=1)
            f = _component_evals(dist, x, cands.astype(x.dtype), kont, out)
            extra = 0.0
            if loc.tangent is not None:
                extra = extra + jnp.sum(loc.tangent.reshape(C) / (sigma * math.sqrt(2 * math.pi)) * (f[:, 0] - f[:, 1]))
            if scale.tangent is not None:
                extra = extra + jnp.sum(scale.tangent.reshape(C) / sigma * (f[:, 2] - v))
        return Dual(v, add_tangents(out.tangent, extra), out.costs)


reparam = Reparam()
reinforce = Reinforce()
mvd = MVD()
enum = Enum(parallel=True)
enum_sequential = Enum(parallel=False)


def baseline(estimator: Estimator, value, learned: bool = False) -> Baseline:
    """``estimator`` (a score-function estimator) with the control variate ``value``; see :class:`Baseline`."""
    return Baseline(estimator, value, learned)


def default_estimator(dist) -> Estimator:
    """``reparam`` when the distribution has a reparameterized sampler, otherwise ``reinforce``."""
    return reparam if dist.has_rsample else reinforce
