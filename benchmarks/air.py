"""Attend-Infer-Repeat on multi-MNIST: seconds per 1,000 training images and count accuracy, per estimator, pplvi vs
NumPyro's TraceGraph_ELBO (and Pyro when torch is importable; it is optional and skipped cleanly otherwise).

The model, guide and networks are :mod:`pplvi.models.air` (50 x 50 canvases with 0-2 digits built from MNIST in
``$PPLVI_DATA``, spatial transformer, recurrent inference network, at most 3 objects, Bernoulli present bits). The
pplvi systems are the rows of Table 2 of the genjax.vi paper (Becker et al., PLDI 2024): REINFORCE with a learned
baseline, enumeration, MVD, and the 2-particle IWAE bound with REINFORCE or MVD at the present bits, plus plain
REINFORCE (the estimator TraceGraph_ELBO uses, so the like-for-like timing). NumPyro runs the
same model and guide (the same equinox networks, batched with a plate) under ``TraceGraph_ELBO``.

Every system trains from the same initialization with the same optimizer (Adam) and minibatches; systems take turns
(``chunk`` steps each, round robin) so that machine load falls on all of them alike. ``sec_per_1000_images`` is the
median wall-clock of one jitted step (``block_until_ready``) times ``1000 / batch``; compilation is excluded and
reported separately (``compile_s``). ``count_accuracy`` is the fraction of held-out canvases whose inferred number of
objects (one guide draw) is right after the same budget of training images.

Bar (issue): every estimator runs, and the fastest pplvi estimator processes images faster than TraceGraph_ELBO.

Rerun: ``python benchmarks/air.py [--quick]`` (or ``pplvi bench air``); writes ``results/air.json`` and ``.md``.
"""

from __future__ import annotations

import importlib.util
import statistics
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as nd
import optax
from _harness import header, parse_args, write_results
from numpyro.infer import TraceGraph_ELBO

from pplvi.models import air as A

SUITE = "air"
SYSTEMS = {  # name: (system, estimator label, objective builder)
    "reinforce": ("pplvi", "REINFORCE", lambda: A.air_elbo("reinforce")),
    "reinforce_baseline": ("pplvi", "REINFORCE + baseline", lambda: A.air_elbo("baseline")),
    "enum": ("pplvi", "ENUM", lambda: A.air_elbo("enum")),
    "mvd": ("pplvi", "MVD", lambda: A.air_elbo("mvd")),
    "iwae2_reinforce": ("pplvi", "IWAE(K=2) + REINFORCE", lambda: A.air_iwae(2, "reinforce")),
    "iwae2_mvd": ("pplvi", "IWAE(K=2) + MVD", lambda: A.air_iwae(2, "mvd")),
    "tracegraph": ("numpyro", "TraceGraph_ELBO", None),
}
SIZES = {  # steps per system, batch, steps per turn, train / test canvases
    "full": dict(steps=2000, batch=32, chunk=20, n_train=20000, n_test=1000),
    "quick": dict(steps=200, batch=32, chunk=10, n_train=6400, n_test=500),
    "smoke": dict(steps=2, batch=4, chunk=1, n_train=8, n_test=8),
}
SMOKE_SYSTEMS = ("enum", "tracegraph")
# Table 2 of Becker et al. (PLDI 2024), seconds per epoch on an RTX 4090 (their multi-MNIST epoch), for reference
PAPER_TABLE2 = {
    "genjax": {"REINFORCE + baseline": 1.52, "ENUM": 6.22, "MVD": 1.74, "IWAE(K=2) + REINFORCE": 2.28,
               "IWAE(K=2) + MVD": 3.74},
    "pyro": {"REINFORCE + baseline": 12.28, "ENUM": 122.93, "MVD": None, "IWAE(K=2) + REINFORCE": 22.17},
}


def numpyro_air(air: A.AIR, images):
    """The same model and guide as :func:`pplvi.models.air.air_model` / ``air_guide``, batched with a plate."""
    B = images.shape[0]
    place = jax.vmap(lambda what, where: A.place(air.draw(what), where))
    crop = jax.vmap(lambda img, where: A.crop(img, where))

    def model(images):
        with numpyro.plate("batch", B):
            canvas = jnp.zeros((B, A.transformer.CANVAS, A.transformer.CANVAS))
            present = jnp.ones(B)
            for t in range(air.steps):
                bit = numpyro.sample(f"pres_{t}", nd.Bernoulli(probs=jnp.full(B, air.pres_prior)))
                present = present * bit.astype(jnp.float32)
                on = present > 0
                where = numpyro.sample(f"where_{t}", nd.Normal(jnp.zeros((B, 3)), 1.0).to_event(1).mask(on))
                what = numpyro.sample(f"what_{t}", nd.Normal(jnp.zeros((B, air.what_dim)), 1.0).to_event(1).mask(on))
                canvas = canvas + present[:, None, None] * place(what, where)
            numpyro.sample("x", nd.Normal(canvas.reshape(B, -1), air.obs_scale).to_event(1), obs=images)

    def guide(images):
        features = jax.vmap(air.embed)(images)
        canvases = images.reshape(B, A.transformer.CANVAS, A.transformer.CANVAS)
        h = jnp.zeros((B, air.rnn.hidden_size))
        state = (h, h)
        where, what, present = jnp.zeros((B, 3)), jnp.zeros((B, air.what_dim)), jnp.ones(B)
        with numpyro.plate("batch", B):
            for t in range(air.steps):
                state = jax.vmap(air.rnn)(jnp.concatenate([features, where, what, present[:, None]], -1), state)
                out = jax.vmap(air.predict)(state[0])
                bit = numpyro.sample(f"pres_{t}", nd.Bernoulli(logits=out[:, 0]))
                present = present * bit.astype(jnp.float32)
                on = present > 0
                where = numpyro.sample(
                    f"where_{t}", nd.Normal(out[:, 1:4], jax.nn.softplus(out[:, 4:7]) + 1e-3).to_event(1).mask(on))
                enc = jax.vmap(air.encoder)(crop(canvases, where).reshape(B, -1))
                loc, scale = enc[:, :air.what_dim], jax.nn.softplus(enc[:, air.what_dim:]) + 1e-3
                what = numpyro.sample(f"what_{t}", nd.Normal(loc, scale).to_event(1).mask(on))

    return model, guide


def grad_fn(name: str):
    if name == "tracegraph":
        def tracegraph(key, air, images):
            def loss(a):
                model, guide = numpyro_air(a, images)
                return TraceGraph_ELBO().loss(key, {}, model, guide, images)

            g = eqx.filter_grad(loss)(air)
            return jax.tree_util.tree_map(lambda x: -x / images.shape[0], g)

        return tracegraph
    objective = SYSTEMS[name][2]()
    return lambda key, air, images: objective.grad(key, air, images)


class Trainer:
    """One system's jitted Adam step and its per-step wall-clock times."""

    def __init__(self, name: str, init: A.AIR, optimizer, batches):
        self.name, self.batches, self.times, self.done = name, batches, [], 0
        self.dyn, self.static = eqx.partition(init, eqx.is_inexact_array)
        self.opt_state = optimizer.init(self.dyn)
        grads = grad_fn(name)
        static = self.static

        @jax.jit
        def step(dyn, opt_state, key, images):
            g = eqx.filter(grads(key, eqx.combine(dyn, static), images), eqx.is_inexact_array)
            updates, opt_state = optimizer.update(jax.tree_util.tree_map(jnp.negative, g), opt_state, dyn)
            return optax.apply_updates(dyn, updates), opt_state

        t0 = time.perf_counter()
        self.step = step.lower(self.dyn, self.opt_state, jax.random.key(0), batches(0)).compile()
        self.compile_s = time.perf_counter() - t0

    def run(self, n: int) -> None:
        for _ in range(n):
            key = jax.random.fold_in(jax.random.key(11), self.done)
            images = self.batches(self.done)
            t0 = time.perf_counter()
            self.dyn, self.opt_state = jax.block_until_ready(self.step(self.dyn, self.opt_state, key, images))
            self.times.append(time.perf_counter() - t0)
            self.done += 1

    @property
    def params(self) -> A.AIR:
        return eqx.combine(self.dyn, self.static)


def main(argv=None) -> None:
    args, mode = parse_args(__doc__.splitlines()[0], argv)
    sizes = SIZES[mode.name]
    names = SMOKE_SYSTEMS if mode.name == "smoke" else tuple(SYSTEMS)
    train_x, _ = A.multi_mnist(sizes["n_train"], "train", seed=0)
    test_x, test_counts = A.multi_mnist(sizes["n_test"], "test", seed=1)
    train_x, test_x = jnp.asarray(train_x), jnp.asarray(test_x)
    B = sizes["batch"]
    n_batches = train_x.shape[0] // B

    def batches(i):
        return jax.lax.dynamic_slice_in_dim(train_x, (i % n_batches) * B, B)

    init = A.AIR.init(jax.random.key(0))
    optimizer = optax.adam(3e-4)
    trainers = []
    for name in names:
        trainers.append(Trainer(name, init, optimizer, batches))
        print(f"[air] {name:20s} compiled in {trainers[-1].compile_s:.1f}s", flush=True)
    while any(t.done < sizes["steps"] for t in trainers):
        for t in trainers:
            t.run(min(sizes["chunk"], sizes["steps"] - t.done))
    rows = []
    for t in trainers:
        system, label, _ = SYSTEMS[t.name]
        step_s = statistics.median(t.times)
        accuracy = A.count_accuracy(t.params, test_x, test_counts, jax.random.key(5))
        rows.append({
            "system": system, "estimator": label, "sec_per_1000_images": step_s * 1000 / B,
            "count_accuracy": accuracy, "step_ms": step_s * 1e3, "min_step_ms": min(t.times) * 1e3,
            "max_step_ms": max(t.times) * 1e3, "compile_s": t.compile_s, "steps": t.done,
            "images": t.done * B,
        })
        print(f"[air] {t.name:20s} {rows[-1]['sec_per_1000_images']:.2f} s/1000 images, "
              f"count accuracy {accuracy:.3f}", flush=True)
    ours = [r["sec_per_1000_images"] for r in rows if r["system"] == "pplvi"]
    theirs = [r["sec_per_1000_images"] for r in rows if r["system"] == "numpyro"]
    pyro = ("skipped: torch is not importable" if importlib.util.find_spec("torch") is None
            else "not run: torch is importable but the Pyro comparison is not implemented in this suite")
    result = header(mode) | {
        "samples_per_timing": sizes["steps"],  # the median is over every training step of a system
        "sizes": sizes,
        "data": f"multi-MNIST 50x50, 0-2 digits: {sizes['n_train']} train / {sizes['n_test']} test canvases",
        "optimizer": "adam(3e-4)",
        "pyro": pyro,
        "bar_fastest_pplvi_faster_than_tracegraph": bool(ours and theirs and min(ours) < min(theirs)),
        "paper_table2_sec_per_epoch_rtx4090": PAPER_TABLE2,
        "rows": rows,
    }
    print(write_results(SUITE, result, args.out))


if __name__ == "__main__":
    main()
