"""Overhead of pplvi's compiled ELBO gradient against the same estimator written by hand in plain JAX.

What is measured
----------------
Two cases, each written twice with the same parameters, the same distributions (numpyro ``log_prob``) and the
same reparameterized single-sample ELBO estimator:

* ``gaussian10``: ``z ~ N(0, I_10)``, ``x ~ N(z, I)`` observed (a fixed 10-vector), mean-field Normal guide
  with parameters ``loc`` and ``log_scale`` (shape ``(10,)`` each). Batch 1.
* ``vae_mnist``: the VAE of Table 1 of the genjax.vi paper (Becker et al., PLDI 2024). Binarized MNIST
  (``x / 255 > 0.5``, flattened to 784), encoder MLP 784-200-(10 + 10) (ReLU; loc and log-scale), decoder MLP
  10-200-784 with a Bernoulli(logits) likelihood, one ``z`` per datum, ELBO averaged over the batch. Batches
  64, 256 and 1024. Networks are ``equinox.nn.MLP``; both implementations share the same modules.

The pplvi version writes model and guide with ``@pplvi.gen`` and the ELBO with ``@pplvi.objective`` (a
``jax.vmap`` over the batch inside the objective calling ``guide.simulate`` and ``model.assess``) and
differentiates it with ``Objective.value_and_grad``. The hand-written version samples ``loc + scale *
normal(key)`` with explicit ``jax.random`` keys (one key per datum for the VAE) and differentiates with
``jax.value_and_grad``.

Both gradient functions have the signature ``(key, params, batch) -> (elbo, grads)`` and are wrapped in one
``jax.jit`` each (``params`` is the array part of the parameters; the static part of the equinox modules is
closed over). For each case and batch size the script reports

* ``pplvi_first_s`` / ``hand_first_s``: time to the first gradient of a fresh ``jax.jit`` (trace + compile +
  first run, ``block_until_ready``), each in a fresh Python process (best of 3; 1 with ``--quick``);
* ``pplvi_ms`` / ``hand_ms``: median wall time per call over interleaved samples (the functions take turns
  and which goes first rotates), each call ``block_until_ready``; ``ratio = pplvi_ms / hand_ms``. Also
  ``paired_ratio``: the median over rounds of pplvi's time over the hand-written time in the same round (less
  sensitive to load that comes and goes). 200 samples (20 with ``--quick``); ``gaussian10`` takes about 20 us
  a call, so each of its samples is the mean of 50 back-to-back calls (single calls of that size have a
  bimodal time distribution on a loaded machine, which makes a median of single calls unstable);
* ``pplvi_api_ms``: the same for the user-facing call ``elbo.value_and_grad(key, params, batch)`` without an
  outer ``jax.jit``. It goes through pplvi's own cached ``jax.jit`` (Python dispatch of tens of microseconds;
  it returns without waiting for the result);
* ``pplvi_flops`` / ``hand_flops``: XLA's cost analysis
  (``jit(f).lower(...).compile().cost_analysis()['flops']``) of the optimized programs; also the primitive
  counts of both jaxprs (sub-jaxprs included) and the opcode counts of both optimized HLO modules;
* ``hand_site_key_flops`` / ``hlo_same_as_hand_site_key``: the hand-written program fed ``split(key)[0]``,
  the key pplvi's interpreter hands to its random choice (see :func:`site_key`). When the optimized HLO of
  this program has the same opcodes as pplvi's, whatever pplvi adds beyond the hand-written code is that one
  key split;
* ``grad_check``: do both compute the same estimator? ``same_key_max_rel_diff`` compares pplvi's gradient with
  the site-key hand-written gradient for one key (equal up to rounding while pplvi keeps its key layout).
  Independently of key layouts, both estimators are also evaluated on many keys (same batch) and each
  coordinate's difference of means is divided by its standard error (``z``): ``mean_z2`` should be close to
  1 and ``max_abs_z`` moderate (about 4-5 for 10^5 coordinates) when the estimators have the same mean.

Nothing is asserted. CPU timings on a shared machine are noisy: compare the ratio, not absolute times.

Rerun
-----
::

    .venv/bin/python benchmarks/overhead.py           # full (about 5 minutes on 2 CPU cores)
    .venv/bin/python benchmarks/overhead.py --quick   # 20 samples, fewer keys, one first-gradient run

MNIST is read from ``$PPLVI_DATA/mnist/train-images-idx3-ubyte.part0.gz`` (default ``../shared/data`` relative
to the repository root); when it is missing the VAE uses random binary images and the JSON says so. Results go
to ``benchmarks/results/overhead.json`` and ``benchmarks/results/overhead.md``.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import functools
import gzip
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

import pplvi

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
LATENT, HIDDEN, PIXELS = 10, 200, 784
VAE_BATCHES = (64, 256, 1024)
TINY_CASE_REPEAT = 50  # gaussian10 runs ~20 us: each of its timing samples is the mean of this many calls


# ----------------------------------------------------------------------------------------------------
# Case (a): 10-dimensional Gaussian latent, mean-field Normal guide
# ----------------------------------------------------------------------------------------------------
@pplvi.gen
def gauss_model(x):
    z = pplvi.sample("z", dist.Normal(jnp.zeros(LATENT), 1.0))
    pplvi.sample("x", dist.Normal(z, 1.0), obs=x)


@pplvi.gen
def gauss_guide(params):
    pplvi.sample("z", dist.Normal(params["loc"], jnp.exp(params["log_scale"])))


@pplvi.objective
def gauss_elbo(params, x):
    trace = gauss_guide.simulate(params)
    return gauss_model.assess(trace.choices, x) - trace.score


def gauss_elbo_hand(params, key, x):
    loc, scale = params["loc"], jnp.exp(params["log_scale"])
    z = loc + scale * jax.random.normal(key, loc.shape)
    log_p = jnp.sum(dist.Normal(jnp.zeros(LATENT), 1.0).log_prob(z))
    log_p = log_p + jnp.sum(dist.Normal(z, 1.0).log_prob(x))
    return log_p - jnp.sum(dist.Normal(loc, scale).log_prob(z))


# ----------------------------------------------------------------------------------------------------
# Case (b): MNIST VAE (encoder 784-200-(10+10), decoder 10-200-784, Bernoulli logits)
# ----------------------------------------------------------------------------------------------------
@pplvi.gen
def vae_model(decoder, x):
    z = pplvi.sample("z", dist.Normal(jnp.zeros(LATENT), 1.0))
    pplvi.sample("x", dist.Bernoulli(logits=decoder(z)), obs=x)


@pplvi.gen
def vae_guide(encoder, x):
    out = encoder(x)
    pplvi.sample("z", dist.Normal(out[:LATENT], jnp.exp(out[LATENT:])))


@pplvi.objective
def vae_elbo(nets, x_batch):
    encoder, decoder = nets

    def one_datum(x):
        trace = vae_guide.simulate(encoder, x)
        return vae_model.assess(trace.choices, decoder, x) - trace.score

    return jnp.mean(jax.vmap(one_datum)(x_batch))


def vae_elbo_hand(nets, key, x_batch):
    encoder, decoder = nets

    def one_datum(x, key):
        out = encoder(x)
        loc, scale = out[:LATENT], jnp.exp(out[LATENT:])
        z = loc + scale * jax.random.normal(key, (LATENT,))
        log_p = jnp.sum(dist.Normal(jnp.zeros(LATENT), 1.0).log_prob(z))
        log_p = log_p + jnp.sum(dist.Bernoulli(logits=decoder(z)).log_prob(x))
        return log_p - jnp.sum(dist.Normal(loc, scale).log_prob(z))

    keys = jax.random.split(key, x_batch.shape[0])
    return jnp.mean(jax.vmap(one_datum)(x_batch, keys))


def make_vae_nets(key):
    k_enc, k_dec = jax.random.split(key)
    encoder = eqx.nn.MLP(PIXELS, 2 * LATENT, HIDDEN, 1, activation=jax.nn.relu, key=k_enc)
    decoder = eqx.nn.MLP(LATENT, PIXELS, HIDDEN, 1, activation=jax.nn.relu, key=k_dec)
    return encoder, decoder


@functools.cache
def load_mnist(n: int) -> tuple[np.ndarray, str]:
    """``n`` binarized, flattened MNIST training images (float32 0/1) and where they came from."""
    data_dir = Path(os.environ.get("PPLVI_DATA", ROOT.parent / "shared" / "data"))
    path = data_dir / "mnist" / "train-images-idx3-ubyte.part0.gz"
    if path.exists():
        raw = gzip.open(path).read()
        images = np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28)[:n]
        binary = (images.reshape(n, PIXELS) / 255.0 > 0.5).astype(np.float32)
        return binary, f"MNIST {path} (first {n} images)"
    rng = np.random.default_rng(0)
    fake = (rng.random((n, PIXELS)) < 0.13).astype(np.float32)
    return fake, f"random binary images (p=0.13): MNIST not found at {path}"


# ----------------------------------------------------------------------------------------------------
# Measurement
# ----------------------------------------------------------------------------------------------------
@dataclass
class Case:
    """One benchmark row: gradient functions ``(key, params, batch) -> (value, grads)`` and their inputs."""

    name: str
    batch: int
    pplvi_fn: Callable
    hand_fn: Callable
    api_fn: Callable  # pplvi's user-facing call, no outer jit
    params: object
    data: jax.Array


def gauss_case() -> Case:
    params = {"loc": jnp.zeros(LATENT), "log_scale": jnp.zeros(LATENT)}
    x = jnp.linspace(-1.0, 1.0, LATENT)

    def pplvi_fn(key, params, x):
        return gauss_elbo.value_and_grad(key, params, x)

    def hand_fn(key, params, x):
        return jax.value_and_grad(gauss_elbo_hand)(params, key, x)

    return Case("gaussian10", 1, pplvi_fn, hand_fn, pplvi_fn, params, x)


def vae_case(batch: int, nets, images) -> Case:
    params, static = eqx.partition(nets, eqx.is_array)

    def pplvi_fn(key, params, x):
        return vae_elbo.value_and_grad(key, eqx.combine(params, static), x)

    def hand_fn(key, params, x):
        return jax.value_and_grad(lambda p: vae_elbo_hand(eqx.combine(p, static), key, x))(params)

    def api_fn(key, _params, x):  # the user's call: whole modules in, pplvi's own filter_jit
        return vae_elbo.value_and_grad(key, nets, x)

    return Case("vae_mnist", batch, pplvi_fn, hand_fn, api_fn, params, jnp.asarray(images[:batch]))


def build_case(name: str, batch: int) -> Case:
    if name == "gaussian10":
        return gauss_case()
    images, _ = load_mnist(max(VAE_BATCHES))
    return vae_case(batch, make_vae_nets(jax.random.key(42)), images)


def first_gradient_s(case: Case, impl: str) -> float:
    """Trace + compile + first run of a fresh ``jax.jit`` of ``impl``, timed in a fresh Python process.

    A fresh process keeps the two implementations from warming JAX's caches for each other (both share the
    numpyro densities, ``jax.random`` samplers and equinox layers)."""
    script = str(Path(__file__).resolve())
    cmd = [sys.executable, script, "--first-gradient", case.name, str(case.batch), impl]
    return float(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split()[-1])


def first_gradient_child(name: str, batch: int, impl: str) -> None:
    case = build_case(name, batch)
    warm_up()
    fn = jax.jit(case.pplvi_fn if impl == "pplvi" else case.hand_fn)
    args = (jax.random.key(0), case.params, case.data)
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    print(f"{time.perf_counter() - start:.6f}")


def interleaved_ms(fns: list[Callable], args, samples: int, repeat: int = 1) -> list[list[float]]:
    """Wall times (ms per call) of each function; the functions take turns, rotating who goes first.

    Each sample is the mean of ``repeat`` back-to-back calls, each ``block_until_ready``."""
    for fn in fns:  # warm up: dispatch caches, allocator
        for _ in range(3):
            jax.block_until_ready(fn(*args))
    times: list[list[float]] = [[] for _ in fns]
    for i in range(samples):
        for j in range(len(fns)):
            k = (i + j) % len(fns)
            start = time.perf_counter()
            for _ in range(repeat):
                jax.block_until_ready(fns[k](*args))
            times[k].append(1e3 * (time.perf_counter() - start) / repeat)
    return times


def xla_flops(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return float(cost.get("flops", float("nan")))


def hlo_opcodes(compiled) -> collections.Counter:
    """Opcode histogram of the optimized HLO module (all computations, fused ones included)."""
    return collections.Counter(
        m.group(1) for m in re.finditer(r" = [^ ]+ ([a-z][a-z0-9\-]*)\(", compiled.as_text())
    )


def site_key(hand_fn: Callable) -> Callable:
    """``hand_fn`` fed the key pplvi's interpreter hands its (only) random choice: ``split(key)[0]``.

    A diagnostic: pplvi's interpreter splits ``(site, rest)`` at every random choice; the hand-written
    code uses the key as is. With this one extra split both programs draw the same noise, so their
    gradients should agree key for key and their optimized HLO should have the same opcodes."""

    def fn(key, params, x):
        return hand_fn(jax.random.split(key)[0], params, x)

    return fn


def jaxpr_primitives(fn, args) -> collections.Counter:
    """Primitive counts of ``make_jaxpr(fn)``, recursing into every sub-jaxpr (jit, scan, cond, ...)."""
    counts: collections.Counter = collections.Counter()

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            counts[eqn.primitive.name] += 1
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return counts


def grad_check(case: Case, n_keys: int) -> dict:
    """Compare the means of both gradient estimators over ``n_keys`` keys (per-coordinate z-scores)."""
    pplvi_fn, hand_fn = jax.jit(case.pplvi_fn), jax.jit(case.hand_fn)
    site_key_fn = jax.jit(site_key(case.hand_fn))

    def flat(out):
        value, grads = out
        leaves = [np.asarray(value, np.float64).reshape(1)]
        leaves += [np.asarray(g, np.float64).ravel() for g in jax.tree_util.tree_leaves(grads)]
        return np.concatenate(leaves)

    key = jax.random.key(7)
    g_pplvi = flat(pplvi_fn(key, case.params, case.data))
    g_site = flat(site_key_fn(key, case.params, case.data))
    same_key_rel = float(np.max(np.abs(g_pplvi - g_site)) / np.max(np.abs(g_site)))

    stats = []
    for fn in (pplvi_fn, hand_fn):
        total = total_sq = 0.0
        for key in jax.random.split(jax.random.key(12345), n_keys):
            v = flat(fn(key, case.params, case.data))
            total, total_sq = total + v, total_sq + v * v
        mean = total / n_keys
        var = np.maximum(total_sq / n_keys - mean * mean, 0.0) * n_keys / (n_keys - 1)
        stats.append((mean, var))
    (m1, v1), (m2, v2) = stats
    se = np.sqrt((v1 + v2) / n_keys)
    diff = m1 - m2
    scale = np.maximum(np.abs(m1), np.abs(m2))
    # zero-variance coordinates (e.g. encoder weights of pixels that are blank in the whole batch)
    degenerate = se <= 1e-6 * np.maximum(scale, 1e-30)
    z = diff[~degenerate] / se[~degenerate]
    return {
        "keys": n_keys,
        "coords": int(diff.size - 1),
        "value_z": float(diff[0] / se[0]) if not degenerate[0] else 0.0,
        "mean_z2": float(np.mean(z * z)),
        "max_abs_z": float(np.max(np.abs(z))),
        "zero_variance_coords": int(degenerate.sum()),
        "zero_variance_max_abs_diff": float(np.max(np.abs(diff[degenerate]), initial=0.0)),
        "same_key_max_rel_diff": same_key_rel,
    }


def measure(case: Case, samples: int, repeat: int, grad_keys: int, first_runs: int) -> dict:
    key = jax.random.key(0)
    args = (key, case.params, case.data)
    firsts: dict[str, list[float]] = {"pplvi": [], "hand": []}
    for _ in range(first_runs):
        for impl, times in firsts.items():
            times.append(first_gradient_s(case, impl))
    pplvi_jit, hand_jit = jax.jit(case.pplvi_fn), jax.jit(case.hand_fn)

    pplvi_c = jax.jit(case.pplvi_fn).lower(*args).compile()
    hand_c = jax.jit(case.hand_fn).lower(*args).compile()
    site_c = jax.jit(site_key(case.hand_fn)).lower(*args).compile()
    pplvi_ops, hand_ops, site_ops = hlo_opcodes(pplvi_c), hlo_opcodes(hand_c), hlo_opcodes(site_c)
    pplvi_prims, hand_prims = jaxpr_primitives(case.pplvi_fn, args), jaxpr_primitives(case.hand_fn, args)
    prim_diff = {p: pplvi_prims[p] - hand_prims[p] for p in sorted(set(pplvi_prims) | set(hand_prims))}

    pplvi_t, hand_t, api_t = interleaved_ms([pplvi_jit, hand_jit, case.api_fn], args, samples, repeat)
    pplvi_ms, hand_ms = statistics.median(pplvi_t), statistics.median(hand_t)
    return {
        "case": case.name,
        "batch": case.batch,
        "samples": samples,
        "calls_per_sample": repeat,
        "pplvi_ms": pplvi_ms,
        "hand_ms": hand_ms,
        "ratio": pplvi_ms / hand_ms,
        "paired_ratio": statistics.median(a / b for a, b in zip(pplvi_t, hand_t)),
        "pplvi_flops": xla_flops(pplvi_c),
        "hand_flops": xla_flops(hand_c),
        "pplvi_first_s": min(firsts["pplvi"]),
        "hand_first_s": min(firsts["hand"]),
        "pplvi_api_ms": statistics.median(api_t),
        "pplvi_min_ms": min(pplvi_t),
        "hand_min_ms": min(hand_t),
        "pplvi_hlo_ops": sum(pplvi_ops.values()),
        "hand_hlo_ops": sum(hand_ops.values()),
        "hlo_opcode_diff": {
            op: pplvi_ops[op] - hand_ops[op]
            for op in sorted(pplvi_ops | hand_ops)
            if pplvi_ops[op] != hand_ops[op]
        },
        "hand_site_key_flops": xla_flops(site_c),
        "hlo_same_as_hand_site_key": pplvi_ops == site_ops,
        "pplvi_jaxpr_eqns": sum(pplvi_prims.values()),
        "hand_jaxpr_eqns": sum(hand_prims.values()),
        "jaxpr_primitive_diff": {p: d for p, d in prim_diff.items() if d},
        "grad_check": grad_check(case, grad_keys),
    }


def warm_up():
    """Compile something small through both paths once so neither case pays JAX's one-time start-up costs."""
    params = {"loc": jnp.zeros(3), "log_scale": jnp.zeros(3)}

    @pplvi.objective
    def tiny(params, x):
        z = pplvi.sample("z", dist.Normal(params["loc"], jnp.exp(params["log_scale"])))
        return jnp.sum(dist.Normal(z, 1.0).log_prob(x))

    tiny_grad = jax.jit(lambda k, p, x: tiny.value_and_grad(k, p, x))
    jax.block_until_ready(tiny_grad(jax.random.key(1), params, 0.0))
    jax.block_until_ready(jax.jit(jax.grad(lambda p: jnp.sum(jnp.exp(p["loc"]))))(params))


def markdown(rows: list[dict]) -> str:
    lines = [
        "| case | batch | pplvi ms | hand ms | ratio | paired ratio | pplvi api ms | pplvi flops "
        "| hand flops | flop ratio | HLO = hand + 1 key split | pplvi first s | hand first s "
        "| same-key grad rel diff | grad check mean z² (max abs z) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---|",
    ]
    for r in rows:
        g = r["grad_check"]
        same_hlo = "yes" if r["hlo_same_as_hand_site_key"] else "no"
        lines.append(
            f"| {r['case']} | {r['batch']} | {r['pplvi_ms']:.4f} | {r['hand_ms']:.4f} | {r['ratio']:.3f} "
            f"| {r['paired_ratio']:.3f} | {r['pplvi_api_ms']:.4f} | {r['pplvi_flops']:.0f} "
            f"| {r['hand_flops']:.0f} | {r['pplvi_flops'] / r['hand_flops']:.6f} | {same_hlo} "
            f"| {r['pplvi_first_s']:.2f} | {r['hand_first_s']:.2f} | {g['same_key_max_rel_diff']:.1e} "
            f"| {g['mean_z2']:.2f} ({g['max_abs_z']:.1f}) |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20 timing samples, not 200; fewer check keys")
    parser.add_argument(
        "--first-gradient", nargs=3, metavar=("CASE", "BATCH", "IMPL"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.first_gradient:  # child process of first_gradient_s
        name, batch, impl = args.first_gradient
        first_gradient_child(name, int(batch), impl)
        return
    samples = 20 if args.quick else 200
    first_runs = 1 if args.quick else 3

    images, data_note = load_mnist(max(VAE_BATCHES))
    warm_up()
    cases = [build_case("gaussian10", 1)] + [build_case("vae_mnist", b) for b in VAE_BATCHES]

    rows = []
    for case in cases:
        if case.name == "gaussian10":
            row = measure(case, samples, TINY_CASE_REPEAT, 500 if args.quick else 4000, first_runs)
        else:
            row = measure(case, samples, 1, 50 if args.quick else 200, first_runs)
        rows.append(row)
        print(
            f"{case.name} batch {case.batch}: pplvi {row['pplvi_ms']:.3f} ms, "
            f"hand {row['hand_ms']:.3f} ms, ratio {row['ratio']:.3f}",
            flush=True,
        )

    device = jax.devices()[0]
    result = {
        "jax_version": jax.__version__,
        "device": f"{device.platform}: {device.device_kind} ({platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores)",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "samples_per_timing": samples,
        "data": data_note,
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(rows)
    header = (
        f"# pplvi overhead vs hand-written JAX\n\n{result['device']}, jax {result['jax_version']}, "
        f"{result['date']}{' (quick mode)' if args.quick else ''}. Median of {samples} interleaved samples "
        f"per timing (for gaussian10 each sample is the mean of {TINY_CASE_REPEAT} calls); "
        "ratio = pplvi ms / hand ms. "
        f"Data: {data_note}.\n\n"
    )
    (RESULTS / "overhead.md").write_text(header + table + "\n")
    print()
    print(table)


if __name__ == "__main__":
    main()
