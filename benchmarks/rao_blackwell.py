"""Rao-Blackwellization benchmark: per-datum gradient variance vs batch size, and against NumPyro's TraceGraph_ELBO.

Model: a two-component mixture of 10-dimensional Gaussians (means 0 and 0.5, prior weight 0.4) with one Bernoulli
latent per datum and a per-datum Bernoulli guide (logits phi_i). The batch objective is the mean per-datum ELBO.

* ``naive``: ``return jnp.mean(jax.vmap(per_datum)(ys))`` — every lane's score multiplies the whole batch's value.
* ``rao_blackwell``: each datum emits its term with ``pplvi.add_cost`` inside the ``vmap``.
* ``rao_blackwell+baseline``: the same with ``baseline(reinforce, b_i)``, ``b_i`` a running average of datum i's cost.

``per_datum_variance`` is batch size x the variance of the gradient of the mean objective with respect to a shared
scalar logit offset (so it is comparable across batch sizes). Rerun: ``python benchmarks/rao_blackwell.py [--quick]``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import platform

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as nd
from numpyro.infer import TraceGraph_ELBO

import pplvi

D = 10


def data(B):
    return jax.random.normal(jax.random.key(7), (B, D)) + 0.5 * (jnp.arange(B) % 2)[:, None]


def log_joint(c, y):
    return nd.Bernoulli(probs=0.4).log_prob(c) + jnp.sum(nd.Normal(0.5 * c[..., None], 1.0).log_prob(y), -1)


def make(kind, B):
    @pplvi.objective
    def obj(offset, baselines, ys):
        def one(b_i, y):
            est = pplvi.baseline(pplvi.reinforce, b_i) if kind == "rao_blackwell+baseline" else pplvi.reinforce
            c = pplvi.sample("c", nd.Bernoulli(logits=offset), estimator=est).astype(jnp.float32)
            term = (log_joint(c, y) - nd.Bernoulli(logits=offset).log_prob(c)) / B
            return term if kind == "naive" else pplvi.add_cost(term)

        terms = jax.vmap(one)(baselines, ys)
        return jnp.sum(terms) if kind == "naive" else jnp.zeros(())

    return obj


def running_average(offset, ys, n=200):
    def costs(k):
        c = jax.random.bernoulli(k, jax.nn.sigmoid(offset), (ys.shape[0],)).astype(jnp.float32)
        return (log_joint(c, ys) - nd.Bernoulli(logits=offset).log_prob(c)) / ys.shape[0]

    return jnp.mean(jax.vmap(costs)(jax.random.split(jax.random.key(1), n)), axis=0)


def per_datum_variance(kind, B, n):
    ys = data(B)
    b = running_average(0.2, ys)
    keys = jax.random.split(jax.random.key(0), n)
    g = jax.jit(jax.vmap(lambda k: make(kind, B).grad(k, 0.2, b, ys)))(keys)
    return float(jnp.var(g) * B)


def tracegraph_ratio(n, B=64):
    ys = data(B)
    phi = jnp.linspace(-1.0, 1.0, B)

    def np_model(ys):
        with numpyro.plate("data", B):
            c = numpyro.sample("c", nd.Bernoulli(probs=0.4))
            numpyro.sample("y", nd.Normal(0.5 * c[:, None], 1.0).to_event(1), obs=ys)

    def loss(k, phi):
        def guide(ys):
            with numpyro.plate("data", B):
                numpyro.sample("c", nd.Bernoulli(logits=phi))

        return TraceGraph_ELBO().loss(k, {}, np_model, guide, ys)

    keys = jax.random.split(jax.random.key(5), n)
    g_tg = jax.jit(jax.vmap(lambda k: -jax.grad(loss, argnums=1)(k, phi)))(keys)

    @pplvi.objective
    def elbo(phi, baselines, ys):
        def one(phi_i, b_i, y):
            c = pplvi.sample("c", nd.Bernoulli(logits=phi_i), estimator=pplvi.baseline(pplvi.reinforce, b_i))
            c = c.astype(jnp.float32)
            pplvi.add_cost(log_joint(c, y) - nd.Bernoulli(logits=phi_i).log_prob(c))

        jax.vmap(one)(phi, baselines, ys)
        return jnp.zeros(())

    def costs(k):
        c = jax.random.bernoulli(k, jax.nn.sigmoid(phi)).astype(jnp.float32)
        return log_joint(c, ys) - nd.Bernoulli(logits=phi).log_prob(c)

    b = jnp.mean(jax.vmap(costs)(jax.random.split(jax.random.key(6), 200)), axis=0)
    g = jax.jit(jax.vmap(lambda k: elbo.grad(k, phi, b, ys)))(keys)
    return float(jnp.sum(jnp.var(g_tg, 0)) / jnp.sum(jnp.var(g, 0)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer gradient draws")
    parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results"))
    args = parser.parse_args(argv)
    n = 500 if args.quick else 4000
    rows = []
    for B in (16, 128):
        for kind in ("naive", "rao_blackwell", "rao_blackwell+baseline"):
            rows.append({"batch": B, "estimator": kind, "per_datum_variance": per_datum_variance(kind, B, n)})
            print(rows[-1])
    rows.append({"vs_tracegraph_variance_ratio": tracegraph_ratio(n)})
    print(rows[-1])
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "jax_version": jax.__version__,
        "device": f"{jax.devices()[0].platform}: {platform.processor() or platform.machine()}",
        "date": datetime.date.today().isoformat(),
        "quick": args.quick,
        "draws": n,
        "rows": rows,
    }
    (out / "rao_blackwell.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
