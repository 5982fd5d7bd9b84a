"""``python -m pplvi.models.pvrnn reproduce``: the meta-prior sweep, the error-regression checks and the Omniglot
pen-stroke experiment of PV-RNN (Ahmadi & Tani 2019), written to ``benchmarks/results/pvrnn.json`` (figures
``docs/models/pvrnn_sweep.png`` and ``docs/models/pvrnn_omniglot.png``).

1. **Meta-prior sweep** (``sweep``). For each ``w`` in ``{1e-4, 1e-3, 1e-2, 1e-1, 1}`` (``w1 = 1`` at ``t = 1``)
   and each seed, a two-layer PV-RNN is trained on sequences of :func:`~pplvi.models.pvrnn.data.branching_fsm`
   (``C`` then ``a`` with probability 0.3 or ``b`` with 0.7, noise 0.05); 512 sequences of the training length are
   generated from one initial state (zero internal state, ``z_1 = 0``) and scored by
   :func:`~pplvi.models.pvrnn.metrics.branching_error` (with its Monte Carlo standard error,
   :func:`~pplvi.models.pvrnn.metrics.branching_standard_error`) and
   :func:`~pplvi.models.pvrnn.metrics.determinism`. Every seed's values are kept; the table gives mean, standard
   deviation and maximum over seeds.
2. **Kalman tracking** (``kalman``). A PV-RNN (``w = 1``, observation scale = the true noise ``r``: the ELBO) is
   trained on sequences of a scalar linear-Gaussian state-space model; error regression on held-out sequences (the
   whole sequence as the window) reconstructs the signal, compared with the Rauch-Tung-Striebel smoother's means
   (RMSE). The stated tolerance is ``0.5 r``; the raw observations' RMSE to the smoother is recorded next to it.
3. **Error regression on held-out branching sequences** (``error_regression``). Windows of the ``W`` most recent
   observations at many times of 16 held-out sequences; predictions of the next ``H`` steps (mean of 32 prior
   continuations) by PV-RNN after error regression (network frozen), by the prior alone (no observations), and by a
   VRNN baseline (same network, amortized encoder, same data and meta-prior). MSE against the held-out data.
4. **Omniglot pen strokes** (``omniglot``). Drawings of :func:`pplvi.data.load_omniglot_strokes` as pen moves
   :math:`(\\Delta x, \\Delta y, \\text{pen-up})` (:func:`~pplvi.models.pvrnn.data.stroke_sequences`), split by
   character; PV-RNN and the VRNN baseline are trained on drawings of the training characters; windows of held-out
   characters' drawings are continued as in 3, against the prior alone, "repeat the last move" and "the training
   mean move". Errors are squared distances of the predicted in-stroke pen moves (pen-up jumps, which go to an
   unobserved new stroke start, are excluded and counted separately).

``--only SECTION[,SECTION]`` reruns some sections and merges them into the existing JSON.
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
import jax.numpy as jnp
import numpy as np

import pplvi
import pplvi.data
from pplvi.models.pvrnn.baseline import train_vrnn, vrnn_predict
from pplvi.models.pvrnn.data import (
    branching_fsm,
    character_split,
    fsm_sequences,
    kalman_smoother,
    linear_gaussian_sequences,
    stroke_sequences,
)
from pplvi.models.pvrnn.metrics import (
    branching_error,
    branching_frequencies,
    branching_standard_error,
    determinism,
    noise_ratio,
)
from pplvi.models.pvrnn.model import PVRNN, generate
from pplvi.models.pvrnn.objectives import error_regression, predict, predict_from_prior, reconstruct, train
from pplvi.models.results import cpu_name, device_name, write_json

RESULTS = Path("benchmarks/results/pvrnn.json")
FIGURES = Path("docs/models")  # the figures of the default run, shown on docs/models/pvrnn.md
SECTIONS = ("sweep", "kalman", "error_regression", "omniglot")
SWEEP = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
TOLERANCE = 0.05  # the bar on the branching error at an intermediate meta-prior
MODEL = {"hidden": (24, 12), "latent": (2, 1), "tau": (2.0, 8.0)}
DATA = {"n": 128, "length": 80, "noise": 0.05, "p": 0.3, "segment": 10, "batch_size": 32}
GENERATIONS = 512
LGSSM = {"a": 0.95, "q": 0.3, "r": 0.3}
ER = {"window": 20, "horizon": 10, "times": tuple(range(20, 71, 5)), "steps": 150, "learning_rate": 0.05}
OMNIGLOT = {"length": 30, "spacing": 5.0, "held_out_characters": 0.2, "split_seed": 0, "train": 128, "test": 48,
            "window": 15, "horizon": 5, "times": (15, 20, 25), "w": 1.0, "steps": 3000}
OMNIGLOT_MODEL = {"hidden": (32, 16), "latent": (2, 1), "tau": (2.0, 8.0)}


def training_data():
    fsm = branching_fsm(DATA["p"], DATA["segment"])
    x, states = fsm_sequences(0, DATA["n"], DATA["length"], fsm, noise=DATA["noise"])
    return fsm, x, states


def sweep_row(w: float, x, fsm, *, seed: int, steps: int, generations: int = GENERATIONS) -> dict:
    """Train at meta-prior ``w`` and score ``generations`` sequences of the training length generated from one
    initial state (``h_0 = 0``, ``z_1 = 0``)."""
    net = PVRNN.init(jax.random.key(seed), x.shape[-1], **MODEL)
    result = train(net, x, steps=steps, key=seed + 1, w=w, w1=1.0, batch_size=DATA["batch_size"], progress=False,
                   desc=f"pvrnn w={w}")
    net = result.params["network"]
    first = tuple(jnp.zeros(z) for z in net.latents)
    gens = np.asarray(jax.vmap(lambda k: generate(net, k, net.initial_state(), x.shape[1], first=first)[0])(
        jax.random.split(jax.random.key(seed + 2), generations)))
    recon = np.asarray(reconstruct(net, result.params["adaptive"]))
    return {"w": w, "seed": seed, "branching_error": branching_error(gens, fsm),
            "monte_carlo_se": branching_standard_error(gens, fsm),
            "determinism": determinism(gens, float(x.var())),
            "noise_ratio": noise_ratio(gens, x, fsm),
            "generated_branch_frequencies": [round(float(v), 4) for v in branching_frequencies(gens, fsm)[0]],
            "train_reconstruction_mse": float(((recon - x) ** 2).mean()),
            "objective_last_100": float(np.nanmean(result.history["objective"][-100:])),
            "train_seconds": round(result.seconds, 1)}


def sweep_section(*, seeds: int, steps: int, say=print) -> dict:
    fsm, x, states = training_data()
    visits = int((states[:, :-1] == 0).sum())
    sample = float((states[:, 1:][states[:, :-1] == 0] == 1).mean())
    runs = []
    for w in SWEEP:
        for seed in range(seeds):
            row = sweep_row(w, x, fsm, seed=seed, steps=steps)
            say(f"  w={w:g} seed {seed}: branching error {row['branching_error']:.3f} (MC se "
                f"{row['monte_carlo_se']:.3f}), determinism {row['determinism']:.3f}, noise ratio "
                f"{row['noise_ratio']:.2f}, P(C->a, C->b) "
                f"{row['generated_branch_frequencies'][1:]}")
            runs.append(row)
    sweep = []
    for w in SWEEP:
        errors = np.array([r["branching_error"] for r in runs if r["w"] == w])
        sweep.append({"w": w, "branching_error": float(errors.mean()),
                      "branching_error_sd": float(errors.std(ddof=1)) if len(errors) > 1 else 0.0,
                      "branching_error_max": float(errors.max()),
                      "within_tolerance_all_seeds": bool(errors.max() <= TOLERANCE),
                      "monte_carlo_se": float(np.mean([r["monte_carlo_se"] for r in runs if r["w"] == w])),
                      "determinism": float(np.mean([r["determinism"] for r in runs if r["w"] == w])),
                      "noise_ratio": float(np.mean([r["noise_ratio"] for r in runs if r["w"] == w])),
                      "seeds": len(errors)})
    return {"sweep": sweep, "sweep_runs": runs, "sweep_tolerance": TOLERANCE,
            "training_branch_frequency": {"C->a": sample, "visits": visits,
                                          "binomial_se": float(np.sqrt(0.3 * 0.7 / visits))},
            "sweep_setup": {"model": MODEL, "data": DATA, "steps": steps, "generations": GENERATIONS,
                            "generation_length": DATA["length"], "w1": 1.0}}


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
            "observation_rmse_to_smoother": float(np.sqrt(((test - smooth) ** 2).mean())), "lgssm": LGSSM,
            "steps": steps, "error_regression_steps": er_steps}


def _windows(x, times, window, horizon):
    past = np.stack([x[:, t - window:t] for t in times], 1).reshape(-1, window, x.shape[-1])
    future = np.stack([x[:, t:t + horizon] for t in times], 1).reshape(-1, horizon, x.shape[-1])
    return past, future


def error_regression_check(*, w: float, seed: int, steps: int, er_steps: int) -> dict:
    fsm, x, _ = training_data()
    held_out, _ = fsm_sequences(seed + 1000, 16, DATA["length"], fsm, noise=DATA["noise"])
    past, future = _windows(held_out, ER["times"], ER["window"], ER["horizon"])
    net = PVRNN.init(jax.random.key(seed), x.shape[-1], **MODEL)
    net = train(net, x, steps=steps, key=seed + 1, w=w, w1=1.0, batch_size=DATA["batch_size"],
                progress=False).params["network"]
    er = error_regression(net, past, steps=er_steps, key=seed + 2, w=w, w1=w, learning_rate=ER["learning_rate"])
    frozen = all(bool(jnp.array_equal(a, b)) for a, b in zip(jax.tree_util.tree_leaves(net),
                                                             jax.tree_util.tree_leaves(er.params["network"])))
    pv = np.asarray(predict(net, er.params["adaptive"], jax.random.key(seed + 3), ER["horizon"]))
    prior = np.asarray(predict_from_prior(net, jax.random.key(seed + 4), len(past), ER["window"], ER["horizon"]))
    vr = train_vrnn(PVRNN.init(jax.random.key(seed), x.shape[-1], **MODEL), x, steps=steps, key=seed + 5, w=w,
                    w1=1.0, batch_size=DATA["batch_size"], progress=False).params
    vp = np.asarray(vrnn_predict(vr["network"], vr["encoder"], jnp.asarray(past), jax.random.key(seed + 6),
                                 ER["horizon"]))
    mse = lambda p: float(((p - future) ** 2).mean())  # noqa: E731
    return {"pvrnn_mse": mse(pv), "prior_only_mse": mse(prior), "vrnn_mse": mse(vp), "w": w, "windows": len(past),
            "network_weights_bit_identical_after_error_regression": frozen, "steps": steps,
            "error_regression_steps": er_steps, **{k: v for k, v in ER.items() if k not in ("times", "steps")},
            "times": list(ER["times"])}


def omniglot_data(strokes=None):
    """Training and held-out pen-move sequences (``(n, length, 3)``) for the Omniglot section, split by character,
    with the drawing indices of both."""
    cfg = OMNIGLOT
    strokes = pplvi.data.load_omniglot_strokes() if strokes is None else strokes
    held = character_split(strokes["label"], held_out=cfg["held_out_characters"], seed=cfg["split_seed"])
    train_set = stroke_sequences(strokes, length=cfg["length"], spacing=cfg["spacing"], drawings=np.flatnonzero(~held))
    test_set = stroke_sequences(strokes, length=cfg["length"], spacing=cfg["spacing"], drawings=np.flatnonzero(held))
    rng = np.random.default_rng(cfg["split_seed"])
    tr = np.sort(rng.choice(len(train_set["x"]), cfg["train"], replace=False))
    te = np.sort(rng.choice(len(test_set["x"]), cfg["test"], replace=False))
    return {"x": train_set["x"][tr], "test": test_set["x"][te], "train_index": train_set["index"][tr],
            "test_index": test_set["index"][te], "eligible": (len(train_set["x"]), len(test_set["x"])),
            "characters": (len(np.unique(train_set["label"])), len(np.unique(test_set["label"])))}


def clustered_mean_se(values, clusters) -> tuple[float, float]:
    r"""Mean of ``values`` and its standard error with the values of one cluster (e.g. the windows of one drawing)
    correlated: with cluster sums :math:`s_c`, sizes :math:`n_c` and :math:`m` clusters,
    :math:`\hat\mu = \sum s_c / \sum n_c`, :math:`\mathrm{se} = \sqrt{\tfrac{m}{m-1} \sum (s_c - \hat\mu
    n_c)^2} / \sum n_c`."""
    values, clusters = np.asarray(values, np.float64), np.asarray(clusters)
    ids, inverse = np.unique(clusters, return_inverse=True)
    if len(ids) < 2:
        raise pplvi.DataError(f"need at least 2 clusters for a standard error, got {len(ids)}")
    sums, sizes = np.bincount(inverse, values), np.bincount(inverse).astype(np.float64)
    mean = sums.sum() / sizes.sum()
    m = len(ids)
    return float(mean), float(np.sqrt(m / (m - 1) * ((sums - mean * sizes) ** 2).sum()) / sizes.sum())


def _move_errors(pred, future):
    """Squared distance of predicted to true in-stroke pen moves: (first step, all horizon steps); pen-up targets
    excluded."""
    squared = ((pred[..., :2] - future[..., :2]) ** 2).sum(-1)
    in_stroke = future[..., 2] == 0
    return float(squared[:, 0][in_stroke[:, 0]].mean()), float(squared[in_stroke].mean())


def last_pen_down_move(windows) -> np.ndarray:
    """The last in-stroke move ``(n, 3)`` (pen-up flag 0) of each window ``(n, W, 3)`` — the constant-velocity
    baseline repeats it; zero where a window has none."""
    windows = np.asarray(windows)
    down = windows[..., 2] < 0.5
    last = windows.shape[1] - 1 - np.argmax(down[:, ::-1], axis=1)
    move = windows[np.arange(len(windows)), last].copy()
    move[~down.any(1)] = 0.0
    move[:, 2] = 0.0
    return move


def omniglot_section(*, seed: int = 0, steps: int | None = None, er_steps: int = ER["steps"],
                     figure: Path | None = None) -> dict:
    cfg = OMNIGLOT
    steps = cfg["steps"] if steps is None else steps
    data = omniglot_data()
    x, test = data["x"], data["test"]
    window, horizon, times = cfg["window"], cfg["horizon"], cfg["times"]
    past, future = _windows(test, times, window, horizon)
    w = cfg["w"]
    t0 = time.perf_counter()
    fit = train(PVRNN.init(jax.random.key(seed), 3, **OMNIGLOT_MODEL), x, steps=steps, key=seed + 1, w=w, w1=1.0,
                progress=False)
    net = fit.params["network"]
    er = error_regression(net, past, steps=er_steps, key=seed + 2, w=w, w1=w, learning_rate=ER["learning_rate"])
    pv = np.asarray(predict(net, er.params["adaptive"], jax.random.key(seed + 3), horizon))
    gens = np.asarray(jax.vmap(lambda k: generate(net, k, net.initial_state(), cfg["length"])[0])(
        jax.random.split(jax.random.key(seed + 4), 64)))
    prior = np.stack([np.broadcast_to(gens.mean(0)[t:t + horizon], (len(test), horizon, 3)) for t in times],
                     1).reshape(future.shape)  # the prior's mean move at the same times, no observations
    vr = train_vrnn(PVRNN.init(jax.random.key(seed), 3, **OMNIGLOT_MODEL), x, steps=steps, key=seed + 5, w=w,
                    w1=1.0, progress=False).params
    vp = np.asarray(vrnn_predict(vr["network"], vr["encoder"], jnp.asarray(past), jax.random.key(seed + 6), horizon))
    repeat = np.repeat(last_pen_down_move(past)[:, None], horizon, 1)
    mean_move = np.broadcast_to(x.reshape(-1, 3).mean(0), future.shape)
    predictions = {"pvrnn": pv, "prior_only": prior, "vrnn": vp, "repeat_last_pen_down_move": repeat,
                   "training_mean_move": mean_move}
    errors = {name: _move_errors(p, future) for name, p in predictions.items()}
    in_stroke = future[..., 2] == 0
    drawing = np.repeat(np.arange(len(test)), len(times))[in_stroke[:, 0]]  # windows of one drawing: one cluster

    def first_step(p):
        return ((p[:, 0, :2] - future[:, 0, :2]) ** 2).sum(-1)[in_stroke[:, 0]]

    paired = {}
    for name, p in predictions.items():
        if name != "pvrnn":
            diff, se = clustered_mean_se(first_step(pv) - first_step(p), drawing)
            paired[name] = {"difference": diff, "se": se}
    recon = np.asarray(reconstruct(net, fit.params["adaptive"]))
    result = {
        "one_step": {name: e[0] for name, e in errors.items()},
        f"{horizon}_step": {name: e[1] for name, e in errors.items()},
        "one_step_pvrnn_minus_baseline": paired,
        "pen_up_mse": {name: float(((p[..., 2] - future[..., 2]) ** 2).mean()) for name, p in predictions.items()},
        "pvrnn_beats_prior_vrnn_and_mean_one_step": all(errors["pvrnn"][0] < errors[k][0] for k in
                                                         ("prior_only", "vrnn", "training_mean_move")),
        "pvrnn_beats_repeat_last_move_one_step": errors["pvrnn"][0] < errors["repeat_last_pen_down_move"][0],
        "windows": len(past), "in_stroke_targets": int(in_stroke.sum()), "pen_up_targets": int((~in_stroke).sum()),
        "train_reconstruction_mse": float(((recon - x) ** 2).mean()),
        "train_drawings": len(x), "test_drawings": len(test), "eligible_drawings": list(data["eligible"]),
        "characters_train_test": list(data["characters"]),
        "config": {**cfg, "times": list(times)}, "model": OMNIGLOT_MODEL, "error_regression_steps": er_steps,
        "seconds": round(time.perf_counter() - t0, 1),
        "definition": "mean squared distance (in units of the resampling spacing) between predicted and true "
                      "in-stroke pen moves (dx, dy) of held-out characters' drawings, after the first step "
                      "(one_step) and over the whole horizon; pen-up target moves excluded",
    }
    if figure is not None:
        from pplvi.models.pvrnn.figures import plot_strokes
        plot_strokes(figure, test, past, future, predictions, gens, times=times, window=window, horizon=horizon)
    return result


def run(*, steps: int = 2000, er_steps: int = ER["steps"], seeds: int = 3, quick: bool = False,
        sections=SECTIONS, out: Path | None = RESULTS, figures: bool = True, command: str | None = None,
        say=print) -> dict:
    t0 = time.perf_counter()
    sections = tuple(sections)
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise pplvi.DataError(f"unknown reproduce sections {unknown}; choose from {list(SECTIONS)}")
    omniglot_steps = None
    if quick:
        steps, er_steps, seeds, omniglot_steps = 100, 20, 1, 100
    figures = figures and out is not None and not quick
    figure_dir = FIGURES if out is not None and Path(out) == RESULTS else Path(out or ".").parent
    merged = out is not None and Path(out).exists() and set(sections) != set(SECTIONS) and not quick
    results = json.loads(Path(out).read_text()) if merged else {}
    if merged and "runs" not in results and "command" in results:  # a file written before run histories existed
        results["runs"] = [{"command": results["command"], "sections": results.get("last_sections", list(SECTIONS)),
                            "seconds": results.get("seconds"), "date": results.get("date")}]
    results.pop("section_seconds", None)
    if "sweep" in sections:
        results.update(sweep_section(seeds=seeds, steps=steps, say=say))
        if figures:
            from pplvi.models.pvrnn.figures import plot_sweep
            plot_sweep(figure_dir / "pvrnn_sweep.png", results)
    if "kalman" in sections:
        kalman = kalman_tracking(seed=0, steps=steps, er_steps=er_steps * 2)
        results.update({"kalman_tracking_rmse": kalman["kalman_tracking_rmse"], "kalman": kalman})
        say(f"  Kalman tracking RMSE {kalman['kalman_tracking_rmse']:.4f} (tolerance {kalman['kalman_tolerance']})")
    if "error_regression" in sections:
        er = error_regression_check(w=1e-1, seed=0, steps=steps, er_steps=er_steps)
        results["error_regression"] = er
        say(f"  error regression MSE: pvrnn {er['pvrnn_mse']:.4f}, prior only {er['prior_only_mse']:.4f}, "
            f"vrnn {er['vrnn_mse']:.4f}")
    if "omniglot" in sections:
        figure = figure_dir / "pvrnn_omniglot.png" if figures else None
        om = omniglot_section(steps=omniglot_steps, er_steps=er_steps, figure=figure)
        results["omniglot_strokes"] = om
        say("  omniglot one-step in-stroke move error: " + ", ".join(f"{k} {v:.3f}" for k, v in
                                                                      om["one_step"].items()))
    results["definitions"] = {
        "branching_error": f"max |empirical - true| transition probability out of the branching state C, from "
                           f"nearest-prototype classification of {GENERATIONS} generated sequences of the training "
                           f"length ({DATA['length']} steps)",
        "monte_carlo_se": "cluster-robust standard error of the generated transition frequency (each generated "
                          "sequence one cluster); per run, averaged over seeds in the sweep table",
        "determinism": f"max(0, 1 - mean over steps and dims of the variance across {GENERATIONS} generations from "
                       f"one initial state (h0 = 0, z1 = 0) / total variance of the training data)",
        "noise_ratio": "variance across generated sequences that share the same path of nearest-prototype segments "
                       "(pooled over paths, averaged over steps and dims) / the same for the training data (its "
                       "observation noise): 0 deterministic given the path, 1 the data's noise, > 1 noisier than "
                       "the data"}
    results.update({
        "model": MODEL, "data": DATA, "steps": steps, "error_regression_steps": er_steps, "seeds": seeds,
        "quick": quick, "optimizer": "adam 3e-3 (network) / 3e-2 (adaptive vectors), cosine decay",
        "device": device_name(), "cpu": cpu_name(), "cores": os.cpu_count(), "jax_version": jax.__version__,
        "pplvi_version": pplvi.__version__,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "last_sections": list(sections)})
    command = command or "pplvi.models.pvrnn.reproduce.run(...)"
    seconds = round(time.perf_counter() - t0, 1)
    # every invocation that wrote into this file, with the sections it (re)computed and its wall-clock seconds
    history = results.get("runs", []) if merged else []
    results["runs"] = [*history, {"command": command, "sections": list(sections), "seconds": seconds,
                                  "date": results["date"]}]
    results["command"] = history[0]["command"] if history else command
    results["seconds"] = seconds
    if out is not None:
        out = write_json(out, results)
        say(f"wrote {out} ({time.perf_counter() - t0:.0f} s for {', '.join(sections)})")
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pplvi.models.pvrnn", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("reproduce", help="meta-prior sweep, error regression, Omniglot strokes; write "
                                         "benchmarks/results/pvrnn.json")
    p.add_argument("--quick", action="store_true", help="a smoke run: few steps, one seed")
    p.add_argument("--steps", type=int, default=2000, help="training steps per model (synthetic sections)")
    p.add_argument("--er-steps", type=int, default=ER["steps"], help="error-regression iterations")
    p.add_argument("--seeds", type=int, default=3, help="seeds per meta-prior")
    p.add_argument("--only", default=",".join(SECTIONS),
                   help=f"comma-separated sections to rerun and merge into the existing JSON ({','.join(SECTIONS)})")
    p.add_argument("--out", default=str(RESULTS))
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    sections = tuple(s for s in args.only.split(",") if s)
    run(steps=args.steps, er_steps=args.er_steps, seeds=args.seeds, quick=args.quick, sections=sections,
        out=Path(args.out), command=" ".join(["python -m pplvi.models.pvrnn", *argv]))
    return 0
