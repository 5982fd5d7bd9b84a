"""genjax 1.0 generative functions as pplvi generative functions: :func:`from_genjax`.

A ``@genjax.gen`` function calls generative functions at addresses (``genjax.normal(mu, 1.0) @ "z"``,
``sub(x) @ "enc"``). :func:`from_genjax` runs its body under a handler that takes the place of genjax's own
``Simulate`` / ``Assess`` / ``Generate`` handlers and gives every addressed call its pplvi meaning:

* a genjax **distribution** (any :class:`genjax.Distribution`: the TFP-backed ``normal``, ``bernoulli``,
  ``flip``, ``categorical``, ``beta``, ``gamma``, ``poisson``, ... and distributions built with
  ``genjax.distribution``) is one random choice. Its log density is genjax's own ``logpdf``; with a key it is
  sampled by genjax's sampler under ``genjax.seed``; inside an ``@pplvi.objective`` it becomes a pplvi random
  choice whose distribution is :class:`GenJAXDistribution`, a NumPyro-distribution view of the genjax
  distribution that samples and scores with genjax. Its default estimator is reparam when the underlying TFP
  distribution is fully reparameterized and its values are floats (Normal, Beta, Gamma, ...), otherwise
  reinforce; ``pplvi.enum`` works for Bernoulli, ``flip`` and Categorical. Custom ``genjax.distribution``
  objects default to reinforce.
* a nested ``@genjax.gen`` function nests its choices under the address (``"enc/z"``);
* ``Vmap`` (``gen_fn.vmap(...)``, ``gen_fn.repeat(n)``) and ``Scan`` stack their callee's choices along a
  leading axis at the address, as ``pplvi.vmap`` / ``pplvi.scan`` do; inside an objective they are run with
  ``jax.vmap`` / ``jax.lax.scan`` around pplvi random choices;
* any other genjax generative function (``Cond``, user-defined ``GFI`` subclasses) is delegated to its own
  ``assess`` / ``simulate`` / ``generate``: it works in models and with a key, and raises
  :class:`~pplvi.ObjectiveError` naming it when used as part of a guide inside an objective.

Choices are pplvi's flat dicts of ``/``-joined addresses; :func:`from_genjax_choices` and
:func:`to_genjax_choices` convert from and to genjax's nested choice maps. genjax has no ``obs=``:
observations are choices, so a genjax model is conditioned by passing its observed addresses among the
choices, e.g. ``model.assess({**guide_trace.choices, "x": data}, *args)``. ``assess`` sums each site's log
density over its elements (genjax's ``log_density``).
"""

from __future__ import annotations

import inspect
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpyro.distributions as nd
from genjax import core as gjc
from genjax.pjax import seed as gj_seed

from pplvi.core.errors import AddressError, ObjectiveError
from pplvi.core.estimators import Estimator, default_estimator
from pplvi.core.gen import ASSESS, GENERATE, SIMULATE, GenerativeFunction, _below, _Run
from pplvi.core.primitives import bind_sample

__all__ = ["GenJAXDistribution", "GenJAXGF", "from_genjax", "from_genjax_choices", "to_genjax_choices"]


# -- choice maps ---------------------------------------------------------------------------------------------
def from_genjax_choices(choices: Any) -> dict:
    """Flatten a genjax choice map (nested dicts, or a genjax trace) into pplvi's ``{"a/b": x}`` form."""
    if isinstance(choices, gjc.Trace):
        choices = choices.get_choices()
    out: dict = {}

    def walk(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{path}/{k}" if path else str(k))
        else:
            out[path] = node

    walk(choices, "")
    return out


def to_genjax_choices(choices: Any) -> dict:
    """Nest pplvi's flat choices (``/``-joined addresses, or a pplvi Trace) as a genjax choice map."""
    choices = getattr(choices, "choices", choices)
    nested: dict = {}
    for addr, value in choices.items():
        *heads, last = addr.split("/")
        node = nested
        for h in heads:
            node = node.setdefault(h, {})
        node[last] = value
    return nested


def _at(mapping: dict, addr: str) -> dict:
    """The entries of ``mapping`` at ``addr`` or below it (keys unchanged)."""
    head = addr + "/"
    return {k: v for k, v in mapping.items() if k == addr or k.startswith(head)}


# -- a genjax distribution seen as a NumPyro distribution ----------------------------------------------------
def _tfp_instance(gen_dist, args, kwargs):
    """The TFP distribution behind a ``genjax.tfp_distribution`` (``None`` for other genjax distributions).

    genjax keeps the TFP constructor in the closures of its sampler (``wrap_sampler`` -> ``keyful_sampler`` ->
    ``dist``); only class-level facts (reparameterization, family, number of categories) are read from it."""
    try:
        sampler = gen_dist._sample.value
        keyful = inspect.getclosurevars(sampler).nonlocals["keyful_sampler"]
        ctor = inspect.getclosurevars(keyful).nonlocals["dist"]
        return ctor(*args, **kwargs)
    except Exception:  # not TFP-backed, or a genjax internals change: fall back to the conservative defaults
        return None


class _Static:
    """The non-array part of a :class:`GenJAXDistribution` (pytree aux data): the genjax distribution, the
    static leaves of its arguments, and facts read once from it. Equal when they wrap the same genjax
    distribution with the same static arguments."""

    def __init__(self, gen_dist, static_params, has_rsample: bool, enum: tuple | None):
        self.gen_dist = gen_dist
        self.static_params = static_params
        self.has_rsample = has_rsample
        self.enum = enum  # (dtype, K) for the finite supports {0..K-1} or {False, True}, else None

    def _key(self):
        leaves, tree = jax.tree_util.tree_flatten(self.static_params)
        return tree, tuple(leaves), self.has_rsample, self.enum

    def __eq__(self, other):
        if not isinstance(other, _Static) or self.gen_dist is not other.gen_dist:
            return False
        try:
            return bool(self._key() == other._key())
        except Exception:
            return False

    def __hash__(self):
        return hash(id(self.gen_dist))

    def __repr__(self):
        return f"_Static({_dist_name(self.gen_dist)})"


def _dist_name(gen_dist) -> str:
    name = getattr(getattr(gen_dist, "name", None), "value", None)
    return name or type(gen_dist).__name__


class GenJAXDistribution(nd.Distribution):
    """A genjax distribution applied to its arguments, with NumPyro's distribution interface, so a genjax
    random choice can be a pplvi random choice.

    ``sample`` runs genjax's sampler under ``genjax.seed`` (for reparameterized TFP families this draw is the
    pathwise-differentiable one), ``log_prob`` is genjax's ``logpdf``. ``batch_shape`` is the shape of
    ``logpdf`` of a draw and ``event_shape`` the rest of the draw's shape. The array arguments are the
    pytree's leaves (so pplvi differentiates through them); everything else lives in the static aux data."""

    pytree_data_fields = ("params",)
    pytree_aux_fields = ("static",)

    def __init__(self, gen_dist, args=(), kwargs=None):
        params, static_params = eqx.partition((tuple(args), dict(kwargs or {})), eqx.is_array_like)

        def shapes(p):
            a, k = eqx.combine(p, static_params)
            x = gj_seed(gen_dist.sample)(jax.random.key(0), *a, **k)
            return x, gen_dist.logpdf(x, *a, **k)

        x, lp = jax.eval_shape(shapes, params)
        nb = len(lp.shape)
        if tuple(x.shape[:nb]) == tuple(lp.shape):
            batch_shape, event_shape = tuple(lp.shape), tuple(x.shape[nb:])
        else:  # logpdf already reduced: the draw is one event
            batch_shape, event_shape = (), tuple(x.shape)
        floating = jnp.issubdtype(x.dtype, jnp.floating)
        has_rsample, enum = False, None
        tfp_dist = _tfp_instance(gen_dist, *eqx.combine(params, static_params))
        if tfp_dist is not None:
            from tensorflow_probability.substrates.jax import distributions as tfd

            has_rsample = floating and tfp_dist.reparameterization_type == tfd.FULLY_REPARAMETERIZED
            if isinstance(tfp_dist, tfd.Bernoulli):
                enum = (x.dtype, 2)
            elif isinstance(tfp_dist, tfd.Categorical):
                logits = tfp_dist.logits if tfp_dist.logits is not None else tfp_dist.probs
                enum = (x.dtype, int(jnp.shape(logits)[-1]))
        self.params = params
        self.static = _Static(gen_dist, static_params, bool(has_rsample), enum)
        super().__init__(batch_shape, event_shape, validate_args=False)

    @property
    def gen_dist(self):
        """The wrapped genjax distribution."""
        return self.static.gen_dist

    def _arguments(self):
        return eqx.combine(self.params, self.static.static_params)

    @property
    def has_rsample(self) -> bool:
        return self.static.has_rsample

    @property
    def has_enumerate_support(self) -> bool:
        return self.static.enum is not None

    def sample(self, key, sample_shape=()):
        args, kwargs = self._arguments()
        draw = gj_seed(self.gen_dist.sample)
        if not sample_shape:
            return draw(key, *args, **kwargs)
        n = 1
        for s in sample_shape:
            n *= s
        keys = jax.random.split(key, n)
        out = jax.vmap(lambda k: draw(k, *args, **kwargs))(keys)
        return out.reshape(tuple(sample_shape) + out.shape[1:])

    def log_prob(self, value):
        args, kwargs = self._arguments()
        return self.gen_dist.logpdf(value, *args, **kwargs)

    def enumerate_support(self, expand=True):
        if self.static.enum is None:
            raise NotImplementedError(f"{_dist_name(self.gen_dist)} has no finite support to enumerate.")
        dtype, k = self.static.enum
        values = jnp.arange(k).astype(dtype).reshape((k,) + (1,) * len(self.batch_shape))
        return jnp.broadcast_to(values, (k,) + self.batch_shape) if expand else values

    def __repr__(self):
        return f"GenJAXDistribution({_dist_name(self.gen_dist)}, batch_shape={self.batch_shape})"


# -- running genjax code under pplvi runs --------------------------------------------------------------------
class _Handler:
    """Stands in for genjax's ``Simulate`` / ``Assess`` / ``Generate`` handler while a ``@genjax.gen`` body
    runs for a pplvi run: every ``gen_fn(...) @ addr`` in the body arrives here."""

    def __init__(self, run: _Run):
        self.run = run

    def __call__(self, addr, gen_fn, args, kwargs=None):
        return _visit(self.run, addr, gen_fn, tuple(args), dict(kwargs or {}))


def _run_body(run: _Run, fn, args, kwargs):
    gjc.handler_stack.append(_Handler(run))
    try:
        return fn.source.value(*args, **kwargs)
    finally:
        gjc.handler_stack.pop()


def _visit(run: _Run, addr, gen_fn, args, kwargs):
    if not isinstance(addr, str):
        raise AddressError(
            f"genjax address {addr!r} at '{run.path('?')}' is not a string; pplvi addresses are strings."
        )
    run.claim(addr)
    if isinstance(gen_fn, gjc.Distribution):
        return _leaf(run, addr, gen_fn, args, kwargs)
    if isinstance(gen_fn, gjc.Fn):
        child = _Run(
            run.mode,
            key=run.next_key(),
            constraints=_below(run.constraints, addr),
            estimators=_below(run.estimators, addr),
            prefix=run.path(addr),
        )
        ret = _run_body(child, gen_fn, args, kwargs)
        run.adopt(addr, child)
        return ret
    if isinstance(gen_fn, gjc.Vmap):
        return _vmap(run, addr, gen_fn, args, kwargs)
    if isinstance(gen_fn, gjc.Scan):
        return _scan(run, addr, gen_fn, args, kwargs)
    return _opaque(run, addr, gen_fn, args, kwargs)


def _leaf(run: _Run, addr, gen_dist, args, kwargs):
    """One genjax distribution at ``addr``; mirrors ``pplvi.core.gen._Run.sample`` for a latent choice."""
    path = run.path(addr)
    if run.mode in (ASSESS, GENERATE) and addr in run.constraints:
        x = jnp.asarray(run.constraints[addr])
        lp = jnp.sum(gen_dist.assess(x, *args, **kwargs)[0])
        run.weight = run.weight + lp
    elif run.mode == ASSESS:
        given = sorted(run.constraints)
        raise AddressError(
            f"assess: no value for the genjax random choice '{path}' ({_dist_name(gen_dist)}). Given at this "
            f"level: {given}. Pass every choice, observations included, in `choices` ('/'-joined paths)."
        )
    elif run.key is None:  # staged inside an objective: the pplvi interpreter draws it
        dist = GenJAXDistribution(gen_dist, args, kwargs)
        est = run.estimators.get(addr) or default_estimator(dist)
        if not isinstance(est, Estimator):
            raise ObjectiveError(
                f"estimator for '{path}' is {est!r}, not a pplvi Estimator "
                "(pplvi.reparam, pplvi.reinforce, pplvi.enum, pplvi.mvd, pplvi.baseline(...))."
            )
        x = bind_sample(path, dist, est)
        lp = jnp.sum(dist.log_prob(x))
    else:
        x = gj_seed(gen_dist.sample)(run.next_key(), *args, **kwargs)
        lp = jnp.sum(gen_dist.logpdf(x, *args, **kwargs))
    run.choices[addr] = x
    run.log_probs[addr] = lp
    return x


def _probe(run: _Run, key, constraints) -> _Run:
    return _Run(run.mode, key=key, constraints=constraints, estimators=run.estimators, prefix=run.prefix)


def _merge(run: _Run, probe: _Run, choices, log_probs, weight):
    run.choices.update(choices)
    run.log_probs.update(log_probs)
    run.visited |= probe.visited
    run.weight = run.weight + jnp.sum(weight)


def _vmap(run: _Run, addr, gen_fn, args, kwargs):
    """``Vmap``: the callee at ``addr`` under ``jax.vmap``; its choices and log densities stacked per lane."""
    in_axes = gen_fn.in_axes.value
    in_axes = tuple(in_axes) if isinstance(in_axes, list) else in_axes
    axis_size = gen_fn.axis_size.value
    size = jax.vmap(lambda *a: jnp.zeros(()), in_axes=in_axes, axis_size=axis_size)
    n = jax.eval_shape(size, *args).shape[0]
    keys = None if run.key is None else jax.random.split(run.next_key(), n)
    probes = []

    def one(a, key, cons):
        probe = _probe(run, key, cons)
        ret = _visit(probe, addr, gen_fn.gen_fn, a, kwargs)
        probes.append(probe)
        return ret, probe.choices, probe.log_probs, probe.weight

    ret, choices, lps, w = jax.vmap(one, in_axes=(in_axes, 0, 0), axis_size=n)(
        args, keys, _at(run.constraints, addr)
    )
    _merge(run, probes[-1], choices, lps, w)
    return ret


def _scan(run: _Run, addr, gen_fn, args, kwargs):
    """``Scan``: callee ``(carry, x) -> (carry, out)`` at ``addr`` under ``jax.lax.scan``, choices stacked."""
    init, xs = args[0], args[1]
    n = gen_fn.length.value
    keys = None if run.key is None else jax.random.split(run.next_key(), n)
    probes = []

    def body(carry, inp):
        x, key, cons = inp
        probe = _probe(run, key, cons)
        carry, out = _visit(probe, addr, gen_fn.callee, (carry, x), kwargs)
        probes.append(probe)
        return carry, (out, probe.choices, probe.log_probs, probe.weight)

    inputs = (xs, keys, _at(run.constraints, addr))
    carry, (outs, choices, lps, w) = jax.lax.scan(body, init, inputs, length=n)
    _merge(run, probes[-1], choices, lps, w)
    return carry, outs


def _opaque(run: _Run, addr, gen_fn, args, kwargs):
    """Any other genjax generative function: delegated to its own GFI methods."""
    path, kind = run.path(addr), type(gen_fn).__name__
    if run.key is None and run.mode != ASSESS:
        raise ObjectiveError(
            f"'{path}': the genjax {kind} cannot be part of a guide inside a pplvi objective (its random "
            "choices cannot be handed to pplvi one by one). Supported inside objectives: distributions, "
            "@genjax.gen functions, Vmap / repeat and Scan. It works in a model (assess) and with a key."
        )
    given = _at(run.constraints, addr)
    sub = given[addr] if addr in given else (to_genjax_choices(_below(given, addr)) if given else None)
    if run.mode == ASSESS:
        if sub is None:
            raise AddressError(
                f"assess: no value for the genjax {kind} at '{path}'. Pass its choices in `choices`."
            )
        try:
            lp, ret = gen_fn.assess(sub, *args, **kwargs)
        except KeyError as e:
            raise AddressError(
                f"assess: no value for the genjax random choice '{path}/{e.args[0] if e.args else '?'}' "
                f"inside {kind}. Pass every choice in `choices`."
            ) from e
        choices = sub
        run.weight = run.weight + jnp.sum(lp)
    elif run.mode == SIMULATE:
        tr = gj_seed(gen_fn.simulate)(run.next_key(), *args, **kwargs)
        ret, choices, lp = tr.get_retval(), tr.get_choices(), -tr.get_score()
    else:
        tr, w = gj_seed(gen_fn.generate)(run.next_key(), sub, *args, **kwargs)
        ret, choices, lp = tr.get_retval(), tr.get_choices(), -tr.get_score()
        run.weight = run.weight + jnp.sum(w)
    flat = from_genjax_choices(choices) if isinstance(choices, dict) else {"": choices}
    for k, v in flat.items():
        full = f"{addr}/{k}" if k else addr
        run.choices[full] = v
        run.visited.add(full)
    run.log_probs[addr] = jnp.sum(lp)
    return ret


# -- the generative function ---------------------------------------------------------------------------------
class GenJAXGF(GenerativeFunction):
    """A ``@genjax.gen`` function as a pplvi generative function (see the module docstring)."""

    def __init__(self, gen_fn, name: str | None = None):
        self.gen_fn = gen_fn
        self.name = name or getattr(gen_fn.source.value, "__name__", "genjax_fn")
        self.estimators = {}

    def _execute(self, run: _Run, args):
        return _run_body(run, self.gen_fn, tuple(args), {})

    def __repr__(self):
        return f"<pplvi.interop.from_genjax {self.name}>"


def from_genjax(gen_fn, name: str | None = None) -> GenerativeFunction:
    """Wrap a genjax 1.0 ``@genjax.gen`` function as a pplvi generative function.

    ``assess(choices, *args)`` equals genjax's ``gen_fn.log_density(to_genjax_choices(choices), *args)``;
    ``simulate(key, *args)`` samples with genjax's samplers; inside an objective ``simulate(*args)`` makes
    every genjax random choice a pplvi random choice. To use a combinator or a distribution at the top level,
    call it at an address inside a ``@genjax.gen`` function."""
    if isinstance(gen_fn, gjc.Fn):
        return GenJAXGF(gen_fn, name)
    if isinstance(gen_fn, gjc.GFI):
        raise ObjectiveError(
            f"from_genjax expects a @genjax.gen function, got a genjax {type(gen_fn).__name__}, whose "
            "choices have no top-level addresses. Call it at an address inside a @genjax.gen function: "
            '`@genjax.gen\ndef top(*args): return comb(*args) @ "name"`.'
        )
    raise ObjectiveError(f"from_genjax expects a @genjax.gen function, got {type(gen_fn).__name__}.")
