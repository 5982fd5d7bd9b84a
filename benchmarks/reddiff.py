"""RED-Diff (Mardani et al., ICLR 2024) against DPS and the pseudo-inverse, plus the diffusion core's exact checks.

    python benchmarks/reddiff.py            # full: 100 MNIST test images, 1,000 RED-Diff and 1,000 DPS steps
    python benchmarks/reddiff.py --quick    # 8 images, 100 steps each (minutes on a CPU)

Writes ``benchmarks/results/reddiff.json`` (atomically) and the figure ``docs/diffusion/reddiff.png`` (copied to
``benchmarks/results/reddiff.png``). Sections:

* ``gaussian_fixed_point_rel_err``: Gaussian data N(m, C) in 6 dimensions, its exact denoiser, a random 3x6
  operator; RED-Diff with random times (Adam, cosine-decayed learning rate, Polyak averaging of the second half,
  ``chains`` independent chains per measurement) against the solution of the stationarity system
  (:func:`pplvi.diffusion.inverse.gaussian_fixed_point`): relative error of the chain mean.
* ``sampler_energy_distance``: the lead's samplers on a 2-D Gaussian mixture with its exact denoiser: energy
  distance of 2,000 samples to 2,000 exact draws, and the same statistic between two exact samples (the floor).
* ``tasks``: MNIST test images 0..n-1, the committed model ``P.load("mnist")`` used unconditionally; PSNR/SSIM on
  pixels in [0, 1] (mean over images, with standard errors), wall-clock seconds for the whole batch after
  compilation (compile times reported separately), NFE per image.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pplvi.diffusion as D  # noqa: E402
from pplvi.diffusion import inverse as I  # noqa: E402
from pplvi.diffusion import pretrained as P  # noqa: E402
from pplvi.models.results import device_name, write_json  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "reddiff.json"
FIGURE = ROOT / "docs" / "diffusion" / "reddiff.png"


def gaussian_problem(seed: int = 0, d: int = 6, m: int = 3, n_measurements: int = 2):
    """A random Gaussian prior N(m0, C), a random m x d operator and measurements of prior draws."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(d, d))
    cov = a @ a.T / d + 0.1 * np.eye(d)
    mean = rng.normal(size=d)
    op = I.MatrixOperator(rng.normal(size=(m, d)))
    x = mean + rng.normal(size=(n_measurements, d)) @ np.linalg.cholesky(cov).T
    y = op.forward(jnp.asarray(x, jnp.float32))
    return mean, cov, op, y


def gaussian_fixed_point_run(key, steps: int = 2000, chains: int = 256, lr: float = 0.05, seed: int = 0):
    """RED-Diff's random-time iteration on the Gaussian problem: ``(chain mean, its standard error, exact)``, each
    ``(n_measurements, d)``."""
    mean, cov, op, y = gaussian_problem(seed)
    schedule = D.CosineSchedule()
    prior = I.GaussianPrior(jnp.asarray(mean, jnp.float32), jnp.asarray(cov, jnp.float32), schedule)
    exact = I.gaussian_fixed_point(op, y, mean, cov, schedule)
    opt = optax.adam(optax.cosine_decay_schedule(lr, steps), b1=0.9, b2=0.99)
    res = I.red_diff(key, prior, op, jnp.repeat(y, chains, 0), steps=steps, random_time=True, optimizer=opt,
                     average_from=steps // 2, scan=True)
    xs = np.asarray(res.x, np.float64).reshape(y.shape[0], chains, -1)
    return xs.mean(1), xs.std(1, ddof=1) / np.sqrt(chains), exact


def gmm_2d():
    means = jnp.array([[-2.0, -1.0], [2.0, 1.5], [0.0, 2.5]])
    covs = jnp.array([[[0.4, 0.1], [0.1, 0.3]], [[0.3, -0.1], [-0.1, 0.5]], [[0.2, 0.0], [0.0, 0.2]]])
    return D.GaussianMixture(jnp.array([0.3, 0.5, 0.2]), means, covs)


SAMPLERS = {"ddpm@1000": ("ddpm", 1000, {}), "ddim(eta=0)@50": ("ddim", 50, {"eta": 0.0}),
            "heun@18": ("heun", 18, {}), "dpm_solver_pp@20": ("dpm_solver_pp", 20, {})}


def sampler_energy_distances(n: int = 2000, seed: int = 0) -> dict:
    gmm, schedule = gmm_2d(), D.CosineSchedule()
    k_ref, k_ref2, k_s = jax.random.split(jax.random.key(seed), 3)
    ref = gmm.sample(k_ref, n)
    out = {"exact_vs_exact_floor": float(D.energy_distance(gmm.sample(k_ref2, n), ref)), "n": n,
           "schedule": "cosine"}
    for label, (name, steps, kw) in SAMPLERS.items():
        run = jax.jit(lambda k, name=name, steps=steps, kw=kw: D.sample(
            name, k, gmm.predictor(schedule), schedule, (n, 2), steps, **kw))
        s = run(k_s)
        out[label] = {"energy_distance": float(D.energy_distance(s.x, ref)), "nfe": int(np.asarray(s.nfe).max())}
    return out


def mnist_tasks(key, x_true):
    """The three MNIST problems on the model-space batch ``x_true`` (N, 1, 28, 28)."""
    shape = tuple(x_true.shape[1:])
    n = x_true.shape[0]
    return [
        ("inpaint_random50", I.Inpainting.random(key, shape, missing=0.5, batch=n)),
        ("inpaint_box", I.Inpainting.box(shape, top=8, left=8, height=12, width=12)),
        ("super_resolution_4x", I.SuperResolution(shape, 4)),
    ]


def summarize(x, truth):
    px, pt = P.to_pixels(x), P.to_pixels(truth)
    p, s = np.asarray(I.psnr(px, pt)), np.asarray(I.ssim(px, pt))
    se = lambda v: float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")  # noqa: E731
    return float(p.mean()), float(s.mean()), se(p), se(s)


def run_tasks(n_images: int, red_steps: int, dps_steps: int, scan: bool, settings: dict, log=print):
    model = P.load("mnist")
    images, _ = P.load_images("mnist", "test")
    truth = P.to_model_space(images[:n_images])
    rows, figure = [], []
    for i, (task, op) in enumerate(mnist_tasks(jax.random.key(7), truth)):
        y = I.measure(jax.random.key(100 + i), op, truth, settings["sigma_y_measure"])
        pi = I.pinv(op, y)
        rd = I.red_diff(jax.random.key(200 + i), model, op, y, steps=red_steps, lr=settings["lr"],
                        lam=settings["lam"], weighting=settings["weighting"], scan=scan)
        dp = I.dps(jax.random.key(300 + i), model, op, y, steps=dps_steps, zeta=settings["zeta"], scan=scan)
        r_p, r_s, r_pse, r_sse = summarize(rd.x, truth)
        d_p, d_s, d_pse, d_sse = summarize(dp.x, truth)
        p_p, p_s, p_pse, p_sse = summarize(pi.x, truth)
        row = {
            "task": task, "dataset": "mnist", "reddiff_psnr": r_p, "reddiff_ssim": r_s, "dps_psnr": d_p,
            "dps_ssim": d_s, "pinv_psnr": p_p, "pinv_ssim": p_s, "reddiff_seconds": round(rd.seconds, 2),
            "dps_seconds": round(dp.seconds, 2), "reddiff_compile_seconds": round(rd.compile_seconds, 2),
            "dps_compile_seconds": round(dp.compile_seconds, 2),
            "dps_over_reddiff_time": round(dp.seconds / rd.seconds, 2),
            "reddiff_psnr_se": r_pse, "reddiff_ssim_se": r_sse,
            "dps_psnr_se": d_pse, "dps_ssim_se": d_sse, "pinv_psnr_se": p_pse, "pinv_ssim_se": p_sse,
            "reddiff_nfe": rd.nfe, "dps_nfe": dp.nfe, "dps_backward_passes": dp.nfe - 1, "n_images": n_images,
        }
        log(row)
        rows.append(row)
        figure.append((task, pi.x[:6], rd.x[:6], dp.x[:6], truth[:6]))
    return rows, figure


def save_figure(figure, out: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["input H$^+$y", "RED-Diff", "DPS", "truth"]
    fig, axes = plt.subplots(len(figure), 4, figsize=(15, 0.85 * len(figure) + 0.5))
    for r, (task, *cols) in enumerate(figure):
        for c, x in enumerate(cols):
            img = np.asarray(P.to_pixels(x))
            strip = np.concatenate(list(img), axis=1)
            ax = axes[r, c]
            ax.imshow(strip, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(names[c])
            if c == 0:
                ax.set_ylabel(task.replace("_", "\n"), fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--figure", type=Path, default=FIGURE)
    ap.add_argument("--images", type=int, default=None)
    ap.add_argument("--reddiff-steps", type=int, default=None)
    ap.add_argument("--dps-steps", type=int, default=None)
    ap.add_argument("--scan", action=argparse.BooleanOptionalAction, default=None,
                    help="run the solver loops as lax.scan (default: on accelerators)")
    args = ap.parse_args(argv)
    n_images = args.images or (8 if args.quick else 100)
    red_steps = args.reddiff_steps or (100 if args.quick else 1000)
    dps_steps = args.dps_steps or (100 if args.quick else 1000)
    scan = args.scan if args.scan is not None else jax.default_backend() != "cpu"
    settings = {"lam": 0.25, "lr": 0.1, "weighting": "sigma", "adam_betas": [0.9, 0.99], "sigma_x0": 0.0,
                "sigma_y_objective": 1.0, "sigma_y_measure": 0.0, "init": "pinv", "zeta": 1.0,
                "times": "descending, equally spaced from 1 to t_min"}
    t0 = time.time()
    fp_steps, fp_chains = (2000, 256) if args.quick else (4000, 1024)
    mean, se, exact = gaussian_fixed_point_run(jax.random.key(0), fp_steps, fp_chains)
    fp_err = float(np.linalg.norm(mean - exact) / np.linalg.norm(exact))
    fp_z = float(np.max(np.abs(mean - exact) / se))
    print(f"gaussian fixed point: rel err {fp_err:.2e}, max |z| {fp_z:.2f}", flush=True)
    energy = sampler_energy_distances()
    print("energy distances", energy, flush=True)
    rows, figure = run_tasks(n_images, red_steps, dps_steps, scan, settings)
    save_figure(figure, args.figure)
    if args.figure == FIGURE:
        shutil.copyfile(FIGURE, OUT.parent / "reddiff.png")
    results = {
        "gaussian_fixed_point_rel_err": fp_err,
        "gaussian_fixed_point": {"max_abs_z": fp_z, "steps": fp_steps, "chains": fp_chains, "dim": 6,
                                 "measurements": 3, "optimizer": "adam, cosine-decayed lr from 0.05, averaging "
                                 "of the second half", "time": "uniform on [t_min, 1] (random_time=True)"},
        "sampler_energy_distance": energy,
        "tasks": rows,
        "settings": {**settings, "reddiff_steps": red_steps, "dps_steps": dps_steps, "n_images": n_images,
                     "images": f"MNIST test images 0..{n_images - 1}", "model": "P.load('mnist'), unconditional",
                     "scan": scan, "box": "rows and columns 8..19 (12x12) hidden",
                     "random_mask": "50% of pixels hidden, one mask per image"},
        "quick": bool(args.quick),
        "device": device_name(),
        "jax_version": jax.__version__,
        "seconds_total": round(time.time() - t0, 1),
        "command": "python benchmarks/reddiff.py" + (" --quick" if args.quick else ""),
    }
    write_json(args.out, results)
    print(f"wrote {args.out} in {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
