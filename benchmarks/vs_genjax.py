"""pplvi against genjax 1.0.14's ADEV (``genjax.adev``): the same programs, the same gradient strategies.

What is measured
----------------
Each row writes one objective twice, as a ``@pplvi.objective`` and as a genjax ``@expectation``, with the same plain
JAX body (the log densities live in ``_models.py``) and the same strategy at the random choice:

* ``gaussian10``: the ELBO of the 10-dimensional Gaussian model of ``numpyro.py`` with a mean-field Normal guide,
  ``reparam`` vs ``normal_reparam`` and ``reinforce`` vs ``normal_reinforce``; and once more at the level of
  generative functions (``gfi``): pplvi's ``O.elbo(model, guide)`` against a genjax ``@gen`` model and guide
  (``normal_reparam`` in the guide) combined in an ``@expectation`` by ``simulate`` / ``assess``, as in genjax.vi;
* ``mixture20``: the ELBO of the two-component mixture of ``numpyro.py`` (20 Bernoulli assignments, one vector
  choice), ``reinforce`` / ``enum`` / ``mvd`` vs ``flip_reinforce`` / ``flip_enum`` / ``flip_mvd``;
* ``scan5``: a random choice inside ``jax.lax.scan``: ``E[sum_{t<5} z_t theta]``, ``z_t ~ N(theta, 1)`` (exact
  gradient ``10 theta``), with reparam and with REINFORCE; and ``E[sum_{t<5} b_t theta]``, ``b_t ~
  Bernoulli(sigmoid(theta))``, with REINFORCE and with enumeration (pplvi needs ``@pplvi.objective(unroll=True)``
  for enum inside a scan).

Per row: ``pplvi_ms`` / ``genjax_ms``: one jitted gradient estimate, ``jax.jit(lambda key, p: obj.grad(key, p))``
against ``jax.jit(genjax.seed(lambda p: expectation.grad_estimate(p)))`` (genjax 1.0 takes keys through
``genjax.seed``), median of interleaved samples, min/max, ``ratio = pplvi_ms / genjax_ms``; XLA flops; time to the
first gradient (building the program, tracing, compiling, running) in a fresh Python process (best of 3; 1 with
``--quick``); and a **correctness** check: each system's mean gradient over many keys against the exact gradient
(``*_grad_max_abs_z``: largest per-coordinate ``|mean - exact| / standard error``; ``*_correct``: all ``|z| < 5``;
``genjax_key_dependent``: does genjax's estimate change with the key at all; ``timing_comparable``: both correct, since
a wrong, key-independent estimator compiles to a near-constant program). Nothing is asserted.

Rerun
-----
::

    .venv/bin/python benchmarks/genjax.py            # full
    .venv/bin/python benchmarks/genjax.py --quick    # a few minutes on 2 CPU cores
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import _harness as H
import genjax
import jax
import jax.numpy as jnp
import numpyro.distributions as nd
from _models import (
    GAUSS_X,
    LATENT,
    gauss_check_params,
    gauss_exact_elbo,
    gauss_log_weight,
    mix_exact_elbo,
    mix_init,
    mix_log_weight,
)
from genjax.adev import expectation, flip_enum, flip_mvd, flip_reinforce, normal_reinforce, normal_reparam

import pplvi
from pplvi import objectives as O

SUITE = "genjax"
T = 5  # scan length


# ----------------------------------------------------------------------------------------------------------------
# Programs: each builder returns an (unjitted) gradient function grad(key, params)
# ----------------------------------------------------------------------------------------------------------------
def pplvi_gauss(estimator):
    @pplvi.objective
    def elbo(params):
        z = pplvi.sample("z", nd.Normal(params["loc"], jnp.exp(params["log_scale"])), estimator=estimator)
        return gauss_log_weight(z, params)

    return elbo.grad


def genjax_gauss(primitive):
    @expectation
    def elbo(params):
        z = primitive(params["loc"], jnp.exp(params["log_scale"]))
        return gauss_log_weight(z, params)

    return genjax.seed(elbo.grad_estimate)


@pplvi.gen
def gauss_model(params):
    z = pplvi.sample("z", nd.Normal(jnp.zeros(LATENT), 1.0))
    pplvi.sample("x", nd.Normal(z, 1.0), obs=GAUSS_X)


@pplvi.gen
def gauss_guide(params):
    pplvi.sample("z", nd.Normal(params["loc"], jnp.exp(params["log_scale"])))


def pplvi_gauss_gfi():
    return O.elbo(gauss_model, gauss_guide).grad


@genjax.gen
def gj_gauss_model():
    z = genjax.normal(jnp.zeros(LATENT), 1.0) @ "z"
    genjax.normal(z, 1.0) @ "x"


@genjax.gen
def gj_gauss_guide(params):
    normal_reparam(params["loc"], jnp.exp(params["log_scale"])) @ "z"


def genjax_gauss_gfi():
    @expectation
    def elbo(params):  # genjax.vi's elbo: simulate the guide, assess the model on its choices plus the data
        trace = gj_gauss_guide.simulate(params)
        log_p, _ = gj_gauss_model.assess({"z": trace.get_choices()["z"], "x": GAUSS_X})
        return jnp.sum(log_p) + jnp.sum(trace.get_score())  # vector sites score per element; the score is -log q

    return genjax.seed(elbo.grad_estimate)


def pplvi_mixture(estimator):
    @pplvi.objective
    def elbo(params):
        c = pplvi.sample("c", nd.Bernoulli(probs=jax.nn.sigmoid(params["logits"])), estimator=estimator)
        return mix_log_weight(c, params)

    return elbo.grad


def genjax_mixture(primitive):
    @expectation
    def elbo(params):
        return mix_log_weight(primitive(jax.nn.sigmoid(params["logits"])), params)

    return genjax.seed(elbo.grad_estimate)


def pplvi_scan_normal(estimator):
    @pplvi.objective
    def objective(theta):
        def body(total, _):
            z = pplvi.sample("z", nd.Normal(theta, 1.0), estimator=estimator)
            return total + z * theta, None

        return jax.lax.scan(body, 0.0, None, length=T)[0]

    return objective.grad


def genjax_scan_normal(primitive):
    @expectation
    def objective(theta):
        def body(total, _):
            return total + primitive(theta, 1.0) * theta, None

        return jax.lax.scan(body, 0.0, None, length=T)[0]

    return genjax.seed(objective.grad_estimate)


def pplvi_scan_flip(estimator):
    @pplvi.objective(unroll=estimator is pplvi.enum)  # enum needs each iteration's continuation
    def objective(theta):
        def body(total, _):
            b = pplvi.sample("b", nd.Bernoulli(probs=jax.nn.sigmoid(theta)), estimator=estimator)
            return total + b * theta, None

        return jax.lax.scan(body, 0.0, None, length=T)[0]

    return objective.grad


def genjax_scan_flip(primitive):
    @expectation
    def objective(theta):
        def body(total, _):
            return total + primitive(jax.nn.sigmoid(theta)).astype(jnp.float32) * theta, None

        return jax.lax.scan(body, 0.0, None, length=T)[0]

    return genjax.seed(objective.grad_estimate)


def scan_normal_exact(theta):
    return T * theta**2  # E[z theta] = theta^2 per step


def scan_flip_exact(theta):
    return T * theta * jax.nn.sigmoid(theta)


@dataclass(frozen=True)
class Case:
    case: str
    estimator: str  # "pplvi strategy / genjax primitive"
    pplvi: Callable[[], Callable]
    genjax: Callable[[], Callable]
    params: Callable[[], object]
    exact: Callable  # exact objective: its gradient is the reference

    @property
    def key(self) -> str:
        return self.case


CASES = [
    Case("gaussian10 elbo", "reparam / normal_reparam", lambda: pplvi_gauss(pplvi.reparam),
         lambda: genjax_gauss(normal_reparam), gauss_check_params, gauss_exact_elbo),
    Case("gaussian10 elbo (gfi)", "reparam / normal_reparam", pplvi_gauss_gfi, genjax_gauss_gfi,
         gauss_check_params, gauss_exact_elbo),
    Case("gaussian10 elbo", "reinforce / normal_reinforce", lambda: pplvi_gauss(pplvi.reinforce),
         lambda: genjax_gauss(normal_reinforce), gauss_check_params, gauss_exact_elbo),
    Case("mixture20 elbo", "reinforce / flip_reinforce", lambda: pplvi_mixture(pplvi.reinforce),
         lambda: genjax_mixture(flip_reinforce), mix_init, mix_exact_elbo),
    Case("mixture20 elbo", "enum / flip_enum", lambda: pplvi_mixture(pplvi.enum),
         lambda: genjax_mixture(flip_enum), mix_init, mix_exact_elbo),
    Case("mixture20 elbo", "mvd / flip_mvd", lambda: pplvi_mixture(pplvi.mvd),
         lambda: genjax_mixture(flip_mvd), mix_init, mix_exact_elbo),
    Case("scan5 normal", "reparam / normal_reparam", lambda: pplvi_scan_normal(pplvi.reparam),
         lambda: genjax_scan_normal(normal_reparam), lambda: jnp.array(1.5), scan_normal_exact),
    Case("scan5 normal", "reinforce / normal_reinforce", lambda: pplvi_scan_normal(pplvi.reinforce),
         lambda: genjax_scan_normal(normal_reinforce), lambda: jnp.array(1.5), scan_normal_exact),
    Case("scan5 flip", "reinforce / flip_reinforce", lambda: pplvi_scan_flip(pplvi.reinforce),
         lambda: genjax_scan_flip(flip_reinforce), lambda: jnp.array(0.7), scan_flip_exact),
    Case("scan5 flip", "enum (unroll=True) / flip_enum", lambda: pplvi_scan_flip(pplvi.enum),
         lambda: genjax_scan_flip(flip_enum), lambda: jnp.array(0.7), scan_flip_exact),
]
SMOKE_CASES = [CASES[0], CASES[6]]


def find(key: str) -> Case:
    return next(c for c in CASES if c.key + "|" + c.estimator == key)


def first_gradient_child(key: str, system: str) -> dict:
    """Phases (seconds) to the first gradient of a fresh ``jax.jit``, program construction included."""
    case = find(key)
    params = case.params()
    H.warm_up()
    return H.staged_first_call(lambda: ((case.pplvi if system == "pplvi" else case.genjax)(),
                                        (jax.random.key(0), params)))


def measure(case: Case, mode: H.Mode) -> dict:
    params = case.params()
    p_grad, g_grad = case.pplvi(), case.genjax()
    p_jit, g_jit = jax.jit(p_grad), jax.jit(g_grad)
    key = jax.random.key(0)
    (pt, gt), repeat = H.interleaved_ms([lambda: p_jit(key, params), lambda: g_jit(key, params)], mode.samples)
    row = {"case": f"{case.case}: {case.estimator}", "program": case.case, "estimator": case.estimator}
    row.update(H.stats("pplvi", pt))
    row.update(H.stats("genjax", gt))
    row["ratio"] = row["pplvi_ms"] / row["genjax_ms"]
    row["paired_ratio"] = H.paired_ratio(pt, gt)
    row["samples"], row["calls_per_sample"] = mode.samples, repeat
    for system, fn in (("pplvi", p_grad), ("genjax", g_grad)):
        row[f"{system}_flops"] = H.xla_flops(fn, key, params)
    script, spec = str(Path(__file__).resolve()), case.key + "|" + case.estimator
    for system in ("pplvi", "genjax"):
        phases = H.first_call_s(script, [spec, system], mode, lambda system=system: first_gradient_child(spec, system))
        row.update(H.first_call_fields(system, phases))

    exact = jax.grad(case.exact)(params)
    if isinstance(exact, jax.Array) and exact.ndim == 0:
        row["exact_grad"] = float(exact)
    for system, fn in (("pplvi", p_grad), ("genjax", g_grad)):
        check = H.gradient_check(lambda k, fn=fn: fn(k, params), mode.grad_keys, exact)
        if check.get("grad_mean") is not None and len(check["grad_mean"]) == 1:
            row[f"{system}_grad_mean"] = check["grad_mean"][0]
        row[f"{system}_grad_max_abs_z"] = check["grad_max_abs_z"]
        row[f"{system}_grad_var"] = check["grad_var"]
        row[f"{system}_key_dependent"] = check["key_dependent"]
        row[f"{system}_correct"] = check["unbiased"]
    row["grad_keys"] = mode.grad_keys
    # a wrong, key-independent gradient compiles to a near-constant program: its time says nothing
    row["timing_comparable"] = row["pplvi_correct"] and row["genjax_correct"]
    return row


def main(argv=None) -> dict:
    args, mode = H.parse_args(__doc__.split("\n\n")[0], argv)
    if args.first:
        print(json.dumps(first_gradient_child(*args.first)))
        return {}
    H.warm_up()
    rows = []
    for case in SMOKE_CASES if mode.name == "smoke" else CASES:
        row = measure(case, mode)
        rows.append(row)
        print(f"{row['case']}: pplvi {row['pplvi_ms']:.4f} ms, genjax {row['genjax_ms']:.4f} ms "
              f"(ratio {row['ratio']:.2f}); correct: pplvi {row['pplvi_correct']}, genjax {row['genjax_correct']}",
              flush=True)
    result = {**H.header(mode), "suite": SUITE, "genjax_version": genjax_version(), "rows": rows}
    path = H.write_results(SUITE, result, args.out)
    print(f"wrote {path}")
    return result


def genjax_version() -> str:
    from importlib.metadata import version

    return version("genjax")


if __name__ == "__main__":
    main()
