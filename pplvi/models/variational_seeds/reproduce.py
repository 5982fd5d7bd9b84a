"""``python -m pplvi.models.variational_seeds reproduce [--quick]``: the checks of four small variational methods
(issue 13, everything but score distillation); writes ``benchmarks/results/variational_seeds.json``
(``--quick``: tiny settings, written to ``out/variational_seeds_quick.json`` unless ``--out`` is given).

* ``ko`` (:mod:`pplvi.models.kinetic_paths`): the data separation function of n = 32 normalized Gaussian points at
  SNR 1 and averaged over the angle, for d from 1 to 4096 (n/d from 32 to 1/128), with the KO and Cond-OT kinetic
  energies per dimension; on a 2-D mixture of 8 Gaussians (n = 512) the KO path, both energies (formula and direct
  Monte Carlo) and a flow-matching model trained with each path as its schedule (W1 of samples to held-out data).
* ``instance_noise`` (:mod:`pplvi.models.instance_noise`): W1 of the learned distribution to the circle, per noise
  level, mean over seeds.
* ``continual`` (:mod:`pplvi.models.continual`): task-1 overlap after learning task 2 (and 3), variational vs SGD.
* ``ate`` (:mod:`pplvi.models.ate`): fine-tuning steps until the policy covers the target modes, guided vs plain.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from pplvi.models import ate as A
from pplvi.models import continual as C
from pplvi.models import instance_noise as IN
from pplvi.models import kinetic_paths as KP
from pplvi.models.results import device_name, write_json

RESULTS = Path("benchmarks/results/variational_seeds.json")
QUICK_RESULTS = Path("out/variational_seeds_quick.json")

FULL = {
    "ko": {"dims": [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096], "points": 32, "grid": 256,
           "mixture_points": 512, "noise": 256, "flow_steps": 3000, "mc_times": 256, "mc_samples": 256},
    "instance_noise": {"sigmas": [0.003, 0.01, 0.03, 0.1, 0.3, 1.0], "seeds": 3, "steps": 3000, "n": 1000},
    "continual": {"inputs": 500, "alpha": 2.0, "tasks": 3, "flip": 0.5, "steps": 1000, "lr": 5.0, "seeds": 5},
    "ate": {"seeds": 3, "pretrain_steps": 2000, "max_steps": 2000, "eval_every": 50, "guidance": 1.0},
}
QUICK = {
    "ko": {"dims": [1, 8, 64, 512], "points": 16, "grid": 64, "mixture_points": 128, "noise": 8, "flow_steps": 200,
           "mc_times": 32, "mc_samples": 64},
    "instance_noise": {"sigmas": [0.01, 0.1, 1.0], "seeds": 1, "steps": 200, "n": 200},
    "continual": {"inputs": 100, "alpha": 2.0, "tasks": 2, "flip": 0.5, "steps": 100, "lr": 5.0, "seeds": 1},
    "ate": {"seeds": 1, "pretrain_steps": 200, "max_steps": 100, "eval_every": 50, "guidance": 1.0},
}


def mixture_2d(key, num: int, modes: int = 8, radius: float = 2.0, std: float = 0.1):
    """``num`` points of ``modes`` equal Gaussians on a circle (the 2-D mixture of the KO check)."""
    k1, k2 = jax.random.split(key)
    angle = 2 * np.pi * jax.random.randint(k1, (num,), 0, modes) / modes
    return radius * jnp.stack([jnp.cos(angle), jnp.sin(angle)], -1) + std * jax.random.normal(k2, (num, 2))


def ko_check(cfg: dict, *, seed: int = 0, say=print) -> dict:
    """The ``ko`` section (module docstring)."""
    sweep = []
    for d in cfg["dims"]:
        data = KP.normalize_dataset(jax.random.normal(jax.random.key(seed + d), (cfg["points"], d)))
        curve = KP.SeparationCurve.estimate(jax.random.key(seed + 1), data, grid=cfg["grid"], num_noise=8)
        at_one = float(KP.data_separation(jax.random.key(seed + 2), data, jnp.array([1.0]), num_noise=64)[0])
        ko_e = KP.ko_energy(curve)
        ot_e = KP.kinetic_energy(KP.GaussianPath.cond_ot(), curve)
        # the angle average of lambda - sin^2 theta normalized: 0 for structureless data, 1 when separated
        mean_sep = float(jnp.trapezoid(curve.lam, curve.theta) / curve.theta[-1])
        sweep.append({"n": cfg["points"], "d": d, "ratio": cfg["points"] / d, "n_over_sqrt_d": cfg["points"] / d**0.5,
                      "lambda_at_snr_1": at_one,
                      "lambda_mean_over_angle": mean_sep, "ko_energy": ko_e, "condot_energy": ot_e})
        say(f"  n/d = {cfg['points'] / d:7.3f}: lambda(1) = {at_one:.4f}, KO {ko_e:.4f} vs Cond-OT {ot_e:.4f}")

    data = KP.normalize_dataset(mixture_2d(jax.random.key(seed + 10), cfg["mixture_points"]))
    held_out = KP.normalize_dataset(mixture_2d(jax.random.key(seed + 11), 1000))
    curve = KP.SeparationCurve.estimate(jax.random.key(seed + 12), data, grid=cfg["grid"], num_noise=cfg["noise"])
    ko_path, ot_path = KP.kinetic_optimal_path(curve), KP.GaussianPath.cond_ot()
    ko_e, ot_e = KP.ko_energy(curve), KP.kinetic_energy(ot_path, curve)
    ko_mc = KP.kinetic_energy_monte_carlo(jax.random.key(seed + 13), ko_path, data, times=cfg["mc_times"],
                                          samples=cfg["mc_samples"])
    ot_mc = KP.kinetic_energy_monte_carlo(jax.random.key(seed + 13), ot_path, data, times=cfg["mc_times"],
                                          samples=cfg["mc_samples"])
    grid = jnp.linspace(0.0, 1.0, 11)
    max_gap = float(jnp.max(jnp.abs(ko_path.alpha(jnp.linspace(0, 1, 101)) - jnp.linspace(0, 1, 101))))
    say(f"  2-D mixture: KO {ko_e:.4f} (MC {ko_mc[0]:.4f} +- {ko_mc[1]:.4f}), Cond-OT {ot_e:.4f} "
        f"(MC {ot_mc[0]:.4f} +- {ot_mc[1]:.4f}); max |alpha_KO - t| = {max_gap:.3f}")
    flows = {}
    for name, path in (("ko", ko_path), ("condot", ot_path)):
        fit = KP.train_flow(path, data, steps=cfg["flow_steps"], seed=seed + 20)
        flows[name] = {}
        for steps in (4, 16):
            x = KP.sample_flow(fit.params, jax.random.key(seed + 30), held_out.shape[0], steps=steps)
            flows[name][f"w1_euler_{steps}"] = IN.wasserstein1(x, held_out)
        say(f"  flow matching with the {name} schedule: W1 to held-out data {flows[name]}")
    return {
        "separation_vs_ratio": sweep,
        "ko_energy": ko_e, "condot_energy": ot_e,
        "ko_energy_monte_carlo": {"mean": ko_mc[0], "se": ko_mc[1]},
        "condot_energy_monte_carlo": {"mean": ot_mc[0], "se": ot_mc[1]},
        "max_abs_alpha_ko_minus_condot": max_gap,
        "ko_path": {"t": grid.tolist(), "alpha": ko_path.alpha(grid).tolist(), "sigma": ko_path.sigma(grid).tolist()},
        "mixture_separation": {"theta": curve.theta[:: max(1, cfg["grid"] // 16)].tolist(),
                               "lambda": curve.lam[:: max(1, cfg["grid"] // 16)].tolist()},
        "flow_matching_w1": flows,
        "flow_matching_w1_floor": IN.wasserstein1(
            KP.normalize_dataset(mixture_2d(jax.random.key(seed + 40), 1000)), held_out),
    }


def instance_noise_check(cfg: dict, *, seed: int = 0, say=print) -> tuple[list, dict]:
    """The ``instance_noise`` section: ``[{"sigma", "w1", "w1_se", "w1_per_seed"}]`` and extras."""
    rows = []
    test = IN.sample_circle(jax.random.key(seed + 1), cfg["n"])
    for sigma in cfg["sigmas"]:
        per_seed = []
        for s in range(cfg["seeds"]):
            truth = IN.sample_circle(jax.random.key(seed + 100 + s), cfg["n"])
            fit = IN.fit_instance_noise(truth, sigma, steps=cfg["steps"], latent=2, seed=seed + s)
            per_seed.append(IN.wasserstein1(IN.sample_generator(fit.params, jax.random.key(seed + 7), cfg["n"]), test))
        w1 = float(np.mean(per_seed))
        se = float(np.std(per_seed, ddof=1) / np.sqrt(len(per_seed))) if len(per_seed) > 1 else None
        rows.append({"sigma": sigma, "w1": w1, "w1_se": se, "w1_per_seed": per_seed})
        say(f"  sigma = {sigma:6.3f}: W1 = {w1:.4f} +- {se if se is not None else float('nan'):.4f}")
    floor = IN.wasserstein1(IN.sample_circle(jax.random.key(seed + 2), cfg["n"]), test)
    return rows, {"w1_floor_two_truth_samples": floor, "latent_dim": 2, "train_points": cfg["n"]}


def continual_check(cfg: dict, *, seed: int = 0, say=print) -> dict:
    """The ``continual`` section: overlaps with every teacher after every task, per method, averaged over seeds."""
    overlaps = {"vi": [], "sgd": []}
    for s in range(cfg["seeds"]):
        teachers = C.make_teachers(jax.random.key(seed + s), cfg["inputs"], cfg["tasks"], cfg["flip"])
        tasks = [C.make_task(jax.random.key(seed + 1000 * (s + 1) + t), teachers[t], int(cfg["alpha"] * cfg["inputs"]))
                 for t in range(cfg["tasks"])]
        for name, variational in (("vi", True), ("sgd", False)):
            fields = C.learn_sequence(tasks, variational=variational, steps=cfg["steps"], lr=cfg["lr"], seed=seed + s)
            overlaps[name].append([[C.overlap(h, teachers[t]) for t in range(cfg["tasks"])] for h in fields])
    mean = {k: np.mean(np.asarray(v), 0) for k, v in overlaps.items()}  # (after task, teacher)
    se = {k: float(np.std(np.asarray(v)[:, 1, 0], ddof=1) / np.sqrt(cfg["seeds"])) if cfg["seeds"] > 1 else None
          for k, v in overlaps.items()}
    shown = {k: v if v is not None else float("nan") for k, v in se.items()}
    say(f"  task-1 overlap after task 2: VI {mean['vi'][1, 0]:.3f} +- {shown['vi']:.3f}, "
        f"SGD {mean['sgd'][1, 0]:.3f} +- {shown['sgd']:.3f}; task-2 overlap VI {mean['vi'][1, 1]:.3f}, "
        f"SGD {mean['sgd'][1, 1]:.3f}")
    return {
        "vi_task1_overlap": float(mean["vi"][1, 0]), "sgd_task1_overlap": float(mean["sgd"][1, 0]),
        "vi_task1_overlap_se": se["vi"], "sgd_task1_overlap_se": se["sgd"],
        "vi_task2_overlap": float(mean["vi"][1, 1]), "sgd_task2_overlap": float(mean["sgd"][1, 1]),
        "overlap_matrix_vi": mean["vi"].tolist(), "overlap_matrix_sgd": mean["sgd"].tolist(),
        "settings": cfg,
    }


def ate_check(cfg: dict, *, seed: int = 0, say=print) -> dict:
    """The ``ate`` section: steps to cover the 6 target modes, guided vs plain fine-tuning, per seed."""
    modes, pre_std, target_std, radius = 6, 0.06, 0.04, 0.2
    demo_counts = [4, 3, 2, 1, 1, 1]
    pre_centres = A.mode_centres(modes, 1.0)
    target_centres = A.mode_centres(modes, 0.6, rotation=0.5, offset=(0.8, -0.5))
    prior = A.latent_prior(modes, radius=2.0, std=0.3)
    runs = []
    for s in range(cfg["seeds"]):
        pre = A.sample_actions(jax.random.key(seed + 10 * s), pre_centres, [700] * modes, pre_std)
        velocity, vae = A.pretrain(pre, prior, action_noise=pre_std, flow_steps=cfg["pretrain_steps"],
                                   vae_steps=cfg["pretrain_steps"], seed=seed + 10 * s)
        demos = A.sample_actions(jax.random.key(seed + 10 * s + 1), target_centres, demo_counts, target_std)
        adapter = A.fit_adapter(vae, prior, demos, pre, seed=seed + s)
        mapped = adapter(target_centres)
        align_err = float(jnp.max(jnp.min(jnp.linalg.norm(mapped[:, None] - pre_centres[None], axis=-1), 1)))
        reward = A.latent_guidance(vae, adapter, velocity, latent_std=0.3, euler_steps=8)
        tiled = jnp.tile(demos, (20, 1))  # 20 flow-matching draws per demonstration per step
        run = {"seed": seed + s, "alignment_max_error": align_err}
        for name, gamma in (("plain", 0.0), ("guided", cfg["guidance"])):
            objective = A.guided_finetune_objective(KP.GaussianPath.cond_ot(), reward, gamma)
            steps, trace, _ = A.steps_to_cover(objective, velocity, tiled, target_centres, radius=radius,
                                               max_steps=cfg["max_steps"], eval_every=cfg["eval_every"],
                                               eval_steps=8, seed=seed + s)
            run[f"{name}_steps"] = steps
            run[f"{name}_final"] = trace[-1]
        runs.append(run)
        say(f"  seed {s}: alignment error {align_err:.3f}; steps to cover: guided {run['guided_steps']}, "
            f"plain {run['plain_steps']}")
    censor = cfg["max_steps"] + cfg["eval_every"]
    steps = {k: [r[f"{k}_steps"] if r[f"{k}_steps"] is not None else censor for r in runs]
             for k in ("guided", "plain")}
    return {
        "guided_steps_to_cover": float(np.mean(steps["guided"])),
        "plain_steps_to_cover": float(np.mean(steps["plain"])),
        "guided_steps_per_seed": steps["guided"], "plain_steps_per_seed": steps["plain"],
        "censored_at": censor,
        "runs": runs,
        "cover_definition": {"radius": radius, "min_inside": 0.8, "min_mode_share_times_K": 1.0 / 3.0,
                             "samples": 1000, "euler_steps": 8},
        "demo_counts": demo_counts,
        "settings": cfg,
    }


def reproduce(*, quick: bool = False, out=None, seed: int = 0, say=print) -> dict:
    """Run the four checks and write the results file (see the module docstring)."""
    cfg = QUICK if quick else FULL
    out = Path(out) if out is not None else (QUICK_RESULTS if quick else RESULTS)
    started = time.time()
    seconds = {}
    say("ATE (align-then-steer)")
    t = time.time()
    ate = ate_check(cfg["ate"], seed=seed, say=say)
    seconds["ate"] = time.time() - t
    say("kinetic-optimal paths")
    t = time.time()
    ko = ko_check(cfg["ko"], seed=seed, say=say)
    seconds["ko"] = time.time() - t
    say("instance noise")
    t = time.time()
    rows, noise_extra = instance_noise_check(cfg["instance_noise"], seed=seed, say=say)
    seconds["instance_noise"] = time.time() - t
    say("continual learning")
    t = time.time()
    continual = continual_check(cfg["continual"], seed=seed, say=say)
    seconds["continual"] = time.time() - t
    results = {
        "ate": ate, "ko": ko, "instance_noise": rows, "continual": continual,
        "instance_noise_extra": noise_extra,
        "device": device_name(), "quick": quick, "seed": seed, "seconds": seconds,
        "total_seconds": time.time() - started,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": "python -m pplvi.models.variational_seeds reproduce" + (" --quick" if quick else ""),
    }
    write_json(out, results)
    say(f"wrote {out} in {results['total_seconds']:.0f} s")
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pplvi.models.variational_seeds", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("reproduce", help="run the four checks and write the results JSON")
    run.add_argument("--quick", action="store_true", help="tiny settings (minutes -> seconds); not the results")
    run.add_argument("--out", default=None, help="results file (default: benchmarks/results/variational_seeds.json)")
    run.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    reproduce(quick=args.quick, out=args.out, seed=args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
