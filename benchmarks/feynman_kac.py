"""Feynman–Kac corrected RLG on the labelled 2-D Gaussian mixture of benchmarks/guidance.py (CPU, minutes).

    python benchmarks/feynman_kac.py            # -> benchmarks/results/feynman_kac.json
    python benchmarks/feynman_kac.py --quick    # smoke test -> out/feynman_kac_quick.json

For w in {0.5, 2}: reference mixture (weights .4/.3/.2/.1, means (+-3, 0), (0, +-3), covariance 0.3 I), fine-tuned
model = the exact KL-regularized optimum (component rewards 0/1/0/2, beta = 1; :func:`pplvi.diffusion.guidance.
tilted_mixture`), target mode frequencies pi_k exp(w r_k / beta) (renormalized). Rows per step count: plain RLG
(DDPM on the combined prediction, the same SDE the corrector simulates) and the Feynman–Kac corrected sampler
(:func:`pplvi.diffusion.feynman_kac.rlg_feynman_kac`), each with the largest mode-frequency error, the binomial
standard error sqrt(p (1 - p) / N) at the target (largest over modes), the ESS history, the log-normalizer estimate
against its closed form and wall-clock seconds (compilation included). Two checks with known answers ride along: the
geometric mix of two Gaussians (moments and normalizer in closed form) and a proposal other than the target
(reference drift, fine-tuned target: exact divergences vs Hutchinson's estimator), plus replicated runs (bias vs
its standard error) and an annealing check with weights that do not sum to 1 (``--part annealing`` adds it to an
existing results file).
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

import pplvi.diffusion as D
from pplvi.diffusion import guidance as G
from pplvi.diffusion.feynman_kac import feynman_kac_sample, rlg_feynman_kac
from pplvi.models.results import device_name, write_json

RESULTS = Path(__file__).resolve().parent / "results" / "feynman_kac.json"
SCHED = D.CosineSchedule()
MEANS = jnp.array([[-3.0, 0.0], [3.0, 0.0], [0.0, 3.0], [0.0, -3.0]])
COVS = jnp.tile(0.3 * jnp.eye(2), (4, 1, 1))
WEIGHTS = jnp.array([0.4, 0.3, 0.2, 0.1])
REWARDS, BETA = jnp.array([0.0, 1.0, 0.0, 2.0]), 1.0


def _modes(x):
    return np.bincount(np.asarray(jnp.argmin(jnp.sum((x[:, None] - MEANS[None]) ** 2, -1), 1)), minlength=4)


def _ess_stats(out) -> dict:
    ess = np.asarray(out.ess)
    res = np.asarray(out.resampled)
    return {"min": float(ess.min()), "mean": float(ess.mean()), "final": float(ess[-1]),
            "resamplings": int(res.sum()), "log_normalizer_se": float(np.sqrt(np.sum(1.0 / ess[res] - 1.0)
                                                                               / out.x.shape[0]))}


def rlg_part(n: int, steps_list, log=print) -> dict:
    reference = D.GaussianMixture(WEIGHTS, MEANS, COVS)
    tilted = G.tilted_mixture(reference, REWARDS, 1.0 / BETA)
    rows = {}
    for w in (0.5, 2.0):
        target = np.asarray(jax.nn.softmax(jnp.log(WEIGHTS) + w * REWARDS / BETA))
        log_z = float(jnp.log(jnp.sum(WEIGHTS * jnp.exp(w * REWARDS / BETA)))
                      - w * jnp.log(jnp.sum(WEIGHTS * jnp.exp(REWARDS / BETA))))
        se = float(np.max(np.sqrt(target * (1 - target) / n)))
        rule = G.RLG(reference.predictor(SCHED), tilted.predictor(SCHED), w)
        by_steps = {}
        for steps in steps_list:
            t0 = time.time()
            plain = jax.jit(lambda k, steps=steps, rule=rule: D.ddpm(k, rule, SCHED, (n, 2), steps))(jax.random.key(0))
            plain_freq = _modes(plain.x) / n
            t1 = time.time()
            out = rlg_feynman_kac(jax.random.key(0), rule, SCHED, (n, 2), steps)
            freq = _modes(out.x) / n
            t2 = time.time()
            by_steps[str(steps)] = {
                "plain_max_err": float(np.max(np.abs(plain_freq - target))), "plain_frequencies": plain_freq.tolist(),
                "plain_seconds": t1 - t0, "fk_max_err": float(np.max(np.abs(freq - target))),
                "fk_frequencies": freq.tolist(), "fk_seconds": t2 - t1, "ess": _ess_stats(out),
                "log_normalizer": float(out.log_normalizer), "nfe_per_particle": int(out.nfe),
            }
            log(f"w={w} steps={steps}", {k: v for k, v in by_steps[str(steps)].items() if "err" in k})
        main = by_steps[str(max(steps_list))]  # the headline row: the most steps
        rows[str(w)] = {"target": target.tolist(), "binomial_se": se, "log_normalizer_exact": log_z,
                        "steps": max(steps_list), "plain_max_err": main["plain_max_err"],
                        "fk_max_err": main["fk_max_err"], "ess": main["ess"],
                        "log_normalizer": main["log_normalizer"], "seconds": main["fk_seconds"],
                        "by_steps": by_steps}
    return rows


def replicate_part(n: int, configs, reps: int) -> dict:
    """``reps`` independent runs for each ``(w, steps)`` in ``configs`` (one vmapped call each): the per-mode bias of
    the corrected sampler against its standard error across runs, which separates a residual (discretization)
    bias from sampling noise."""
    reference = D.GaussianMixture(WEIGHTS, MEANS, COVS)
    tilted = G.tilted_mixture(reference, REWARDS, 1.0 / BETA)
    rows = {}
    for w, steps in configs:
        target = np.asarray(jax.nn.softmax(jnp.log(WEIGHTS) + w * REWARDS / BETA))
        rule = G.RLG(reference.predictor(SCHED), tilted.predictor(SCHED), w)
        keys = jax.random.split(jax.random.key(10), reps)
        t0 = time.time()
        xs = jax.vmap(lambda k, rule=rule, steps=steps: rlg_feynman_kac(k, rule, SCHED, (n, 2), steps).x)(keys)
        freqs = np.stack([_modes(x) / n for x in xs])
        bias = freqs.mean(0) - target
        se = freqs.std(0, ddof=1) / np.sqrt(reps)
        rows[f"w={w},steps={steps}"] = {
            "w": w, "steps": steps, "mean_frequencies": freqs.mean(0).tolist(), "bias": bias.tolist(),
            "bias_se": se.tolist(), "max_abs_bias": float(np.max(np.abs(bias))),
            "max_abs_bias_over_se": float(np.max(np.abs(bias) / se)), "sd_across_runs": freqs.std(0, ddof=1).tolist(),
            "seconds": time.time() - t0}
        print(f"replicates w={w} steps={steps}: bias {np.round(bias, 4)} se {np.round(se, 4)}", flush=True)
    return {"runs": reps, "particles": n, "configs": rows}


def gaussian_part(n: int, steps: int) -> dict:
    m1, v1, m2, v2, w = jnp.array([0.0, 0.0]), 1.0, jnp.array([1.5, -0.5]), 0.6, 2.0
    g1 = D.GaussianMixture(jnp.ones(1), m1[None], v1 * jnp.eye(2)[None])
    g2 = D.GaussianMixture(jnp.ones(1), m2[None], v2 * jnp.eye(2)[None])
    mu, var, log_z = D.analytic.geometric_gaussian(jnp.stack([m1, m2]), jnp.array([v1, v2]), jnp.array([1 - w, w]))
    var, log_z = float(var), float(log_z)
    out = feynman_kac_sample(jax.random.key(2), [g1, g2], [1 - w, w], SCHED, (n, 2), steps)
    p = jnp.exp(out.log_weights)[:, None]
    mean = jnp.sum(p * out.particles, 0)
    plain = jax.jit(lambda k: D.ddpm(k, G.RLG(g1.predictor(SCHED), g2.predictor(SCHED), w), SCHED, (n, 2),
                                     steps))(jax.random.key(2))
    return {"w": w, "steps": steps, "particles": n, "target_mean": mu.tolist(), "target_var": var,
            "fk_mean": mean.tolist(), "fk_var": jnp.sum(p * (out.particles - mean) ** 2, 0).tolist(),
            "plain_mean": plain.x.mean(0).tolist(), "plain_var": plain.x.var(0).tolist(),
            "log_normalizer": float(out.log_normalizer), "log_normalizer_exact": log_z, "ess": _ess_stats(out)}


def proposal_part(n: int, steps: int) -> dict:
    reference = D.GaussianMixture(WEIGHTS, MEANS, COVS)
    tilted = G.tilted_mixture(reference, REWARDS, 1.0 / BETA)
    target = np.asarray(tilted.weights)
    rows = {"target": target.tolist(), "steps": steps, "particles": n,
            "reference_max_err": float(np.max(np.abs(np.asarray(WEIGHTS) - target)))}
    for div in ("exact", "hutchinson"):
        t0 = time.time()
        out = feynman_kac_sample(jax.random.key(1), [reference, tilted], [0.0, 1.0], SCHED, (n, 2), steps,
                                 proposal_weights=[1.0, 0.0], divergence=div)
        freq = _modes(out.x) / n
        rows[div] = {"max_err": float(np.max(np.abs(freq - target))), "frequencies": freq.tolist(),
                     "log_normalizer": float(out.log_normalizer), "ess": _ess_stats(out),
                     "nfe_per_particle": int(out.nfe), "seconds": time.time() - t0}
    return rows


def annealing_part(n: int) -> dict:
    """weights (C,) on one model whose data are N(0, I), so p_t = N(0, I) at every t and gamma_t = N(0, I)^C:
    target N(0, I / C), log Z = (d/2)((1 - C) log 2 pi - log C). Exercises C != 1 (the (C - 1) d f term), where
    the weight increments are large where log alpha-bar moves fast: uniform vs log-SNR-uniform times."""
    from pplvi.diffusion.feynman_kac import log_snr_times

    def standard_normal_eps(x, t):  # the exact noise prediction of N(0, I) data: eps = s_t x
        return SCHED.signal_noise(t)[1] * x

    rows = {}
    for c in (0.5, 2.0):
        log_z = float(2 * (0.5 * (1 - c) * np.log(2 * np.pi) - 0.5 * np.log(c)))
        for grid, steps in (("uniform", 100), ("uniform", 400), ("log_snr", 100)):
            times = log_snr_times(SCHED, steps) if grid == "log_snr" else None
            out = feynman_kac_sample(jax.random.key(3), [standard_normal_eps], [c], SCHED, (n, 2), steps,
                                     times=times)
            p = jnp.exp(out.log_weights)[:, None]
            mean = jnp.sum(p * out.particles, 0)
            rows[f"C={c},{grid},steps={steps}"] = {
                "C": c, "times": grid, "steps": steps, "target_var": 1.0 / c,
                "var": jnp.sum(p * (out.particles - mean) ** 2, 0).tolist(),
                "log_normalizer": float(out.log_normalizer), "log_normalizer_exact": log_z, "ess": _ess_stats(out)}
            print(f"annealing C={c} {grid} {steps}", rows[f"C={c},{grid},steps={steps}"]["var"],
                  rows[f"C={c},{grid},steps={steps}"]["log_normalizer"], log_z, flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/feynman_kac.py")
    p.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test of the script)")
    p.add_argument("--out", default=None, help="results file (default: benchmarks/results/feynman_kac.json; with "
                   "--quick: out/feynman_kac_quick.json)")
    p.add_argument("--part", choices=("all", "annealing"), default="all",
                   help="annealing: add that part to an existing results file")
    a = p.parse_args(argv)
    out = Path(a.out) if a.out else (Path("out") / "feynman_kac_quick.json" if a.quick else RESULTS)
    n, steps_list = (500, (50,)) if a.quick else (4000, (100, 400))
    if a.part == "annealing":
        result = json.loads(out.read_text())
        result["annealing"] = annealing_part(n)
        write_json(out, result)
        return 0
    result = {"device": device_name(), "command": "python benchmarks/feynman_kac.py" + (" --quick" if a.quick else ""),
              "particles": n, "sampler": "ddpm (reverse SDE), uniform times, cosine schedule",
              "ess_threshold": 0.5, "rewards": REWARDS.tolist(), "beta": BETA, "weights": WEIGHTS.tolist()}
    result["w"] = rlg_part(n, steps_list)
    configs = [(0.5, 100), (2.0, 100), (2.0, 400)] if not a.quick else [(2.0, 50)]
    result["replicates"] = replicate_part(n, configs, 8 if not a.quick else 3)
    result["gaussian"] = gaussian_part(n, max(steps_list))
    result["proposal_reference_target_fine_tuned"] = proposal_part(n, 100 if not a.quick else 50)
    result["annealing"] = annealing_part(n)
    write_json(out, result)
    print(json.dumps({w: {k: v for k, v in r.items() if not isinstance(v, (dict, list))}
                      for w, r in result["w"].items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
