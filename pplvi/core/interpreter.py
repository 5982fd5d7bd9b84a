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

import equinox as eqx
import jax
import jax.numpy as jnp

from pplvi.core import _jax_private
from pplvi.core.dual import Continuation, Dual, DualDistribution, add_tangents, instantiate, jvp
from pplvi.core.errors import EstimatorError
from pplvi.core.primitives import random_sites, sample_p, subjaxprs

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
    def fn(*xs):
        return _jax_private.bind_equation(eqn, *xs)

    out, tan = jvp(fn, ins)
    if not eqn.primitive.multiple_results:
        out, tan = [out], [tan]
    if tan is None:
        tan = [None] * len(out)
    return [Dual(o, t) for o, t in zip(out, tan)]


def _with_score(result: Dual, score, offset) -> Dual:
    tangent = result.tangent
    if score is not None:
        tangent = add_tangents(tangent, result.primal * score)
    if offset is not None:
        tangent = add_tangents(tangent, -offset)
    return Dual(result.primal, tangent)


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
        if eqn.primitive is sample_p:
            return [eqn]
        key = id(eqn)
        if key not in self._memo:
            self._memo[key] = [s for sub in subjaxprs(eqn) for s in random_sites(sub)]
        return self._memo[key]

    def needs_continuation(self, eqn) -> list[str]:
        return [s.params["addr"] for s in self.sites(eqn) if _estimator_class(s).needs_continuation]

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
            outs, score, offset = self.local_eqn(eqn, ins, sub, tan)
            env.update(zip(eqn.outvars, outs))
            return _with_score(self.run(eqns, i + 1, env, key, done, tan), score, offset)
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
        return result if tan else Dual(result.primal, None)

    def _cps_cond(self, eqn, ins, key, after, tan):
        index, ops = ins[0].primal, ins[1:]

        def branch(closed):
            def fn(key):
                d = self.run_jaxpr(closed, ops, key, after, tan)
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
        jaxpr = closed.jaxpr
        env = dict(zip(jaxpr.constvars, [Dual(c, None) for c in closed.consts]))
        env.update(zip(jaxpr.invars, _strip(ins, tan)))
        score = offset = None
        for eqn in jaxpr.eqns:
            e_ins = [_read(env, v, tan) for v in eqn.invars]
            if not self.sites(eqn):
                env.update(zip(eqn.outvars, _strip(_eval_eqn(eqn, e_ins), tan)))
                continue
            key, sub = jax.random.split(key)
            if eqn.primitive is sample_p:
                dist, est = _site_views(eqn, e_ins)
                est.check(dist)
                x, s, b = est.local(sub, dist)
                outs = [x if tan else Dual(x.primal, None)]
            else:
                outs, s, b = self.local_eqn(eqn, e_ins, sub, tan)
            if tan:
                score, offset = add_tangents(score, s), add_tangents(offset, b)
            env.update(zip(eqn.outvars, outs))
        return [_read(env, v, tan) for v in jaxpr.outvars], score, offset

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
        addrs = [s.params["addr"] for s in self.sites(eqn)]
        raise EstimatorError(
            f"the random choice(s) {addrs} sit inside `{name}`, which pplvi cannot differentiate through "
            "soundly. Move them out of it (custom_jvp / custom_vjp / checkpoint functions are opaque to pplvi)."
        )

    def _local_scan(self, eqn, ins, key, tan):
        n_consts, n_carry = _jax_private.scan_arity(eqn)
        body = eqn.params["jaxpr"]
        consts, init, xs = ins[:n_consts], ins[n_consts:n_consts + n_carry], ins[n_consts + n_carry:]
        init = [instantiate(d) for d in init] if tan else init
        zero = jnp.zeros(())

        def fn(state, x_t):
            carry, score, offset, key = state
            key, sub = jax.random.split(key)
            x_t = [Dual(p, t) for p, t in x_t]
            outs, s, b = self.local_jaxpr(body, consts + list(carry) + x_t, sub, tan)
            new_carry = [instantiate(o) if tan else o for o in outs[:n_carry]]
            ys = [instantiate(o) if tan else o for o in outs[n_carry:]]
            if tan:
                score, offset = score + _or_zero(s), offset + _or_zero(b)
            return (new_carry, score, offset, key), [(y.primal, y.tangent) for y in ys]

        xs_in = [(x.primal, x.tangent) for x in xs]
        (carry, score, offset, _), ys = jax.lax.scan(
            fn, (list(init), zero, zero, key), xs_in, length=eqn.params["length"], reverse=eqn.params["reverse"]
        )
        outs = list(carry) + [Dual(p, t) for p, t in ys]
        return outs, (score if tan else None), (offset if tan else None)

    def _local_cond(self, eqn, ins, key, tan):
        index, ops = ins[0].primal, ins[1:]

        def branch(closed):
            def fn(key):
                outs, s, b = self.local_jaxpr(closed, ops, key, tan)
                outs = [instantiate(o) if tan else Dual(o.primal, None) for o in outs]
                return outs, (_or_zero(s) if tan else None), (_or_zero(b) if tan else None)

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
        zero = jnp.zeros(())

        def cond_fn(state):
            carry = state[0]
            fn = jax.extend.core.jaxpr_as_fun(p["cond_jaxpr"])
            return fn(*[c.primal for c in cconsts], *[c.primal for c in carry])[0]

        def body_fn(state):
            carry, score, offset, key = state
            key, sub = jax.random.split(key)
            outs, s, b = self.local_jaxpr(p["body_jaxpr"], bconsts + list(carry), sub, tan)
            outs = [instantiate(o) if tan else o for o in outs]
            if tan:
                score, offset = score + _or_zero(s), offset + _or_zero(b)
            return outs, score, offset, key

        carry, score, offset, _ = jax.lax.while_loop(cond_fn, body_fn, (list(init), zero, zero, key))
        return list(carry), (score if tan else None), (offset if tan else None)


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
    dist = DualDistribution(p["dist_tree"], ins[:n], p["lanes"], p["addr"])
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
