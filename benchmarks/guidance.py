"""Guidance benchmark: exact checks on a labelled 2-D Gaussian mixture (CPU, minutes) and sample quality of guidance
rules on the committed class-conditional MNIST model (a GPU makes it minutes; on a CPU use ``--quick``).

    python benchmarks/guidance.py                       # both parts -> benchmarks/results/guidance.json
    python benchmarks/guidance.py --part exact          # keeps the "methods" of an existing results file
    python benchmarks/guidance.py --part mnist --out X  # the MNIST part alone (what ran on the GPU)
    python benchmarks/guidance.py --part exact --mnist-from X   # merge a separately run MNIST part

Exact part (analytic denoiser, :class:`pplvi.diffusion.GaussianMixture` with labels, cosine schedule):
``cfg_w1_energy`` (energy distance of CFG at w = 1 to the conditional; threshold = mean + 4 sd of the null
distribution of two exact samples of the same size), ``apg_cfg_maxdiff`` (APG with eta = 1, no rescaling, no
momentum vs. CFG in float64), ``ag_cfg_maxdiff`` (Adaptive Guidance with threshold 1 vs. CFG, float32, four
samplers), ``rlg_freq_err`` (largest error of RLG's mode frequencies against pi_k exp(w r_k / beta), w in {0.5, 2},
analytic fine-tuned model), and an RLG run with *learned* models: an MLP denoiser of the reference mixture and its
reward-weighted-regression fine-tune (a pplvi objective).

MNIST part: 500 samples per method (50 per class), DDIM with 25 steps, the same prior noise for every method;
metrics from the independent evaluator (:mod:`pplvi.diffusion.evaluation`): accuracy against the requested labels,
Fréchet distance of features to the 10,000 MNIST test images, saturation, precision/recall (k = 3, against 2,000
test images), NFE per sample and seconds per sample (second call, after compilation).
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
import optax

import pplvi
import pplvi.data
import pplvi.diffusion as D
from pplvi.diffusion import evaluation as E
from pplvi.diffusion import guidance as G
from pplvi.models.results import device_name, write_json

RESULTS = Path(__file__).resolve().parent / "results" / "guidance.json"
SCHED = D.CosineSchedule()
MEANS = jnp.array([[-3.0, 0.0], [3.0, 0.0], [0.0, 3.0], [0.0, -3.0]])
COVS = jnp.tile(0.3 * jnp.eye(2), (4, 1, 1))
WEIGHTS = jnp.array([0.4, 0.3, 0.2, 0.1])
LABELS = jnp.array([0, 0, 1, 1])
REWARDS = jnp.array([0.0, 1.0, 0.0, 2.0])
BETA = 1.0


def _run(pred, n, steps, sampler="ddim", seed=3, sched=SCHED):
    return jax.jit(lambda k: D.sample(sampler, k, pred, sched, (n, 2), steps))(jax.random.key(seed))


def _modes(x):
    return np.bincount(np.asarray(jnp.argmin(jnp.sum((x[:, None] - MEANS[None]) ** 2, -1), 1)), minlength=4)


# ----------------------------------------------------------------------------------------------------------------
# exact part
# ----------------------------------------------------------------------------------------------------------------


def exact_part(quick: bool = False, log=print) -> dict:
    gmm = D.GaussianMixture(WEIGHTS, MEANS, COVS, labels=LABELS)
    n, reps = (300, 5) if quick else (1000, 20)
    nulls = [float(D.energy_distance(gmm.sample(jax.random.key(100 + i), n, 0), gmm.sample(jax.random.key(200 + i),
                                                                                            n, 0)))
             for i in range(reps)]
    threshold = float(np.mean(nulls) + 4 * np.std(nulls))
    target = gmm.sample(jax.random.key(2), n, label=0)
    cfg1 = _run(G.CFG(gmm, 0, 1.0, schedule=SCHED), n, 40)
    cfg0 = _run(G.CFG(gmm, 0, 0.0, schedule=SCHED), n, 40)
    out = {
        "cfg_w1_energy": float(D.energy_distance(cfg1.x, target)), "cfg_w1_energy_threshold": threshold,
        "cfg_w1_energy_null": {"n": n, "pairs": reps, "mean": float(np.mean(nulls)), "sd": float(np.std(nulls))},
        "cfg_w0_energy": float(D.energy_distance(cfg0.x, target)),
    }
    log("cfg", out)
    with jax.enable_x64(True):
        g64 = D.GaussianMixture(WEIGHTS.astype(jnp.float64), MEANS.astype(jnp.float64), COVS.astype(jnp.float64),
                                labels=LABELS)
        cfg = _run(G.CFG(g64, 0, 3.0, schedule=SCHED), 128, 15)
        apg = _run(G.APG(g64, 0, 3.0, eta=1.0, schedule=SCHED), 128, 15)
        out["apg_cfg_maxdiff"] = float(jnp.max(jnp.abs(apg.x - cfg.x)))
        out["apg_cfg_dtype"] = str(cfg.x.dtype)
    diffs, nfes = {}, {}
    for sampler, steps in [("ddim", 10), ("ddpm", 10), ("heun", 4), ("dpm_solver_pp", 6)]:
        c = _run(G.CFG(gmm, 0, 3.0, schedule=SCHED), 64, steps, sampler)
        a = _run(G.AdaptiveGuidance(gmm, 0, 3.0, threshold=1.0, schedule=SCHED), 64, steps, sampler)
        diffs[sampler] = float(jnp.max(jnp.abs(a.x - c.x)))
        nfes[sampler] = [int(c.nfe), int(a.nfe)]
    out["ag_cfg_maxdiff"] = max(diffs.values())
    out["ag_cfg_maxdiff_by_sampler"], out["ag_cfg_nfe_by_sampler"] = diffs, nfes
    log("apg/ag", out["apg_cfg_maxdiff"], diffs)

    m = 1000 if quick else 4000
    reference = D.GaussianMixture(WEIGHTS, MEANS, COVS)
    tilted = G.tilted_mixture(reference, REWARDS, 1.0 / BETA)
    errs, freqs = {}, {}
    for w in (0.5, 2.0):
        s = _run(G.RLG(reference.predictor(SCHED), tilted.predictor(SCHED), w), m, 100)
        freq = _modes(s.x) / m
        target_w = np.asarray(jax.nn.softmax(jnp.log(WEIGHTS) + w * REWARDS / BETA))
        errs[str(w)] = float(np.max(np.abs(freq - target_w)))
        freqs[str(w)] = {"measured": freq.tolist(), "target": target_w.tolist()}
    out["rlg_freq_err"] = max(errs.values())
    out["rlg_freq_err_by_w"], out["rlg_frequencies"] = errs, freqs
    out["rlg_freq_se"] = float(np.max(np.sqrt(0.25 / m)))  # the largest binomial standard error at this m
    out["rlg_setup"] = {"samples": m, "sampler": "ddim", "steps": 100, "rewards": REWARDS.tolist(), "beta": BETA,
                        "weights": WEIGHTS.tolist()}
    log("rlg", errs)
    out["rlg_learned"] = rlg_learned(quick, log)
    return out


def rlg_learned(quick: bool, log=print) -> dict:
    """RLG with learned models: an unconditional MLP denoiser of the reference mixture (denoising objective), then
    its fine-tune by reward-weighted regression on reference samples; frequencies of w in {0, 0.5, 1, 2}."""
    reference = D.GaussianMixture(WEIGHTS, MEANS, COVS)
    data = np.asarray(reference.sample(jax.random.key(11), 20_000))
    steps = 300 if quick else 3000
    model = D.Diffusion(D.MLPDenoiser(2, 0, key=jax.random.key(0)), SCHED, "eps", 0)
    opt = optax.adam(optax.cosine_decay_schedule(2e-3, steps, 0.05))
    base = pplvi.fit(D.denoising_objective(), model, optimizer=opt, steps=steps, key=0, data=data,
                     batch_size=512).params
    reward = lambda x: REWARDS[jnp.argmin(jnp.sum((x[:, None] - MEANS[None]) ** 2, -1), 1)]  # noqa: E731
    tuned = pplvi.fit(G.reward_weighted_objective(reward, BETA), base, optimizer=opt, steps=steps, key=1,
                      data=data, batch_size=512).params
    m = 1000 if quick else 4000
    rows = {}
    for w in (0.0, 0.5, 1.0, 2.0):
        rule = G.RLG(D.conditional(base), D.conditional(tuned), w)
        s = _run(rule, m, 100)
        freq = _modes(s.x) / m
        target_w = np.asarray(jax.nn.softmax(jnp.log(WEIGHTS) + w * REWARDS / BETA))
        rows[str(w)] = {"measured": freq.tolist(), "target": target_w.tolist(),
                        "max_err": float(np.max(np.abs(freq - target_w)))}
    log("rlg learned", {k: v["max_err"] for k, v in rows.items()})
    return {"train_steps": steps, "samples": m, "frequencies": rows}


# ----------------------------------------------------------------------------------------------------------------
# MNIST part
# ----------------------------------------------------------------------------------------------------------------


def real_reference(ev, test_x, n: int, reps: int = 5) -> dict:
    """The finite-sample floor of the metrics: ``reps`` random subsets of ``n`` MNIST test images against all of
    them (Fréchet distance), and their saturation."""
    feats = ev.features(test_x)
    rng = np.random.default_rng(0)
    fd, sat = [], []
    for _ in range(reps):
        idx = rng.choice(len(test_x), n, replace=False)
        fd.append(E.frechet_distance(feats[idx], feats))
        sat.append(E.saturation(test_x[idx]))
    return {"n": n, "subsets": reps, "frechet_mean": float(np.mean(fd)), "frechet_sd": float(np.std(fd)),
            "saturation_mean": float(np.mean(sat))}


def mnist_part(quick: bool = False, out_path: Path | None = None, log=print) -> dict:
    from pplvi.diffusion import pretrained as P

    model = P.load("mnist")
    ev = E.load_evaluator("mnist")
    test_x, _ = pplvi.data.load_mnist("test")
    per_class, steps = (2, 4) if quick else (50, 25)
    n = 10 * per_class
    labels = jnp.repeat(jnp.arange(10, dtype=jnp.int32), per_class)
    shape = (n, 1, 28, 28)
    key, key2 = jax.random.key(0), jax.random.key(1)
    ref_features = ev.features(test_x)
    pr_real = test_x[:2000] if not quick else test_x[:50]
    result = {"device": device_name(), "samples_per_method": n, "sampler": "ddim", "steps": steps,
              "model": "P.load('mnist')", "methods": [],
              "real_test_images": real_reference(ev, test_x, n)}

    def record(name, fn, args, nfe_per_sample=None, extra=None, time_it=True):
        t0 = time.time()
        res = fn(*args)
        jax.block_until_ready(res)
        first = time.time() - t0
        seconds = first
        if time_it:
            t0 = time.time()
            jax.block_until_ready(fn(*args))
            seconds = time.time() - t0
        x, nfe = res
        img = np.asarray(P.to_pixels(x))
        prec, rec = E.precision_recall_features(ev.features(pr_real), ev.features(img), 3)
        row = {
            "method": name, "accuracy": ev.accuracy(img, np.asarray(labels)),
            "frechet": E.frechet_distance(ev.features(img), ref_features), "saturation": E.saturation(img),
            "nfe_per_sample": float(np.mean(np.asarray(nfe))) if nfe_per_sample is None else nfe_per_sample,
            "seconds_per_sample": seconds / n, "precision": prec, "recall": rec,
            "first_call_seconds": round(first, 2),
        }
        row.update(extra or {})
        result["methods"].append(row)
        log(json.dumps(row), flush=True)
        if out_path is not None:
            write_json(out_path, result)

    def sample_fn(make_rule):
        return jax.jit(lambda k, *a: tuple(D.ddim(k, make_rule(*a), model.schedule, shape, steps)))

    uncond = sample_fn(lambda: D.conditional(model, None))
    record("unconditional", uncond, (key,))
    cond = sample_fn(lambda lab: D.conditional(model, lab))
    record("conditional (w=1)", cond, (key, labels))
    cfg = sample_fn(lambda lab, w: G.CFG(model, lab, w))
    for w in (3.0, 5.0, 7.0):
        record(f"cfg w={w:g}", cfg, (key, labels, jnp.float32(w)))
    record("cfg w=3 (second seed)", cfg, (key2, labels, jnp.float32(3.0)), extra={"noise_floor": True})
    apg = sample_fn(lambda lab, w, eta, r, beta: G.APG(model, lab, w, eta=eta, rescale=r, momentum=beta))
    for w in (5.0, 7.0):
        for eta, r, beta, tag in [(0.0, np.inf, 0.0, "eta=0"), (0.0, 4.0, -0.5, "eta=0, r=4, beta=-0.5")]:
            record(f"apg w={w:g} {tag}", apg, (key, labels, jnp.float32(w), jnp.float32(eta), jnp.float32(r),
                                               jnp.float32(beta)))

    # Adaptive Guidance: per-sample switches, run one sample per program (vmap) for the per-sample NFE ...
    keys = jax.random.split(key, n)

    @jax.jit
    def ag_per_sample(keys, labels, w, threshold):
        def one(k, lab):
            s = D.ddim(k, G.AdaptiveGuidance(model, lab, w, threshold), model.schedule, (1, 1, 28, 28), steps)
            return s.x[0], s.nfe

        return jax.vmap(one)(keys, labels)

    # ... and as one batch (a step costs one evaluation only once the whole batch has switched) for wall-clock.
    ag_batch = sample_fn(lambda lab, w, thr: G.AdaptiveGuidance(model, lab, w, thr))
    cfg_ps = jax.jit(lambda keys, labels, w: jax.vmap(
        lambda k, lab: (lambda s: (s.x[0], s.nfe))(D.ddim(k, G.CFG(model, lab, w), model.schedule, (1, 1, 28, 28),
                                                          steps)))(keys, labels))
    record("cfg w=3 (per-sample noise)", cfg_ps, (keys, labels, jnp.float32(3.0)), time_it=False,
           extra={"note": "CFG with the per-sample prior noise of the Adaptive Guidance rows"})
    for thr in (0.9999, 0.99995):
        _, nfe_b = ag_batch(key, labels, jnp.float32(3.0), jnp.float32(thr))
        record(f"adaptive guidance w=3 threshold={thr}", ag_per_sample, (keys, labels, jnp.float32(3.0),
                                                                        jnp.float32(thr)),
               extra={"nfe_batched": int(nfe_b), "seconds_note": "per-sample programs (vmap computes both branches)"})
        t0 = time.time()
        jax.block_until_ready(ag_batch(key, labels, jnp.float32(3.0), jnp.float32(thr)))
        result["methods"][-1]["seconds_per_sample_batched"] = (time.time() - t0) / n

    # Adaptive Guidance with the cosine between the denoised predictions (space="x0"): on a pixel-space model the
    # noise predictions are dominated by x_t early on, so the eps-space cosine passes any threshold at once.
    @jax.jit
    def ag_x0_per_sample(keys, labels, w, threshold):
        def one(k, lab):
            s = D.ddim(k, G.AdaptiveGuidance(model, lab, w, threshold, space="x0"), model.schedule, (1, 1, 28, 28),
                       steps)
            return s.x[0], s.nfe

        return jax.vmap(one)(keys, labels)

    for thr in (0.999, 0.9995):
        record(f"adaptive guidance w=3 x0-cosine threshold={thr}", ag_x0_per_sample,
               (keys, labels, jnp.float32(3.0), jnp.float32(thr)),
               extra={"space": "x0", "seconds_note": "per-sample programs (vmap computes both branches)"})

    # LinearAG: affine maps fitted on 100 calibration trajectories with other noise and labels
    cal_n = 20 if quick else 100
    cal_labels = jnp.arange(cal_n, dtype=jnp.int32) % 10
    coef, replace = G.fit_linear_ag(model, cal_labels, 3.0, (cal_n, 1, 28, 28), jax.random.key(7), steps=steps)
    lag = sample_fn(lambda lab: G.LinearAG(model, lab, 3.0, coef, replace))
    record("linear AG w=3", lag, (key, labels), extra={"replaced_calls": int(replace.sum())})
    return result


def ag_x0_part(quick: bool = False, log=print) -> dict:
    """Adaptive Guidance with the cosine measured between the *denoised* predictions (``space="x0"``), against CFG
    and the conditional sampler on the same prior noise (per-sample programs, so NFE is per sample). Small (100
    samples) because it ran on the CPU; the paired distance to CFG's samples is the sharp measure here."""
    from pplvi.diffusion import pretrained as P

    model, ev = P.load("mnist"), E.load_evaluator("mnist")
    per_class, steps = (1, 4) if quick else (10, 25)
    n = 10 * per_class
    labels = jnp.repeat(jnp.arange(10, dtype=jnp.int32), per_class)
    keys = jax.random.split(jax.random.key(5), n)

    def per_sample(make_rule):
        @jax.jit
        def fn(keys, labels):
            def one(k, lab):
                s = D.ddim(k, make_rule(lab), model.schedule, (1, 1, 28, 28), steps)
                return s.x[0], s.nfe

            return jax.vmap(one)(keys, labels)

        return fn

    runs = {"cfg w=3": per_sample(lambda lab: G.CFG(model, lab, 3.0)),
            "conditional (w=1)": per_sample(lambda lab: D.conditional(model, lab))}
    for thr in (0.999, 0.9995):
        runs[f"adaptive guidance w=3 x0-cosine threshold={thr}"] = per_sample(
            lambda lab, thr=thr: G.AdaptiveGuidance(model, lab, 3.0, thr, space="x0"))
    out, xs = {"samples": n, "steps": steps, "device": device_name(), "rows": []}, {}
    for name, fn in runs.items():
        x, nfe = fn(keys, labels)
        xs[name] = np.asarray(x)
        img = np.asarray(P.to_pixels(x))
        out["rows"].append({"method": name, "accuracy": ev.accuracy(img, np.asarray(labels)),
                            "saturation": E.saturation(img), "nfe_per_sample": float(np.mean(np.asarray(nfe)))})
        log(out["rows"][-1], flush=True)
    ref, cond = xs["cfg w=3"], xs["conditional (w=1)"]
    scale = float(np.mean(np.linalg.norm((cond - ref).reshape(n, -1), axis=1)))
    for row in out["rows"]:
        dist = float(np.mean(np.linalg.norm((xs[row["method"]] - ref).reshape(n, -1), axis=1)))
        row["distance_to_cfg_relative_to_conditional"] = dist / scale
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/guidance.py")
    p.add_argument("--part", choices=("exact", "mnist", "ag_x0", "all"), default="all")
    p.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test of the script)")
    p.add_argument("--out", default=None, help="results file (default: benchmarks/results/guidance.json; with "
                   "--quick: out/guidance_quick.json, so a smoke test never replaces the committed results)")
    p.add_argument("--mnist-from", default=None, help="a results file whose MNIST part to merge")
    a = p.parse_args(argv)
    out = Path(a.out) if a.out else (Path("out") / "guidance_quick.json" if a.quick else RESULTS)
    if a.part == "mnist":
        mnist_part(a.quick, out)
        return 0
    if a.part == "ag_x0":  # added to an existing results file
        result = json.loads(out.read_text())
        result["adaptive_guidance_x0_cpu"] = ag_x0_part(a.quick)
        write_json(out, result)
        return 0
    exact = exact_part(a.quick)
    if a.part == "all":
        mnist = mnist_part(a.quick, None)
    else:
        src = Path(a.mnist_from) if a.mnist_from else out
        mnist = json.loads(src.read_text()) if src.exists() else {"methods": []}
        mnist = {k: v for k, v in mnist.items() if k not in ("exact", "device_exact")}
        if mnist.get("methods"):  # recompute the real-data floor here (cheap; an older run used one fixed subset)
            mnist["real_test_images"] = real_reference(E.load_evaluator("mnist"), pplvi.data.load_mnist("test")[0],
                                                       mnist["samples_per_method"])
    result = dict(mnist, exact=exact, device_exact=device_name())
    result.setdefault("device", device_name())
    quick = " --quick" if a.quick else ""
    if a.part == "all":
        result["command"] = f"python benchmarks/guidance.py{quick}"
    else:  # the MNIST part ran separately (on an accelerator) and was merged here
        result["command"] = (f"python benchmarks/guidance.py --part mnist --out MNIST.json{quick} (device: "
                             f"{result['device']}); python benchmarks/guidance.py --part exact --mnist-from "
                             f"MNIST.json{quick} (device: {result['device_exact']})")
    write_json(out, result)
    print(json.dumps({k: v for k, v in exact.items() if not isinstance(v, dict)}, indent=1))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PPLVI_DATA", str(Path(__file__).resolve().parents[1] / ".gpudata"))
    sys.exit(main())
