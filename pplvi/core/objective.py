r"""``@pplvi.objective``: a function whose return value's expectation is the objective.

.. math:: L(\theta) = \mathbb{E}_{x \sim P_\theta}[f_\theta(x)]

where :math:`P_\theta` is every random choice the function makes (guide simulations, bare ``pplvi.sample`` calls,
nested objectives). ``obj.estimate(key, *args)`` is an unbiased estimate of :math:`L`; ``obj.grad`` and
``obj.value_and_grad`` are unbiased estimates of :math:`\nabla L` built by the ADEV interpreter in forward mode and
transposed by JAX (one backward pass). ``obj.estimate`` is itself differentiable: ``jax.grad(obj.estimate,
argnums=1)`` gives the same estimator. Everything works under ``jax.jit`` and ``jax.vmap`` (e.g. many estimates at
once over a batch of keys) and with arbitrary pytrees (equinox modules included) as parameters.

Sign convention: an objective is a quantity to *maximize* (an ELBO, a log-likelihood bound); ``pplvi.fit`` ascends it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from pplvi.core.dual import Dual, is_float
from pplvi.core.errors import ObjectiveError, PPLVIError
from pplvi.core.gen import STAGE, _Run, _stack, in_objective
from pplvi.core.interpreter import evaluate
from pplvi.core.primitives import bind_cost


def _arrayify(tree):
    """Python numbers become arrays so they are traced (and differentiable), not baked in as constants."""
    return jax.tree_util.tree_map(
        lambda x: jnp.asarray(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else x, tree
    )


def _is_dynamic(x) -> bool:
    return eqx.is_array(x)


class Objective:
    """An objective program. Build with :func:`objective`."""

    def __init__(self, fn: Callable, unroll: bool = False):
        self.fn = fn
        self.unroll = unroll
        self.name = getattr(fn, "__name__", "objective")
        self._cache: dict = {}
        functools.update_wrapper(self, fn)

    def __repr__(self):
        return f"<pplvi.objective {self.name}>"

    def __hash__(self):
        return id(self)

    def __eq__(self, other):
        return self is other

    # Inside another objective, calling an objective inlines it: a nested expectation.
    def __call__(self, *args):
        if not in_objective():
            raise ObjectiveError(
                f"{self.name}(...) can only be called inside another objective. From outside use "
                f"{self.name}.estimate(key, ...), .grad(key, ...) or .value_and_grad(key, ...)."
            )
        return self.fn(*args)

    # -- staging -------------------------------------------------------------------------------------------------
    def _staged(self, leaves, treedef, static):
        def body(*ls):
            args = eqx.combine(jax.tree_util.tree_unflatten(treedef, ls), static)
            stack = _stack()
            stack.append(_Run(STAGE, records=False))
            try:
                out = self.fn(*args)
            except KeyError as e:
                if isinstance(e, PPLVIError):
                    raise
                shapes = jax.tree_util.tree_map(lambda x: f"{jnp.result_type(x).name}{list(jnp.shape(x))}", args)
                raise ObjectiveError(
                    f"{self.name} looked up {e.args[0]!r} in its arguments, which do not have it (parameter pytree "
                    f"mismatch). The arguments passed have the structure {shapes}; pass parameters with the "
                    "structure the objective expects."
                ) from e
            finally:
                stack.pop()
            out = jnp.asarray(out) if isinstance(out, (int, float)) else out
            if not isinstance(out, jax.Array) or jnp.shape(out) != () or not jnp.issubdtype(out.dtype, jnp.floating):
                shape = getattr(out, "shape", None)
                raise ObjectiveError(
                    f"objective {self.name} must return a scalar float, got {type(out).__name__} with shape "
                    f"{shape}. Reduce it (e.g. jnp.mean over a batch, jnp.sum over sites) before returning."
                )
            return out

        return jax.make_jaxpr(body)(*leaves)

    def _surrogate(self, key, args):
        dynamic, static = eqx.partition(args, _is_dynamic)
        leaves, treedef = jax.tree_util.tree_flatten(dynamic)
        closed = self._staged(leaves, treedef, static)
        unroll = self.unroll

        @jax.custom_jvp
        def value(key, *ls):
            return evaluate(closed, [Dual(x, None) for x in ls], key, unroll).primal

        def rule(primals, tangents):
            key, *ls = primals
            ts = tangents[1:]
            duals = [Dual(x, None if isinstance(t, SymbolicZero) or not is_float(x) else t) for x, t in zip(ls, ts)]
            d = evaluate(closed, duals, key, unroll)
            t = d.tangent if d.tangent is not None else jnp.zeros_like(d.primal)
            return d.primal, t.astype(d.primal.dtype)

        value.defjvp(rule, symbolic_zeros=True)
        return value(key, *leaves)

    # -- public API ----------------------------------------------------------------------------------------------
    def estimate(self, key, *args):
        """An unbiased estimate of the objective (differentiable with ``jax.grad``)."""
        _check_key(self.name, key)
        return _estimate(self, key, _arrayify(args))

    def value_and_grad(self, key, *args, argnums=0):
        """``(estimate, gradient estimate)`` with respect to ``args[argnums]`` (an int or a tuple of ints)."""
        _check_key(self.name, key)
        nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
        if any(not isinstance(n, int) or not 0 <= n < len(args) for n in nums):
            raise ObjectiveError(
                f"{self.name}: argnums={argnums!r} does not name positional arguments of the objective "
                f"(it got {len(args)} after the key)."
            )
        args = _arrayify(args)
        for n in nums:
            if not any(eqx.is_inexact_array(x) for x in jax.tree_util.tree_leaves(args[n])):
                raise ObjectiveError(
                    f"{self.name}: argument {n} has no floating-point leaves to differentiate "
                    f"(got {jax.tree_util.tree_map(lambda x: jnp.result_type(x).name, args[n])}). Use float "
                    "parameters (e.g. 1.0 rather than 1) or choose other argnums."
                )
        return _value_and_grad(self, key, args, argnums)

    def grad(self, key, *args, argnums=0):
        """An unbiased estimate of the gradient with respect to ``args[argnums]``."""
        return self.value_and_grad(key, *args, argnums=argnums)[1]


def _check_key(name, key):
    if not hasattr(key, "dtype") or not (
        jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) or (key.dtype == jnp.uint32 and key.shape[-1:] == (2,))
    ):
        raise ObjectiveError(f"{name}: the first argument must be a jax.random key, got {type(key).__name__}.")


def _jitted(obj: Objective, kind: str, fn: Callable, key, args, extra=()):
    """``jax.jit(fn)`` cached per objective, kind and static structure of ``args``.

    Arrays are traced; everything else in ``args`` (functions and other static fields of equinox modules) is part of
    the cache key. Unlike ``eqx.filter_jit`` the call returns without waiting for the result (asynchronous dispatch)."""
    dynamic, static = eqx.partition(args, eqx.is_array)
    leaves, treedef = jax.tree_util.tree_flatten(dynamic)
    static_leaves, static_tree = jax.tree_util.tree_flatten(static)
    cache_key = (kind, extra, treedef, static_tree, tuple(_hashable(x) for x in static_leaves))
    compiled = obj._cache.get(cache_key)
    if compiled is None:

        def run(key, leaves):
            return fn(obj, key, eqx.combine(jax.tree_util.tree_unflatten(treedef, leaves), static), *extra)

        compiled = obj._cache[cache_key] = jax.jit(run)
    return compiled(key, leaves)


def _hashable(x):
    try:
        hash(x)
        return x
    except TypeError:
        return ("id", id(x))


def _estimate_fn(obj: Objective, key, args):
    return obj._surrogate(key, args)


def _estimate(obj, key, args):
    return _jitted(obj, "estimate", _estimate_fn, key, args)


def _value_and_grad_fn(obj: Objective, key, args, argnums):
    nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    diff, nondiff = eqx.partition([args[i] for i in nums], eqx.is_inexact_array)

    def f(diff):
        full = list(args)
        for j, i in enumerate(nums):
            full[i] = eqx.combine(diff[j], nondiff[j])
        return obj._surrogate(key, tuple(full))

    value, grads = jax.value_and_grad(f)(diff)
    return value, grads[0] if isinstance(argnums, int) else tuple(grads)


def _value_and_grad(obj, key, args, argnums):
    return _jitted(obj, "value_and_grad", _value_and_grad_fn, key, args, (argnums,))


def add_cost(value):
    r"""Add ``sum(value)`` to the objective at this point of the program; returns ``value``.

    An objective's value is its return value plus every cost it emits. Emitting costs where they arise lets pplvi
    Rao-Blackwellize score-function estimators: a choice's score multiplies only the costs emitted *after* it (those
    emitted before cannot depend on it), and inside ``jax.vmap`` a lane's score multiplies only the costs emitted by
    the same lane (lanes of one ``vmap`` are independent given everything outside it), plus the costs outside that
    ``vmap`` and the return value. Writing a minibatch objective as

    .. code-block:: python

        jax.vmap(lambda x: pplvi.add_cost(per_datum_elbo(params, x) / batch))(xs)
        return 0.0

    keeps the variance of each datum's gradient independent of the batch size (cf. Pyro's TraceGraph_ELBO and
    genjax.vi's ``add_cost``)."""
    if not in_objective():
        raise ObjectiveError("pplvi.add_cost(...) can only be called inside an @pplvi.objective.")
    return bind_cost(value)


def objective(fn: Callable | None = None, *, unroll: bool = False):
    """Decorate a function as an objective (see :class:`Objective`).

    ``unroll=True`` lets continuation-needing estimators (enum, mvd) run inside ``lax.scan`` / ``fori_loop`` of
    static length by unrolling them at trace time."""
    if fn is None:
        return lambda f: Objective(f, unroll)
    return Objective(fn, unroll)
