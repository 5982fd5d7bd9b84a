"""AGD (adapter guidance distillation) vs. classifier-free guidance on the committed MNIST model.

``python benchmarks/agd.py`` records DDIM+CFG trajectories, trains the adapters (base frozen) on them, and writes
``benchmarks/results/agd.json``: per guidance scale, the evaluator's accuracy and Frechet distance (to 1,000 MNIST
test images) of CFG (2 NFE/step) and AGD (1 NFE/step) samples, the Frechet distance between two CFG seeds (the noise
floor) and between AGD and CFG, and the mean squared difference of AGD and CFG samples from the same initial noise.
``--adapters both`` (the default) trains the feature adapters and the conditioning-only adapter on the same
trajectories with the same steps, minibatches and conditioning-adapter initialization; the feature run fills
``rows``, the conditioning run ``conditioning_adapter_rows``. The feature adapters' weights are saved to
``pplvi/diffusion/weights/agd_mnist.npz`` (+ ``.json``) only if they beat the conditioning adapter (more scales
within both tolerances, ties broken by the mean F(AGD, CFG)); ``--adapters features|conditioning`` trains one kind
and saves it. ``--quick``: tiny sizes, written to ``out/agd_quick.json`` (weights not saved).

Sample sets per scale: CFG from initial noise seeds 10 and 11, AGD (and the unguided conditional model) from seed 11,
so F(AGD, CFG seed 10) is compared with F(CFG seed 11, CFG seed 10) on the same initial noise, and ``mse_to_cfg`` is
AGD's squared distance to CFG seed 11.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import pplvi.diffusion as D
from pplvi.diffusion import agd as A
from pplvi.diffusion import pretrained as P
from pplvi.diffusion.evaluation import load_evaluator
from pplvi.models.results import device_name, write_json
from pplvi.train import save_tree

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "pplvi" / "diffusion" / "weights"


def _score(rows):
    """(number of scales within both tolerances, minus the mean F(AGD, CFG)): larger is better."""
    passed = sum(r["accuracy_within_2se"] and r["frechet_within_seed_noise"] for r in rows)
    return passed, -float(np.mean([r["agd_to_cfg_frechet"] for r in rows]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--adapters", choices=("both", "features", "conditioning"), default="both")
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--train-steps", type=int, default=400)
    ap.add_argument("--traj-samples", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--feature-width", type=int, default=64)
    ap.add_argument("--kernel-size", type=int, default=1)
    args = ap.parse_args(argv)
    n, steps, train_steps, traj_n, bs = args.samples, 25, args.train_steps, args.traj_samples, args.batch_size
    if args.quick:
        n, train_steps, traj_n, bs = 20, 5, 4, 16
    kinds = ["features", "conditioning"] if args.adapters == "both" else [args.adapters]
    w_train = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    w_values = [2.0, 4.0, 6.0]
    t0 = time.time()
    model = P.load("mnist")
    shape_traj = (traj_n, 1, 28, 28)
    traj_labels = jnp.arange(traj_n) % 10
    traj = A.cfg_trajectories(model, jax.random.key(1), traj_labels, w_train, shape_traj, steps=steps)
    t_traj = time.time() - t0
    print(f"trajectories: {traj['x_t'].shape[0]} states, {t_traj:.0f}s", flush=True)
    agds, t_train = {}, {}
    for kind in kinds:
        t1 = time.time()
        agds[kind] = A.train_agd(model, traj, key=0, steps=train_steps, batch_size=bs, lr=args.lr,
                                 width=args.width, feature_width=args.feature_width,
                                 kernel_size=args.kernel_size, adapters=kind)
        t_train[kind] = round(time.time() - t1, 1)
        print(f"training {kind}: {t_train[kind]:.0f}s", flush=True)
    command = "python benchmarks/agd.py" + (" --quick" if args.quick else (
        f" --adapters {args.adapters} --samples {n} --train-steps {train_steps} --traj-samples {traj_n}"
        f" --batch-size {bs} --lr {args.lr} --width {args.width} --feature-width {args.feature_width}"
        f" --kernel-size {args.kernel_size}"))

    t_eval = time.time()
    ev = load_evaluator("mnist")
    real, _ = P.load_images("mnist", "test")
    real = np.asarray(real[:1000])
    labels = jnp.arange(n) % 10
    shape = (n, 1, 28, 28)

    @jax.jit
    def run_cfg(k, w):
        return D.ddim(k, D.cfg(model, labels, w), model.schedule, shape, steps=steps)

    def run_agd(agd, k, w):
        return D.ddim(k, A.AGDPredictor(agd, labels, w), model.schedule, shape, steps=steps)

    run_agd = eqx.filter_jit(run_agd)

    def pix(s):
        return np.asarray(P.to_pixels(s.x)).reshape(n, 28, 28)

    rows = {kind: [] for kind in kinds}
    cond = D.ddim(jax.random.key(11), D.conditional(model, labels), model.schedule, shape, steps=steps)
    for w in w_values:
        wj = jnp.float32(w)
        c0, c1 = run_cfg(jax.random.key(10), wj), run_cfg(jax.random.key(11), wj)
        ic0, ic1 = pix(c0), pix(c1)
        acc_c = ev.accuracy(ic0, labels)
        se = float(np.sqrt(max(acc_c * (1 - acc_c), 1.0 / n) / n))
        cfg_part = dict(
            w=w, cfg_accuracy=acc_c, accuracy_se=se, cfg_accuracy_seed2=ev.accuracy(ic1, labels),
            cfg_frechet=ev.frechet(ic0, real), cfg_frechet_seed2=ev.frechet(ic1, real),
            cfg_to_cfg_frechet=ev.frechet(ic1, ic0), cfg_nfe_per_sample=int(c0.nfe),
            conditional_mse_to_cfg=float(np.mean((np.asarray(cond.x) - np.asarray(c1.x)) ** 2)))
        for kind in kinds:
            g = run_agd(agds[kind], jax.random.key(11), wj)
            ig = pix(g)
            acc_g = ev.accuracy(ig, labels)
            row = dict(cfg_part, agd_accuracy=acc_g, agd_frechet=ev.frechet(ig, real),
                       agd_to_cfg_frechet=ev.frechet(ig, ic0), agd_nfe_per_sample=int(g.nfe),
                       mse_to_cfg=float(np.mean((np.asarray(g.x) - np.asarray(c1.x)) ** 2)))
            row["accuracy_within_2se"] = bool(abs(acc_g - acc_c) <= 2 * np.sqrt(2) * se)
            row["frechet_within_seed_noise"] = bool(row["agd_to_cfg_frechet"] <= 1.5 * row["cfg_to_cfg_frechet"])
            print(kind, json.dumps(row), flush=True)
            rows[kind].append(row)
    eval_seconds = round(time.time() - t_eval, 1)

    main_kind = kinds[0]
    better = args.adapters != "both" or _score(rows["features"]) > _score(rows["conditioning"])
    weights_saved = bool(better and not args.quick)
    if weights_saved:
        save_tree(WEIGHTS / "agd_mnist.npz", agds[main_kind].adapter_weights())
        (WEIGHTS / "agd_mnist.json").write_text(json.dumps({
            "name": "agd_mnist", "base": "mnist", "command": command, "adapters": main_kind,
            "adapter_width": args.width, "feature_width": args.feature_width, "kernel_size": args.kernel_size,
            "w_max": 10.0, "train_steps": train_steps, "batch_size": bs, "lr": args.lr, "w_train": w_train,
            "trajectory_samples_per_w": traj_n, "ddim_steps": steps, "train_seconds": t_train[main_kind],
            "device": device_name()}, indent=2) + "\n")
    out = ROOT / ("out/agd_quick.json" if args.quick else "benchmarks/results/agd.json")
    result = {
        "device": device_name(), "dataset": "mnist", "adapters": main_kind, "samples": n, "steps": steps,
        "w_values": w_values, "w_train": w_train, "train_steps": train_steps, "batch_size": bs, "lr": args.lr,
        "adapter_width": args.width, "feature_width": args.feature_width, "kernel_size": args.kernel_size,
        "trajectory_states": int(traj["x_t"].shape[0]), "train_seconds": t_train,
        "trajectory_seconds": round(t_traj, 1), "eval_seconds": eval_seconds, "command": command,
        "weights_saved": weights_saved,
        "tolerance": "accuracy: |agd - cfg| <= 2 sqrt(2) se (two independent sample sets); Frechet: "
                     "F(agd, cfg) <= 1.5 F(cfg seed 2, cfg) (AGD as close to CFG as CFG's own seed noise; AGD and "
                     "CFG seed 2 start from the same noise)",
        "rows": rows[main_kind]}
    if args.adapters == "both":
        result["conditioning_adapter_rows"] = rows["conditioning"]
    write_json(out, result)
    print("wrote", out, f"weights saved: {weights_saved}, total {time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
