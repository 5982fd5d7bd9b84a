"""Discrete latents: gradient variance and time to a target ELBO, pplvi's estimators vs NumPyro's TraceGraph_ELBO.

Two models, each trained and measured with every estimator pplvi offers for a discrete choice:

* ``discrete_vae``: :class:`pplvi.models.vae.DiscreteVAE` on binarized MNIST (``$PPLVI_DATA``): 30 Bernoulli latents,
  one 200-unit tanh layer each way, minibatches of 32. Groups: ``guide`` (encoder weights) and ``model`` (decoder).
* ``mixture``: a 1-D mixture of three unit-variance Gaussians (means -4, 0, 4, weights .3/.4/.3), 300 points; model
  parameters ``mu`` (3 means, a point estimate) and a free per-datum Categorical guide (logits ``phi``, 300 x 3).
  Groups: ``guide`` (``phi``) and ``model`` (``mu``). Its exact ELBO (enumeration per datum) is also the evaluation.

Estimators at the discrete choice: ``reinforce``; ``baseline`` (REINFORCE with a learned baseline, NVIL: an MLP of the
image for the VAE, one scalar per datum for the mixture, fitted by the same optimizer); ``vimco`` (4 particles,
leave-one-out baselines; note it estimates the gradient of the 4-particle bound, not of the ELBO); ``enum``; ``mvd``;
and NumPyro's ``TraceGraph_ELBO`` on the same model, guide and parameters (same networks, same optimizer).

* **Variance**: every system starts from the same parameters — the ``baseline`` estimator's parameters after a short
  warm-up, so that the learned baselines are fitted — and draws ``n`` gradient estimates (fixed minibatch); the
  variance of each coordinate is summed over a group. ``ratio`` is TraceGraph's variance over the estimator's on the
  ``guide`` group, where the estimators differ (the ``model`` group gets a pathwise-like gradient from all of them).
* **Unbiasedness** (mixture): ``grad_max_abs_z`` is the largest :math:`|z|` of the mean gradient against the exact
  one (enumeration per datum) over the 903 coordinates, at the initial parameters (uniform guide).
* **Time to target**: each system trains from the same fresh initialization for the same number of steps (Adam);
  the held-out ELBO is evaluated every ``eval_every`` steps (evaluation time excluded). The target is the ELBO that
  TraceGraph_ELBO reaches at the end of its budget; ``time_to_target_s`` is the training wall-clock at the first
  evaluation at or above it. ``discrete_elbo.png`` plots ELBO against wall-clock.

Bar (issue): enum / MVD / baseline variance at least 10x lower than TraceGraph_ELBO on the same parameters. A
constant baseline cannot reach it on the mixture: the per-datum ELBO differs by tens of nats between components, and
even the exact per-datum expectation as baseline leaves the variance within 2x of TraceGraph's (measured: 0.046 vs
0.044 learned); enumeration and MVD sum or difference the components out.

Rerun: ``python benchmarks/discrete.py [--quick]`` (or ``pplvi bench discrete``); writes ``results/discrete.json``,
``results/discrete.md`` and ``results/discrete_elbo.png``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as nd
import optax
from _harness import header, load_mnist, parse_args, write_results
from numpyro.infer import TraceGraph_ELBO

import pplvi
from pplvi import objectives as O
from pplvi.models import vae as V

SUITE = "discrete"
ESTIMATORS = ("reinforce", "baseline", "vimco", "enum", "mvd")
SYSTEMS = ESTIMATORS + ("tracegraph",)
SMOKE_SYSTEMS = ("baseline", "enum", "tracegraph")  # --smoke (the tests): fewer compilations
VIMCO_K = 4
BAR = 10.0

# sizes per mode: (variance draws, warm-up steps, training steps, evaluation every, train images, test images)
SIZES = {
    "full": dict(draws=1000, warmup=1000, steps=6000, eval_every=300, n_train=20000, n_test=1000),
    "quick": dict(draws=300, warmup=300, steps=1500, eval_every=150, n_train=5000, n_test=500),
    "smoke": dict(draws=8, warmup=4, steps=6, eval_every=3, n_train=128, n_test=32),
}


# ----------------------------------------------------------------------------------------------------------------
# Shared pieces
# ----------------------------------------------------------------------------------------------------------------
def group_variance(grads: dict[str, object]) -> dict[str, float]:
    """Sum over the coordinates of each group of the variance over draws (leading axis)."""
    out = {}
    for name, tree in grads.items():
        leaves = [leaf for leaf in jax.tree_util.tree_leaves(tree) if eqx.is_inexact_array(leaf)]
        out[name] = float(sum(jnp.sum(jnp.var(leaf, axis=0)) for leaf in leaves))
    return out


def draw_gradients(grad_fn: Callable, params, n: int, chunk: int = 50):
    """``n`` gradient estimates ``grad_fn(key, params)``, stacked on a leading axis (``chunk`` at a time)."""
    dyn, static = eqx.partition(params, eqx.is_inexact_array)
    many = jax.jit(jax.vmap(lambda k, d: grad_fn(k, eqx.combine(d, static)), in_axes=(0, None)))
    keys = jax.random.split(jax.random.key(2024), n)
    parts = [many(keys[i:i + chunk], dyn) for i in range(0, n, chunk)]
    return jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs), *parts)


def train(step: Callable, params, opt, batches: Callable, steps: int, eval_every: int, evaluate: Callable):
    """Run ``steps`` jitted ``step(params, opt_state, key, batch)`` calls; returns ``[(seconds, elbo), ...]`` with the
    training wall-clock (evaluations excluded) at every ``eval_every`` steps (and at step 0)."""
    dyn, static = eqx.partition(params, eqx.is_inexact_array)
    opt_state = opt.init(dyn)

    @jax.jit
    def jstep(dyn, opt_state, key, batch):
        grads = step(key, eqx.combine(dyn, static), batch)
        grads = eqx.filter(grads, eqx.is_inexact_array)
        updates, opt_state = opt.update(jax.tree_util.tree_map(jnp.negative, grads), opt_state, dyn)
        return optax.apply_updates(dyn, updates), opt_state

    key = jax.random.key(7)
    jax.block_until_ready(jstep(dyn, opt_state, key, batches(0)))  # compile outside the clock
    curve = [(0.0, evaluate(eqx.combine(dyn, static)))]
    elapsed = 0.0
    for i in range(steps):
        t0 = time.perf_counter()
        dyn, opt_state = jstep(dyn, opt_state, jax.random.fold_in(key, i), batches(i))
        if (i + 1) % eval_every == 0 or i + 1 == steps:
            jax.block_until_ready(dyn)
            elapsed += time.perf_counter() - t0
            curve.append((elapsed, evaluate(eqx.combine(dyn, static))))
        else:
            elapsed += time.perf_counter() - t0
    return curve, eqx.combine(dyn, static)


def ascent_grads(loss_grads, scale: float):
    """NumPyro losses are negative ELBOs summed over the batch; pplvi objectives are maximized means."""
    return jax.tree_util.tree_map(lambda g: -g / scale if eqx.is_inexact_array(g) else g, loss_grads)


# ----------------------------------------------------------------------------------------------------------------
# Model 1: discrete VAE on binarized MNIST
# ----------------------------------------------------------------------------------------------------------------
LATENT, BATCH = 30, 32


def vae_numpyro(vae, images):
    B = images.shape[0]

    def model(images):
        with numpyro.plate("batch", B):
            z = numpyro.sample("z", nd.Bernoulli(probs=jnp.full(LATENT, 0.5)).to_event(1))
            logits = jax.vmap(vae.decode)(z)
            numpyro.sample("x", nd.Bernoulli(logits=logits).to_event(1), obs=images)

    def guide(images):
        with numpyro.plate("batch", B):
            numpyro.sample("z", nd.Bernoulli(logits=jax.vmap(vae.encoder)(images)).to_event(1))

    return model, guide


def vae_tracegraph_grad(key, vae, images):
    def loss(v):
        model, guide = vae_numpyro(v, images)
        return TraceGraph_ELBO().loss(key, {}, model, guide, images)

    return ascent_grads(eqx.filter_grad(loss)(vae), images.shape[0])


def vae_grad_fn(system: str) -> Callable:
    if system == "tracegraph":
        return vae_tracegraph_grad
    objective = V.discrete_vimco(VIMCO_K) if system == "vimco" else V.discrete_elbo(system)
    return lambda key, vae, images: objective.grad(key, vae, images)


def vae_bench(sizes: dict, rows: list, curves: dict, systems=SYSTEMS) -> dict:
    images, source = load_mnist(sizes["n_train"] + sizes["n_test"])
    train_x, test_x = jnp.asarray(images[: sizes["n_train"]]), jnp.asarray(images[sizes["n_train"]:])
    n_batches = train_x.shape[0] // BATCH
    batches = lambda i: jax.lax.dynamic_slice_in_dim(train_x, (i % n_batches) * BATCH, BATCH)  # noqa: E731
    init = V.DiscreteVAE.mlp(jax.random.key(0), latent=LATENT, hidden=(200,))
    elbo_estimate = O.elbo(V.discrete_model, V.discrete_guide)

    @eqx.filter_jit
    def test_elbo(vae):
        keys = jax.random.split(jax.random.key(99), 8)
        per = jax.vmap(lambda k: jax.vmap(lambda x, i: elbo_estimate.estimate(jax.random.fold_in(k, i), vae, x))(
            test_x, jnp.arange(test_x.shape[0])))(keys)
        return jnp.mean(per)

    evaluate = lambda vae: float(test_elbo(vae))  # noqa: E731
    opt = optax.adam(1e-3)
    print(f"[discrete_vae] data: {source}", flush=True)
    # common parameters for the variance comparison: the baseline estimator's after a warm-up
    _, warm = train(vae_grad_fn("baseline"), init, opt, batches, sizes["warmup"], sizes["warmup"], lambda v: 0.0)
    fixed = batches(0)
    variance = {}
    for system in systems:
        fn = vae_grad_fn(system)
        g = draw_gradients(lambda k, v, fn=fn: fn(k, v, fixed), warm, sizes["draws"])
        variance[system] = group_variance({"guide": g.encoder, "model": g.decoder})
        print(f"[discrete_vae] {system:10s} variance {variance[system]}", flush=True)
    for system in systems:
        curve, _ = train(vae_grad_fn(system), init, opt, batches, sizes["steps"], sizes["eval_every"], evaluate)
        curves[("discrete_vae", system)] = curve
        print(f"[discrete_vae] {system:10s} {curve[-1][0]:.1f}s final test ELBO {curve[-1][1]:.2f}", flush=True)
    add_rows(rows, "discrete_vae", variance, curves)
    return {"data": source, "latent": LATENT, "batch": BATCH}


# ----------------------------------------------------------------------------------------------------------------
# Model 2: a Gaussian mixture with per-datum Categorical assignments
# ----------------------------------------------------------------------------------------------------------------
MIX_MEANS, MIX_WEIGHTS, MIX_N = (-4.0, 0.0, 4.0), (0.3, 0.4, 0.3), 300


def mixture_data():
    rng = np.random.default_rng(3)
    comp = rng.choice(3, size=MIX_N, p=MIX_WEIGHTS)
    return jnp.asarray(np.asarray(MIX_MEANS)[comp] + rng.standard_normal(MIX_N), jnp.float32)


@pplvi.gen
def mix_model(params, y, i):
    c = pplvi.sample("c", nd.Categorical(probs=jnp.asarray(MIX_WEIGHTS)))
    pplvi.sample("y", nd.Normal(params["mu"][c], 1.0), obs=y)


@pplvi.gen
def mix_guide(params, y, i):
    pplvi.sample("c", nd.Categorical(logits=params["phi"][i]))


@functools.cache
def mixture_objective(system: str) -> pplvi.Objective:
    """The mean per-datum ELBO (``vimco``: 4-particle bound) over all data, each datum's term emitted by its lane."""
    if system == "vimco":
        per_datum = O.vimco(mix_model, mix_guide, VIMCO_K)
    elif system == "baseline":
        per_datum = None
    else:
        table = {"reinforce": pplvi.reinforce, "enum": pplvi.enum, "mvd": pplvi.mvd}
        per_datum = O.elbo(mix_model, pplvi.with_estimators(mix_guide, {"c": table[system]}))

    @pplvi.objective
    def mixture_elbo(params, ys):
        n = ys.shape[0]

        def lane(y, i):
            if per_datum is None:  # NVIL-style learned scalar baseline per datum
                est = pplvi.baseline(pplvi.reinforce, params["b"][i] / n, learned=True)
                term = O.elbo(mix_model, pplvi.with_estimators(mix_guide, {"c": est}))(params, y, i)
            else:
                term = per_datum(params, y, i)
            pplvi.add_cost(term / n)

        jax.vmap(lane)(ys, jnp.arange(n))
        return jnp.zeros(())

    return mixture_elbo


def mixture_exact_elbo(params, ys):
    """Mean over data of sum_c q(c) [log p(c) + log N(y; mu_c, 1) - log q(c)]."""
    log_q = jax.nn.log_softmax(params["phi"], -1)
    log_joint = jnp.log(jnp.asarray(MIX_WEIGHTS)) + nd.Normal(params["mu"], 1.0).log_prob(ys[:, None])
    return jnp.mean(jnp.sum(jnp.exp(log_q) * (log_joint - log_q), -1))


def mixture_tracegraph_grad(key, params, ys):
    def model(params, ys):
        with numpyro.plate("data", ys.shape[0]):
            c = numpyro.sample("c", nd.Categorical(probs=jnp.asarray(MIX_WEIGHTS)))
            numpyro.sample("y", nd.Normal(params["mu"][c], 1.0), obs=ys)

    def guide(params, ys):
        with numpyro.plate("data", ys.shape[0]):
            numpyro.sample("c", nd.Categorical(logits=params["phi"]))

    g = jax.grad(lambda p: TraceGraph_ELBO().loss(key, {}, model, guide, p, ys))(params)
    return ascent_grads(g, ys.shape[0])


def mixture_grad_fn(system: str) -> Callable:
    if system == "tracegraph":
        return mixture_tracegraph_grad
    objective = mixture_objective(system)
    return lambda key, params, ys: objective.grad(key, params, ys)


def mixture_bench(sizes: dict, rows: list, curves: dict, systems=SYSTEMS) -> dict:
    ys = mixture_data()
    init = {"mu": jnp.array([-1.0, 0.5, 1.0]), "phi": jnp.zeros((MIX_N, 3)), "b": jnp.zeros(MIX_N)}
    opt = optax.adam(3e-2)
    evaluate = lambda p: float(mixture_exact_elbo(p, ys))  # noqa: E731
    batches = lambda i: ys  # noqa: E731  (full batch)
    _, warm = train(mixture_grad_fn("baseline"), init, opt, batches, sizes["warmup"], sizes["warmup"], lambda p: 0.0)
    # unbiasedness is checked at the initial parameters (uniform guide): after the warm-up some guide probabilities
    # are near 1, and a few hundred draws then rarely see the other values (rare events, not bias)
    exact = jax.grad(mixture_exact_elbo)(init, ys)
    variance, bias_z = {}, {}
    for system in systems:
        fn = mixture_grad_fn(system)
        g = draw_gradients(lambda k, p, fn=fn: fn(k, p, ys), warm, sizes["draws"])
        variance[system] = group_variance({"guide": g["phi"], "model": g["mu"]})
        if system != "vimco":  # the others estimate the ELBO's gradient: check the mean against the exact one
            g = draw_gradients(lambda k, p, fn=fn: fn(k, p, ys), init, sizes["draws"])
            # standard error, floored at float32 round-off of the gradient (coordinates with ~zero variance)
            z = [(jnp.mean(g[k], 0) - exact[k])
                 / (jnp.std(g[k], 0) / np.sqrt(g[k].shape[0]) + 1e-5 * (jnp.max(jnp.abs(exact[k])) + 1e-3))
                 for k in ("mu", "phi")]  # 903 coordinates: max |z| of an unbiased estimator is ~3-4.5
            bias_z[system] = float(max(jnp.max(jnp.abs(zz)) for zz in z))
        print(f"[mixture] {system:10s} variance {variance[system]} max|z| {bias_z.get(system)}", flush=True)
    for system in systems:
        curve, _ = train(mixture_grad_fn(system), init, opt, batches, sizes["steps"], sizes["eval_every"], evaluate)
        curves[("mixture", system)] = curve
        print(f"[mixture] {system:10s} {curve[-1][0]:.1f}s final exact ELBO {curve[-1][1]:.4f}", flush=True)
    add_rows(rows, "mixture", variance, curves, bias_z)
    return {"data": f"{MIX_N} points from a 3-component 1-D Gaussian mixture (means {MIX_MEANS})"}


# ----------------------------------------------------------------------------------------------------------------
# Rows, plot, main
# ----------------------------------------------------------------------------------------------------------------
def add_rows(rows: list, model: str, variance: dict, curves: dict, bias_z: dict | None = None) -> None:
    systems = list(variance)
    finals = {s: curves[(model, s)][-1][1] for s in systems}
    target = finals["tracegraph"]  # where NumPyro's TraceGraph_ELBO ends its budget
    tg = variance["tracegraph"]
    for system in systems:
        curve = curves[(model, system)]
        reached = next((t for t, e in curve if e >= target), None)
        steps_time = curve[-1][0]
        row = {
            "model": model,
            "estimator": system,
            "grad_variance": variance[system]["guide"],
            "tracegraph_variance": tg["guide"],
            "ratio": tg["guide"] / variance[system]["guide"],
            "model_grad_variance": variance[system]["model"],
            "tracegraph_model_variance": tg["model"],
            "final_elbo": finals[system],
            "target_elbo": target,
            "time_to_target_s": reached,
            "train_s": steps_time,
        }
        if bias_z is not None and system in bias_z:
            row["grad_max_abs_z"] = bias_z[system]
        if system in ("enum", "mvd", "baseline"):
            row["bar_10x"] = bool(row["ratio"] >= BAR)
        rows.append(row)


def plot(curves: dict, path: Path) -> None:
    systems = list(dict.fromkeys(s for _, s in curves))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({m for m, _ in curves})
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4))
    for ax, model in zip(np.atleast_1d(axes), models):
        for system in systems:
            t, e = zip(*curves[(model, system)])
            ax.plot(t, e, label=system, marker=".")
        ax.set(title=model, xlabel="training wall-clock (s)", ylabel="held-out ELBO")
        finals = [curves[(model, s)][-1][1] for s in systems]
        lo, hi = min(finals), max(finals)
        ax.set_ylim(lo - 0.5 * (hi - lo) - 0.02 * abs(hi), hi + 0.1 * (hi - lo) + 0.005 * abs(hi))
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> None:
    args, mode = parse_args(__doc__.splitlines()[0], argv)
    systems = SMOKE_SYSTEMS if mode.name == "smoke" else SYSTEMS
    sizes = SIZES[mode.name]
    rows, curves = [], {}
    info = {"vae": vae_bench(sizes, rows, curves, systems), "mixture": mixture_bench(sizes, rows, curves, systems)}
    result = header(mode) | {
        "samples_per_timing": None,  # no interleaved timings here: training wall-clock curves
        "sizes": sizes,
        "models": info,
        "target_rule": "the held-out ELBO TraceGraph_ELBO reaches at the end of its budget",
        "variance_group": "grad_variance / tracegraph_variance: guide parameters (encoder weights / per-datum "
        "logits), sum over coordinates of the variance over draws; model_grad_variance: model parameters",
        "bar": f"enum / mvd / baseline: ratio >= {BAR}",
        "curves": {f"{m}/{s}": [[round(t, 4), e] for t, e in c] for (m, s), c in curves.items()},
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    plot(curves, args.out / "discrete_elbo.png")
    print(write_results(SUITE, result, args.out))


if __name__ == "__main__":
    main()
