"""NumPyro programs as pplvi generative functions: :func:`from_numpyro`.

A NumPyro model is a Python function that calls ``numpyro.sample`` (with or without ``obs=``),
``numpyro.plate``, ``numpyro.deterministic``, ``numpyro.factor`` and NumPyro's effect handlers.
:func:`from_numpyro` turns it into a pplvi generative function, so it can be used wherever a ``@pplvi.gen``
function can:

* as a **model**: ``model.assess(choices, *args)`` is the joint log density of the latent sites in ``choices``
  and of every observed site, computed by NumPyro itself (:func:`numpyro.infer.util.compute_log_probs`, the
  per-site form of :func:`numpyro.infer.util.log_density`): plate broadcasting, ``handlers.scale`` /
  subsampling scales, ``handlers.mask`` and ``obs_mask`` are all honoured exactly as NumPyro does;
* as a **guide**: inside an ``@pplvi.objective``, ``guide.simulate(*args)`` turns every non-observed sample
  site into a pplvi random choice, differentiated with its estimator (reparam by default when the distribution
  has ``rsample``, otherwise reinforce; ``pplvi.with_estimators`` or ``infer={"pplvi_estimator": ...}`` on the
  site choose another one);
* with a key, ``simulate(key, *args)`` runs the program under ``numpyro.handlers.seed`` and records every
  latent site, and ``generate(key, constraints, *args)`` does so with some sites fixed.

Addresses are NumPyro site names (``numpyro.handlers.scope`` names such as ``"enc/z"`` are fine). Latent sites
are the trace's ``choices``; observed sites (``obs=``, ``numpyro.factor``) only contribute to ``log_probs``.
``numpyro.deterministic`` and ``numpyro.param`` sites carry no density and are not recorded; a
``numpyro.param`` keeps its initial value (pass trainable parameters as arguments of the function instead).

Not supported: ``numpyro.contrib.control_flow`` (``scan`` / ``cond``), which re-runs the body under its own
handlers (write the loop with ``numpyro.plate``, ``jax.vmap`` of the sites' parameters, or a Python loop); and
subsampling plates inside an objective (their random indices would need a NumPyro key).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax.numpy as jnp
import numpyro.distributions as nd
from numpyro import handlers
from numpyro.infer.util import compute_log_probs
from numpyro.primitives import Messenger

from pplvi.core.errors import AddressError, ObjectiveError
from pplvi.core.estimators import Estimator, default_estimator
from pplvi.core.gen import ASSESS, GENERATE, GenerativeFunction, _check_support, _Run
from pplvi.core.primitives import bind_sample

__all__ = ["NumPyroGF", "from_numpyro"]

ESTIMATOR_KEY = "pplvi_estimator"
"""Key of a sample site's ``infer`` dict naming the pplvi estimator of that site
(``numpyro.sample("z", d, infer={"pplvi_estimator": pplvi.reinforce})``)."""


class _PplviMessenger(Messenger):
    """The NumPyro handler that gives a model's latent sample sites their pplvi meaning in one run.

    It sits *outside* the model's own handlers (plates, masks, scopes), so the distribution it sees at a site
    is the one NumPyro would score. Per mode, for a non-observed site named ``name``:

    * ``assess``: the value is ``run.constraints[name]``; a missing name raises :class:`~pplvi.AddressError`;
    * ``generate``: the constrained value if given, otherwise NumPyro samples it (``handlers.seed`` below),
      or, inside an objective, it becomes a pplvi random choice;
    * ``simulate``: NumPyro samples it with the seeded key;
    * ``stage`` (inside an objective): the value is ``bind_sample(path, fn, estimator)``, a pplvi random
      choice.

    Observed sites keep their value. Every sample site's name is claimed in ``run`` (duplicates raise)."""

    def __init__(self, fn, run: _Run):
        super().__init__(fn)
        self.run = run

    def process_message(self, msg):
        if msg["type"] == "control_flow":
            raise ObjectiveError(
                f"from_numpyro: numpyro.contrib.control_flow ({msg.get('name') or 'scan/cond'}) at "
                f"'{self.run.path('?')}' is not supported: it runs its body under its own handlers. Write "
                "the loop with numpyro.plate or a Python loop."
            )
        if msg["type"] != "sample":
            return
        run, name = self.run, msg["name"]
        if name in run.local:
            raise AddressError(
                f"duplicate NumPyro site name '{run.path(name)}': each sample site in one run needs its own "
                "name."
            )
        run.local.add(name)
        run.visited.add(name)
        fn = msg["fn"]
        if msg["is_observed"]:
            if not _masked(fn):  # masked-out entries of an observation may hold anything (e.g. NaN)
                _check_support(run.path(name), fn, msg["value"])
            return
        if msg["value"] is not None:  # fixed by a handler inside the model (e.g. handlers.substitute)
            return
        if run.mode in (ASSESS, GENERATE) and name in run.constraints:
            value = jnp.asarray(run.constraints[name])
            _check_support(run.path(name), fn, value)
            msg["value"] = value
        elif run.mode == ASSESS:
            given = sorted(run.constraints)
            raise AddressError(
                f"assess: no value for the NumPyro sample site '{run.path(name)}'. Given at this level: "
                f"{given}. Pass every latent (non-observed) site in `choices`."
            )
        elif run.key is None:  # staged inside an objective: the pplvi interpreter draws it
            est = run.estimators.get(name, msg["infer"].get(ESTIMATOR_KEY)) or default_estimator(fn)
            if not isinstance(est, Estimator):
                raise ObjectiveError(
                    f"estimator for '{run.path(name)}' is {est!r}, not a pplvi Estimator "
                    "(pplvi.reparam, pplvi.reinforce, pplvi.enum, pplvi.mvd, pplvi.baseline(...))."
                )
            shape = tuple(msg["kwargs"].get("sample_shape") or ())
            drawn = fn.expand(shape + tuple(fn.batch_shape)) if shape else fn
            msg["value"] = bind_sample(run.path(name), drawn, est)
        # otherwise (simulate / generate with a key) numpyro.handlers.seed gives the key and NumPyro samples.


def _masked(fn) -> bool:
    """Whether a (possibly expanded / transformed) NumPyro distribution carries a mask."""
    while fn is not None:
        if isinstance(fn, nd.MaskedDistribution):
            return True
        fn = getattr(fn, "base_dist", None)
    return False


class NumPyroGF(GenerativeFunction):
    """A NumPyro model function as a pplvi generative function (see the module docstring)."""

    def __init__(self, model: Callable, name: str | None = None):
        self.model = model
        self.name = name or getattr(model, "__name__", "numpyro_model")
        self.estimators = {}
        functools.update_wrapper(self, model, updated=[])

    def _execute(self, run: _Run, args):
        box = {}

        def program(*a):
            box["retval"] = self.model(*a)
            return box["retval"]

        fn = _PplviMessenger(program, run)
        if run.key is not None:
            fn = handlers.seed(fn, rng_seed=run.next_key())
        # NumPyro's own per-site scoring: trace the program and score each site with scale/mask applied.
        site_log_probs, trace = compute_log_probs(fn, tuple(args), {}, {})
        for name, site in trace.items():
            if site["type"] != "sample":
                continue
            lp = jnp.asarray(site_log_probs[name])
            run.log_probs[name] = lp
            if site["is_observed"]:
                run.weight = run.weight + lp  # observations are constraints of the model
                continue
            run.choices[name] = site["value"]
            if run.mode in (ASSESS, GENERATE) and name in run.constraints:
                run.weight = run.weight + lp
        return box.get("retval")

    def __repr__(self):
        return f"<pplvi.interop.from_numpyro {self.name}>"


def from_numpyro(model: Callable, name: str | None = None) -> GenerativeFunction:
    """Wrap a NumPyro model (or guide) function as a pplvi generative function.

    ``model(*args)`` may use ``numpyro.sample`` / ``plate`` / ``deterministic`` / ``factor`` and NumPyro
    handlers; its arguments are passed positionally by ``simulate`` / ``assess`` / ``generate``.
    ``assess(choices, *args)`` equals ``numpyro.infer.util.log_density(model, args, {}, choices)[0]``; inside
    an objective ``simulate(*args)`` makes each latent site a pplvi random choice. Site names become
    addresses."""
    if not callable(model):
        raise ObjectiveError(f"from_numpyro expects a NumPyro model function, got {type(model).__name__}.")
    if isinstance(model, GenerativeFunction):
        raise ObjectiveError(f"{model!r} is already a pplvi generative function; use it directly.")
    return NumPyroGF(model, name)
