"""The one primitive pplvi adds to JAX: ``sample_p``, a random choice staged into a jaxpr.

An objective program is staged with ``jax.make_jaxpr``. Each random choice becomes one ``sample_p`` equation. Its
operands are the flattened leaves of its numpyro distribution, then those of its gradient estimator, then one token
per enclosing ``jax.vmap`` (so that every lane draws independently). Its static parameters are the tree structures,
the address, the per-lane value shape and dtype, and ``lanes``: the sizes of the ``jax.vmap`` axes the choice was
batched over (outermost first). ``sample_p`` carries no key: :mod:`pplvi.core.interpreter` threads one key through the
whole program and hands each estimator its share.

``sample_p`` has no evaluation, differentiation or lowering rule of its own on purpose: only the interpreter may
give it meaning, so a program that escapes the interpreter fails loudly instead of sampling with a hidden key.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import ClosedJaxpr, Jaxpr, Primitive
from jax.interpreters import ad, batching, mlir

from pplvi.core import _jax_private
from pplvi.core.errors import EstimatorError, ObjectiveError

sample_p = Primitive("pplvi_sample")


def bind_sample(addr: str, dist: Any, estimator: Any) -> jax.Array:
    """Stage one random choice at ``addr`` drawn from ``dist`` with gradient strategy ``estimator``."""
    dist_leaves, dist_tree = jax.tree_util.tree_flatten(dist)
    # Array and float fields of an estimator are traced operands; ints, bools and the rest are static config.
    est_dynamic, est_static = eqx.partition(estimator, lambda x: isinstance(x, (jax.Array, np.ndarray, float)))
    est_leaves, est_tree = jax.tree_util.tree_flatten(est_dynamic)
    dist_leaves = [jnp.asarray(x) for x in dist_leaves]
    est_leaves = [jnp.asarray(x) for x in est_leaves]
    out = jax.eval_shape(
        lambda leaves: jax.tree_util.tree_unflatten(dist_tree, leaves).sample(jax.random.key(0)), dist_leaves
    )
    tokens, lane_ids = _jax_private.vmap_lane_tokens()
    return sample_p.bind(
        *dist_leaves,
        *est_leaves,
        *tokens,
        addr=addr,
        dist_tree=dist_tree,
        est_tree=est_tree,
        est_static=est_static,
        n_dist=len(dist_leaves),
        n_est=len(est_leaves),
        lane_ids=lane_ids,
        shape=tuple(out.shape),
        dtype=out.dtype,
        lanes=(),
    )


def _abstract_eval(*avals, addr, dist_tree, est_tree, est_static, n_dist, n_est, lane_ids, shape, dtype, lanes):
    return jax.core.ShapedArray(tuple(lanes) + tuple(shape), dtype)


def _batcher(primitive):
    def batch(args, dims, *, lanes, **params):
        # an unbatched operand has batch dim None; every operand gets the new lane axis in front
        size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
        moved = [
            jnp.broadcast_to(a, (size,) + jnp.shape(a)) if d is None else jnp.moveaxis(a, d, 0)
            for a, d in zip(args, dims)
        ]
        return primitive.bind(*moved, lanes=(size,) + tuple(lanes), **params), 0

    return batch


def _no_jvp(primals, tangents, *, addr, **_):
    raise ObjectiveError(
        f"jax differentiated through the random choice '{addr}' inside an objective. pplvi differentiates "
        "objectives itself: call obj.grad / obj.value_and_grad (or jax.grad of obj.estimate) from outside, "
        "and do not apply jax.grad/jvp inside the objective's body."
    )


def _no_lowering(ctx, *args, addr, **_):
    raise EstimatorError(
        f"the random choice '{addr}' reached the compiler outside pplvi's interpreter. Random choices only "
        "run inside gen.simulate/assess/generate or an @pplvi.objective; do not stage pplvi.sample with "
        "jax.make_jaxpr/jax.jit directly."
    )


sample_p.def_abstract_eval(_abstract_eval)
sample_p.def_impl(lambda *args, addr, **_: _no_lowering(None, addr=addr))
batching.primitive_batchers[sample_p] = _batcher(sample_p)
ad.primitive_jvps[sample_p] = _no_jvp
mlir.register_lowering(sample_p, _no_lowering)


# -- costs ------------------------------------------------------------------------------------------------------
cost_p = Primitive("pplvi_cost")


def bind_cost(value) -> jax.Array:
    """Stage ``pplvi.add_cost(value)``: an additive term of the objective emitted at this point of the program."""
    value = jnp.asarray(value)
    tokens, lane_ids = _jax_private.vmap_lane_tokens()
    return cost_p.bind(value, *tokens, lane_ids=lane_ids, lanes=())


cost_p.def_abstract_eval(lambda value, *tokens, lane_ids, lanes: value)
cost_p.def_impl(lambda *args, **_: _no_lowering(None, addr="add_cost"))
batching.primitive_batchers[cost_p] = _batcher(cost_p)
ad.primitive_jvps[cost_p] = lambda primals, tangents, **_: _no_jvp(primals, tangents, addr="add_cost")
mlir.register_lowering(cost_p, lambda ctx, *args, **_: _no_lowering(ctx, addr="add_cost"))


def _subjaxprs(params: dict) -> list[Jaxpr]:
    found = []
    for v in params.values():
        for item in v if isinstance(v, (tuple, list)) else (v,):
            if isinstance(item, ClosedJaxpr):
                found.append(item.jaxpr)
            elif isinstance(item, Jaxpr):
                found.append(item)
    return found


def random_sites(jaxpr: Jaxpr) -> list:
    """All ``sample_p`` and ``cost_p`` equations in ``jaxpr`` and, recursively, in the jaxprs its equations carry."""
    sites = []
    for eqn in jaxpr.eqns:
        if eqn.primitive is sample_p or eqn.primitive is cost_p:
            sites.append(eqn)
        else:
            for sub in _subjaxprs(eqn.params):
                sites.extend(random_sites(sub))
    return sites


def subjaxprs(eqn) -> list[Jaxpr]:
    return _subjaxprs(eqn.params)


# -- dataflow ----------------------------------------------------------------------------------------------------
_CALL_JAXPR_PARAMS = ("jaxpr", "call_jaxpr")  # pjit / closed_call / remat / custom_jvp_call carry one of these


def tainted_outputs(jaxpr: Jaxpr, tainted_inputs: list[bool]) -> list[bool]:
    """Which outputs of ``jaxpr`` can depend on the inputs flagged in ``tainted_inputs`` (a conservative forward
    dataflow: an equation's outputs depend on all its inputs, except that call-like equations are followed
    inside)."""
    tainted = {v for v, t in zip(jaxpr.invars, tainted_inputs) if t}

    def hit(v):
        return not isinstance(v, jax.extend.core.Literal) and v in tainted

    for eqn in jaxpr.eqns:
        flags = [hit(v) for v in eqn.invars]
        if not any(flags):
            continue
        inner = next((eqn.params[p] for p in _CALL_JAXPR_PARAMS if p in eqn.params), None)
        inner = inner.jaxpr if isinstance(inner, ClosedJaxpr) else inner
        if isinstance(inner, Jaxpr) and len(inner.invars) == len(eqn.invars):
            outs = tainted_outputs(inner, flags)
        else:
            outs = [True] * len(eqn.outvars)
        tainted.update(v for v, t in zip(eqn.outvars, outs) if t)
    return [hit(v) for v in jaxpr.outvars]
