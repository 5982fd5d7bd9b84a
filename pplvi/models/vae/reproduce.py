"""``python -m pplvi.models.vae reproduce``: the VAE family's checks at full size; writes
``benchmarks/results/vae.json``.

1. Probabilistic PCA: a linear-Gaussian VAE trained by the ELBO reaches the exact maximum log-likelihood
   (:func:`~pplvi.models.vae.linear.ppca_check`; full-covariance guide, and the diagonal guide with more steps).
2. MNIST, dynamically binarized, Burda et al.'s one-stochastic-layer architecture (784-200-200-50, tanh): one VAE
   trained by the ELBO and one by IWAE (``K`` particles), same initialization, data order, steps and optimizer;
   both evaluated by the IWAE bound with ``K_eval`` particles (default 1000) on the first ``test_images`` images of
   the test set, binarized once with a fixed seed. Burda et al. (2016) report that the IWAE-trained model has the
   higher test log-likelihood.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import jax
import numpy as np
import optax

import pplvi
from pplvi.models.results import device_name, write_json
from pplvi.models.vae.data import load_images
from pplvi.models.vae.gaussian import GaussianVAE, elbo, iwae, log_likelihood
from pplvi.models.vae.linear import ppca_check

RESULTS = Path("benchmarks/results/vae.json")
PUBLISHED = {
    "source": "Burda, Grosse & Salakhutdinov 2016, Table 1, MNIST, 1 stochastic layer, test log-likelihood "
              "(IWAE k=5000), fixed binarization, 3^8 passes over the data",
    "vae_k1": -86.76,
    "iwae_k5": -85.54,
    "iwae_k50": -84.78,
}


def train_mnist(objective, *, steps: int, batch: int, lr: float, seed: int, train, say=print):
    """Train :meth:`GaussianVAE.mlp` (the defaults) on intensity images ``train`` with Adam, the step decaying
    exponentially from ``lr`` to ``lr / 10``. Returns the :class:`pplvi.train.FitResult`."""
    vae = GaussianVAE.mlp(jax.random.key(seed))
    optimizer = optax.adam(optax.exponential_decay(lr, steps, 0.1))
    result = pplvi.fit(objective, vae, data=train, batch_size=batch, optimizer=optimizer, steps=steps,
                       key=jax.random.key(seed + 1), desc=f"training {objective.name}")
    last = result.history["objective"][-min(500, steps):]
    say(f"  {objective.name}: {steps} steps in {result.seconds:.0f} s, training objective (last {len(last)} steps) "
        f"{np.nanmean(last):.2f}, skipped steps {result.skipped}")
    return result


def run(*, steps: int = 40_000, batch: int = 100, k_train: int = 5, k_eval: int = 1000, test_images: int = 2000,
        lr: float = 1e-3, seed: int = 0, dataset: str = "mnist", ppca_steps: int = 2000,
        ppca_diagonal_steps: int = 10_000, out: Path | None = RESULTS, command: str | None = None,
        say=print) -> dict:
    """Run both checks; returns the results (see the module docstring) and writes them to ``out`` (JSON)."""
    t_start = time.perf_counter()
    say("1. probabilistic PCA (D=10, L=3, N=2000): linear-Gaussian VAE trained by the ELBO vs the exact maximum")
    ppca = ppca_check(steps=ppca_steps)
    say(f"  full-covariance guide, {ppca_steps} steps: ELBO gap {ppca['ppca_elbo_gap']:.2e} nats per datum "
        f"(max log-likelihood {ppca['ppca_max_log_likelihood']:.4f}, trained ELBO {ppca['ppca_trained_elbo']:.4f}; "
        f"pplvi estimate {ppca['ppca_elbo_mc']:.4f} +- {ppca['ppca_elbo_mc_se']:.4f}) in {ppca['ppca_seconds']:.1f} s")
    diag = ppca_check(steps=ppca_diagonal_steps, covariance="diagonal") if ppca_diagonal_steps else None
    if diag:
        say(f"  diagonal guide, {ppca_diagonal_steps} steps: ELBO gap {diag['ppca_elbo_gap']:.2e} nats per datum "
            f"in {diag['ppca_seconds']:.1f} s")

    say(f"2. {dataset} (dynamically binarized), VAE 784-200-200-50: ELBO vs IWAE (K={k_train}), {steps} steps of "
        f"{batch} images each")
    train = load_images(dataset, "train")
    test = load_images(dataset, "test", binarize="sample", seed=seed)[:test_images]
    runs = {}
    for name, objective in (("elbo", elbo(binarize=True)), ("iwae", iwae(k_train, binarize=True))):
        result = train_mnist(objective, steps=steps, batch=batch, lr=lr, seed=seed, train=train, say=say)
        t0 = time.perf_counter()
        ll = log_likelihood(result.params, test, jax.random.key(seed + 2), K=k_eval)
        test_elbo = log_likelihood(result.params, test, jax.random.key(seed + 3), K=1)
        eval_seconds = time.perf_counter() - t0
        say(f"  {name}-trained: test log-likelihood (IWAE K={k_eval}, {len(test)} images) {ll.mean():.2f} "
            f"+- {ll.std(ddof=1) / np.sqrt(len(ll)):.2f}, test ELBO {test_elbo.mean():.2f} ({eval_seconds:.0f} s)")
        runs[name] = {"result": result, "ll": ll, "elbo": test_elbo, "eval_seconds": eval_seconds}
    diff = runs["iwae"]["ll"] - runs["elbo"]["ll"]
    diff_se = float(diff.std(ddof=1) / np.sqrt(len(diff)))
    say(f"  IWAE-trained minus ELBO-trained: {diff.mean():+.2f} +- {diff_se:.2f} nats (paired over test images)")

    def row(name, label):
        r = runs[name]
        return {
            "model": label, "objective": name if name == "elbo" else f"iwae (K={k_train})",
            "test_ll": float(r["ll"].mean()), "test_ll_se": float(r["ll"].std(ddof=1) / np.sqrt(len(r["ll"]))),
            "test_elbo": float(r["elbo"].mean()),
            "train_objective_last_500": float(np.nanmean(r["result"].history["objective"][-500:])),
            "steps": steps, "train_seconds": round(r["result"].seconds, 1), "eval_seconds": round(r["eval_seconds"], 1),
        }

    results = {
        "ppca_elbo_gap": float(ppca["ppca_elbo_gap"]),
        "mnist_test_ll_iwae_trained": float(runs["iwae"]["ll"].mean()),
        "mnist_test_ll_elbo_trained": float(runs["elbo"]["ll"].mean()),
        "mnist_test_ll_difference": float(diff.mean()),
        "mnist_test_ll_difference_se": diff_se,
        "ppca_elbo_gap_diagonal_guide": None if diag is None else float(diag["ppca_elbo_gap"]),
        "ppca_ll_gap": float(ppca["ppca_ll_gap"]),
        "ppca_max_log_likelihood": ppca["ppca_max_log_likelihood"],
        "ppca_trained_elbo": ppca["ppca_trained_elbo"],
        "ppca_elbo_mc": ppca["ppca_elbo_mc"],
        "ppca_elbo_mc_se": ppca["ppca_elbo_mc_se"],
        "ppca_steps": ppca_steps,
        "ppca_diagonal_steps": ppca_diagonal_steps,
        "ppca_seconds": round(ppca["ppca_seconds"] + (diag["ppca_seconds"] if diag else 0.0), 1),
        "dataset": f"{dataset}, dynamically binarized for training; test images binarized once (seed {seed})",
        "architecture": "784-200-200-50 (tanh), Bernoulli decoder, diagonal Gaussian encoder",
        "steps": steps,
        "batch": batch,
        "K": k_train,
        "K_eval": k_eval,
        "test_images": len(test),
        "optimizer": f"adam, step {lr:g} decaying exponentially to {lr / 10:g}",
        "seed": seed,
        "seconds": round(time.perf_counter() - t_start, 1),
        "device": device_name(),
        "jax_version": jax.__version__,
        "pplvi_version": pplvi.__version__,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": command or "pplvi.models.vae.reproduce.run(...)",
        "published": PUBLISHED,
        "rows": [row("elbo", "VAE"), row("iwae", f"IWAE (K={k_train})")],
    }
    if out is not None:
        out = write_json(out, results)
        say(f"wrote {out} ({results['seconds']:.0f} s in all)")
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pplvi.models.vae", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("reproduce", help="run the PPCA and MNIST checks and write benchmarks/results/vae.json")
    p.add_argument("--steps", type=int, default=40_000, help="training steps per MNIST model (default 40000)")
    p.add_argument("--batch", type=int, default=100, help="images per step (default 100)")
    p.add_argument("--k-train", type=int, default=5, help="IWAE particles for training (default 5)")
    p.add_argument("--k-eval", type=int, default=1000, help="IWAE particles for the test log-likelihood (1000)")
    p.add_argument("--test-images", type=int, default=2000, help="test images evaluated (default 2000)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam step size at the start (default 1e-3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dataset", choices=("mnist", "fashion-mnist"), default="mnist")
    p.add_argument("--ppca-steps", type=int, default=2000)
    p.add_argument("--ppca-diagonal-steps", type=int, default=10_000, help="0 skips the diagonal-guide run")
    p.add_argument("--out", default=str(RESULTS), help=f"results file (default {RESULTS})")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    run(steps=args.steps, batch=args.batch, k_train=args.k_train, k_eval=args.k_eval, test_images=args.test_images,
        lr=args.lr, seed=args.seed, dataset=args.dataset, ppca_steps=args.ppca_steps,
        ppca_diagonal_steps=args.ppca_diagonal_steps, out=Path(args.out),
        command=" ".join(["python -m pplvi.models.vae", *argv]))
    return 0
