"""Dynamic CFG via online feedback (pplvi.diffusion.dynamic_cfg) on the committed class-conditional MNIST model,
against static CFG at each candidate scale with the same prior noise and the same requested labels (DDIM).

    python benchmarks/dynamic_cfg.py            # 10 samples per class, DDIM 25 steps (CPU, a few minutes)
    python benchmarks/dynamic_cfg.py --quick    # 2 per class, 5 steps, written to out/dynamic_cfg_quick.json

Scores from the independent evaluator (pplvi.diffusion.evaluation.load_evaluator("mnist")): accuracy = fraction
classified as the requested label, Fréchet distance of evaluator features to the 10,000 MNIST test images,
saturation, NFE per sample. ``dominated_by_static``: some static scale has accuracy >= and Fréchet <= dynamic CFG's
with one of them strict.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import pplvi.data
import pplvi.diffusion as D
from pplvi.diffusion import dynamic_cfg as DC
from pplvi.diffusion import evaluation as E
from pplvi.diffusion import guidance as G
from pplvi.diffusion import pretrained as P
from pplvi.models.results import device_name, write_json

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "dynamic_cfg.json"
CANDIDATES = (0.0, 1.0, 2.0, 3.0, 5.0)


def dominates(a, b) -> bool:
    return (a["accuracy"] >= b["accuracy"] and a["frechet"] <= b["frechet"]
            and (a["accuracy"] > b["accuracy"] or a["frechet"] < b["frechet"]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--fidelity-weight", type=float, default=1.0)
    ap.add_argument("--lookahead", type=float, default=None, help="default: one step, 1/steps")
    ap.add_argument("--candidates", default=None, help="comma-separated scales (default: "
                    + ",".join(f"{w:g}" for w in CANDIDATES) + ")")
    ap.add_argument("--window", default=None, help="t_lo,t_hi: the rule chooses only there (scale 1 outside)")
    ap.add_argument("--seed", type=int, default=0, help="prior-noise seed (0 is the committed evaluation set)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    candidates = tuple(float(w) for w in a.candidates.split(",")) if a.candidates else tuple(CANDIDATES)
    statics = sorted(set(candidates) | set(CANDIDATES))  # every candidate, and the default grid, as static CFG
    per_class, steps = (2, 5) if a.quick else (10, 25)
    out_path = Path(a.out) if a.out else (ROOT.parent / "out" / "dynamic_cfg_quick.json" if a.quick else RESULTS)
    model, ev = P.load("mnist"), E.load_evaluator("mnist")
    alignment, fidelity = DC.load_evaluators()
    test_x, _ = pplvi.data.load_mnist("test")
    ref_features = ev.features(test_x)
    n = 10 * per_class
    labels = jnp.repeat(jnp.arange(10, dtype=jnp.int32), per_class)
    shape, key = (n, 1, 28, 28), jax.random.key(a.seed)
    window = tuple(float(v) for v in a.window.split(",")) if a.window else (0.0, 1.0)
    out = {"device": device_name(), "samples": n, "steps": steps, "sampler": "ddim", "model": "P.load('mnist')",
           "candidates": list(candidates), "fidelity_weight": a.fidelity_weight,
           "command": "python benchmarks/dynamic_cfg.py" + (" --quick" if a.quick else "")
           + (f" --fidelity-weight {a.fidelity_weight:g}" if a.fidelity_weight != 1.0 else "")
           + (f" --lookahead {a.lookahead:g}" if a.lookahead is not None else "")
           + (f" --candidates {a.candidates}" if a.candidates else "")
           + (f" --window {a.window}" if a.window else "") + (f" --seed {a.seed}" if a.seed else ""),
           "window": list(window), "seed": a.seed, "methods": []}

    def record(name, rule):
        t0 = time.time()
        res = jax.jit(lambda k: D.ddim(k, rule, model.schedule, shape, steps))(key)
        x = np.asarray(P.to_pixels(res.x))
        row = {"method": name, "accuracy": ev.accuracy(x, np.asarray(labels)),
               "frechet": E.frechet_distance(ev.features(x), ref_features), "saturation": ev.saturation(x),
               "nfe_per_sample": float(res.nfe), "seconds": round(time.time() - t0, 1)}
        out["methods"].append(row)
        print(row, flush=True)

    for w in statics:
        record(f"cfg w={w:g}", G.CFG(model, labels, w))
    dyn = DC.DynamicCFG(model, labels, alignment, fidelity, candidates, fidelity_weight=a.fidelity_weight,
                        lookahead=a.lookahead if a.lookahead is not None else 1.0 / steps, record=steps,
                        window=window)
    record("dynamic cfg", dyn)
    # the chosen scales: the samplers return no predictor state, so DDIM is re-run step by step here
    calls = len(D.samplers.uniform_times(model.schedule, steps))
    chosen = _chosen_scales(dyn, model, shape, steps, key)
    out["dynamic_mean_scale_per_step"] = [round(float(v), 3) for v in chosen[:calls].mean(1)]
    statics = [m for m in out["methods"] if m["method"].startswith("cfg")]
    dyn_row = out["methods"][-1]
    out["dominated_by_static"] = any(dominates(s, dyn_row) for s in statics)
    write_json(out_path, out)
    print(out_path, "dominated_by_static", out["dominated_by_static"])
    return 0


def _chosen_scales(dyn, model, shape, steps, key):
    """Re-run DDIM (eta = 0) by hand with the rule to read its final state: ``(calls, B)`` scales."""
    ts = D.samplers.uniform_times(model.schedule, steps)
    x = D.samplers.prior_sample(jax.random.split(key)[0], model.schedule, shape)

    @jax.jit
    def step(x, t, s, state):
        eps, state, _ = dyn(x, t, state)
        a_t, s_t = model.schedule.signal_noise(t)
        a_s, s_s = model.schedule.signal_noise(s)
        return a_s * (x - s_t * eps) / a_t + s_s * eps, state

    state = dyn.init(x)
    for i in range(len(ts)):
        x, state = step(x, ts[i], ts[min(i + 1, len(ts) - 1)], state)
    return np.asarray(DC.chosen_scales(state, len(ts)))


if __name__ == "__main__":
    sys.exit(main())
