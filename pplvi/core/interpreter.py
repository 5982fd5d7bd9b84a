r"""The ADEV interpreter: runs a staged objective with dual numbers and hands each random choice its continuation.

Reading order:

1. :func:`evaluate` is the entry point: a closed jaxpr, dual arguments and one key in, the dual of the objective out.
2. :meth:`Interpreter.run` walks the equations in continuation-passing style. Deterministic equations are evaluated
   with JAX's own JVP rules (symbolic zeros where nothing is differentiated). At a ``sample_p`` equation the rest of
   the walk becomes a :class:`~pplvi.core.dual.Continuation` and the site's estimator takes over.
3. Control flow containing random choices:

   * ``jit`` / ``closed_call``: the inner jaxpr is walked inline; its continuation is the outer program.
   * ``cond`` / ``switch`` whose branches need continuations (enum, MVD): every branch runs the rest of the program
     (``lax.switch`` over whole continuations).
   * ``scan`` (and ``fori_loop``) with continuation-needing estimators: unrolled when the objective was built with
     ``unroll=True``, otherwise a trace-time :class:`~pplvi.core.errors.EstimatorError` naming the addresses.
   * Otherwise (``scan``, ``cond``, ``while``): *local* evaluation. Pathwise sites produce dual values; score-function
     sites accumulate :math:`S = \sum_i \nabla \log p(x_i)` and :math:`S_b = \sum_i b_i \nabla \log p(x_i)` through
     the loop carry, and after the loop the tangent of the rest of the program :math:`(v, dv)` becomes
     :math:`dv + v S - S_b` — the score-function estimator with the loop as one compound choice. This is what keeps
     REINFORCE and baselines unbiased inside loops.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from pplvi.core import _jax_private
from pplvi.core.dual import (
    Continuation,
    Dual,
    DualDistribution,
    add_tangents,
    instantiate,
    jvp,
    lane_costs_excluded,
)
from pplvi.core.errors import EstimatorError
from pplvi.core.primitives import cost_p, random_sites, sample_p, subjaxprs

_CALLS = ("jit", "pjit", "closed_call", "core_call", "remat", "checkpoint")


def _estimator_class(eqn):
    return type(eqn.params["est_static"])


def _read(env, v, tan: bool) -> Dual:
    if isinstance(v, jax.extend.core.Literal):
        return Dual(v.val, None)
    d = env[v]
    return d if tan else Dual(d.primal, None)


def _strip(ds, tan):
    return ds if tan else [Dual(d.primal, None) for d in ds]


def _eval_eqn(eqn, ins: list[Dual]) -> list[Dual]:
    if eqn.primitive.name == "stop_gradient":  # no tangent at all: nothing downstream of it is differentiated
        return [Dual(_jax_private.bind_equation(eqn, *[d.primal for d in ins]), None)]

    def fn(*xs):
        return _jax_private.bind_equation(eqn, *xs)

    out, tan = jvp(fn, ins)
    if not eqn.primitive.multiple_results:
        out, tan = [out], [tan]
    if tan is None:
        tan = [None] * len(out)
    return [Dual(o, t) for o, t in zip(out, tan)]


def _stack_duals(items: list[Dual]) -> Dual:
    primal = jnp.stack([d.primal for d in items])
    if all(d.tangent is None for d in items):
        return Dual(primal, None)
    return Dual(primal, jnp.stack([instantiate(d).tangent for d in items]))


class Interpreter:
    """Continuation-passing dual interpreter over jaxprs containing ``sample_p``."""

    def __init__(self, unroll: bool = False):
        self.unroll = unroll
        self._memo: dict[int, list] = {}

    # -- queries -------------------------------------------------------------------------------------------------
    def sites(self, eqn) -> list:
        if eqn.primitive is sample_p or eqn.primitive is cost_p:
            return [eqn]
        key = id(eqn)
        if key not in self._memo:
            self._memo[key] = [s for sub in subjaxprs(eqn) for s in random_sites(sub)]
        return self._memo[key]

    def needs_continuation(self, eqn) -> list[str]:
        return [
            s.params["addr"]
            for s in self.sites(eqn)
            if s.primitive is sample_p and _estimator_class(s).needs_continuation
        ]

    # -- continuation-passing walk -------------------------------------------------------------------------------
    def run_jaxpr(self, closed, ins: list[Dual], key, done: Callable, tan: bool):
        jaxpr = closed.jaxpr
        env = dict(zip(jaxpr.constvars, [Dual(c, None) for c in closed.consts]))
        env.update(zip(jaxpr.invars, _strip(ins, tan)))

        def finish(env, key, tan):
            return done([_read(env, v, tan) for v in jaxpr.outvars], key, tan)

        finish.final = getattr(done, "final", False)

        return self.run(jaxpr.eqns, 0, env, key, finish, tan)

    def run(self, eqns, i, env, key, done, tan):
        env = dict(env)
        while i < len(eqns):
            eqn = eqns[i]
            ins = [_read(env, v, tan) for v in eqn.invars]
            if not self.sites(eqn):
                env.update(zip(eqn.outvars, _strip(_eval_eqn(eqn, ins), tan)))
                i += 1
                continue
            if eqn.primitive is sample_p:
                return self._site(eqns, i, env, ins, key, done, tan)
            if eqn.primitive is cost_p:
                env[eqn.outvars[0]] = ins[0]
                return _add_cost(self.run(eqns, i + 1, env, key, done, tan), ins[0], eqn.params)
            name = eqn.primitive.name

            def after(outs, key, tan, i=i, eqn=eqn, env=env):
                return self.run(eqns, i + 1, {**env, **dict(zip(eqn.outvars, outs))}, key, done, tan)

            if name in _CALLS:
                return self.run_jaxpr(_call_jaxpr(eqn), ins, key, after, tan)
            cps = self.needs_continuation(eqn)
            if cps and name == "cond":
                return self._cps_cond(eqn, ins, key, after, tan)
            if cps and name == "scan" and self.unroll:
                return self._cps_scan(eqn, ins, key, after, tan)
            if cps:
                raise EstimatorError(
                    f"the random choice(s) {cps} use an estimator that needs the rest of the program "
                    f"(enum / mvd / a custom continuation estimator), but they sit inside `{name}`, where no "
                    "per-iteration continuation exists. Alternatives: reparam, reinforce or baseline(reinforce, b) "
                    "for these addresses (pplvi.with_estimators), a Python loop, or @pplvi.objective(unroll=True) "
                    "for scans / fori_loops of static length."
                )
            key, sub = jax.random.split(key)
            outs, effects = self.local_eqn(eqn, ins, sub, tan)
            env.update(zip(eqn.outvars, outs))
            return _with_effects(self.run(eqns, i + 1, env, key, done, tan), effects)
        return done(env, key, tan)

    def _site(self, eqns, i, env, ins, key, done, tan):
        eqn = eqns[i]
        dist, est = _site_views(eqn, ins)
        est.check(dist)
        if getattr(done, "final", False) and not any(self.sites(e) for e in eqns[i + 1:]):
            k_site, k_rest = key, key  # the last random choice of the program: nothing downstream needs a key
        else:
            k_site, k_rest = jax.random.split(key)
        out = eqn.outvars[0]

        def rest(x: Dual, key, tan2):
            return self.run(eqns, i + 1, {**env, out: x if tan2 else Dual(x.primal, None)}, key, done, tan2)

        result = est.jvp(k_site, dist, Continuation(rest, k_rest, tan))
        return result if tan else Dual(result.primal, None, result.costs)

    def _cps_cond(self, eqn, ins, key, after, tan):
        index, ops = ins[0].primal, ins[1:]

        def branch(closed):
            def fn(key):
                d = self.run_jaxpr(closed, ops, key, after, tan)
                d = Dual(d.primal, d.tangent)  # per-lane costs may differ between branches: not reported upward
                return instantiate(d) if tan else Dual(d.primal, None)

            return fn

        return jax.lax.switch(index, [branch(b) for b in eqn.params["branches"]], key)

    def _cps_scan(self, eqn, ins, key, after, tan):
        n_consts, n_carry = _jax_private.scan_arity(eqn)
        body, length = eqn.params["jaxpr"], eqn.params["length"]
        consts, init, xs = ins[:n_consts], ins[n_consts:n_consts + n_carry], ins[n_consts + n_carry:]
        order = list(range(length))[::-1] if eqn.params["reverse"] else list(range(length))

        def step(k, carry, ys, key, tan):
            if k == length:
                ys = ys[::-1] if eqn.params["reverse"] else ys
                stacked = [_stack_duals([y[j] for y in ys]) for j in range(len(ys[0]))] if ys else []
                return after(list(carry) + stacked, key, tan)
            t = order[k]
            x_t = [Dual(x.primal[t], None if x.tangent is None or not tan else x.tangent[t]) for x in xs]
            return self.run_jaxpr(
                body,
                consts + list(carry) + x_t,
                key,
                lambda outs, key, tan2: step(k + 1, outs[:n_carry], ys + [outs[n_carry:]], key, tan2),
                tan,
            )

        return step(0, init, [], key, tan)

    # -- local evaluation (inside loops and branches) -----------------------------------------------------------
    def local_jaxpr(self, closed, ins: list[Dual], key, tan):
        """Evaluate without continuations; returns the outputs and the accumulated :class:`Effects`."""
        jaxpr = closed.jaxpr
        env = dict(zip(jaxpr.constvars, [Dual(c, None) for c in closed.consts]))
        env.update(zip(jaxpr.invars, _strip(ins, tan)))
        effects = Effects()
        for eqn in jaxpr.eqns:
            e_ins = [_read(env, v, tan) for v in eqn.invars]
            if not self.sites(eqn):
                env.update(zip(eqn.outvars, _strip(_eval_eqn(eqn, e_ins), tan)))
                continue
            if eqn.primitive is cost_p:
                value = e_ins[0]
                tangent = None if value.tangent is None else jnp.sum(value.tangent)
                effects = effects.add(Effects(cost=jnp.sum(value.primal), cost_tangent=tangent))
                env[eqn.outvars[0]] = value
                continue
            key, sub = jax.random.split(key)
            if eqn.primitive is sample_p:
                dist, est = _site_views(eqn, e_ins)
                est.check(dist)
                x, s, b = est.local(sub, dist)
                outs = [x if tan else Dual(x.primal, None)]
                if tan:
                    effects = effects.add(Effects(score=_total(s), offset=_total(b)))
            else:
                outs, inner = self.local_eqn(eqn, e_ins, sub, tan)
                effects = effects.add(inner)
            env.update(zip(eqn.outvars, outs))
        return [_read(env, v, tan) for v in jaxpr.outvars], effects

    def local_eqn(self, eqn, ins, key, tan):
        name = eqn.primitive.name
        if name in _CALLS:
            return self.local_jaxpr(_call_jaxpr(eqn), ins, key, tan)
        if name == "scan":
            return self._local_scan(eqn, ins, key, tan)
        if name == "cond":
            return self._local_cond(eqn, ins, key, tan)
        if name == "while":
            return self._local_while(eqn, ins, key, tan)
        addrs = [s.params.get("addr", "add_cost") for s in self.sites(eqn)]
        raise EstimatorError(
            f"the random choice(s) {addrs} sit inside `{name}`, which pplvi cannot differentiate through "
            "soundly. Move them out of it (custom_jvp / custom_vjp / checkpoint functions are opaque to pplvi)."
        )

    def _local_scan(self, eqn, ins, key, tan):
        n_consts, n_carry = _jax_private.scan_arity(eqn)
        body = eqn.params["jaxpr"]
        consts, init, xs = ins[:n_consts], ins[n_consts:n_consts + n_carry], ins[n_consts + n_carry:]
        init = [instantiate(d) for d in init] if tan else init

        def fn(state, x_t):
            carry, effects, key = state
            key, sub = jax.random.split(key)
            x_t = [Dual(p, t) for p, t in x_t]
            outs, inner = self.local_jaxpr(body, consts + list(carry) + x_t, sub, tan)
            new_carry = [instantiate(o) if tan else o for o in outs[:n_carry]]
            ys = [instantiate(o) if tan else o for o in outs[n_carry:]]
            return (new_carry, effects.add(inner).dense(tan), key), [(y.primal, y.tangent) for y in ys]

        xs_in = [(x.primal, x.tangent) for x in xs]
        (carry, effects, _), ys = jax.lax.scan(
            fn,
            (list(init), Effects().dense(tan), key),
            xs_in,
            length=eqn.params["length"],
            reverse=eqn.params["reverse"],
        )
        return list(carry) + [Dual(p, t) for p, t in ys], effects

    def _local_cond(self, eqn, ins, key, tan):
        index, ops = ins[0].primal, ins[1:]

        def branch(closed):
            def fn(key):
                outs, effects = self.local_jaxpr(closed, ops, key, tan)
                outs = [instantiate(o) if tan else Dual(o.primal, None) for o in outs]
                return outs, effects.dense(tan)

            return fn

        return jax.lax.switch(index, [branch(b) for b in eqn.params["branches"]], key)

    def _local_while(self, eqn, ins, key, tan):
        p = eqn.params
        cn, bn = p["cond_nconsts"], p["body_nconsts"]
        cconsts, bconsts, init = ins[:cn], ins[cn:cn + bn], ins[cn + bn:]
        if random_sites(p["cond_jaxpr"].jaxpr):
            raise EstimatorError(
                "random choices inside a while_loop's condition are not supported; draw them in the body."
            )
        init = [instantiate(d) for d in init] if tan else init

        def cond_fn(state):
            carry = state[0]
            fn = jax.extend.core.jaxpr_as_fun(p["cond_jaxpr"])
            return fn(*[c.primal for c in cconsts], *[c.primal for c in carry])[0]

        def body_fn(state):
            carry, effects, key = state
            key, sub = jax.random.split(key)
            outs, inner = self.local_jaxpr(p["body_jaxpr"], bconsts + list(carry), sub, tan)
            outs = [instantiate(o) if tan else o for o in outs]
            return outs, effects.add(inner).dense(tan), key

        carry, effects, _ = jax.lax.while_loop(cond_fn, body_fn, (list(init), Effects().dense(tan), key))
        return list(carry), effects


class Effects(NamedTuple):
    """What a loop or branch evaluated without continuations leaves for the rest of the program: the summed scores
    ``S`` and baseline offsets ``Sb`` of its score-function choices, and the costs it emitted (value, tangent)."""

    score: Any = None
    offset: Any = None
    cost: Any = None
    cost_tangent: Any = None

    def add(self, other: Effects) -> Effects:
        return Effects(*[add_tangents(a, b) for a, b in zip(self, other)])

    def dense(self, tan: bool) -> Effects:
        """Explicit zeros where a loop carry needs a static structure."""
        if not tan:
            return Effects(cost=_or_zero(self.cost))
        return Effects(*[_or_zero(x) for x in self])


def _total(x):
    return None if x is None else jnp.sum(x)


def _with_effects(result: Dual, effects: Effects) -> Dual:
    """The rest of the program's dual plus a loop's effects: costs add to the value; scores multiply the value of
    everything downstream of the loop's choices (the rest of the program and, conservatively, all the loop's costs)."""
    primal, tangent = result.primal, result.tangent
    if effects.cost is not None:
        primal = primal + effects.cost
    tangent = add_tangents(tangent, effects.cost_tangent)
    if effects.score is not None:
        tangent = add_tangents(tangent, primal * effects.score)
    if effects.offset is not None:
        tangent = add_tangents(tangent, -effects.offset)
    return Dual(primal, tangent, result.costs)


def _add_cost(result: Dual, value: Dual, params) -> Dual:
    """A cost emitted at this point: added to the objective, and reported per lane for Rao-Blackwellization."""
    if params["lane_ids"] and lane_costs_excluded(params["lane_ids"][0]):
        primal = result.primal  # a dataflow probe (Continuation.rest_depends_on): these costs stay out of the value
    else:
        primal = result.primal + jnp.sum(value.primal)
    tangent = result.tangent if value.tangent is None else add_tangents(result.tangent, jnp.sum(value.tangent))
    costs = result.costs
    if params["lane_ids"]:
        lane = params["lane_ids"][0]
        per_lane = jnp.sum(jnp.reshape(value.primal, (params["lanes"][0], -1)), axis=1)
        costs = dict(costs or {})
        costs[lane] = per_lane if lane not in costs else costs[lane] + per_lane
    return Dual(primal, tangent, costs)


def _or_zero(x):
    return jnp.zeros(()) if x is None else x


def _call_jaxpr(eqn):
    closed = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
    if isinstance(closed, jax.extend.core.Jaxpr):
        closed = jax.extend.core.ClosedJaxpr(closed, ())
    return closed


def _site_views(eqn, ins):
    p = eqn.params
    n = p["n_dist"]
    dist = DualDistribution(p["dist_tree"], ins[:n], p["lanes"], p["addr"], p["lane_ids"])
    est = eqx.combine(
        jax.tree_util.tree_unflatten(p["est_tree"], list(ins[n:n + p["n_est"]])),
        p["est_static"],
        is_leaf=lambda x: isinstance(x, Dual),
    )
    return dist, est


def evaluate(closed, args: list[Dual], key, unroll: bool = False) -> Dual:
    """Run the staged objective ``closed`` on dual ``args`` with one ``key``; returns the objective's dual."""
    tan = any(a.tangent is not None for a in args)

    def final(outs, key, tan):
        return outs[0]

    final.final = True
    return Interpreter(unroll).run_jaxpr(closed, args, key, final, tan)
