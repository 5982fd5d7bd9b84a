"""How pplvi's gradient cost grows with the number of particles and with the batch size.

What is measured
----------------
* ``iwae_particles``: ``O.iwae(model, guide, K)`` on the 10-dimensional Gaussian model of ``numpyro.py``
  (mean-field Normal guide, reparameterized), ``K`` in 1, 4, 16, 64, 256, 1024, 4096;
* ``vae_batch``: the ELBO (``O.elbo``, summed over the batch) of the MNIST VAE of ``overhead.py`` with a smaller
  hidden layer (784-64-(10+10) encoder, 10-64-784 decoder), batch 1, 4, 16, 64, 256, 1024.

Each point times the jitted ``obj.value_and_grad`` (median of interleaved samples, min/max) against the same
estimator written by hand in plain JAX (``hand_ms``, ``ratio = ms / hand_ms``), with XLA flops and the time of the
first call in this process (tracing + compiling + running; JAX's process-wide caches are warm). Per axis a
``slope`` row gives the least-squares slope of ``log ms`` against ``log value`` over the upper half of the range
(where the arithmetic, not the per-call overhead, dominates; ``fit_range``), ``slope_all`` over every point and
``flops_slope`` the same for the flops. Linear scaling is slope 1; a slope well below 1 over the upper range means a
fixed per-call cost still dominates.

Rerun
-----
::

    .venv/bin/python benchmarks/scaling.py            # full
    .venv/bin/python benchmarks/scaling.py --quick    # a few minutes on 2 CPU cores
"""

from __future__ import annotations

import _harness as H
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as nd
from _models import GAUSS_X, LATENT, gauss_init, make_vae_nets

import pplvi
from pplvi import objectives as O

SUITE = "scaling"
PARTICLES = (1, 4, 16, 64, 256, 1024, 4096)
BATCHES = (1, 4, 16, 64, 256, 1024)
VAE_HIDDEN = 64
FIT_FROM = 64  # the slope is fitted over values >= this


@pplvi.gen
def gauss_model(params, x):
    z = pplvi.sample("z", nd.Normal(jnp.zeros(LATENT), 1.0))
    pplvi.sample("x", nd.Normal(z, 1.0), obs=x)


@pplvi.gen
def gauss_guide(params, x):
    pplvi.sample("z", nd.Normal(params["loc"], jnp.exp(params["log_scale"])))


def iwae_hand(K: int):
    """The natural hand-written IWAE: one ``(K, 10)`` noise draw, numpyro's ``log_prob`` for the densities."""

    def objective(params, key, x):
        loc, scale = params["loc"], jnp.exp(params["log_scale"])
        z = loc + scale * jax.random.normal(key, (K, LATENT))
        log_p = jnp.sum(nd.Normal(0.0, 1.0).log_prob(z), -1) + jnp.sum(nd.Normal(z, 1.0).log_prob(x), -1)
        log_w = log_p - jnp.sum(nd.Normal(loc, scale).log_prob(z), -1)
        return jax.nn.logsumexp(log_w) - jnp.log(K)

    return lambda key, params, x: jax.value_and_grad(objective)(params, key, x)


def iwae_point(K: int):
    obj = O.iwae(gauss_model, gauss_guide, K)
    return (lambda key, params, x: obj.value_and_grad(key, params, x)), iwae_hand(K), gauss_init(), GAUSS_X


def vae_programs():
    encoder, decoder = make_vae_nets(hidden=VAE_HIDDEN)
    enc_p, enc_s = eqx.partition(encoder, eqx.is_inexact_array)
    dec_p, dec_s = eqx.partition(decoder, eqx.is_inexact_array)

    @pplvi.gen
    def model(params, x):
        z = pplvi.sample("z", nd.Normal(jnp.zeros((x.shape[0], LATENT)), 1.0))
        pplvi.sample("x", nd.Bernoulli(logits=jax.vmap(eqx.combine(params["decoder"], dec_s))(z)), obs=x)

    @pplvi.gen
    def guide(params, x):
        out = jax.vmap(eqx.combine(params["encoder"], enc_s))(x)
        pplvi.sample("z", nd.Normal(out[:, :LATENT], jnp.exp(out[:, LATENT:])))

    def hand(params, key, x):
        out = jax.vmap(eqx.combine(params["encoder"], enc_s))(x)
        loc, scale = out[:, :LATENT], jnp.exp(out[:, LATENT:])
        z = loc + scale * jax.random.normal(key, loc.shape)
        logits = jax.vmap(eqx.combine(params["decoder"], dec_s))(z)
        log_w = jnp.sum(nd.Normal(0.0, 1.0).log_prob(z)) + jnp.sum(nd.Bernoulli(logits=logits).log_prob(x))
        return log_w - jnp.sum(nd.Normal(loc, scale).log_prob(z))

    obj = O.elbo(model, guide)
    params = {"encoder": enc_p, "decoder": dec_p}
    return (
        lambda key, params, x: obj.value_and_grad(key, params, x),
        lambda key, params, x: jax.value_and_grad(hand)(params, key, x),
        params,
    )


def measure_point(axis: str, value: int, fn, hand, params, x, mode: H.Mode) -> dict:
    key = jax.random.key(0)
    p_jit, h_jit = jax.jit(fn), jax.jit(hand)
    first = H.timed(lambda: p_jit(key, params, x))
    H.block(h_jit(key, params, x))
    (pt, ht), repeat = H.interleaved_ms([lambda: p_jit(key, params, x), lambda: h_jit(key, params, x)], mode.samples)
    row = {"axis": axis, "value": value}
    row.update(ms=float(np.median(pt)), min_ms=min(pt), max_ms=max(pt))
    row["hand_ms"] = float(np.median(ht))
    row["ratio"] = row["ms"] / row["hand_ms"]
    row["paired_ratio"] = H.paired_ratio(pt, ht)
    row["flops"] = H.xla_flops(fn, key, params, x)
    row["hand_flops"] = H.xla_flops(hand, key, params, x)
    row["compile_s"] = first
    row["samples"], row["calls_per_sample"] = mode.samples, repeat
    return row


def slope_row(axis: str, rows: list[dict]) -> dict:
    values = np.array([r["value"] for r in rows], float)
    ms = np.array([r["ms"] for r in rows], float)
    flops = np.array([r["flops"] for r in rows], float)
    upper = values >= FIT_FROM if np.sum(values >= FIT_FROM) >= 2 else np.ones_like(values, bool)

    def fit(y, mask):
        return float(np.polyfit(np.log(values[mask]), np.log(y[mask]), 1)[0])

    return {
        "axis": axis,
        "value": "slope",
        "ms": None,
        "slope": fit(ms, upper),
        "slope_all": fit(ms, np.ones_like(upper)),
        "flops_slope": fit(flops, upper),
        "fit_range": f"{int(values[upper].min())}-{int(values[upper].max())}",
    }


def main(argv=None) -> dict:
    args, mode = H.parse_args(__doc__.split("\n\n")[0], argv)
    smoke = mode.name == "smoke"
    H.warm_up()
    rows = []
    axis_rows = []
    for K in PARTICLES[:2] if smoke else PARTICLES:
        fn, hand, params, x = iwae_point(K)
        axis_rows.append(measure_point("iwae_particles", K, fn, hand, params, x, mode))
        print(f"iwae K={K}: {axis_rows[-1]['ms']:.4f} ms (hand {axis_rows[-1]['hand_ms']:.4f})", flush=True)
    rows += axis_rows + [slope_row("iwae_particles", axis_rows)]

    images, source = H.load_mnist(max(BATCHES))
    fn, hand, params = vae_programs()
    axis_rows = []
    for B in BATCHES[:2] if smoke else BATCHES:
        axis_rows.append(measure_point("vae_batch", B, fn, hand, params, jnp.asarray(images[:B]), mode))
        print(f"vae batch={B}: {axis_rows[-1]['ms']:.4f} ms (hand {axis_rows[-1]['hand_ms']:.4f})", flush=True)
    rows += axis_rows + [slope_row("vae_batch", axis_rows)]

    result = {**H.header(mode), "suite": SUITE, "data": source, "vae_hidden": VAE_HIDDEN, "rows": rows}
    path = H.write_results(SUITE, result, args.out)
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
