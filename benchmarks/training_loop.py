"""Overhead inside a training loop: 1000 optimizer steps fused in one jitted ``lax.scan``, pplvi vs hand-written JAX.

The cases are those of ``overhead.py`` (``gaussian10``; the MNIST VAE at batch 64) with the same gradient
functions. Each step: a per-step key from ``jax.random.fold_in(key, t)``, the ELBO gradient, an ``optax.adam``
update (ascending the ELBO). The whole loop is one ``jax.jit`` of ``lax.scan`` over the steps. Reported per case:
median wall time of the whole loop over interleaved runs (``block_until_ready``), ms per step and the ratio.
genjax 1.0.14 is 1.27x hand-written JAX in this setting (genjax.vi paper); the bar for pplvi is <= 1.10.

Rerun: ``python benchmarks/training_loop.py [--quick]``; results in ``benchmarks/results/training_loop.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import time

import jax
import optax
from overhead import RESULTS, build_case, warm_up


def loop(grad_fn, steps):
    opt = optax.adam(1e-3)

    @jax.jit
    def run(key, params, data):
        def step(carry, t):
            params, state = carry
            _, grads = grad_fn(jax.random.fold_in(key, t), params, data)
            updates, state = opt.update(jax.tree_util.tree_map(lambda g: -g, grads), state, params)
            return (optax.apply_updates(params, updates), state), None

        (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), jax.numpy.arange(steps))
        return params

    return run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer timing samples and steps")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    steps = 200 if args.quick else 1000
    samples = 5 if args.quick else 15
    warm_up()
    rows = []
    for name, batch in (("gaussian10", 1), ("vae_mnist", 64)):
        case = build_case(name, batch)
        fns = {"pplvi": loop(case.pplvi_fn, steps), "hand": loop(case.hand_fn, steps)}
        call_args = (jax.random.key(0), case.params, case.data)
        for fn in fns.values():
            jax.block_until_ready(fn(*call_args))
        times = {k: [] for k in fns}
        for i in range(samples):
            order = list(fns) if i % 2 == 0 else list(fns)[::-1]
            for k in order:
                start = time.perf_counter()
                jax.block_until_ready(fns[k](*call_args))
                times[k].append(time.perf_counter() - start)
        p, h = statistics.median(times["pplvi"]), statistics.median(times["hand"])
        rows.append({
            "case": name, "batch": batch, "steps": steps,
            "pplvi_ms_per_step": 1e3 * p / steps, "hand_ms_per_step": 1e3 * h / steps, "ratio": p / h,
            "pplvi_loop_s": p, "hand_loop_s": h,
        })
        print(rows[-1])
    result = {
        "jax_version": jax.__version__,
        "device": f"{jax.devices()[0].platform}: {platform.processor() or platform.machine()}",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "rows": rows,
    }
    out = __import__("pathlib").Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "training_loop.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
