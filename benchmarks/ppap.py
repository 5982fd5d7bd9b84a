"""PPAP (practical plug-and-play guidance) on the committed MNIST model: noise-range experts vs. one guidance model
trained the same way, both distilled data-free from the clean guide classifier.

    python benchmarks/ppap.py            # GPU minutes (CPU: an hour); writes benchmarks/results/ppap.json and
                                         # adds the PPAP rows to benchmarks/results/guidance.json's "methods"
    python benchmarks/ppap.py --quick    # tiny sizes, out/ppap_quick.json (smoke test)

Pipeline (:mod:`pplvi.diffusion.ppap`): ``--generated`` unconditional samples of the diffusion model (DDIM, 25
steps; no labels, no training images) are the transfer set; the clean guide classifier's probabilities on them are
the targets. Guides, all LoRA adapters (rank ``--rank``) on the frozen clean classifier, trained by
:func:`pplvi.diffusion.ppap.distillation_objective` with :func:`pplvi.fit`:

* ``experts``: ``--experts`` adapter sets, one per uniform noise interval, ``--steps`` Adam steps each;
* ``single``: one adapter set on the whole noise range, ``--steps`` steps (trained the same way per model);
* ``single (equal compute)``: one adapter set, ``experts x steps`` steps (the experts' total training);
* ``clean classifier``: no adaptation (the clean classifier applied to x_t).

Measured: held-out distillation cross-entropy to the teacher at t in {0.1, ..., 0.9} (fresh generated samples), and
classifier-guided sampling of the *unconditional* model (:class:`pplvi.diffusion.ppap.ClassifierGuidance`, DDIM 25
steps, 50 samples per class, the same prior noise for every guide): accuracy of the independent evaluator against
the requested class (with its binomial standard error), Fréchet distance of evaluator features to the MNIST test
set, saturation, NFE and seconds per sample.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import pplvi.data
import pplvi.diffusion as D
from pplvi.diffusion import classifier_guidance as CG
from pplvi.diffusion import evaluation as E
from pplvi.diffusion import ppap as PP
from pplvi.diffusion import pretrained as P
from pplvi.models.results import device_name, write_json

RESULTS = Path(__file__).resolve().parent / "results"


def generate(model, n: int, key, steps: int = 25, batch: int = 500):
    """``n`` unconditional samples of ``model`` (the transfer set; no data)."""
    fn = jax.jit(lambda k: D.ddim(k, D.conditional(model, None), model.schedule, (batch, 1, 28, 28), steps).x)
    keys = jax.random.split(key, -(-n // batch))
    return jnp.concatenate([fn(k) for k in keys])[:n]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python benchmarks/ppap.py")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--generated", type=int, default=8000)
    ap.add_argument("--experts", type=int, default=5)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--per-class", type=int, default=50)
    ap.add_argument("--scales", default="1,2,3,5,8")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    if a.quick:
        a.generated, a.steps, a.per_class, a.experts = 200, 30, 2, 2
    out_path = Path(a.out) if a.out else (Path("out") / "ppap_quick.json" if a.quick else RESULTS / "ppap.json")
    steps_sample = 5 if a.quick else 25
    scales = [1.0, 3.0] if a.quick else [float(w) for w in a.scales.split(",")]
    model, ev = P.load("mnist"), E.load_evaluator("mnist")
    base, guide_desc = CG.load_guide_net()
    test_x, _ = pplvi.data.load_mnist("test")
    ref_features = ev.features(test_x)

    t0 = time.time()
    x0 = generate(model, a.generated, jax.random.key(11), steps_sample)
    held = generate(model, max(200, a.generated // 10), jax.random.key(12), steps_sample)
    teacher = jax.jit(lambda x: jax.nn.softmax(jax.vmap(base)(x)))
    probs, held_probs = teacher(x0), teacher(held)
    gen_seconds = time.time() - t0
    print(f"transfer set: {len(x0)} generated samples, {gen_seconds:.0f}s; teacher class histogram "
          f"{np.bincount(np.asarray(probs.argmax(1)), minlength=10).tolist()}", flush=True)

    sched = model.schedule
    guides, train_seconds = {}, {}
    for name, n_exp, steps in [("experts", a.experts, a.steps), ("single", 1, a.steps),
                               ("single (equal compute)", 1, a.experts * a.steps)]:
        t1 = time.time()
        guides[name] = PP.train_experts(base, x0, probs, sched, n_experts=n_exp, rank=a.rank, steps=steps, key=3)
        train_seconds[name] = round(time.time() - t1, 1)
        print(f"{name}: trained in {train_seconds[name]}s", flush=True)
    guides["clean classifier"] = PP.GuidanceExperts([base], PP.time_edges(1, sched.t_min))

    times = [0.1, 0.3, 0.5, 0.7, 0.9]
    heldout = {name: [float(PP.noisy_cross_entropy(g, held, held_probs, sched, t, jax.random.key(int(100 * t))))
                      for t in times] for name, g in guides.items()}
    for name, ce in heldout.items():
        print(f"held-out cross-entropy {name}: {np.round(ce, 3).tolist()}", flush=True)

    n = 10 * a.per_class
    labels = jnp.repeat(jnp.arange(10, dtype=jnp.int32), a.per_class)
    shape, key = (n, 1, 28, 28), jax.random.key(0)
    result = {
        "device": device_name(), "command": "python benchmarks/ppap.py" + (" --quick" if a.quick else ""),
        "config": {"generated": int(len(x0)), "experts": a.experts, "rank": a.rank, "steps": a.steps,
                   "samples": n, "sampler": "ddim", "sampling_steps": steps_sample, "scales": scales,
                   "adapter_parameters_per_expert": PP.count_adapter_parameters(guides["experts"].nets[0]),
                   "classifier_parameters": int(sum(np.size(v) for v in jax.tree.leaves(base)))},
        "guide_classifier": {k: guide_desc[k] for k in ("command", "test_accuracy")},
        "generation_seconds": round(gen_seconds, 1), "train_seconds": train_seconds,
        "heldout_cross_entropy": {"t": times, **heldout}, "methods": [],
    }

    def record(name, fn, args, **extra):
        x, nfe = jax.block_until_ready(fn(key, *args))
        t2 = time.time()
        jax.block_until_ready(fn(key, *args))
        seconds = time.time() - t2
        img = np.asarray(P.to_pixels(x)).reshape(n, 28, 28)
        acc = ev.accuracy(img, np.asarray(labels))
        row = {"method": name, "accuracy": acc, "accuracy_se": float(np.sqrt(max(acc * (1 - acc), 1e-12) / n)),
               "frechet": E.frechet_distance(ev.features(img), ref_features), "saturation": E.saturation(img),
               "nfe_per_sample": float(np.mean(np.asarray(nfe))), "seconds_per_sample": seconds / n, **extra}
        result["methods"].append(row)
        print(json.dumps(row), flush=True)
        write_json(out_path, result)

    record("unconditional (unguided)", jax.jit(lambda k: tuple(D.ddim(k, D.conditional(model, None), sched, shape,
                                                                        steps_sample))), (), guide="none")
    for name, g in guides.items():
        fn = jax.jit(lambda k, w, g=g: tuple(D.ddim(k, PP.ClassifierGuidance(model, labels, g, w), sched, shape,
                                                    steps_sample)))
        for w in scales:
            record(f"ppap {name} w={w:g}", fn, (jnp.float32(w),), guide=name, w=w)

    # Sample quality and class accuracy trade off along the scale, and the guides sit at different points of that
    # trade-off for the same w; compare them along it: the accuracy of the other guide interpolated (linearly in
    # the Frechet distance, along its scale sweep) at each expert point's Frechet distance.
    def curve(guide):
        rows = sorted((r for r in result["methods"] if r.get("guide") == guide), key=lambda r: r["frechet"])
        return np.array([r["frechet"] for r in rows]), np.array([r["accuracy"] for r in rows])

    result["experts_vs_single"] = []
    for r in (r for r in result["methods"] if r.get("guide") == "experts"):
        row = {"w": r["w"], "experts_accuracy": r["accuracy"], "experts_frechet": r["frechet"]}
        for other in ("single", "single (equal compute)"):
            f, acc = curve(other)
            inside = bool(f[0] <= r["frechet"] <= f[-1])
            row[f"{other} accuracy at equal frechet"] = float(np.interp(r["frechet"], f, acc)) if inside else None
            same_w = next(o for o in result["methods"] if o.get("guide") == other and o["w"] == r["w"])
            row[f"{other} accuracy at equal w"] = same_w["accuracy"]
        result["experts_vs_single"].append(row)
    write_json(out_path, result)
    if not a.quick and a.out is None:  # the guidance toolkit's results list every method
        g_path = RESULTS / "guidance.json"
        g = json.loads(g_path.read_text())
        g["methods"] = [r for r in g["methods"] if not r["method"].startswith("ppap ")]
        g["methods"] += [dict(r, source="benchmarks/ppap.py", device=result["device"]) for r in result["methods"]
                         if r["method"].startswith("ppap ")]
        write_json(g_path, g)
    print(json.dumps(result["experts_vs_single"], indent=1))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PPLVI_DATA", str(Path(__file__).resolve().parents[1] / ".gpudata"))
    sys.exit(main())
