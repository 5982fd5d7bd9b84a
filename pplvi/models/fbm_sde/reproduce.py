"""``python -m pplvi.models.fbm_sde reproduce [--quick] [--only SECTION ...] [--hurst-seeds S ...]``: the fBM-SDE
checks; writes ``benchmarks/results/fbm_sde.json``. ``--only`` reruns some sections and merges them into the existing
results file (the other sections' rows stay as they were; the checks are recomputed from all rows, and
``section_runs`` records which command, date and time produced each section).

1. Optimal-coefficient cost (float64) of the type I and type II approximations for H in {0.2, 0.3, 0.5, 0.7, 0.8}
   and K in {1, 3, 5, 9} (nested geometric grids on [1/20, 20], T = 1), with a Monte Carlo estimate from exact joint
   fBM/OU paths (type I) and a quadrature of the kernel error (type II) beside the closed form.
2. fOU bridge (theta = 1, sigma = 1, X_0 = 0, X_2 observed as 0 with noise std 0.1) for H in {0.3, 0.5, 0.7}, on a
   grid refined towards T: the trained posterior's exact mean and std on the grid against the exact Gaussian-process
   posterior (the fOU driven by exact fBM, same grid), against the exact posterior of the Markov-approximate model,
   and the best std any drift-only control reaches on that grid.
3. Hurst recovery on noisy exact fBM paths with H in {0.2, 0.5, 0.8} (grid refined towards every observation; the
   posterior learns the control and the initial OU state), for every seed in ``--hurst-seeds`` (default: ``--seed``
   and ``--seed`` + 1; each seed draws its own data and training noise), with the exact-fBM and Markov-model
   maximum-likelihood estimates and the argmax of the best-control ELBO beside it.
4. The toy bar video (H = 0.8): held-out ELBO of the fBM model against the same model with H fixed at 1/2.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np

import pplvi
from pplvi.models.fbm_sde.bridge import BridgeProblem, fit_bridge
from pplvi.models.fbm_sde.exact import monte_carlo_cost, quadrature_cost
from pplvi.models.fbm_sde.hurst import HurstProblem, baselines, best_control_elbo, fit_hurst, prior_start_gap
from pplvi.models.fbm_sde.markov import approximation_cost, optimal_weights, speeds
from pplvi.models.fbm_sde.video import VideoConfig, video_check
from pplvi.models.results import cpu_name, device_name, write_json

RESULTS = Path("benchmarks/results/fbm_sde.json")
TOLERANCES = {"bridge_mean": 0.05, "bridge_std": 0.05, "hurst": 0.05}
HURST_STEPS, HURST_WARMUP, HURST_PARTICLES = 3000, 3000, 4
SECTIONS = ("cost", "bridge", "hurst", "video")


def omega_costs(hursts=(0.2, 0.3, 0.5, 0.7, 0.8), Ks=(1, 3, 5, 9), gamma_max: float = 20.0, horizon: float = 1.0,
                mc_paths: int = 2000, say=print) -> list[dict]:
    """The cost table; Monte Carlo (type I) and quadrature (type II) estimates for every row."""
    rows = []
    with jax.enable_x64(True):
        for kind in ("I", "II"):
            for H in hursts:
                for K in Ks:
                    g = speeds(K, gamma_max)
                    w = np.asarray(optimal_weights(H, g, horizon, kind))
                    row = {"kind": kind, "H": H, "K": K, "cost": float(approximation_cost(H, g, horizon, kind))}
                    if kind == "I":
                        row["mc"], row["mc_se"] = monte_carlo_cost(0, H, g, w, horizon, paths=mc_paths, steps=100)
                    else:
                        row["quadrature"] = quadrature_cost(H, g, w, horizon)
                    rows.append(row)
                costs = [r["cost"] for r in rows[-len(Ks):]]
                extra = [f"{r['mc']:.2e}+-{r['mc_se']:.1e}" if kind == "I" else f"{r['quadrature']:.2e}"
                         for r in rows[-len(Ks):]]
                say(f"  type {kind} H={H}: cost " + ", ".join(f"K={K}: {c:.2e}" for K, c in zip(Ks, costs))
                    + f"   ({'Monte Carlo' if kind == 'I' else 'quadrature'}: {', '.join(extra)})")
    return rows


def bridge_section(*, quick: bool, seed: int, say=print) -> list[dict]:
    say("2. fOU bridge, T = 2, observation noise 0.1")
    bridge_rows = []
    for H in (0.3, 0.5, 0.7):
        r = fit_bridge(BridgeProblem(H), steps=400 if quick else 2000, seed=seed)
        r.pop("control")
        say(f"  H={H}: max |mean err| {r['max_mean_err']:.3f}, max |std err| {r['max_std_err']:.3f} "
            f"(sampled: {r['max_std_err_sampled']:.3f}; vs the Markov model's posterior: "
            f"{r['max_std_err_vs_markov_model']:.3f}; Markov model vs GP: {r['markov_model_vs_gp_std']:.3f}; best "
            f"drift-only control vs GP: {r['best_control_vs_gp_std']:.3f}) on {r['grid_steps']} steps in "
            f"{r['seconds']:.0f} s")
        bridge_rows.append(r)
    return bridge_rows


def hurst_section(*, quick: bool, seeds, say=print) -> list[dict]:
    problem0 = HurstProblem(0.5)
    say(f"3. Hurst recovery ({problem0.paths} noisy exact fBM paths, {problem0.observations} observations each, noise "
        f"std {problem0.noise}), seeds {list(seeds)}")
    hurst_rows = []
    for seed in seeds:
        for H in (0.2, 0.5, 0.8):
            problem = HurstProblem(H, seed=seed)
            r = fit_hurst(problem, steps=400 if quick else HURST_STEPS, warmup=300 if quick else HURST_WARMUP,
                          particles=HURST_PARTICLES, seed=seed)
            r.pop("model")
            r["seed"] = seed
            r["grid_steps"] = problem.steps
            r.update(baselines(problem))
            r["best_control_elbo_at_learned"] = best_control_elbo(problem, r["learned"], r["learned_scale"])
            r["best_control_elbo_at_true_H"] = max(best_control_elbo(problem, H, s)
                                                   for s in np.linspace(0.8, 1.2, 9))
            r["prior_start_gap_at_learned"] = prior_start_gap(problem, r["learned"], r["learned_scale"])
            say(f"  seed {seed}, true H={H}: learned {r['learned']:.3f} (scale {r['learned_scale']:.3f}) in "
                f"{r['seconds']:.0f} s on {problem.steps} steps; exact-fBM MLE {r['fbm_mle']:.2f}, Markov-model MLE "
                f"{r['markov_mle']:.2f}, argmax of the best-control ELBO {r['best_control_elbo_argmax']:.2f}; "
                f"trained ELBO {r['elbo_last_100']:.1f} vs the best posterior's {r['best_control_elbo_at_learned']:.1f}"
                f" at the learned model ({r['best_control_elbo_at_true_H']:.1f} at the true H; keeping the prior's "
                f"initial OU state would cost {r['prior_start_gap_at_learned']:.1f} more)")
            hurst_rows.append(r)
    return hurst_rows


def video_section(*, quick: bool, seed: int, say=print) -> dict:
    say("4. toy bar video, fBM model vs Brownian-motion model (H = 1/2)")
    video = video_check(VideoConfig(), steps=400 if quick else 2500, train_videos=256 if quick else 512,
                        test_videos=64 if quick else 128, seed=seed)
    say(f"  held-out ELBO: fBM {video['elbo_fbm']:.2f} +- {video['elbo_fbm_se']:.2f}, BM {video['elbo_bm']:.2f} "
        f"+- {video['elbo_bm_se']:.2f}; learned H {video['learned_H']:.3f} (true {video['true_H']})")
    return video


def compute_checks(cost_rows, bridge_rows, hurst_rows, video) -> dict:
    """The pass/fail claims, from the rows of every section (as computed or as read back from the JSON)."""
    return {
        "cost_near_zero_at_H_0.5_type_II": all(r["cost"] < 1e-4 for r in cost_rows
                                               if r["kind"] == "II" and r["H"] == 0.5 and r["K"] >= 3),
        "cost_decreases_with_K": all(
            a["cost"] >= b["cost"] - 1e-6 for a, b in zip(cost_rows, cost_rows[1:])
            if a["kind"] == b["kind"] and a["H"] == b["H"]),
        "cost_matches_monte_carlo": all(abs(r["mc"] - r["cost"]) < 4 * r["mc_se"] + 0.02 * r["cost"]
                                        for r in cost_rows if "mc" in r),
        "bridge_within_tolerance": all(r["max_mean_err"] < TOLERANCES["bridge_mean"]
                                       and r["max_std_err"] < TOLERANCES["bridge_std"] for r in bridge_rows),
        "bridge_within_tolerance_before_T": all(r["max_mean_err"] < TOLERANCES["bridge_mean"]
                                                and r["max_std_err_before_T"] < TOLERANCES["bridge_std"]
                                                for r in bridge_rows),
        "hurst_within_0.05": all(abs(r["learned"] - r["true"]) <= TOLERANCES["hurst"] for r in hurst_rows),
        "hurst_exact_fbm_mle_within_0.05": all(abs(r["fbm_mle"] - r["true"]) <= TOLERANCES["hurst"]
                                               for r in hurst_rows),
        "hurst_markov_model_mle_within_0.05": all(abs(r["markov_mle"] - r["true"]) <= TOLERANCES["hurst"]
                                                  for r in hurst_rows),
        "video_fbm_beats_bm": video["elbo_fbm"] > video["elbo_bm"],
    }


def run(*, quick: bool = False, seed: int = 0, out: Path | None = RESULTS, command: str | None = None,
        say=print, only=None, hurst_seeds=None) -> dict:
    """Run the sections named in ``only`` (default: all of :data:`SECTIONS`) and write ``out``. With ``only``, the
    other sections are read from the existing ``out`` (which must exist) and kept as they are."""
    sections = SECTIONS if only is None else tuple(dict.fromkeys(only))
    unknown = [name for name in sections if name not in SECTIONS]
    if unknown:
        raise pplvi.ObjectiveError(f"unknown section(s) {unknown}; choose from {list(SECTIONS)}.")
    previous = {}
    if set(sections) != set(SECTIONS):
        if out is None or not Path(out).exists():
            raise pplvi.DataError(f"--only {' '.join(sections)} merges into an existing results file, but {out} does "
                                  "not exist; run all sections first (without --only).")
        previous = json.loads(Path(out).read_text())
    hurst_seeds = (seed, seed + 1) if hurst_seeds is None else tuple(hurst_seeds)
    command = command or "pplvi.models.fbm_sde.reproduce.run(...)"
    t_start = time.perf_counter()
    section_runs = dict(previous.get("section_runs") or {
        name: {**{key: previous.get(key) for key in ("command", "date", "quick", "seed")},
               "seconds_of_that_whole_run": previous.get("seconds")} for name in SECTIONS})
    results_of = {}
    for name in sections:
        t_section = time.perf_counter()
        if name == "cost":
            say("1. optimal-coefficient cost (float64), T = 1, speeds on [1/20, 20]")
            results_of[name] = omega_costs(mc_paths=500 if quick else 2000, say=say)
        elif name == "bridge":
            results_of[name] = bridge_section(quick=quick, seed=seed, say=say)
        elif name == "hurst":
            results_of[name] = hurst_section(quick=quick, seeds=hurst_seeds, say=say)
        else:
            results_of[name] = video_section(quick=quick, seed=seed, say=say)
        section_runs[name] = {"command": command, "date": _now(), "quick": quick,
                              "seed": list(hurst_seeds) if name == "hurst" else seed,
                              "seconds": round(time.perf_counter() - t_section, 1)}

    cost_rows = results_of["cost"] if "cost" in results_of else previous["omega_cost"]
    if "bridge" in results_of:
        bridge_rows = [{k: v for k, v in r.items() if k != "curves"} for r in results_of["bridge"]]
        bridge_curves = {str(r["H"]): r["curves"] for r in results_of["bridge"]}
    else:
        bridge_rows, bridge_curves = previous["bridge"], previous["bridge_curves"]
    hurst_rows = results_of["hurst"] if "hurst" in results_of else previous["hurst"]
    video = results_of["video"] if "video" in results_of else previous["video"]

    checks = compute_checks(cost_rows, bridge_rows, hurst_rows, video)
    for name, ok in checks.items():
        say(f"  {'PASS' if ok else 'MISS'} {name}")
    results = {
        "hurst": hurst_rows,
        "bridge": bridge_rows,
        "omega_cost": cost_rows,
        "video": video,
        "checks": checks,
        "tolerances": TOLERANCES,
        "bridge_curves": bridge_curves,
        "quick": any(bool(r.get("quick")) for r in section_runs.values()),
        "seed": seed,
        "hurst_seeds": list(hurst_seeds) if "hurst" in results_of else previous.get("hurst_seeds", [previous["seed"]]),
        "seconds": round(time.perf_counter() - t_start, 1),
        "section_runs": section_runs,
        "jax_version": jax.__version__,
        "pplvi_version": pplvi.__version__,
        "cpu": f"{cpu_name()}, {os.cpu_count()} cores",
        "device": device_name(),
        "date": _now(),
        "command": command,
    }
    if out is not None:
        out = write_json(out, results, indent=1)
        say(f"wrote {out} ({results['seconds']:.0f} s for {', '.join(sections)})")
    return results


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pplvi.models.fbm_sde", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("reproduce", help="run the fBM-SDE checks and write benchmarks/results/fbm_sde.json")
    p.add_argument("--quick", action="store_true", help="short training runs (a few minutes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", nargs="+", choices=SECTIONS, default=None,
                   help="rerun only these sections and merge them into the existing results file")
    p.add_argument("--hurst-seeds", nargs="+", type=int, default=None,
                   help="seeds of the Hurst-recovery runs (default: SEED and SEED + 1)")
    p.add_argument("--out", default=str(RESULTS), help=f"results file (default {RESULTS})")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    run(quick=args.quick, seed=args.seed, out=Path(args.out), only=args.only, hurst_seeds=args.hurst_seeds,
        command=" ".join(["python -m pplvi.models.fbm_sde", *argv]))
    return 0
