"""PPAP (practical plug-and-play guidance) on the committed MNIST model: noise-range experts vs. one guidance model
trained the same way, both distilled data-free from the clean guide classifier.

    python benchmarks/ppap.py            # GPU minutes (CPU: an hour); writes benchmarks/results/ppap.json and
                                         # adds the PPAP rows to benchmarks/results/guidance.json's "methods"
    python benchmarks/ppap.py --quick    # tiny sizes, out/ppap_quick.json (smoke test)

    # the replicate sweep (adapter rank x training seed; rank 8 / seed 3 is the run above), then its summary,
    # written into benchmarks/results/ppap.json as "replicates":
    python benchmarks/ppap.py --rank R --train-seed S --out benchmarks/results/ppap_sweep/rankR_seedS.json
    python benchmarks/ppap.py --summarize benchmarks/results/ppap_sweep/*.json

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
steps, 300 samples per class, the same prior noise for every guide): accuracy of the independent evaluator against
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


def summarize(paths, out: Path = RESULTS / "ppap.json") -> int:
    """Pools replicate runs (different adapter ranks and training seeds): per run, the experts' accuracy advantage
    at equal Frechet distance and the best accuracies; pooled, their mean with the standard error *between runs*
    (so training-seed variation counts, not only the sampling error), how many runs favour the experts, and at how
    many noise levels the experts' held-out distillation loss is lower."""
    runs = []
    for p in paths:
        r = json.loads(p.read_text())
        best = r["best_accuracy"]
        row = {"file": p.name, "rank": r["config"]["rank"], "train_seed": r["config"].get("train_seed", 3),
               "samples": r["config"]["samples"], "best_accuracy_experts": best["experts"]["accuracy"]}
        for other in ("single", "single (equal compute)"):
            adv = r["experts_advantage_at_equal_frechet"][other]
            row[f"advantage_vs_{other}"], row[f"advantage_vs_{other}_se"] = adv["mean"], adv["se"]
            row[f"best_accuracy_{other}"] = best[other]["accuracy"]
            ce = r["heldout_cross_entropy"]
            row[f"heldout_ce_lower_vs_{other}"] = int(sum(e < o for e, o in zip(ce["experts"], ce[other])))
        runs.append(row)
    pooled = {}
    for other in ("single", "single (equal compute)"):
        adv = np.array([r[f"advantage_vs_{other}"] for r in runs])
        best = np.array([r["best_accuracy_experts"] - r[f"best_accuracy_{other}"] for r in runs])
        se = lambda v: float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else None
        pooled[other] = {
            "advantage_at_equal_frechet": float(adv.mean()), "advantage_at_equal_frechet_se": se(adv),
            "runs_favouring_experts": int((adv > 0).sum()),
            "best_accuracy_difference": float(best.mean()), "best_accuracy_difference_se": se(best),
            "runs_with_higher_best_accuracy": int((best > 0).sum()),
            "runs_with_lower_heldout_ce_at_every_t": int(sum(r[f"heldout_ce_lower_vs_{other}"] == 5 for r in runs)),
        }
    res = json.loads(out.read_text())
    res["replicates"] = {"runs": runs, "pooled": pooled, "command": "python benchmarks/ppap.py --summarize "
                         + " ".join(str(p) for p in paths)}
    write_json(out, res)
    print(json.dumps(res["replicates"], indent=1))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python benchmarks/ppap.py")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--generated", type=int, default=8000)
    ap.add_argument("--experts", type=int, default=5)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--per-class", type=int, default=300)
    ap.add_argument("--scales", default="1,1.5,2,2.5,3,4,5,6,8")
    ap.add_argument("--train-seed", type=int, default=3, help="the adapters' initialization and minibatch seed")
    ap.add_argument("--out", default=None)
    ap.add_argument("--summarize", nargs="+", metavar="RUN_JSON",
                    help="summarize finished runs (one per rank / seed) into benchmarks/results/ppap.json")
    a = ap.parse_args(argv)
    if a.summarize:
        return summarize([Path(p) for p in a.summarize])
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
        guides[name] = PP.train_experts(base, x0, probs, sched, n_experts=n_exp, rank=a.rank, steps=steps,
                                        key=a.train_seed)
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
        "device": device_name(),
        "command": " ".join(["python benchmarks/ppap.py", *(sys.argv[1:] if argv is None else argv)]),
        "config": {"generated": int(len(x0)), "experts": a.experts, "rank": a.rank, "steps": a.steps,
                   "train_seed": a.train_seed,
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

    def at_frechet(guide, frechet):
        """The guide's accuracy interpolated at ``frechet`` along its scale sweep, with its binomial standard error
        (the two bracketing points' errors, weighted as the interpolation weights them); None outside the sweep."""
        f, acc = curve(guide)
        if not f[0] <= frechet <= f[-1]:
            return None, None
        j = int(np.clip(np.searchsorted(f, frechet), 1, len(f) - 1))
        lam = (frechet - f[j - 1]) / max(f[j] - f[j - 1], 1e-12)
        se2 = ((1 - lam) ** 2 * acc[j - 1] * (1 - acc[j - 1]) + lam ** 2 * acc[j] * (1 - acc[j])) / n
        return float((1 - lam) * acc[j - 1] + lam * acc[j]), float(np.sqrt(se2))

    result["experts_vs_single"], summary = [], {}
    for r in (r for r in result["methods"] if r.get("guide") == "experts"):
        row = {"w": r["w"], "experts_accuracy": r["accuracy"], "experts_frechet": r["frechet"]}
        for other in ("single", "single (equal compute)"):
            acc, se = at_frechet(other, r["frechet"])
            row[f"{other} accuracy at equal frechet"] = acc
            row[f"{other} accuracy at equal frechet se"] = se
            same_w = next(o for o in result["methods"] if o.get("guide") == other and o["w"] == r["w"])
            row[f"{other} accuracy at equal w"] = same_w["accuracy"]
            if acc is not None:
                summary.setdefault(other, []).append((r["accuracy"] - acc, r["accuracy_se"] ** 2 + se ** 2))
        result["experts_vs_single"].append(row)
    # One number per comparison: the experts' accuracy advantage at equal Frechet distance, averaged over the
    # experts' scale points inside the other guide's sweep (se: the points' binomial errors, taken independent);
    # and each guide's best accuracy over the common scale grid.
    result["experts_advantage_at_equal_frechet"] = {
        other: {"mean": float(np.mean([d for d, _ in v])), "se": float(np.sqrt(sum(s2 for _, s2 in v)) / len(v)),
                "points": len(v)} for other, v in summary.items()}
    result["best_accuracy"] = {
        g: max(({"accuracy": r["accuracy"], "se": r["accuracy_se"], "w": r["w"], "frechet": r["frechet"]}
                for r in result["methods"] if r.get("guide") == g), key=lambda b: b["accuracy"])
        for g in guides}
    write_json(out_path, result)
    if not a.quick and a.out is None:  # the guidance toolkit's results list every method
        g_path = RESULTS / "guidance.json"
        g = json.loads(g_path.read_text())
        g["methods"] = [r for r in g["methods"] if not r["method"].startswith("ppap ")]
        g["methods"] += [dict(r, source="benchmarks/ppap.py", device=result["device"]) for r in result["methods"]
                         if r["method"].startswith("ppap ")]
        write_json(g_path, g)
    print(json.dumps({k: result[k] for k in ("experts_vs_single", "experts_advantage_at_equal_frechet",
                                             "best_accuracy")}, indent=1))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PPLVI_DATA", str(Path(__file__).resolve().parents[1] / ".gpudata"))
    sys.exit(main())
