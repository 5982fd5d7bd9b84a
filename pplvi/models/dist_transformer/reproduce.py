r"""``python -m pplvi.models.dist_transformer reproduce [--quick]``: the checks of Whittle et al., "Distribution
Transformers" (arXiv:2502.02463), written to ``benchmarks/results/dist_transformer.json``.

1. **Inverse-gamma variance, narrow and wide meta-priors** (the paper's conjugate experiment): a Distribution
   Transformer (prior converter + transformer, 5 components, in :math:`\log\sigma^2`) is trained on simulated
   problems; on 1,000 test problems its mean :math:`\mathrm{KL}(\text{exact}\,\|\,q)` (Monte Carlo, 2,000 exact
   draws per problem, with the standard error) and its inference time (one batched forward pass over all 1,000
   problems) are compared with per-problem SVI (mixture guide, :mod:`~pplvi.models.dist_transformer.svi`) run **one
   problem after another**
   (``svi_seconds``; the paper's protocol) and, as an extra, vectorized over problems with ``jax.vmap``
   (``svi_vectorized_seconds``). Compilation is excluded from every time.
2. **GMM priors with linear-Gaussian observations**, 1-D and 2-D: KL to the closed-form posterior on 1,000 test
   problems against a stated threshold; then **prior change at test time**: every test problem's data are combined
   with another problem's prior, the trained network (not retrained) is run, and its KL to the *new* exact posterior
   is compared with how far the exact posterior moved (:math:`\mathrm{KL}(\text{new exact}\,\|\,\text{old exact})`).
3. **Tracking** (:mod:`~pplvi.models.dist_transformer.tracking`): the posterior becomes the next prior; NLL of the true
   state and wall time for the Distribution Transformer, an EKF, a bootstrap particle filter and a grid filter.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np

import pplvi
from pplvi.models.dist_transformer import evaluate as E
from pplvi.models.dist_transformer import problems as P
from pplvi.models.dist_transformer import svi as S
from pplvi.models.dist_transformer import tracking as T
from pplvi.models.dist_transformer.model import (
    ConvertedDistributionTransformer,
    DistributionTransformer,
    PriorConverter,
)
from pplvi.models.dist_transformer.objective import train
from pplvi.models.results import cpu_name, device_name, write_json

RESULTS = Path("benchmarks/results/dist_transformer.json")
NETWORK = {"width": 32, "depth": 2, "heads": 4, "hidden": 64}
TRAINING = {"batch": 128, "learning_rate": 3e-3, "consistency": 1.0}
SVI = {"steps": 2000, "particles": 5, "learning_rate": 0.05, "components": 5}
PAPER = {"invgamma_narrow": {"dt_kl": 0.0004, "svi_kl": 0.0425, "dt_seconds": 0.016, "svi_seconds": 148.0},
         "invgamma_wide": {"dt_kl": 0.0003, "svi_kl": 0.0558, "dt_seconds": 0.016, "svi_seconds": 148.0}}
THRESHOLDS = {"gmm_1d_kl": 0.01, "gmm_2d_kl": 0.05, "speedup": 1000.0}


def inverse_gamma_check(family, *, steps: int, problems: int, svi_options: dict, seed: int, say) -> dict:
    k_net, k_conv, k_test, k_kl, k_svi = jax.random.split(jax.random.key(seed), 5)
    network = ConvertedDistributionTransformer(
        PriorConverter(2, 5, 1, key=k_conv),
        DistributionTransformer(1, 1, key=k_net, location_scale=3.0, observation_scale=1.0, **NETWORK))
    fit = train(network, family, steps=steps, key=seed + 1, **TRAINING)
    priors, _, ys = P.simulate_problems(family, k_test, problems)
    q, dt_seconds = E.timed_inference(fit.params, priors, ys)
    dt = E.mean_kl(*E.inverse_gamma_kl(family, priors, ys, q, k_kl))
    q_seq, svi_seconds = S.run_sequential(k_svi, priors, ys, **svi_options)
    q_vec, svi_vec_seconds = S.run_vectorized(k_svi, priors, ys, **svi_options)
    svi = E.mean_kl(*E.inverse_gamma_kl(family, priors, ys, q_seq, k_kl))
    svi_vec = E.mean_kl(*E.inverse_gamma_kl(family, priors, ys, q_vec, k_kl))
    row = {"dt_kl": dt["kl"], "svi_kl": svi["kl"], "dt_seconds": dt_seconds, "svi_seconds": svi_seconds,
           "problems": problems,
           "dt_kl_se": dt["kl_se"], "svi_kl_se": svi["kl_se"], "dt_kl_median": dt["kl_median"],
           "svi_kl_median": svi["kl_median"], "svi_vectorized_kl": svi_vec["kl"],
           "svi_vectorized_seconds": svi_vec_seconds, "speedup_vs_sequential_svi": svi_seconds / dt_seconds,
           "speedup_vs_vectorized_svi": svi_vec_seconds / dt_seconds,
           "svi_finite_fraction": float(S.finite_rows(q_seq).mean()),
           "dt_train_seconds": round(fit.seconds, 1), "dt_train_steps": steps,
           "dt_objective_last_100": float(np.nanmean(fit.history["objective"][-100:])),
           "meta_prior": {"concentration": list(family.concentration_prior), "rate": list(family.rate_prior)},
           "paper": PAPER[family.name]}
    say(f"  {family.name}: DT KL {dt['kl']:.4f} ± {dt['kl_se']:.4f} in {dt_seconds * 1e3:.1f} ms; SVI KL "
        f"{svi['kl']:.4f} ± {svi['kl_se']:.4f} in {svi_seconds:.1f} s sequential / {svi_vec_seconds:.1f} s "
        f"vmapped (speed-up {row['speedup_vs_sequential_svi']:.0f}x / {row['speedup_vs_vectorized_svi']:.0f}x)")
    return row


def mixture_check(family, *, steps: int, problems: int, seed: int, say) -> dict:
    k_net, k_test, k_kl, k_perm = jax.random.split(jax.random.key(seed), 4)
    network = DistributionTransformer(family.dim, family.observation_dim, key=k_net, location_scale=3.0,
                                      observation_scale=3.0, **NETWORK)
    fit = train(network, family, steps=steps, key=seed + 1, **TRAINING)
    net = fit.params
    priors, _, ys = P.simulate_problems(family, k_test, problems)
    exact = jax.vmap(family.exact_posterior)(priors, ys)
    q, seconds = E.timed_inference(net, priors, ys)
    dt = E.mean_kl(*E.mixture_kl(exact, q, k_kl))
    prior_as_q = E.mean_kl(*E.mixture_kl(exact, priors, k_kl))
    # prior change at test time: the same data with another problem's prior, no retraining
    order = np.asarray(jax.random.permutation(k_perm, problems))
    new_priors = jax.tree_util.tree_map(lambda a: a[order], priors)
    new_exact = jax.vmap(family.exact_posterior)(new_priors, ys)
    q_new = jax.jit(jax.vmap(net))(new_priors, ys)
    changed = E.mean_kl(*E.mixture_kl(new_exact, q_new, k_kl))
    moved = E.mean_kl(*E.mixture_kl(new_exact, exact, k_kl))
    stale = E.mean_kl(*E.mixture_kl(new_exact, q, k_kl))
    say(f"  {family.name}: KL {dt['kl']:.4f} ± {dt['kl_se']:.4f} (prior as q: {prior_as_q['kl']:.3f}); prior "
        f"changed: KL to the new exact posterior {changed['kl']:.4f}, the exact posterior moved by "
        f"{moved['kl']:.3f}")
    return {"kl": dt["kl"], "kl_se": dt["kl_se"], "kl_median": dt["kl_median"], "problems": problems,
            "threshold": THRESHOLDS[f"{family.name}_kl"], "prior_as_posterior_kl": prior_as_q["kl"],
            "dt_seconds": seconds, "dt_train_seconds": round(fit.seconds, 1), "dt_train_steps": steps,
            "prior_change": {"dt_kl_to_new_exact": changed["kl"], "dt_kl_to_new_exact_se": changed["kl_se"],
                             "exact_shift_kl": moved["kl"], "old_dt_posterior_kl_to_new_exact": stale["kl"]},
            "components": family.components, "observations": family.observations, "dim": family.dim}


def tracking_check(*, steps: int, trajectories: int, particles: int, seed: int, say) -> dict:
    problem = T.TrackingProblem()
    network = DistributionTransformer(1, 1, key=jax.random.key(seed), location_scale=5.0, observation_scale=5.0,
                                      **NETWORK)
    fit = train(network, T.tracking_family(problem), steps=steps, key=seed + 1, **TRAINING)
    out = T.compare_filters(fit.params, problem, jax.random.key(seed + 2), trajectories=trajectories,
                            particles=particles)
    out.update(dt_train_seconds=round(fit.seconds, 1), dt_train_steps=steps, process_scale=problem.process_scale,
               noise_scale=problem.noise_scale, initial_means=list(problem.initial_means))
    say(f"  tracking NLL: DT {out['dt_nll']:.3f} ({out['dt_seconds'] * 1e3:.0f} ms), EKF {out['ekf_nll']:.3f}, "
        f"PF {out['pf_nll']:.3f} ({out['pf_seconds'] * 1e3:.0f} ms), grid (exact) {out['grid_nll']:.3f}")
    return out


def run(*, quick: bool = False, out: Path | None = RESULTS, command: str | None = None, say=print) -> dict:
    t0 = time.perf_counter()
    steps = {"invgamma": 300, "gmm_1d": 300, "gmm_2d": 300, "tracking": 300} if quick else \
        {"invgamma": 2500, "gmm_1d": 2500, "gmm_2d": 4000, "tracking": 3000}
    problems = 100 if quick else 1000
    svi_options = dict(SVI, steps=200, particles=4) if quick else dict(SVI)
    results = {}
    for i, family in enumerate((P.narrow(), P.wide())):
        results[family.name] = inverse_gamma_check(family, steps=steps["invgamma"], problems=problems,
                                                   svi_options=svi_options, seed=10 * i, say=say)
    for i, family in enumerate((P.gmm_1d(), P.gmm_2d())):
        row = mixture_check(family, steps=steps[family.name], problems=problems, seed=100 + 10 * i, say=say)
        results[f"{family.name}_kl"] = row["kl"]
        results[family.name] = row
    results["tracking"] = tracking_check(steps=steps["tracking"], trajectories=50 if quick else 200,
                                         particles=1000, seed=200, say=say)
    narrow, wide = results["invgamma_narrow"], results["invgamma_wide"]
    results["claims"] = {
        "dt_kl_below_svi_kl": bool(narrow["dt_kl"] < narrow["svi_kl"] and wide["dt_kl"] < wide["svi_kl"]),
        "dt_at_least_1000x_faster_than_sequential_svi": bool(
            min(narrow["speedup_vs_sequential_svi"], wide["speedup_vs_sequential_svi"]) >= THRESHOLDS["speedup"]),
        "gmm_1d_kl_below_threshold": bool(results["gmm_1d_kl"] < THRESHOLDS["gmm_1d_kl"]),
        "gmm_2d_kl_below_threshold": bool(results["gmm_2d_kl"] < THRESHOLDS["gmm_2d_kl"]),
    }
    results.update({
        "device": device_name(), "thresholds": THRESHOLDS, "network": NETWORK, "training": TRAINING,
        "training_steps": steps, "svi": svi_options, "kl_samples_per_problem": 2000, "quick": quick,
        "seconds": round(time.perf_counter() - t0, 1), "cpu": cpu_name(), "cores": os.cpu_count(),
        "jax_version": jax.__version__, "pplvi_version": pplvi.__version__,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": command or "pplvi.models.dist_transformer.reproduce.run(...)",
    })
    if out is not None:
        out = write_json(out, results)
        say(f"wrote {out} ({results['seconds']:.0f} s in all)")
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pplvi.models.dist_transformer",
                                     description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("reproduce", help="inverse-gamma vs SVI, GMM KL and prior change, tracking; write "
                                         "benchmarks/results/dist_transformer.json")
    p.add_argument("--quick", action="store_true", help="a smoke run: few steps, 100 problems")
    p.add_argument("--out", default=str(RESULTS))
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    run(quick=args.quick, out=Path(args.out), command=" ".join(["python -m pplvi.models.dist_transformer", *argv]))
    return 0
