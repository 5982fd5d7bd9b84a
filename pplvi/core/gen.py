"""Generative functions: probabilistic programs written in plain Python with ``pplvi.sample``.

Addresses are strings; calling a generative function at address ``"encoder"`` nests its choices under
``"encoder/..."``, so a trace's ``choices`` is a flat dict such as ``{"encoder/h": ..., "z": ...}``. Loops and
batches of random choices are written with the combinators :func:`scan` and :func:`vmap`; their choices are stacked
along a leading axis under one address. (Inside an ``@pplvi.objective`` raw ``jax.lax.scan``, ``cond`` and ``jax.vmap``
around ``pplvi.sample`` are fine too; the combinators are what give *traces* a stable structure.)

Every operation follows the generative function interface (GFI) of Cusumano-Towner et al. 2019:

* ``simulate(key, *args) -> Trace``: run forward, recording choices and per-site log densities;
* ``assess(choices, *args) -> log p``: the joint log density of given choices (observed sites included);
* ``generate(key, constraints, *args) -> (Trace, log w)``: sample the unconstrained choices from their prior,
  with ``log w`` the log density of the constrained and observed ones (importance weight, prior as proposal).

Inside an objective the key is omitted (``guide.simulate(x)``): the objective's key supplies the randomness and
each choice becomes a random choice that pplvi differentiates with its estimator.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as nd
from jax.extend.core import get_opaque_trace_state

from pplvi.core.densities import log_prob
from pplvi.core.errors import AddressError, ObjectiveError, SupportError
from pplvi.core.estimators import Estimator, default_estimator
from pplvi.core.primitives import bind_sample

SIMULATE, ASSESS, GENERATE, STAGE = "simulate", "assess", "generate", "stage"

_local = threading.local()


def _stack() -> list:
    if not hasattr(_local, "stack"):
        _local.stack = []
    return _local.stack


def in_objective() -> bool:
    """True while an objective (or a generative function called from one) is being staged."""
    return any(run.mode == STAGE for run in _stack())


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Trace:
    """The record of one run: ``choices`` (unobserved, by address), ``log_probs`` (per site, observed sites
    included), the return value ``retval``, and ``distributions``: the numpyro distribution each choice was drawn from
    (used e.g. for analytic KL terms). ``score`` is the total log density."""

    choices: dict
    log_probs: dict
    retval: Any
    distributions: dict = dataclasses.field(default_factory=dict)

    @property
    def score(self):
        return sum((jnp.sum(v) for v in self.log_probs.values()), jnp.zeros(()))

    def __getitem__(self, addr: str):
        return self.choices[addr]


class _Run:
    """One activation of a generative function's body under a mode (simulate / assess / generate / stage)."""

    def __init__(self, mode, key=None, constraints=None, estimators=None, prefix="", records=True):
        self.mode = mode
        self.records = records
        self.trace_state = get_opaque_trace_state(convention="pplvi")
        self.key = key
        self.constraints = dict(constraints or {})
        self.estimators = dict(estimators or {})
        self.prefix = prefix
        self.choices: dict = {}
        self.log_probs: dict = {}
        self.dists: dict = {}
        self.weight = jnp.zeros(())
        self.visited: set[str] = set()  # every address below this run, relative, for missing/unexpected checks
        self.local: set[str] = set()

    def path(self, addr: str) -> str:
        return f"{self.prefix}/{addr}" if self.prefix else addr

    def next_key(self):
        if self.key is None:
            return None
        self.key, sub = jax.random.split(self.key)
        return sub

    def claim(self, addr):
        if self.records and get_opaque_trace_state(convention="pplvi") != self.trace_state:
            raise ObjectiveError(
                f"the random choice '{self.path(addr)}' is drawn inside a JAX transformation (lax.scan / cond / "
                "while_loop / jax.vmap / jax.jit) within a generative function, where its trace cannot be recorded. "
                "Write the inner code as its own @pplvi.gen function and use the combinators pplvi.scan, pplvi.vmap "
                "or pplvi.switch / pplvi.cond, which stack or select its choices."
            )
        if not isinstance(addr, str) or not addr or "/" in addr:
            raise AddressError(
                f"address {addr!r} at '{self.path('?')}' is not valid: use a non-empty string without '/' "
                "(nesting is expressed by calling a generative function at an address)."
            )
        if addr in self.local:
            raise AddressError(
                f"duplicate address '{self.path(addr)}': each random choice in one run needs its own address. "
                "Inside a Python loop use f-strings (f'z{i}'), or use pplvi.scan / pplvi.vmap to stack choices."
            )
        self.local.add(addr)
        self.visited.add(addr)

    def sample(self, addr, dist, obs, estimator):
        self.claim(addr)
        if obs is not None:
            _check_support(self.path(addr), dist, obs)
            self.log_probs[addr] = jnp.sum(log_prob(dist, obs))
            self.weight = self.weight + self.log_probs[addr]  # observations are constraints of the model
            return obs
        if self.mode in (ASSESS, GENERATE) and addr in self.constraints:
            x = jnp.asarray(self.constraints[addr])
            _check_support(self.path(addr), dist, x)
            lp = jnp.sum(log_prob(dist, x))
            self.weight = self.weight + lp
        elif self.mode == ASSESS:
            given = sorted(self.constraints)
            raise AddressError(
                f"assess: no value for the random choice '{self.path(addr)}'. Given at this level: {given}. "
                "Pass every unobserved choice in `choices` (addresses are '/'-joined paths)."
            )
        else:
            if self.key is None:  # staged inside an objective: the interpreter draws it
                est = self.estimators.get(addr, estimator) or default_estimator(dist)
                if not isinstance(est, Estimator):
                    raise ObjectiveError(
                        f"estimator for '{self.path(addr)}' is {est!r}, not a pplvi Estimator "
                        "(pplvi.reparam, pplvi.reinforce, pplvi.enum, pplvi.mvd, pplvi.baseline(...))."
                    )
                x = bind_sample(self.path(addr), dist, est)
            else:
                x = dist.sample(self.next_key())
            lp = jnp.sum(log_prob(dist, x))
        self.choices[addr] = x
        self.log_probs[addr] = lp
        self.dists[addr] = dist
        return x

    def call(self, addr, gf: GenerativeFunction, args):
        self.claim(addr)
        child = _Run(
            self.mode,
            key=self.next_key(),
            constraints=_below(self.constraints, addr),
            estimators={**gf.estimators, **_below(self.estimators, addr)},
            prefix=self.path(addr),
        )
        ret = gf._execute(child, args)
        self.adopt(addr, child)
        return ret

    def adopt(self, addr, child: _Run):
        for a, v in child.choices.items():
            self.choices[f"{addr}/{a}"] = v
        for a, v in child.log_probs.items():
            self.log_probs[f"{addr}/{a}"] = v
        for a, v in child.dists.items():
            self.dists[f"{addr}/{a}"] = v
        self.visited |= {f"{addr}/{a}" for a in child.visited}
        self.weight = self.weight + child.weight


def _below(mapping: Mapping, addr: str) -> dict:
    head = addr + "/"
    return {k[len(head):]: v for k, v in mapping.items() if k.startswith(head)}


def _check_support(path: str, dist, value):
    """Raise SupportError for a concrete value outside the support (traced values cannot be checked eagerly)."""
    leaves = jax.tree_util.tree_leaves((dist, value))
    if any(isinstance(x, jax.core.Tracer) for x in leaves):
        return
    try:
        ok = np.all(np.asarray(dist.support(jnp.asarray(value))))
    except Exception:  # a support without a checkable predicate
        return
    if not ok:
        raise SupportError(
            f"the value at '{path}' lies outside the support of {type(dist).__name__} ({dist.support}): "
            f"{np.asarray(value)!r}. Fix the observed data or choose a distribution whose support contains it."
        )


def sample(addr: str, dist, obs=None, *, estimator: Estimator | None = None):
    """A random choice at ``addr``.

    ``dist`` is a numpyro distribution, or a generative function applied to its arguments (``encoder(x)``), whose
    choices are then nested under ``addr``. ``obs`` observes the value (its log density counts in the model's joint
    density). ``estimator`` picks the gradient strategy used when an objective differentiates through this choice
    (default: reparam when the distribution has ``rsample``, otherwise reinforce)."""
    stack = _stack()
    if not stack:
        raise ObjectiveError(
            f"pplvi.sample('{addr}', ...) was called outside a generative function or objective. Decorate the "
            "function with @pplvi.gen and run it with .simulate(key, ...), or with @pplvi.objective."
        )
    run = stack[-1]
    if isinstance(dist, Call):
        if obs is not None or estimator is not None:
            raise ObjectiveError(f"'{run.path(addr)}': obs= and estimator= apply to distributions, not to calls.")
        return run.call(addr, dist.gf, dist.args)
    if isinstance(dist, GenerativeFunction):
        raise ObjectiveError(
            f"'{run.path(addr)}': pass the generative function applied to its arguments, "
            f"pplvi.sample('{addr}', {dist.name}(...))."
        )
    if not isinstance(dist, nd.Distribution):
        raise ObjectiveError(
            f"'{run.path(addr)}': expected a numpyro distribution or a generative function call, got "
            f"{type(dist).__name__}."
        )
    return run.sample(addr, dist, obs, estimator)


@dataclasses.dataclass(frozen=True)
class Call:
    """A generative function applied to arguments: a distribution over its traces, used with ``pplvi.sample``."""

    gf: GenerativeFunction
    args: tuple


def _looks_like_key(x) -> bool:
    if not hasattr(x, "dtype"):
        return False
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        return True
    return x.dtype == jnp.uint32 and jnp.shape(x) == (2,)


class GenerativeFunction:
    """Base class: subclasses define ``_execute(run, args)``."""

    name = "generative_function"
    estimators: Mapping[str, Estimator] = {}

    def __call__(self, *args) -> Call:
        return Call(self, args)

    def _root(self, mode, key, constraints, args, check_unused=True):
        run = _Run(mode, key=key, constraints=constraints, estimators=self.estimators)
        ret = self._execute(run, args)
        if check_unused and mode in (ASSESS, GENERATE):
            extra = sorted(set(constraints) - run.visited)
            if extra:
                raise AddressError(
                    f"{mode}: unexpected addresses {extra} are not random choices of {self.name}. "
                    f"Its choices are {sorted(run.visited)}."
                )
        unknown = sorted(set(self.estimators) - run.visited)
        if unknown:
            raise AddressError(
                f"with_estimators names {unknown}, which {self.name} never samples. Its addresses are "
                f"{sorted(run.visited)}."
            )
        return run, ret

    def simulate(self, *args) -> Trace:
        """``simulate(key, *args)``; inside an objective ``simulate(*args)`` (no key)."""
        if in_objective():
            if args and _looks_like_key(args[0]):
                raise ObjectiveError(
                    f"{self.name}.simulate received a PRNG key inside an objective. Inside @pplvi.objective call "
                    f"{self.name}.simulate(*args) without a key: the objective's key drives every choice."
                )
            run, ret = self._root(STAGE, None, {}, args)
        else:
            if not args or not _looks_like_key(args[0]):
                raise ObjectiveError(f"{self.name}.simulate(key, *args) needs a jax.random key first.")
            run, ret = self._root(SIMULATE, args[0], {}, args[1:])
        return Trace(run.choices, run.log_probs, ret, run.dists)

    def assess(self, choices: Mapping, *args):
        """Joint log density of ``choices`` (a dict address -> value, or a Trace) with observed sites."""
        if isinstance(choices, Trace):
            choices = choices.choices
        run, _ = self._root(ASSESS, None, dict(choices), args)
        return sum((jnp.sum(v) for v in run.log_probs.values()), jnp.zeros(()))

    def generate(self, *args):
        """``generate(key, constraints, *args) -> (trace, log_weight)``; inside an objective no key."""
        if in_objective():
            constraints, rest = args[0], args[1:]
            run, ret = self._root(STAGE if not constraints else GENERATE, None, dict(constraints), rest)
        else:
            key, constraints, rest = args[0], args[1], args[2:]
            run, ret = self._root(GENERATE, key, dict(constraints), rest)
        return Trace(run.choices, run.log_probs, ret, run.dists), run.weight

    def with_estimators(self, mapping: Mapping[str, Estimator]) -> GenerativeFunction:
        """A copy whose choices at the given addresses ('/'-joined paths) use the given estimators."""
        new = _copy(self)
        new.estimators = {**self.estimators, **mapping}
        return new


def _copy(gf):
    new = object.__new__(type(gf))
    new.__dict__.update(gf.__dict__)
    return new


def with_estimators(gf: GenerativeFunction, mapping: Mapping[str, Estimator]) -> GenerativeFunction:
    """Choose estimators per address from outside the model: ``with_estimators(guide, {"z": pplvi.enum})``."""
    return gf.with_estimators(mapping)


class FunctionGF(GenerativeFunction):
    """A Python function whose random choices are ``pplvi.sample`` calls."""

    def __init__(self, fn: Callable):
        self.fn = fn
        self.name = getattr(fn, "__name__", "gen")
        self.estimators = {}
        functools.update_wrapper(self, fn)

    def _execute(self, run, args):
        stack = _stack()
        stack.append(run)
        try:
            return self.fn(*args)
        finally:
            stack.pop()

    def __repr__(self):
        return f"<pplvi.gen {self.name}>"


def gen(fn: Callable) -> GenerativeFunction:
    """Decorate a Python function as a generative function."""
    return FunctionGF(fn)


def _stacked_child(run: _Run, n: int):
    """Per-iteration keys and constraints for a combinator's ``n`` independent sub-runs."""
    keys = None if run.key is None else jax.random.split(run.next_key(), n)
    return keys, dict(run.constraints)


def _sub_run(run: _Run, key, constraints):
    return _Run(run.mode, key=key, constraints=constraints, estimators=run.estimators, prefix=run.prefix)


def _finish(run: _Run, probe: _Run, choices, log_probs, weight, dists=None):
    run.choices.update(choices)
    run.dists.update(dists or {})
    run.log_probs.update(log_probs)
    run.visited |= probe.visited
    run.local |= probe.local
    run.weight = run.weight + jnp.sum(weight)


class ScanGF(GenerativeFunction):
    """``scan(step, length)``: ``step(carry, x) -> (carry, y)`` iterated like ``jax.lax.scan``; every choice of
    ``step`` is stacked along a leading axis of size ``length`` at the same address."""

    def __init__(self, step: GenerativeFunction, length: int | None = None, reverse: bool = False):
        self.step, self.length, self.reverse = step, length, reverse
        self.name = f"scan({step.name})"
        self.estimators = {}

    def _execute(self, run, args):
        init, xs = args
        leaves = jax.tree_util.tree_leaves(xs)
        n = self.length if self.length is not None else (leaves[0].shape[0] if leaves else None)
        if n is None:
            raise ObjectiveError(f"{self.name}: give length= when xs is None.")
        keys, cons = _stacked_child(run, n)
        probes = []

        def body(carry, inp):
            x, key, c = inp
            child = _sub_run(run, key, c)
            carry, y = self.step._execute(child, (carry, x))
            probes.append(child)
            return carry, (y, child.choices, child.log_probs, child.weight, child.dists)

        carry, (ys, choices, lps, w, dists) = jax.lax.scan(
            body, init, (xs, keys, cons), length=n, reverse=self.reverse
        )
        _finish(run, probes[-1], choices, lps, w, dists)
        return carry, ys


class VmapGF(GenerativeFunction):
    """``vmap(gf, in_axes)``: independent copies of ``gf`` over a batch axis, like ``jax.vmap``; every choice is
    stacked along a leading axis at the same address."""

    def __init__(self, gf: GenerativeFunction, in_axes=0, axis_size: int | None = None):
        self.gf, self.in_axes, self.axis_size = gf, in_axes, axis_size
        self.name = f"vmap({gf.name})"
        self.estimators = {}

    def _execute(self, run, args):
        axes = self.in_axes if isinstance(self.in_axes, tuple) else (self.in_axes,) * len(args)
        sizes = [
            leaf.shape[ax]
            for a, ax in zip(args, axes)
            if ax is not None
            for leaf in jax.tree_util.tree_leaves(a)
        ]
        n = self.axis_size if self.axis_size is not None else (sizes[0] if sizes else None)
        if n is None:
            raise ObjectiveError(f"{self.name}: no batched argument; give axis_size=.")
        keys, cons = _stacked_child(run, n)
        probes = []

        def one(a, key, c):
            child = _sub_run(run, key, c)
            ret = self.gf._execute(child, a)
            probes.append(child)
            return ret, child.choices, child.log_probs, child.weight, child.dists

        ret, choices, lps, w, dists = jax.vmap(one, in_axes=(axes, 0, 0), axis_size=n)(tuple(args), keys, cons)
        _finish(run, probes[-1], choices, lps, w, dists)
        return ret


def scan(step: GenerativeFunction, length: int | None = None, reverse: bool = False) -> GenerativeFunction:
    """Iterate a generative step function; see :class:`ScanGF`."""
    return ScanGF(step, length, reverse)


def vmap(gf: GenerativeFunction, in_axes=0, axis_size: int | None = None) -> GenerativeFunction:
    """Batch a generative function over independent copies; see :class:`VmapGF`."""
    return VmapGF(gf, in_axes, axis_size)


class SwitchGF(GenerativeFunction):
    """``switch(*branches)`` called with ``(index, *args)``: runs ``branches[index](*args)`` like ``lax.switch``.

    The trace holds the union of the branches' addresses: choices of branches not taken are zeros and their log
    densities are 0. ``assess`` therefore takes values for every address of every branch and ignores those of the
    branches not taken. Branches must return values of the same structure, and an address shared by branches must
    have the same shape in each."""

    def __init__(self, *branches: GenerativeFunction):
        self.branches = branches
        self.name = f"switch({', '.join(b.name for b in branches)})"
        self.estimators = {}

    def _execute(self, run, args):
        index, *bargs = args
        key = run.next_key()
        cons = dict(run.constraints)
        probes: list[_Run] = []

        def make(i):
            def fn(key, cons, bargs):
                child = _sub_run(run, key, cons)
                ret = self.branches[i]._execute(child, tuple(bargs))
                probes.append(child)
                return ret, child.choices, child.log_probs, child.weight

            return fn

        shapes = [jax.eval_shape(make(i), key, cons, bargs) for i in range(len(self.branches))]
        union_choices = {a: s for sh in shapes for a, s in sh[1].items()}
        union_lps = {a: s for sh in shapes for a, s in sh[2].items()}

        def padded(i):
            def fn(key, cons, bargs):
                ret, choices, lps, w = make(i)(key, cons, bargs)
                choices = {a: choices.get(a, jnp.zeros(s.shape, s.dtype)) for a, s in union_choices.items()}
                lps = {a: lps.get(a, jnp.zeros(s.shape, s.dtype)) for a, s in union_lps.items()}
                return ret, choices, lps, w

            return fn

        index = jnp.asarray(index).astype(jnp.int32)
        ret, choices, lps, w = jax.lax.switch(index, [padded(i) for i in range(len(self.branches))], key, cons, bargs)
        merged = _Run(run.mode)
        for p in probes:
            merged.visited |= p.visited
            merged.local |= p.local
        _finish(run, merged, choices, lps, w)
        return ret


def switch(*branches: GenerativeFunction) -> GenerativeFunction:
    """Select one of several generative functions by an index; see :class:`SwitchGF`."""
    return SwitchGF(*branches)


def cond(true_branch: GenerativeFunction, false_branch: GenerativeFunction) -> GenerativeFunction:
    """``cond(t, f)`` called with ``(pred, *args)`` runs ``t(*args)`` if ``pred`` else ``f(*args)``."""
    gf = SwitchGF(false_branch, true_branch)
    gf.name = f"cond({true_branch.name}, {false_branch.name})"
    return gf
