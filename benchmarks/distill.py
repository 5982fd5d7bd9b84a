"""Score distillation benchmark (issue 13): SDS / VSD / DSD / PG-SB on particles against the exact 2-D Gaussian
mixture denoiser, and DMD (VSD + regression onto teacher noise-image pairs) distilling the committed MNIST diffusion
model into a one-step generator (with NASA), with each term alone as ablations.

Rerun: ``python benchmarks/distill.py [--quick] [--skip-mnist]`` -> ``benchmarks/results/distill.json`` and, with the
MNIST part, ``pplvi/diffusion/weights/onestep_mnist.npz|json``. Settings are in ``GMM`` and ``MNIST`` below.

GMM: class 0 is three tight components (std 0.3) at radius 2, class 1 one broad component N(0, 2^2 I) at the origin
(cosine schedule). 256 class-0 particles start from N(0, I).
* var ratio: :func:`pplvi.diffusion.distill.cluster_variance_ratio` of the final particles against exact draws.
* PG-SB vs a fixed scale: particles of both classes (128 each); 5 seeds; quality is the energy distance of each
  class's particles to exact draws of that class (mean of the two); spread is the standard deviation over seeds.
  PG-SB: kappa ~ U(1, 5) on the teacher and the fake. Fixed scale (``fixed_scale_seed_spread``): the same objective
  with kappa = 3 (the range's mean) on both branches, so the scale's randomness is the only difference. Extra:
  SwiftBrush's fixed-scale VSD (kappa = 3 on the teacher only, the fake conditional). A guided fake learns its
  unconditional branch from label dropout with probability 0.3.
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
import optax

import pplvi
import pplvi.diffusion as D
from pplvi.diffusion import distill as S
from pplvi.diffusion import pretrained as P
from pplvi.diffusion.evaluation import load_evaluator
from pplvi.models.results import device_name, write_json
from pplvi.train import load_tree, save_tree

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "distill.json"
WEIGHTS = ROOT / "pplvi" / "diffusion" / "weights"

GMM = dict(particles=256, steps=1000, lr=0.03, fake_lr=1e-3, fake_width=128, sds_guidance=5.0, dsd_cfg_weight=0.3,
           seeds=5, pgsb_range=(1.0, 5.0), fixed_scale=3.0, pgsb_particles_per_class=128, pgsb_steps=1200,
           pgsb_p_uncond=0.3)
MNIST = dict(objective="dmd", pairs=12800, pair_steps=10, regression_steps=3000, regression_batch_size=128,
             regression_weight=0.25, steps=1500, batch_size=32, lr=3e-4,
             fake_lr=1e-3, latent_dim=784, width=1024, depth=3, fake_width=512, fake_depth=2, null_fraction=0.2,
             eval_samples=2000, nasa_scale=1.0, seed=0)


def _optimizer(cfg, steps, joint):
    lr = optax.cosine_decay_schedule(cfg["lr"], steps, 0.05)
    if not joint:
        return optax.adam(lr)
    return optax.multi_transform({"g": optax.adam(lr), "f": optax.adam(cfg["fake_lr"])},
                                 {"generator": "g", "fake": "f"})


def run_particles(objective, x0, labels, cfg, steps, seed, joint):
    params = x0
    if joint:
        params = {"generator": x0, "fake": S.ScoreAdapter((2,), 2, key=jax.random.key(1000 + seed),
                                                          width=cfg["fake_width"])}
    res = pplvi.fit(objective, params, optimizer=_optimizer(cfg, steps, joint), steps=steps, key=seed,
                    data=(labels,), progress=False)
    return res.params["generator"] if joint else res.params


def gmm_part(cfg):
    gmm, modes = S.ring_mixture()
    teacher = S.as_teacher(gmm, D.CosineSchedule())
    n = cfg["particles"]
    labels = jnp.zeros((n,), jnp.int32)
    x0 = jax.random.normal(jax.random.key(1), (n, 2))
    target = gmm.sample(jax.random.key(2), 4000, label=0)
    out, extras = {}, {}
    methods = {
        "sds": (S.sds(teacher, guidance=cfg["sds_guidance"]), False),
        "vsd": (S.vsd(teacher), True),
        "dsd": (S.dsd(teacher, cfg_weight=cfg["dsd_cfg_weight"]), True),
    }
    for name, (obj, joint) in methods.items():
        t0 = time.time()
        p = run_particles(obj, x0, labels, cfg, cfg["steps"], 0, joint)
        out[f"{name}_var_ratio"] = S.cluster_variance_ratio(p, target, modes)
        extras[name] = dict(energy_distance=float(D.energy_distance(p, target[:1000])), seconds=time.time() - t0)
        print(name, out[f"{name}_var_ratio"], extras[name], flush=True)

    # PG-SB vs fixed scale over seeds
    m = cfg["pgsb_particles_per_class"]
    labels2 = jnp.concatenate([jnp.zeros((m,), jnp.int32), jnp.ones((m,), jnp.int32)])
    targets = [gmm.sample(jax.random.key(3), 1000, label=c) for c in (0, 1)]
    variants = {
        "pgsb": S.pgsb(teacher, guidance=cfg["pgsb_range"], p_uncond=cfg["pgsb_p_uncond"]),
        "fixed_teacher_only": S.vsd(teacher, guidance=cfg["fixed_scale"]),
        "fixed_both": S.score_distillation(teacher, method="vsd", guidance=cfg["fixed_scale"], fake_guidance="same",
                                           p_uncond=cfg["pgsb_p_uncond"]),
    }
    quality = {}
    for name, obj in variants.items():
        quality[name] = []
        for seed in range(cfg["seeds"]):
            x0 = 1.5 * jax.random.normal(jax.random.key(100 + seed), (2 * m, 2))
            p = run_particles(obj, x0, labels2, cfg, cfg["pgsb_steps"], seed, True)
            quality[name].append(float(np.mean([D.energy_distance(p[labels2 == c], targets[c]) for c in (0, 1)])))
        print(name, quality[name], flush=True)
    spread = {k: float(np.std(v, ddof=1)) for k, v in quality.items()}
    return out, spread, quality, extras


def _generator(cfg, key):
    return S.OneStepGenerator((1, 28, 28), 10, key=key, latent_dim=cfg["latent_dim"], width=cfg["width"],
                              depth=cfg["depth"])


@pplvi.objective
def pair_regression(generator, labels, latents, images):
    """Regression only (the DMD ablation without distribution matching): minus the mean squared error of the
    generator's image for each pair's noise against the teacher's ODE sample."""
    return -S.pair_regression_error(generator, labels, latents, images)


def _frechet_and_accuracy(gen, evaluator, test_x, n, key):
    labels = jnp.arange(n) % 10
    imgs = np.asarray(P.to_pixels(S.nasa(gen, key, labels, negative=0, scale=0.0)))
    return evaluator.frechet(imgs, np.asarray(test_x[:n])), evaluator.accuracy(imgs, np.asarray(labels))


def mnist_part(cfg, quick, eval_only=False, ablations=True):
    teacher = P.load("mnist")
    key = jax.random.key(cfg["seed"])
    kg, kf, kl, ke, kn, kp = jax.random.split(key, 6)
    evaluator = load_evaluator("mnist")
    test_x, _ = P.load_images("mnist", "test")
    n = cfg["eval_samples"]
    # the teacher's noise-image pairs (DMD's regression set): labels uniform, a null_fraction of them unconditional
    n_pairs = cfg["pairs"]
    pair_labels = jax.random.randint(kl, (n_pairs,), 0, 10)
    pair_labels = jnp.where(jax.random.uniform(kp, (n_pairs,)) < cfg["null_fraction"], 10, pair_labels)
    t0 = time.time()
    latents, images = S.teacher_pairs(teacher, kp, pair_labels, (1, 28, 28), steps=cfg["pair_steps"])
    pair_seconds = time.time() - t0
    cond = np.asarray(pair_labels) < 10
    teacher_imgs = np.asarray(P.to_pixels(images[cond][:n]))
    teacher_frechet = evaluator.frechet(teacher_imgs, np.asarray(test_x[:n]))
    teacher_accuracy = evaluator.accuracy(teacher_imgs, np.asarray(pair_labels)[cond][:n])
    print(f"teacher pairs: {pair_seconds:.0f} s, Frechet {teacher_frechet:.1f}, accuracy {teacher_accuracy:.3f}",
          flush=True)
    data = (pair_labels, latents, images)
    gen = _generator(cfg, kg)
    fake = S.ScoreAdapter((1, 28, 28), 10, key=kf, width=cfg["fake_width"], depth=cfg["fake_depth"])
    ablation = {}
    if eval_only:  # the committed generator, evaluated again
        gen = load_tree(WEIGHTS / "onestep_mnist.npz", gen)
        seconds = json.loads((WEIGHTS / "onestep_mnist.json").read_text())["train_seconds"]
        final_objective = None
    else:
        # 1. regression warm start (DMD's regression term alone, large batches: cheap, no teacher calls)
        t0 = time.time()
        warm = pplvi.fit(pair_regression, gen, optimizer=optax.adam(optax.cosine_decay_schedule(
            cfg["lr"], cfg["regression_steps"], 0.1)), steps=cfg["regression_steps"], key=cfg["seed"], data=data,
            batch_size=cfg["regression_batch_size"], progress=False).params
        warm_seconds = time.time() - t0
        # 2. DMD: distribution matching (VSD with its fake) + the regression, from the warm start
        t0 = time.time()
        objective = S.dmd(teacher, regression_weight=cfg["regression_weight"])
        res = pplvi.fit(objective, {"generator": warm, "fake": fake}, optimizer=_optimizer(cfg, cfg["steps"], True),
                        steps=cfg["steps"], key=cfg["seed"], data=data, batch_size=cfg["batch_size"],
                        progress=False)
        seconds = warm_seconds + time.time() - t0
        gen = res.params["generator"]
        final_objective = float(np.mean(res.history["objective"][-100:]))
        print(f"dmd: {seconds:.0f} s (warm start {warm_seconds:.0f} s)", flush=True)
        if not quick:
            save_tree(WEIGHTS / "onestep_mnist.npz", gen)
        if ablations:  # each term alone at the same budget
            f, a = _frechet_and_accuracy(warm, evaluator, test_x, n, ke)
            ablation["warm_start"] = dict(frechet=f, conditional_accuracy=a, train_seconds=warm_seconds)
            t0 = time.time()
            reg = pplvi.fit(pair_regression, warm, optimizer=_optimizer(cfg, cfg["steps"], False),
                            steps=cfg["steps"], key=cfg["seed"], data=data, batch_size=cfg["batch_size"],
                            progress=False).params
            f, a = _frechet_and_accuracy(reg, evaluator, test_x, n, ke)
            ablation["regression_only"] = dict(frechet=f, conditional_accuracy=a,
                                               train_seconds=warm_seconds + time.time() - t0)
            print("regression only", ablation["regression_only"], flush=True)
            t0 = time.time()
            vsd_gen = pplvi.fit(S.vsd(teacher), {"generator": _generator(cfg, kg), "fake": S.ScoreAdapter(
                (1, 28, 28), 10, key=kf, width=cfg["fake_width"], depth=cfg["fake_depth"])},
                optimizer=_optimizer(cfg, cfg["steps"], True), steps=cfg["steps"], key=cfg["seed"],
                data=(pair_labels,), batch_size=cfg["batch_size"], progress=False).params["generator"]
            f, a = _frechet_and_accuracy(vsd_gen, evaluator, test_x, n, ke)
            ablation["vsd_only_from_scratch"] = dict(frechet=f, conditional_accuracy=a,
                                                     train_seconds=time.time() - t0)
            print("vsd only", ablation["vsd_only_from_scratch"], flush=True)
    cond_labels = jnp.arange(n) % 10
    frechet, accuracy = _frechet_and_accuracy(gen, evaluator, test_x, n, ke)
    train_x, _ = P.load_images("mnist", "train")
    floor = evaluator.frechet(np.asarray(train_x[:n]), np.asarray(test_x[:n]))
    null = jnp.full((n,), 10)

    def classes(labels, k, negative=0, scale=0.0):
        imgs = P.to_pixels(S.nasa(gen, k, labels, negative=negative, scale=scale))
        return np.argmax(evaluator.predict(np.asarray(imgs)), -1)

    # unconditional protocol (the contract's numbers): the negative class is the most frequent class of one set of
    # unconditional samples; its frequency is measured on a fresh set, without and with NASA
    k_pick, k_eval = jax.random.split(kn)
    uncond_freq = np.bincount(classes(null, k_pick), minlength=10) / n
    neg = int(np.argmax(uncond_freq))
    before = float(np.mean(classes(null, k_eval) == neg))
    after = float(np.mean(classes(null, k_eval, neg, cfg["nasa_scale"]) == neg))
    sweep = {str(a): float(np.mean(classes(null, k_eval, neg, a) == neg)) for a in (0.5, 1.0, 2.0)}
    # conditional protocol: positive labels are the other classes; the negative is the class they are most often
    # mistaken for (picked on one set, measured on another)
    cond_pred = classes(cond_labels, k_pick)
    confusions = np.bincount(cond_pred[cond_pred != np.asarray(cond_labels)], minlength=10)
    cneg = int(np.argmax(confusions))
    others = jnp.asarray([c for c in range(10) if c != cneg])
    pos = others[jnp.arange(n) % 9]
    cond_before = float(np.mean(classes(pos, k_eval) == cneg))
    cond_after = float(np.mean(classes(pos, k_eval, cneg, cfg["nasa_scale"]) == cneg))
    cond_keep = float(np.mean(classes(pos, k_eval, cneg, cfg["nasa_scale"]) == np.asarray(pos)))
    if not quick:
        write_json(WEIGHTS / "onestep_mnist.json", dict(
            name="onestep_mnist", config=cfg, command="python benchmarks/distill.py", train_seconds=seconds,
            device=device_name(), frechet=frechet,
            objective=f"dmd (VSD, teacher kappa=1, ScoreAdapter fake; + {cfg['regression_weight']} x regression "
                      f"onto {cfg['pairs']} teacher pairs)",
            parameters=int(sum(x.size for x in jax.tree_util.tree_leaves(gen) if hasattr(x, "size")))))
    return dict(onestep_frechet=frechet, nasa_negative_rate_before=before, nasa_negative_rate_after=after), dict(
        train_seconds=seconds, conditional_accuracy=accuracy, frechet_train_vs_test=floor,
        nasa_negative_class=neg, nasa_scale_sweep=sweep, unconditional_class_frequencies=uncond_freq.tolist(),
        nasa_conditional=dict(negative_class=cneg, rate_before=cond_before, rate_after=cond_after,
                              positive_accuracy_after=cond_keep),
        final_objective=final_objective, teacher_frechet=teacher_frechet, teacher_accuracy=teacher_accuracy,
        teacher_sampler=f"dpm_solver_pp, {cfg['pair_steps']} steps, kappa = 1", pair_seconds=pair_seconds,
        frechet_target=2 * teacher_frechet, ablations=ablation)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few steps (a smoke run; does not write the weights)")
    ap.add_argument("--skip-mnist", action="store_true", help="keep the MNIST numbers of the existing results")
    ap.add_argument("--skip-gmm", action="store_true", help="keep the GMM numbers of the existing results")
    ap.add_argument("--eval-only", action="store_true", help="evaluate the committed one-step generator, no training")
    ap.add_argument("--no-ablations", action="store_true", help="skip the regression-only and VSD-only MNIST runs")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    gcfg, mcfg = dict(GMM), dict(MNIST)
    if args.quick:
        gcfg.update(steps=150, pgsb_steps=100, seeds=2, particles=64, pgsb_particles_per_class=32)
        mcfg.update(steps=20, eval_samples=200, pairs=256, regression_steps=20)
    t0 = time.time()
    old = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else {}
    if args.skip_gmm:
        gmm, spread, quality, extras = old["gmm"], old["seed_spreads"], old["seed_quality"], old["gmm_details"]
        gcfg = old["gmm_config"]
    else:
        gmm, spread, quality, extras = gmm_part(gcfg)
    results = {"gmm": gmm, "pgsb_seed_spread": spread["pgsb"], "fixed_scale_seed_spread": spread["fixed_both"]}
    if args.skip_mnist:
        mnist = {k: old.get(k) for k in ("onestep_frechet", "nasa_negative_rate_before", "nasa_negative_rate_after")}
        mextra = old.get("mnist", {})
    else:
        mnist, mextra = mnist_part(mcfg, args.quick, args.eval_only, not args.no_ablations)
    results.update(mnist)
    command = " ".join(["python benchmarks/distill.py", *(sys.argv[1:] if argv is None else argv)])
    results.update(device=device_name(), quick=args.quick, command=command, gmm_config=gcfg, mnist_config=mcfg,
                   gmm_details=extras, seed_quality=quality, seed_spreads=spread, mnist=mextra,
                   seconds=time.time() - t0)
    write_json(args.out, results)
    print(json.dumps({k: results[k] for k in ("gmm", "pgsb_seed_spread", "fixed_scale_seed_spread",
                                              "onestep_frechet", "nasa_negative_rate_before",
                                              "nasa_negative_rate_after")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
