"""Classifier guidance on the committed class-conditional MNIST model: GFCG (gradient-free, on the conditional
model) and EluCD (clean-classifier gradients through x0-hat, on the unconditional model = the null token), against
unguided unconditional and conditional sampling. The guide is the separately trained MLP
(``python -m pplvi.diffusion.classifier_guidance train``); the scores come from the independent evaluator
(:func:`pplvi.diffusion.evaluation.load_evaluator`).

    python benchmarks/classifier_guidance.py            # 10 samples per class, DDIM 25 steps (CPU, minutes)
    python benchmarks/classifier_guidance.py --per-class 50   # the committed results (a GPU run)
    python benchmarks/classifier_guidance.py --quick    # 2 per class, 5 steps (smoke run)

Every method uses the same prior noise and the same requested labels; accuracy = fraction classified as the
requested label, Fréchet distance of evaluator features to the 10,000 MNIST test images, saturation, NFE per
sample, seconds per sample (second call, after compilation).
"""

from __future__ import annotations

import argparse
import json
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
from pplvi.diffusion import pretrained as P
from pplvi.models.results import device_name, write_json

RESULTS = Path(__file__).resolve().parent / "results" / "classifier_guidance.json"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--per-class", type=int, default=10)
    a = ap.parse_args(argv)
    per_class, steps = (2, 5) if a.quick else (a.per_class, 25)
    model, ev = P.load("mnist"), E.load_evaluator("mnist")
    logits_fn, guide = CG.load_guide_classifier()
    temp = guide["temperature"]
    test_x, _ = pplvi.data.load_mnist("test")
    ref_features = ev.features(test_x)
    n = 10 * per_class
    labels = jnp.repeat(jnp.arange(10, dtype=jnp.int32), per_class)
    shape, key = (n, 1, 28, 28), jax.random.key(0)
    out = {"device": device_name(), "samples": n, "steps": steps, "sampler": "ddim", "model": "P.load('mnist')",
           "guide_classifier": {k: guide[k] for k in ("command", "test_accuracy", "temperature", "temperature_clean")},
           "command": "python benchmarks/classifier_guidance.py" + (" --quick" if a.quick else
                                                                    f" --per-class {per_class}"),
           "methods": []}
    correct = {}

    def record(name, make_rule, **extra):
        fn = jax.jit(lambda k: tuple(D.ddim(k, make_rule(), model.schedule, shape, steps)))
        x, nfe = jax.block_until_ready(fn(key))
        t0 = time.time()
        jax.block_until_ready(fn(key))
        seconds = time.time() - t0
        img = np.asarray(P.to_pixels(x)).reshape(n, 28, 28)
        correct[name] = np.argmax(np.asarray(ev.predict(img)), -1) == np.asarray(labels)
        acc = float(np.mean(correct[name]))
        row = {"method": name, "accuracy": acc, "accuracy_se": float(np.sqrt(max(acc * (1 - acc), 1e-12) / n)),
               "frechet": E.frechet_distance(ev.features(img), ref_features), "saturation": E.saturation(img),
               "nfe_per_sample": float(np.mean(np.asarray(nfe))), "seconds_per_sample": seconds / n, **extra}
        out["methods"].append(row)
        print(json.dumps(row), flush=True)
        write_json(Path(a.out), out)

    record("unconditional (unguided)", lambda: D.conditional(model, None))
    record("conditional (unguided)", lambda: D.conditional(model, labels))
    for w in (1.0, 3.0):
        record(f"gfcg w={w:g}", lambda w=w: CG.GFCG(model, labels, logits_fn, w=w), w=w)
    for w in (0.5, 1.0, 2.0):
        for t_name, t in (("uncalibrated", 1.0), ("calibrated", temp)):
            record(f"elucd {t_name} w={w:g}", lambda w=w, t=t: CG.EluCD(model, labels, logits_fn, w=w, temperature=t),
                   w=w, temperature=t)
    record("elucd calibrated w=2 sin schedule",
           lambda: CG.EluCD(model, labels, logits_fn, w=2.0, temperature=temp, scale_schedule="sin"),
           w=2.0, temperature=temp, scale_schedule="sin")
    # calibrated vs uncalibrated on the same prior noise: paired per-sample differences of correctness
    out["elucd_calibrated_minus_uncalibrated"] = {}
    for w in (0.5, 1.0, 2.0):
        d = correct[f"elucd calibrated w={w:g}"].astype(float) - correct[f"elucd uncalibrated w={w:g}"]
        out["elucd_calibrated_minus_uncalibrated"][f"w={w:g}"] = {
            "accuracy_difference": float(d.mean()), "paired_se": float(d.std(ddof=1) / np.sqrt(n))}
    write_json(Path(a.out), out)
    print(json.dumps(out["elucd_calibrated_minus_uncalibrated"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
