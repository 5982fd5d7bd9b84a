"""``python -m pplvi.models.pvrnn reproduce``: the meta-prior sweep and the error-regression checks of PV-RNN
(Ahmadi & Tani 2019), written to ``benchmarks/results/pvrnn.json``.

1. **Meta-prior sweep.** For each ``w`` in ``{1e-4, 1e-2, 1}`` (``w1 = 1`` at ``t = 1``) and each seed, a two-layer
   PV-RNN is trained on sequences of :func:`~pplvi.models.pvrnn.data.branching_fsm` (``C`` then ``a`` with
   probability 0.3 or ``b`` with 0.7, noise 0.05); 64 sequences of 200 steps are generated from one initial state
   (zero internal state, ``z_1 = 0``) and scored by :func:`~pplvi.models.pvrnn.metrics.branching_error` and
   :func:`~pplvi.models.pvrnn.metrics.determinism` (means over seeds; every seed's values are kept).
2. **Kalman tracking.** A PV-RNN (``w = 1``, observation scale = the true noise ``r``: the ELBO) is trained on
   sequences of a scalar linear-Gaussian state-space model; error regression on held-out sequences (the whole
   sequence as the window) reconstructs the signal, compared with the Rauch-Tung-Striebel smoother's means (RMSE).
   The stated tolerance is ``0.5 r`` (half the observation noise); the raw observations' RMSE to the smoother is
   recorded next to it.
3. **Error regression on held-out branching sequences.** Windows of the ``W`` most recent observations at many
   times of 16 held-out sequences; predictions of the next ``H`` steps (mean of 32 prior continuations) by PV-RNN
   after error regression (network frozen), by the prior alone (no observations), and by a VRNN baseline (same
   network, amortized encoder, trained on the same data with the same meta-prior). MSE against the held-out data.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import pplvi
from pplvi.models.pvrnn.baseline import train_vrnn, vrnn_predict
from pplvi.models.pvrnn.data import branching_fsm, fsm_sequences, kalman_smoother, linear_gaussian_sequences
from pplvi.models.pvrnn.metrics import branching_error, branching_frequencies, determinism
from pplvi.models.pvrnn.model import PVRNN, generate
from pplvi.models.pvrnn.objectives import error_regression, predict, predict_from_prior, reconstruct, train
from pplvi.models.results import cpu_name, write_json

RESULTS = Path("benchmarks/results/pvrnn.json")
SWEEP = (1e-4, 1e-2, 1.0)
MODEL = {"hidden": (24, 12), "latent": (2, 1), "tau": (2.0, 8.0)}
DATA = {"n": 32, "length": 80, "noise": 0.05, "p": 0.3, "segment": 10}
LGSSM = {"a": 0.95, "q": 0.3, "r": 0.3}
ER = {"window": 20, "horizon": 10, "times": tuple(range(20, 71, 5)), "steps": 150, "learning_rate": 0.05}


def sweep_row(w: float, x, fsm, *, seed: int, steps: int, generations: int = 64, gen_length: int = 200) -> dict:
    """Train at meta-prior ``w`` and score generations from one initial state."""
    net = PVRNN.init(jax.random.key(seed), x.shape[-1], **MODEL)
    result = train(net, x, steps=steps, key=seed + 1, w=w, w1=1.0, progress=False, desc=f"pvrnn w={w}")
    net = result.params["network"]
    first = tuple(jnp.zeros(z) for z in net.latents)
    gens = np.asarray(jax.vmap(lambda k: generate(net, k, net.initial_state(), gen_length, first=first)[0])(
        jax.random.split(jax.random.key(seed + 2), generations)))
    recon = np.asarray(reconstruct(net, result.params["adaptive"]))
    return {"w": w, "seed": seed, "branching_error": branching_error(gens, fsm),
            "determinism": determinism(gens, float(x.var())),
            "generated_branch_frequencies": [round(float(v), 4) for v in branching_frequencies(gens, fsm)[0]],
            "train_reconstruction_mse": float(((recon - x) ** 2).mean()),
            "objective_last_100": float(np.nanmean(result.history["objective"][-100:])),
            "train_seconds": round(result.seconds, 1)}


def kalman_tracking(*, seed: int, steps: int, er_steps: int) -> dict:
    r = LGSSM["r"]
    x, _ = linear_gaussian_sequences(seed, 64, 50, **LGSSM)
    test, _ = linear_gaussian_sequences(seed + 100, 16, 50, **LGSSM)
    net = PVRNN.init(jax.random.key(seed), 1, **MODEL)
    result = train(net, x, steps=steps, key=seed + 1, w=1.0, obs_scale=r, progress=False)
    er = error_regression(result.params["network"], test, steps=er_steps, key=seed + 2, w=1.0, obs_scale=r)
    tracked = np.asarray(reconstruct(er.params["network"], er.params["adaptive"], start_at_one=False))
    smooth = kalman_smoother(test, **LGSSM)
    rmse = float(np.sqrt(((tracked - smooth) ** 2).mean()))
    return {"kalman_tracking_rmse": rmse, "kalman_tolerance": 0.5 * r, "kalman_within_tolerance": rmse <= 0.5 * r,
            "observation_rmse_to_smoother": float(np.sqrt(((test - smooth) ** 2).mean()))}


def _windows(x, times, window, horizon):
    past = np.stack([x[:, t - window:t] for t in times], 1).reshape(-1, window, x.shape[-1])
    future = np.stack([x[:, t:t + horizon] for t in times], 1).reshape(-1, horizon, x.shape[-1])
    return past, future


def error_regression_check(x, *, w: float, seed: int, steps: int, er_steps: int) -> dict:
    fsm = branching_fsm(DATA["p"], DATA["segment"])
    held_out, _ = fsm_sequences(seed + 1000, 16, DATA["length"], fsm, noise=DATA["noise"])
    past, future = _windows(held_out, ER["times"], ER["window"], ER["horizon"])
    net = PVRNN.init(jax.random.key(seed), x.shape[-1], **MODEL)
    net = train(net, x, steps=steps, key=seed + 1, w=w, w1=1.0, progress=False).params["network"]
    er = error_regression(net, past, steps=er_steps, key=seed + 2, w=w, w1=w, learning_rate=ER["learning_rate"])
    frozen = all(bool(jnp.array_equal(a, b)) for a, b in zip(jax.tree_util.tree_leaves(net),
                                                             jax.tree_util.tree_leaves(er.params["network"])))
    pv = np.asarray(predict(net, er.params["adaptive"], jax.random.key(seed + 3), ER["horizon"]))
    prior = np.asarray(predict_from_prior(net, jax.random.key(seed + 4), len(past), ER["window"], ER["horizon"]))
    vr = train_vrnn(PVRNN.init(jax.random.key(seed), x.shape[-1], **MODEL), x, steps=steps, key=seed + 5, w=w,
                    w1=1.0, progress=False).params
    vp = np.asarray(vrnn_predict(vr["network"], vr["encoder"], jnp.asarray(past), jax.random.key(seed + 6),
                                 ER["horizon"]))
    mse = lambda p: float(((p - future) ** 2).mean())  # noqa: E731
    return {"pvrnn_mse": mse(pv), "prior_only_mse": mse(prior), "vrnn_mse": mse(vp), "w": w, "windows": len(past),
            "network_weights_bit_identical_after_error_regression": frozen, **{k: v for k, v in ER.items()
                                                                                 if k != "times"},
            "times": list(ER["times"])}


def run(*, steps: int = 2000, er_steps: int = ER["steps"], seeds: int = 2, quick: bool = False,
        out: Path | None = RESULTS, command: str | None = None, say=print) -> dict:
    t0 = time.perf_counter()
    if quick:
        steps, er_steps, seeds = 100, 20, 1
    fsm = branching_fsm(DATA["p"], DATA["segment"])
    x, _ = fsm_sequences(0, DATA["n"], DATA["length"], fsm, noise=DATA["noise"])
    runs = []
    for w in SWEEP:
        for seed in range(seeds):
            row = sweep_row(w, x, fsm, seed=seed, steps=steps)
            say(f"  w={w:g} seed {seed}: branching error {row['branching_error']:.3f}, determinism "
                f"{row['determinism']:.3f}, P(C->a, C->b) {row['generated_branch_frequencies'][1:]}")
            runs.append(row)
    sweep = [{"w": w, "branching_error": float(np.mean([r["branching_error"] for r in runs if r["w"] == w])),
              "determinism": float(np.mean([r["determinism"] for r in runs if r["w"] == w]))} for w in SWEEP]
    kalman = kalman_tracking(seed=0, steps=steps, er_steps=er_steps * 2)
    say(f"  Kalman tracking RMSE {kalman['kalman_tracking_rmse']:.4f} (tolerance {kalman['kalman_tolerance']})")
    er = error_regression_check(x, w=1e-2, seed=0, steps=steps, er_steps=er_steps)
    say(f"  error regression MSE: pvrnn {er['pvrnn_mse']:.4f}, prior only {er['prior_only_mse']:.4f}, "
        f"vrnn {er['vrnn_mse']:.4f}")
    results = {
        "sweep": sweep, "sweep_runs": runs,
        "kalman_tracking_rmse": kalman["kalman_tracking_rmse"], "kalman": kalman,
        "error_regression": er,
        "definitions": {
            "branching_error": "max |empirical - true| transition probability out of the branching state C, from "
                               "nearest-prototype classification of 64 generated sequences of 200 steps",
            "determinism": "max(0, 1 - mean over steps and dims of the variance across 64 generations from one "
                           "initial state (h0 = 0, z1 = 0) / total variance of the training data)"},
        "model": MODEL, "data": DATA, "lgssm": LGSSM, "steps": steps, "error_regression_steps": er_steps,
        "seeds": seeds, "quick": quick, "optimizer": "adam 3e-3 (network) / 3e-2 (adaptive vectors), cosine decay",
        "seconds": round(time.perf_counter() - t0, 1), "cpu": cpu_name(), "cores": os.cpu_count(),
        "jax_version": jax.__version__, "pplvi_version": pplvi.__version__,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": command or "pplvi.models.pvrnn.reproduce.run(...)",
    }
    if out is not None:
        out = write_json(out, results)
        say(f"wrote {out} ({results['seconds']:.0f} s in all)")
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pplvi.models.pvrnn", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("reproduce", help="meta-prior sweep + error regression; write benchmarks/results/pvrnn.json")
    p.add_argument("--quick", action="store_true", help="a smoke run: few steps, one seed")
    p.add_argument("--steps", type=int, default=2000, help="training steps per model")
    p.add_argument("--er-steps", type=int, default=ER["steps"], help="error-regression iterations")
    p.add_argument("--seeds", type=int, default=2, help="seeds per meta-prior")
    p.add_argument("--out", default=str(RESULTS))
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    run(steps=args.steps, er_steps=args.er_steps, seeds=args.seeds, quick=args.quick, out=Path(args.out),
        command=" ".join(["python -m pplvi.models.pvrnn", *argv]))
    return 0
