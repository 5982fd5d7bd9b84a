"""AGD (adapter guidance distillation) vs. classifier-free guidance on the committed MNIST model.

``python benchmarks/agd.py`` trains the adapter (base frozen) on DDIM+CFG trajectories, saves it to
``pplvi/diffusion/weights/agd_mnist.npz`` (+ ``.json``), and writes ``benchmarks/results/agd.json``:
per guidance scale, the evaluator's accuracy and Frechet distance (to 1,000 MNIST test images) of CFG (2 NFE/step)
and AGD (1 NFE/step) samples, the Frechet distance between two CFG seeds (the noise floor) and between AGD and
CFG, and the mean squared pixel difference of AGD and CFG samples from the same initial noise.
``--quick``: tiny sizes, written to ``out/agd_quick.json`` (weights not saved).
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
from pplvi.diffusion import agd as A
from pplvi.diffusion import pretrained as P
from pplvi.diffusion.evaluation import load_evaluator
from pplvi.models.results import device_name, write_json
from pplvi.train import save_tree

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "pplvi" / "diffusion" / "weights"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--samples", type=int, default=150)
    ap.add_argument("--train-steps", type=int, default=300)
    ap.add_argument("--traj-samples", type=int, default=40)
    ap.add_argument("--width", type=int, default=64)
    args = ap.parse_args(argv)
    n, steps, train_steps, traj_n = args.samples, 25, args.train_steps, args.traj_samples
    if args.quick:
        n, train_steps, traj_n = 20, 20, 10
    w_train = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    w_values = [2.0, 4.0, 6.0]
    t0 = time.time()
    model = P.load("mnist")
    shape_traj = (traj_n, 1, 28, 28)
    traj_labels = jnp.arange(traj_n) % 10
    traj = A.cfg_trajectories(model, jax.random.key(1), traj_labels, w_train, shape_traj, steps=steps)
    t_traj = time.time() - t0
    print(f"trajectories: {traj['x_t'].shape[0]} states, {t_traj:.0f}s", flush=True)
    t1 = time.time()
    agd = A.train_agd(model, traj, key=0, steps=train_steps, batch_size=64, lr=2e-3, width=args.width)
    t_train = time.time() - t1
    print(f"training: {t_train:.0f}s", flush=True)
    command = "python benchmarks/agd.py" + (" --quick" if args.quick else (
        f" --samples {n} --train-steps {train_steps} --traj-samples {traj_n} --width {args.width}"))
    if not args.quick:
        save_tree(WEIGHTS / "agd_mnist.npz", agd.adapter)
        (WEIGHTS / "agd_mnist.json").write_text(json.dumps({
            "name": "agd_mnist", "base": "mnist", "command": command, "adapter_width": args.width, "w_max": 10.0,
            "train_steps": train_steps, "batch_size": 64, "lr": 2e-3, "w_train": w_train,
            "trajectory_samples_per_w": traj_n, "ddim_steps": steps, "train_seconds": round(t_train, 1),
            "device": device_name()}, indent=2) + "\n")

    ev = load_evaluator("mnist")
    real, _ = P.load_images("mnist", "test")
    real = np.asarray(real[:1000])
    labels = jnp.arange(n) % 10
    shape = (n, 1, 28, 28)

    @jax.jit
    def run_cfg(k, w):
        return D.ddim(k, D.cfg(model, labels, w), model.schedule, shape, steps=steps)

    @jax.jit
    def run_agd(k, w):
        return D.ddim(k, A.AGDPredictor(agd, labels, w), model.schedule, shape, steps=steps)

    def pix(s):
        return np.asarray(P.to_pixels(s.x)).reshape(n, 28, 28)

    rows = []
    cond = D.ddim(jax.random.key(10), D.conditional(model, labels), model.schedule, shape, steps=steps)
    for w in w_values:
        wj = jnp.float32(w)
        c0, c1 = run_cfg(jax.random.key(10), wj), run_cfg(jax.random.key(11), wj)
        g_same, g2 = run_agd(jax.random.key(10), wj), run_agd(jax.random.key(12), wj)
        ic0, ic1, ig2 = pix(c0), pix(c1), pix(g2)
        acc_c, acc_g = ev.accuracy(ic0, labels), ev.accuracy(ig2, labels)
        se = float(np.sqrt(max(acc_c * (1 - acc_c), 1.0 / n) / n))
        row = dict(
            w=w, cfg_accuracy=acc_c, agd_accuracy=acc_g, accuracy_se=se,
            cfg_accuracy_seed2=ev.accuracy(ic1, labels),
            cfg_frechet=ev.frechet(ic0, real), cfg_frechet_seed2=ev.frechet(ic1, real),
            agd_frechet=ev.frechet(ig2, real),
            cfg_to_cfg_frechet=ev.frechet(ic1, ic0), agd_to_cfg_frechet=ev.frechet(ig2, ic0),
            cfg_nfe_per_sample=int(c0.nfe), agd_nfe_per_sample=int(g2.nfe),
            mse_to_cfg=float(np.mean((np.asarray(g_same.x) - np.asarray(c0.x)) ** 2)),
            conditional_mse_to_cfg=float(np.mean((np.asarray(cond.x) - np.asarray(c0.x)) ** 2)),
        )
        row["accuracy_within_2se"] = bool(abs(acc_g - acc_c) <= 2 * np.sqrt(2) * se)
        row["frechet_within_seed_noise"] = bool(row["agd_to_cfg_frechet"] <= 1.5 * row["cfg_to_cfg_frechet"])
        print(json.dumps(row), flush=True)
        rows.append(row)
    out = ROOT / ("out/agd_quick.json" if args.quick else "benchmarks/results/agd.json")
    write_json(out, {
        "device": device_name(), "dataset": "mnist", "samples": n, "steps": steps, "w_values": w_values,
        "w_train": w_train, "train_steps": train_steps, "trajectory_states": int(traj["x_t"].shape[0]),
        "train_seconds": round(t_train, 1), "trajectory_seconds": round(t_traj, 1),
        "eval_seconds": round(time.time() - t1 - t_train, 1), "command": command,
        "tolerance": "accuracy: |agd - cfg| <= 2 sqrt(2) se (two independent sample sets); Frechet: "
                     "F(agd, cfg) <= 1.5 F(cfg seed 2, cfg) (AGD as close to CFG as CFG's own seed noise)",
        "rows": rows})
    print("wrote", out, f"total {time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
