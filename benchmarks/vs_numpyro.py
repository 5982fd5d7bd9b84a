"""pplvi against NumPyro SVI: the same models, guides and estimators.

What is measured
----------------
Each row pairs a NumPyro loss (``Trace_ELBO``, ``TraceGraph_ELBO``, ``RenyiELBO``) with the pplvi objective that
computes the same estimator on the same model and guide:

* ``gaussian10``: ``z ~ N(0, I_10)``, ``x ~ N(z, I)`` observed (``x = linspace(-1, 1, 10)``), mean-field Normal
  guide with parameters ``loc`` and ``log_scale``. NumPyro rows with the hand-written guide (``numpyro.param``)
  and with ``AutoNormal`` (pplvi has no autoguides: its side is the hand-written guide). Exact log evidence and
  exact ELBO are known (the posterior is ``N(x/2, I/2)``, inside the family).
* ``mixture20``: 20 points, two unit-variance Gaussian components with learned means ``locs`` and Bernoulli(1/2)
  assignments ``c_i``; the guide is ``c_i ~ Bernoulli(logits_i)`` (a discrete guide). NumPyro's
  ``TraceGraph_ELBO`` (score function, Rao-Blackwellized along the data plate) against pplvi's ELBO with
  ``reinforce`` (plain score function), ``enum`` (per-component enumeration) and ``mvd`` at ``c``; and
  ``Trace_ELBO`` against ``reinforce`` (NumPyro's ``Trace_ELBO`` drops the score term of a non-reparameterizable
  guide site: see the gradient check). ``O.elbo`` with a vector choice multiplies every component's score by the
  whole ELBO; the row ``per-datum elbo`` writes the same ELBO with one choice per lane of a ``jax.vmap`` and
  ``pplvi.add_cost`` per datum, which is the estimator ``TraceGraph_ELBO`` computes (score times its own datum's
  terms). The exact ELBO is a sum over components.
* ``vae_mnist``: the VAE of ``overhead.py`` (binarized MNIST, encoder 784-200-(10+10), decoder 10-200-784,
  Bernoulli logits, ``equinox.nn.MLP``) with batch 128, ELBO summed over the batch as NumPyro's plate does.
  NumPyro registers the networks with ``numpyro.contrib.module.eqx_module``.

Per row:

* ``pplvi_ms`` / ``numpyro_ms``: one jitted gradient: ``jax.jit(lambda key, p, x: obj.value_and_grad(key, p, x))``
  for pplvi, ``jax.jit(lambda key, p, x: jax.value_and_grad(lambda p: loss.loss(key, constrain(p), model, guide,
  x))(p))`` for NumPyro (``constrain`` is ``svi.constrain_fn``, exactly what ``SVI.update`` differentiates). Median
  of interleaved samples (min/max too); ``ratio = pplvi_ms / numpyro_ms``; ``paired_ratio`` is the median over
  rounds of the same-round ratio;
* ``pplvi_step_ms`` / ``numpyro_step_ms``: a full optimizer step, both with ``optax.adam`` (NumPyro through
  ``numpyro.optim.optax_to_numpyro``): ``jax.jit(svi.update)`` against a jitted pplvi step doing the same key split,
  gradient and Adam update;
* ``pplvi_flops`` / ``numpyro_flops``: XLA cost analysis of the two gradient programs;
* ``pplvi_first_s`` / ``numpyro_first_s``: time to the first optimizer step in a fresh Python process (best of 3;
  1 with ``--quick``), after importing everything and a library-neutral JAX warm-up: for NumPyro ``SVI(...)``,
  ``svi.init`` (which runs the model and, for ``AutoNormal``, finds initial values) and the first
  ``jax.jit(svi.update)`` call; for pplvi the objective, ``opt.init`` and the first call of the jitted step. The
  phases are recorded too: ``*_first_setup_s`` (building; ``svi.init``), ``*_first_trace_s`` (tracing and lowering
  the step), ``*_first_compile_s`` (XLA) and ``*_first_run_s``;
* ``pplvi_final`` / ``numpyro_final``: the ELBO at each system's parameters after the same number of Adam steps
  from the same initial values (AutoNormal: its own initialization), evaluated exactly (``gaussian10``,
  ``mixture20``) or by Monte Carlo on 1024 held-out images (``vae_mnist``, per datum); ``log_evidence`` where known;
* gradient check (hand guides, ELBO rows): each estimator's mean over many keys at the initial parameters against
  the exact gradient: ``*_grad_max_abs_z``, ``*_unbiased`` (all ``|z| < 5``), and ``*_grad_var`` (summed
  per-coordinate variance);
* ``same_estimator``: whether both sides compute the same gradient estimator (see ``Spec.same_estimator``);
* ``bar_step``: for the same estimator, ``yes`` when ``ratio <= 1`` (pplvi's gradient no slower than NumPyro's),
  ``tie`` up to 1.05, else ``no``; ``n/a`` for different estimators. ``bar_first``: ``pplvi_first_s <= 0.5 *
  numpyro_first_s``.

Nothing is asserted. CPU timings on a shared machine are noisy: compare ratios, not absolute times.

Rerun
-----
::

    .venv/bin/python benchmarks/numpyro.py            # full (about 10 minutes on 2 CPU cores)
    .venv/bin/python benchmarks/numpyro.py --quick    # a few minutes
    .venv/bin/python benchmarks/numpyro.py --smoke --out /tmp/x   # seconds (the tests)
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import _harness as H
import equinox as eqx
import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as nd
import optax
from _models import (
    GAUSS_X,
    LATENT,
    MIX_X,
    gauss_exact_elbo,
    gauss_init,
    gauss_log_evidence,
    make_vae_nets,
    mix_exact_elbo,
    mix_init,
)
from numpyro.contrib.module import eqx_module
from numpyro.infer import SVI, RenyiELBO, Trace_ELBO, TraceGraph_ELBO
from numpyro.infer.autoguide import AutoNormal
from numpyro.optim import optax_to_numpyro

import pplvi
from pplvi import objectives as O

SUITE = "numpyro"
VAE_BATCH, VAE_EVAL = 128, 1024


# ----------------------------------------------------------------------------------------------------------------
# gaussian10 (see _models.py)
# ----------------------------------------------------------------------------------------------------------------
@pplvi.gen
def gauss_model(params, x):
    z = pplvi.sample("z", nd.Normal(jnp.zeros(LATENT), 1.0))
    pplvi.sample("x", nd.Normal(z, 1.0), obs=x)


@pplvi.gen
def gauss_guide(params, x):
    pplvi.sample("z", nd.Normal(params["loc"], jnp.exp(params["log_scale"])))


def np_gauss_model(x):
    z = numpyro.sample("z", nd.Normal(jnp.zeros(LATENT), 1.0).to_event(1))
    numpyro.sample("x", nd.Normal(z, 1.0).to_event(1), obs=x)


def np_gauss_guide(x):
    init = gauss_init()
    loc = numpyro.param("loc", init["loc"])
    log_scale = numpyro.param("log_scale", init["log_scale"])
    numpyro.sample("z", nd.Normal(loc, jnp.exp(log_scale)).to_event(1))


def auto_to_common(p):
    return {"loc": p["z_auto_loc"], "log_scale": jnp.log(p["z_auto_scale"])}


# ----------------------------------------------------------------------------------------------------------------
# mixture20
# ----------------------------------------------------------------------------------------------------------------
@pplvi.gen
def mix_model(params, x):
    c = pplvi.sample("c", nd.Bernoulli(probs=jnp.full(x.shape, 0.5)))
    pplvi.sample("x", nd.Normal(params["locs"][c.astype(jnp.int32)], 1.0), obs=x)


@pplvi.gen
def mix_guide(params, x):
    pplvi.sample("c", nd.Bernoulli(logits=params["logits"]))


@pplvi.objective
def mix_elbo_per_datum(params, x):
    """The mixture ELBO written per datum: one Bernoulli choice per lane of a ``jax.vmap``, each lane emitting its
    own terms with ``pplvi.add_cost``. A lane's score then multiplies only its own datum's cost: the
    Rao-Blackwellization ``TraceGraph_ELBO`` does along its plate."""

    def datum(logit, x_i):
        c = pplvi.sample("c", nd.Bernoulli(logits=logit), estimator=pplvi.reinforce)
        log_p = nd.Normal(params["locs"][c.astype(jnp.int32)], 1.0).log_prob(x_i) + jnp.log(0.5)
        pplvi.add_cost(log_p - nd.Bernoulli(logits=logit).log_prob(c))

    jax.vmap(datum)(params["logits"], x)
    return jnp.zeros(())


def np_mix_model(x):
    locs = numpyro.param("locs", mix_init()["locs"])
    with numpyro.plate("data", x.shape[0]):
        c = numpyro.sample("c", nd.Bernoulli(0.5))
        numpyro.sample("x", nd.Normal(locs[c.astype(jnp.int32)], 1.0), obs=x)


def np_mix_guide(x):
    logits = numpyro.param("logits", mix_init()["logits"])
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("c", nd.Bernoulli(logits=logits))


# ----------------------------------------------------------------------------------------------------------------
# vae_mnist
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class VAE:
    """The networks' static parts (closed over) and the programs of both systems."""

    encoder: eqx.nn.MLP
    decoder: eqx.nn.MLP

    def __post_init__(self):
        enc_p, self.enc_static = eqx.partition(self.encoder, eqx.is_inexact_array)
        dec_p, self.dec_static = eqx.partition(self.decoder, eqx.is_inexact_array)
        self.params0 = {"encoder": enc_p, "decoder": dec_p}
        enc_static, dec_static = self.enc_static, self.dec_static

        @pplvi.gen
        def model(params, x):
            decoder = eqx.combine(params["decoder"], dec_static)
            z = pplvi.sample("z", nd.Normal(jnp.zeros((x.shape[0], LATENT)), 1.0))
            pplvi.sample("x", nd.Bernoulli(logits=jax.vmap(decoder)(z)), obs=x)

        @pplvi.gen
        def guide(params, x):
            out = jax.vmap(eqx.combine(params["encoder"], enc_static))(x)
            pplvi.sample("z", nd.Normal(out[:, :LATENT], jnp.exp(out[:, LATENT:])))

        encoder0, decoder0 = self.encoder, self.decoder

        def np_model(x):
            decoder = eqx_module("decoder", decoder0)
            with numpyro.plate("batch", x.shape[0]):
                z = numpyro.sample("z", nd.Normal(0.0, 1.0).expand([LATENT]).to_event(1))
                numpyro.sample("x", nd.Bernoulli(logits=jax.vmap(decoder)(z)).to_event(1), obs=x)

        def np_guide(x):
            encoder = eqx_module("encoder", encoder0)
            out = jax.vmap(encoder)(x)
            with numpyro.plate("batch", x.shape[0]):
                numpyro.sample("z", nd.Normal(out[:, :LATENT], jnp.exp(out[:, LATENT:])).to_event(1))

        self.model, self.guide, self.np_model, self.np_guide = model, guide, np_model, np_guide

    def elbo_per_datum(self, params, key, x):
        """Monte Carlo ELBO per datum (hand-written JAX): the common yardstick for both systems' final params."""
        encoder = eqx.combine(params["encoder"], self.enc_static)
        decoder = eqx.combine(params["decoder"], self.dec_static)

        def one(x, key):
            out = encoder(x)
            loc, scale = out[:LATENT], jnp.exp(out[LATENT:])
            z = loc + scale * jax.random.normal(key, (LATENT,))
            log_w = jnp.sum(nd.Normal(0.0, 1.0).log_prob(z)) + jnp.sum(nd.Bernoulli(logits=decoder(z)).log_prob(x))
            return log_w - jnp.sum(nd.Normal(loc, scale).log_prob(z))

        return jnp.mean(jax.vmap(one)(x, jax.random.split(key, x.shape[0])))


def vae_to_common(p):
    return {"encoder": p["encoder$params"], "decoder": p["decoder$params"]}


# ----------------------------------------------------------------------------------------------------------------
# Rows
# ----------------------------------------------------------------------------------------------------------------
ESTIMATORS = {"reinforce": pplvi.reinforce, "enum": pplvi.enum, "mvd": pplvi.mvd}
PER_DATUM = "reinforce, add_cost per datum"  # the estimator label of mix_elbo_per_datum


@dataclass(frozen=True)
class Spec:
    model: str  # gaussian10 | mixture20 | vae_mnist
    numpyro_loss: str  # Trace_ELBO | TraceGraph_ELBO | RenyiELBO
    pplvi_estimator: str = "reparam"  # estimator at the guide's choice
    guide: str = "hand"  # hand | AutoNormal
    alpha: float | None = None  # RenyiELBO / pplvi renyi
    particles: int = 1
    steps: int = 1000  # optimizer steps for the final objective (full mode)
    lr: float = 0.05

    @property
    def key(self) -> str:
        return f"{self.model}:{self.guide}:{self.numpyro_loss}:{self.pplvi_estimator}"

    @property
    def same_estimator(self) -> bool:
        """Do both sides compute the same gradient estimator? Reparameterized ELBO / Renyi: yes.
        ``TraceGraph_ELBO`` is the score function Rao-Blackwellized along the plate: the per-datum ``add_cost`` ELBO
        (``TraceGraph_ELBO`` also drops the zero-mean pathwise term of ``-log q``). Not: ``O.elbo`` with plain
        ``reinforce`` (not Rao-Blackwellized), ``enum`` and ``mvd`` (other estimators), and ``Trace_ELBO`` on a
        discrete guide (it drops the score term: biased)."""
        if self.pplvi_estimator == "reparam":
            return True
        return self.numpyro_loss == "TraceGraph_ELBO" and self.pplvi_estimator == PER_DATUM

    @property
    def pplvi_objective(self) -> str:
        if self.pplvi_estimator == PER_DATUM:
            return "per-datum elbo"
        if self.alpha is None:
            return "elbo"
        return f"renyi(alpha={self.alpha:g}, K={self.particles})"

    @property
    def numpyro_name(self) -> str:
        if self.alpha is None:
            return self.numpyro_loss
        return f"RenyiELBO(alpha={self.alpha:g}, num_particles={self.particles})"

    @property
    def case(self) -> str:
        pplvi_side = f"{self.pplvi_objective} [{self.pplvi_estimator}]"
        return f"{self.model} ({self.guide} guide): {self.numpyro_name} vs {pplvi_side}"


SPECS = [
    Spec("gaussian10", "Trace_ELBO", steps=1000),
    Spec("gaussian10", "TraceGraph_ELBO", steps=1000),
    Spec("gaussian10", "RenyiELBO", alpha=0.5, particles=8, steps=1000),
    Spec("gaussian10", "Trace_ELBO", guide="AutoNormal", steps=1000),
    Spec("mixture20", "TraceGraph_ELBO", "reinforce", steps=2000),
    Spec("mixture20", "TraceGraph_ELBO", PER_DATUM, steps=2000),
    Spec("mixture20", "TraceGraph_ELBO", "enum", steps=2000),
    Spec("mixture20", "TraceGraph_ELBO", "mvd", steps=2000),
    Spec("mixture20", "Trace_ELBO", "reinforce", steps=2000),
    Spec("vae_mnist", "Trace_ELBO", steps=1000, lr=1e-3),
]
SMOKE_SPECS = [SPECS[0], SPECS[5]]  # gaussian10 / Trace_ELBO and mixture20 / add_cost


@dataclass
class Problem:
    """Everything one row needs; the ``make_*`` factories run inside the timed region of the first step."""

    spec: Spec
    data: jax.Array  # the batch used for timing (and for every step unless ``batches`` is given)
    make_pplvi: Callable[[], tuple[pplvi.Objective, dict]]
    make_numpyro: Callable[[], tuple[Callable, Callable, object]]
    to_common: Callable[[dict], dict]  # NumPyro's constrained params -> pplvi's params
    evaluate: Callable[[dict], float]  # the final ELBO of pplvi-style params
    exact_elbo: Callable | None = None  # exact ELBO (for the gradient check), pplvi-style params
    log_evidence: float | None = None
    batches: Callable[[int], jax.Array] | None = None
    notes: dict = field(default_factory=dict)


def numpyro_loss(spec: Spec):
    if spec.numpyro_loss == "Trace_ELBO":
        return Trace_ELBO()
    if spec.numpyro_loss == "TraceGraph_ELBO":
        return TraceGraph_ELBO()
    return RenyiELBO(alpha=spec.alpha, num_particles=spec.particles)


def pplvi_objective(spec: Spec, model, guide):
    if spec.pplvi_estimator != "reparam":
        guide = pplvi.with_estimators(guide, {"c": ESTIMATORS[spec.pplvi_estimator]})
    if spec.alpha is None:
        return O.elbo(model, guide)
    return O.renyi(model, guide, spec.alpha, spec.particles)


def mix_objective(spec: Spec) -> pplvi.Objective:
    if spec.pplvi_estimator == PER_DATUM:
        return mix_elbo_per_datum
    return pplvi_objective(spec, mix_model, mix_guide)


def build(spec: Spec) -> Problem:
    if spec.model == "gaussian10":
        np_guide = (lambda: AutoNormal(np_gauss_model)) if spec.guide == "AutoNormal" else (lambda: np_gauss_guide)
        return Problem(
            spec,
            GAUSS_X,
            make_pplvi=lambda: (pplvi_objective(spec, gauss_model, gauss_guide), gauss_init()),
            make_numpyro=lambda: (np_gauss_model, np_guide(), numpyro_loss(spec)),
            to_common=auto_to_common if spec.guide == "AutoNormal" else dict,
            evaluate=lambda p: float(gauss_exact_elbo(p)),
            exact_elbo=gauss_exact_elbo if spec.alpha is None and spec.guide == "hand" else None,
            log_evidence=gauss_log_evidence(),
        )
    if spec.model == "mixture20":
        return Problem(
            spec,
            MIX_X,
            make_pplvi=lambda: (mix_objective(spec), mix_init()),
            make_numpyro=lambda: (np_mix_model, np_mix_guide, numpyro_loss(spec)),
            to_common=dict,
            evaluate=lambda p: float(mix_exact_elbo(p)),
            exact_elbo=mix_exact_elbo,
        )
    images, source = H.load_mnist(20_000)
    vae = VAE(*make_vae_nets())
    train, held_out = images[:-VAE_EVAL], jnp.asarray(images[-VAE_EVAL:])
    n_batches = train.shape[0] // VAE_BATCH
    eval_fn = jax.jit(lambda p, k: jax.vmap(lambda k: vae.elbo_per_datum(p, k, held_out))(jax.random.split(k, 8)))
    return Problem(
        spec,
        jnp.asarray(train[:VAE_BATCH]),
        make_pplvi=lambda: (O.elbo(vae.model, vae.guide), vae.params0),
        make_numpyro=lambda: (vae.np_model, vae.np_guide, numpyro_loss(spec)),
        to_common=vae_to_common,
        evaluate=lambda p: float(jnp.mean(eval_fn(p, jax.random.key(99)))),
        batches=lambda i: jnp.asarray(train[(i % n_batches) * VAE_BATCH:(i % n_batches + 1) * VAE_BATCH]),
        notes={"data": source},
    )


# ----------------------------------------------------------------------------------------------------------------
# The two systems' gradient and step functions
# ----------------------------------------------------------------------------------------------------------------
def pplvi_functions(obj: pplvi.Objective, lr: float):
    opt = optax.adam(lr)

    def grad(key, params, x):
        return obj.value_and_grad(key, params, x)

    def step(state, x):  # the same work as svi.update: split the key, one gradient, one Adam update
        params, opt_state, key = state
        key, step_key = jax.random.split(key)
        value, grads = obj.value_and_grad(step_key, params, x)
        updates, opt_state = opt.update(jax.tree.map(jnp.negative, grads), opt_state, params)  # optax minimizes
        return (optax.apply_updates(params, updates), opt_state, key), value

    def init(params):
        return params, opt.init(params), jax.random.key(0)

    return grad, step, init


def numpyro_functions(model, guide, loss, lr: float, x):
    svi = SVI(model, guide, optax_to_numpyro(optax.adam(lr)), loss)
    state = svi.init(jax.random.key(0), x)

    def grad(key, uparams, x):  # what SVI.update differentiates (unconstrained params -> constrained -> loss)
        return jax.value_and_grad(lambda p: loss.loss(key, svi.constrain_fn(p), model, guide, x))(uparams)

    return svi, state, grad


def first_step_child(key: str, system: str) -> dict:
    """Phases (seconds) from nothing built to the first optimizer step's result (this process must be fresh)."""
    spec = next(s for s in SPECS if s.key == key)
    problem = build(spec)  # data and networks: not timed
    H.warm_up()

    def setup():
        if system == "pplvi":
            obj, params = problem.make_pplvi()
            _, step, init = pplvi_functions(obj, spec.lr)
            return step, (init(params), problem.data)
        model, guide, loss = problem.make_numpyro()
        svi = SVI(model, guide, optax_to_numpyro(optax.adam(spec.lr)), loss)
        return svi.update, (svi.init(jax.random.key(0), problem.data), problem.data)

    return H.staged_first_call(setup)


def train(step: Callable, state, problem: Problem, steps: int):
    for i in range(steps):
        state, _ = step(state, problem.data if problem.batches is None else problem.batches(i))
    return H.block(state)


def measure(spec: Spec, mode: H.Mode, first_cache: dict) -> dict:
    problem = build(spec)
    x = problem.data
    obj, params0 = problem.make_pplvi()
    p_grad, p_step, p_init = pplvi_functions(obj, spec.lr)
    model, guide, loss = problem.make_numpyro()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        svi, n_state, n_grad = numpyro_functions(model, guide, loss, spec.lr, x)
    uparams0 = svi.optim.get_params(n_state.optim_state)

    p_grad_j, n_grad_j = jax.jit(p_grad), jax.jit(n_grad)
    p_step_j, n_step_j = jax.jit(p_step), jax.jit(svi.update)
    key = jax.random.key(0)
    p_state = p_init(params0)
    thunks = [
        lambda: p_grad_j(key, params0, x),
        lambda: n_grad_j(key, uparams0, x),
        lambda: p_step_j(p_state, x),
        lambda: n_step_j(n_state, x),
    ]
    (pg, ng, ps, ns), repeat = H.interleaved_ms(thunks, mode.samples)

    row = {"case": spec.case, "model": spec.model, "guide": spec.guide, "numpyro_loss": spec.numpyro_name,
           "pplvi_objective": spec.pplvi_objective, "pplvi_estimator": spec.pplvi_estimator,
           "same_estimator": spec.same_estimator}
    row.update(H.stats("pplvi", pg))
    row.update(H.stats("numpyro", ng))
    row["ratio"] = row["pplvi_ms"] / row["numpyro_ms"]
    row["paired_ratio"] = H.paired_ratio(pg, ng)
    row.update(H.stats("pplvi_step", ps))
    row.update(H.stats("numpyro_step", ns))
    row["step_ratio"] = row["pplvi_step_ms"] / row["numpyro_step_ms"]
    row["samples"], row["calls_per_sample"] = mode.samples, repeat
    row["pplvi_flops"] = H.xla_flops(p_grad, key, params0, x)
    row["numpyro_flops"] = H.xla_flops(n_grad, key, uparams0, x)

    script = str(Path(__file__).resolve())
    row.update(H.first_call_fields("pplvi", H.first_call_s(script, [spec.key, "pplvi"], mode,
                                                           lambda: first_step_child(spec.key, "pplvi"))))
    n_key = (spec.model, spec.guide, spec.numpyro_name)  # the NumPyro side of several rows is the same program
    if n_key not in first_cache:
        first_cache[n_key] = H.first_call_s(script, [spec.key, "numpyro"], mode,
                                            lambda: first_step_child(spec.key, "numpyro"))
    row.update(H.first_call_fields("numpyro", first_cache[n_key]))
    row["first_ratio"] = row["pplvi_first_s"] / row["numpyro_first_s"]

    steps = max(2, int(spec.steps * mode.steps_scale))
    p_final = train(p_step_j, p_state, problem, steps)[0]
    n_final = train(n_step_j, n_state, problem, steps)
    row["steps"], row["lr"] = steps, spec.lr
    row["pplvi_final"] = problem.evaluate(p_final)
    row["numpyro_final"] = problem.evaluate(problem.to_common(svi.get_params(n_final)))
    row["initial"] = problem.evaluate(params0) if spec.guide == "hand" else None
    row["log_evidence"] = problem.log_evidence

    if problem.exact_elbo is not None:  # same parameterization on both sides: hand guides
        exact = jax.grad(problem.exact_elbo)(params0)
        checks = {
            "pplvi": H.gradient_check(lambda k: p_grad(k, params0, x)[1], mode.grad_keys, exact),
            "numpyro": H.gradient_check(lambda k: jax.tree.map(jnp.negative, n_grad(k, uparams0, x)[1]),
                                        mode.grad_keys, exact),
        }
        for system, check in checks.items():
            row[f"{system}_grad_max_abs_z"] = check["grad_max_abs_z"]
            row[f"{system}_grad_var"] = check["grad_var"]
            row[f"{system}_unbiased"] = check["unbiased"]
        row["grad_keys"] = mode.grad_keys
    # "tie": slower by at most 5%, within what repeated runs of this suite on a shared machine disagree by;
    # "n/a": the two sides compute different estimators (the ratio is still reported)
    if not spec.same_estimator:
        row["bar_step"] = "n/a"
    else:
        row["bar_step"] = "yes" if row["ratio"] <= 1.0 else "tie" if row["ratio"] <= 1.05 else "no"
    row["bar_first"] = row["pplvi_first_s"] <= 0.5 * row["numpyro_first_s"]
    row.update(problem.notes)
    return row


def main(argv=None) -> dict:
    args, mode = H.parse_args(__doc__.split("\n\n")[0], argv)
    if args.first:
        print(json.dumps(first_step_child(*args.first)))
        return {}
    H.warm_up()
    rows, first_cache = [], {}
    for spec in SMOKE_SPECS if mode.name == "smoke" else SPECS:
        row = measure(spec, mode, first_cache)
        rows.append(row)
        print(f"{row['case']}: pplvi {row['pplvi_ms']:.3f} ms, numpyro {row['numpyro_ms']:.3f} ms "
              f"(ratio {row['ratio']:.2f}); first step {row['pplvi_first_s']:.2f} s vs "
              f"{row['numpyro_first_s']:.2f} s", flush=True)
    result = {**H.header(mode), "suite": SUITE, "rows": rows}
    path = H.write_results(SUITE, result, args.out)
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
