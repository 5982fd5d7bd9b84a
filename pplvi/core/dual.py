"""Dual numbers and the views estimators get of a random choice: its distribution and its continuation.

A :class:`Dual` is a primal value with a forward-mode tangent; ``tangent=None`` is a symbolic zero, so programs that
do not depend on the parameters being differentiated carry no tangent arithmetic at all.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from pplvi.core import densities


class Dual(NamedTuple):
    """A value and its tangent (``None`` means zero).

    A continuation's result may also carry ``costs``: for each ``jax.vmap`` (by id) the per-lane sums of the costs
    emitted by ``pplvi.add_cost`` inside it, downstream of the current point. Score-function estimators use them to
    multiply each lane's score only by that lane's own downstream costs (Rao-Blackwellization)."""

    primal: Any
    tangent: Any = None
    costs: Any = None


def is_float(x) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def zeros_tangent(x):
    """The zero tangent of ``x`` (float0 for integer and boolean values, as jax.jvp expects)."""
    if is_float(x):
        return jnp.zeros(jnp.shape(x), jnp.result_type(x))
    return jnp.zeros(jnp.shape(x), jax.dtypes.float0)


def instantiate(d: Dual) -> Dual:
    """Replace a symbolic-zero tangent of a float value by explicit zeros (needed where structure must be static)."""
    if d.tangent is None and is_float(d.primal):
        return Dual(d.primal, jnp.zeros(jnp.shape(d.primal), jnp.result_type(d.primal)))
    return d


def add_tangents(a, b):
    if a is None:
        return b
    if b is None:
        return a
    return a + b


def scale_tangent(t, s):
    return None if t is None else t * s


def jvp(fn: Callable, args: list[Dual]) -> tuple[Any, Any]:
    """Forward-mode ``fn(*primals)`` with symbolic zeros: only arguments with tangents are differentiated.

    Returns the primal output pytree and its tangent pytree (``None`` where the output is not float or no argument
    had a tangent)."""
    primals = [a.primal for a in args]
    idx = [i for i, a in enumerate(args) if a.tangent is not None and is_float(a.primal)]
    if not idx:
        return fn(*primals), None

    def partial(*xs):
        full = list(primals)
        for i, x in zip(idx, xs):
            full[i] = x
        return fn(*full)

    out, tan = jax.jvp(partial, [primals[i] for i in idx], [args[i].tangent for i in idx])
    tan = jax.tree_util.tree_map(lambda p, t: t if is_float(p) else None, out, tan)
    return out, tan


class DualDistribution:
    """The distribution at a random choice, as an estimator sees it.

    ``lanes`` are the sizes of the ``jax.vmap`` axes the choice was batched over: every value at this choice has
    shape ``lanes + batch_shape + event_shape`` and the lanes are independent draws from per-lane distributions.
    ``map`` applies a per-lane function of the (per-lane) numpyro distribution to per-lane arguments and returns a
    :class:`Dual` whose tangent is the forward-mode derivative with respect to the distribution's parameters.
    """

    def __init__(self, tree, leaves: list[Dual], lanes: tuple[int, ...], addr: str, lane_ids: tuple[int, ...] = ()):
        self.tree = tree
        self.leaves = leaves
        self.lanes = tuple(lanes)
        self.lane_ids = tuple(lane_ids)
        self.addr = addr
        shapes = [jnp.shape(leaf.primal)[len(self.lanes):] for leaf in leaves]
        example = jax.tree_util.tree_unflatten(
            tree, [jnp.zeros(s, jnp.result_type(leaf.primal)) for s, leaf in zip(shapes, leaves)]
        )
        self.example = example  # a per-lane distribution of the right family and shapes (do not use its values)
        self.batch_shape = tuple(example.batch_shape)
        self.event_shape = tuple(example.event_shape)

    def without_independent(self) -> DualDistribution:
        """The same choice seen through ``Independent`` wrappers (``.to_event(k)``): the base distribution, whose
        batch dims include the event dims they reinterpreted. Values, and the sum of their per-component log
        densities, are unchanged; estimators that work per component (enumeration, measure-valued derivatives) see
        every element as a component. Returns ``self`` for any other distribution."""
        import numpyro.distributions as nd

        example = self.example
        if not isinstance(example, nd.Independent):
            return self
        tree = jax.tree_util.tree_structure(example.base_dist)
        base_leaves = jax.tree_util.tree_leaves(example.base_dist)
        mine = jax.tree_util.tree_leaves(example)
        if len(base_leaves) != len(mine) or any(a.shape != b.shape for a, b in zip(base_leaves, mine)):
            return self
        return DualDistribution(tree, self.leaves, self.lanes, self.addr, self.lane_ids).without_independent()

    @property
    def has_tangent(self) -> bool:
        return any(leaf.tangent is not None for leaf in self.leaves)

    @property
    def components(self) -> int:
        """Number of independent components: lanes times batch elements."""
        return math.prod(self.lanes) * math.prod(self.batch_shape)

    @property
    def value_shape(self) -> tuple[int, ...]:
        return self.lanes + self.batch_shape + self.event_shape

    def _per_lane(self, fn: Callable) -> Callable:
        for _ in self.lanes:
            fn = jax.vmap(fn)
        return fn

    def map(self, fn: Callable, *lane_args) -> Dual:
        """``fn(per_lane_distribution, *per_lane_args)`` for every lane, differentiated in the parameters."""
        tree = self.tree

        def whole(*leaves):
            return self._per_lane(lambda ls, *a: fn(jax.tree_util.tree_unflatten(tree, list(ls)), *a))(
                leaves, *lane_args
            )

        out, tan = jvp(whole, self.leaves)
        return Dual(out, tan)

    def lane_keys(self, key):
        if not self.lanes:
            return key
        return jax.random.split(key, math.prod(self.lanes)).reshape(self.lanes)

    def sample(self, key) -> jax.Array:
        """A draw (no tangent): ``lanes + batch_shape + event_shape``."""
        return jax.lax.stop_gradient(self.map(lambda d, k: d.sample(k), self.lane_keys(key)).primal)

    def rsample(self, key) -> Dual:
        """A reparameterized draw with its pathwise tangent."""
        return self.map(lambda d, k: d.rsample(k), self.lane_keys(key))

    def log_prob(self, x) -> Dual:
        """Per-component log density of ``x`` (shape ``lanes + batch_shape``), with its parameter tangent."""
        return self.map(lambda d, v: densities.log_prob(d, v), x)

    def score(self, x):
        """Per-lane score: the tangent of ``log p(x)`` summed over batch dims (shape ``lanes``), or ``None``."""
        if not self.has_tangent:
            return None
        t = self.log_prob(x).tangent
        return None if t is None else t.reshape(self.lanes + (-1,)).sum(-1)

    def params(self, fn: Callable) -> Dual:
        """A per-lane quantity of the distribution, e.g. ``d.params(lambda dist: dist.probs)``."""
        return self.map(lambda d: fn(d))


class Continuation:
    """The rest of the program after a random choice, as a function of the choice's value.

    ``kont(x)`` runs it in dual mode (``x`` a :class:`Dual` or a plain value, tangent zero) and returns the dual of
    the objective; ``kont.primal(x)`` runs it without tangents (cheaper, e.g. for the extra evaluations of
    enumeration and measure-valued derivatives). An optional ``key`` gives the rest of the program fresh randomness;
    by default every call shares the same downstream randomness (common random numbers), which keeps each call an
    unbiased estimate of the conditional expectation.
    """

    def __init__(self, run: Callable, key, tangents: bool = True):
        self._run = run
        self._key = key
        self._tangents = tangents

    def __call__(self, x, key=None) -> Dual:
        x = x if isinstance(x, Dual) else Dual(x, None)
        return self._run(x, self._key if key is None else key, self._tangents)

    def primal(self, x, key=None):
        x = x.primal if isinstance(x, Dual) else x
        return self._run(Dual(x, None), self._key if key is None else key, False).primal

    def primal_with_costs(self, x, key=None) -> Dual:
        """Like :meth:`primal`, but returns the whole :class:`Dual` (tangent ``None``) with its per-lane costs."""
        x = x.primal if isinstance(x, Dual) else x
        return self._run(Dual(x, None), self._key if key is None else key, False)

    def rest_depends_on(self, x, lane_id) -> bool:
        """Whether the value of the continuation *other than* the costs emitted by ``pplvi.add_cost`` in the lanes of
        the ``vmap`` ``lane_id`` can depend on ``x``: a conservative dataflow check of the continuation's jaxpr
        (traced once more, primal only, with those lane costs left out of its value). ``False`` proves that
        changing ``x`` changes the objective only through those per-lane costs."""
        from pplvi.core.primitives import tainted_outputs

        x = x.primal if isinstance(x, Dual) else x
        with excluding_lane_costs(lane_id):
            closed = jax.make_jaxpr(lambda v: self.primal(v))(jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)))
        return tainted_outputs(closed.jaxpr, [True])[0]


_EXCLUDED_LANE_COSTS: contextvars.ContextVar[frozenset] = contextvars.ContextVar("pplvi_excluded", default=frozenset())


@contextlib.contextmanager
def excluding_lane_costs(lane_id):
    """While tracing inside this context, costs emitted in the lanes of the ``vmap`` ``lane_id`` are reported per
    lane but not added to the objective's value (used by :meth:`Continuation.rest_depends_on`)."""
    token = _EXCLUDED_LANE_COSTS.set(_EXCLUDED_LANE_COSTS.get() | {lane_id})
    try:
        yield
    finally:
        _EXCLUDED_LANE_COSTS.reset(token)


def lane_costs_excluded(lane_id) -> bool:
    return lane_id in _EXCLUDED_LANE_COSTS.get()
