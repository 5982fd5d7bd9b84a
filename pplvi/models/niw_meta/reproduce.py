"""``python -m pplvi.models.niw_meta reproduce``: the NIW meta-learner's checks; one run writes its own file
(``--out``, default ``out/niw_meta/reproduce.json``), and ``merge`` combines runs into
``benchmarks/results/niw_meta.json``.

1. Hierarchical linear regression (d = 3, full-covariance NIW): the one-time local iterate (3 inner steps, exact
   Hessian) against the exact Gaussian posterior on every episode (``linreg_max_abs_err``, float64), then the
   global posterior trained by :func:`pplvi.fit` on 400 episodes: its mean of :math:`\\mu` and of
   :math:`\\Sigma` against the truth.
2. Omniglot 5-way 1-shot and 5-shot: meta-training on ``background_small1`` (136 characters x 4 rotations),
   testing on the held-out alphabets of ``background_small2`` (Japanese katakana, Sanskrit, Tagalog: 106 characters
   never seen in training). NIW (ProtoNet likelihood, theta = embedding weights, per-image empirical-Fisher
   curvature), ProtoNet and second-order MAML share the conv net (``blocks`` x ``channels``), the number of steps,
   the episodes per step, the optimizer (Adam) and the training episodes. On the same ``test_episodes`` test
   episodes (``test_query`` queries per class): accuracy, ECE (15 bins) and query NLL, NIW by its posterior
   predictive (``samples`` draws from :math:`q_i`). Standard errors: over test episodes (accuracy, NLL) and by a
   bootstrap over test episodes (ECE); the NIW - ProtoNet differences are paired (same episodes, same resamples).
   The NIW's log-scale parameters get their own Adam step size (``--precision-lr``, :func:`niw_optimizer`);
   ``--predictive-samples K`` trains the K-draw predictive (1: the paper's ELBO). For the diagnosis of the
   predictive, ``niw_linearized_*``, ``niw_plugin_*`` and ``niw_one_draw_*`` score the linearized predictive, the
   prediction of the mean :math:`m_i` alone and of a single draw :math:`\\theta \\sim q_i` alone on the same
   episodes; ``--save-params DIR`` keeps the trained parameters.

The default budget (150 steps x 4 episodes, 4 x 16 conv) is sized for 2 shared CPU cores (17-28 minutes there, by load);
``--steps``, ``--episodes-per-step``, ``--channels``, ``--test-episodes`` scale it up on an accelerator.
``--quick`` is a smoke run that writes nothing unless ``--out`` is given; ``--shots 5`` runs one setting only.
``python -m pplvi.models.niw_meta merge --channels C --predictive-samples K RUN.json ...`` combines runs made
separately (one per setting and seed, in parallel on one accelerator) into the results file (:func:`merge`): the
contract holds the mean over the runs of the main configuration (channels C, K), with standard errors between runs.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import re
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import pplvi
from pplvi.data import data_dir, load_omniglot
from pplvi.models.niw_meta import fewshot as F
from pplvi.models.niw_meta.local import (
    exact_linreg_posterior,
    linreg_log_likelihood,
    local_posterior,
    sample_linreg_episodes,
)
from pplvi.models.niw_meta.niw import NIW
from pplvi.models.niw_meta.objective import niw_elbo
from pplvi.models.results import device_name, write_json
from pplvi.train import load_tree, save_tree

RESULTS = Path("benchmarks/results/niw_meta.json")  # merge's output: the committed results of the GPU runs
RUN_OUT = Path("out/niw_meta/reproduce.json")  # one reproduce run (merge input)
HELD_OUT = ("Japanese_(katakana)", "Sanskrit", "Tagalog")


def linreg_check(*, episodes: int = 400, points: int = 8, steps: int = 3000, seed: int = 0, say=print) -> dict:
    """Section 1 of the module docstring."""
    mu = np.array([1.0, -0.5, 0.3])
    sigma = np.array([[0.5, 0.2, 0.0], [0.2, 0.4, -0.1], [0.0, -0.1, 0.3]])
    noise = 0.3
    x, y, _ = sample_linreg_episodes(seed, episodes, points, mu, sigma, noise)
    ll = linreg_log_likelihood(noise)
    with jax.enable_x64(True):
        q0 = NIW.create(np.zeros(3), 1.0, np.eye(3) * 2.0, 6.0)
        xs, ys = jnp.asarray(x), jnp.asarray(y)
        local = jax.vmap(lambda a, b: local_posterior(q0, ll, (a, b), steps=3, lr=0.05))(xs, ys)
        exact = jax.vmap(lambda a, b: exact_linreg_posterior(q0, a, b, noise))(xs, ys)
        err = max(float(jnp.max(jnp.abs(local[0] - exact[0]))), float(jnp.max(jnp.abs(local[1] - exact[1]))))
    say(f"  local posterior vs exact, {episodes} episodes: max abs error {err:.2e}")
    prior = NIW.create(np.zeros(3), 0.01, np.eye(3) * 0.5, 5.0)
    q = NIW.create(np.zeros(3), 1.0, np.eye(3) * 2.0, 6.0)
    objective = niw_elbo(ll, prior, episodes)
    data = {"x": np.asarray(x, np.float32), "y": np.asarray(y, np.float32)}  # one argument: the support
    result = pplvi.fit(objective, q, data=data, batch_size=50, optimizer=optax.adam(3e-2), steps=steps, key=seed,
                       progress=False)
    qt = result.params
    mean_err = float(jnp.max(jnp.abs(qt.mean - mu)))
    cov_err = float(jnp.max(jnp.abs(qt.mean_covariance() - sigma)))
    say(f"  global posterior after {steps} steps: |E[mu] - mu| max {mean_err:.3f}, |E[Sigma] - Sigma| max "
        f"{cov_err:.3f} (E[Sigma] = {np.round(np.asarray(qt.mean_covariance()), 3).tolist()})")
    return {"linreg_max_abs_err": err, "linreg_global_mean_err": mean_err, "linreg_global_cov_err": cov_err,
            "linreg_episodes": episodes, "linreg_steps": steps}


def omniglot_splits(size: int = 28):
    """(train images, labels) from small1 and (test images, labels) from the held-out alphabets of small2."""
    x1, y1 = load_omniglot("small1", size=size)
    x2, y2 = load_omniglot("small2", size=size)
    meta = np.load(data_dir() / "omniglot" / "omniglot_background_small2.npz")
    names = [str(n) for n in meta["alphabet_names"]]
    keep = np.isin(np.asarray(meta["alphabet"]), [names.index(n) for n in HELD_OUT])
    return (x1, y1), (x2[keep], y2[keep])


def episode_bootstrap(probs, labels, episodes: int, *, draws: int = 1000, seed: int = 0) -> np.ndarray:
    """ECE of ``draws`` bootstrap resamples of whole test episodes (the predictions of one episode share its
    support set, so episodes, not predictions, are the independent units). ``probs`` (episodes * n, C)."""
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels)
    n = probs.shape[0] // episodes
    conf = probs.max(1).reshape(episodes, n)
    correct = (probs.argmax(1) == labels).astype(np.float64).reshape(episodes, n)
    which = np.minimum((conf * 15).astype(int), 14)
    # per-episode sums per bin: count, confidence, correct -> an ECE of any multiset of episodes by adding rows
    counts = np.stack([np.bincount(w, minlength=15) for w in which])
    confs = np.stack([np.bincount(w, weights=c, minlength=15) for w, c in zip(which, conf)])
    hits = np.stack([np.bincount(w, weights=c, minlength=15) for w, c in zip(which, correct)])
    rng = np.random.default_rng(seed)
    out = np.empty(draws)
    for b in range(draws):
        pick = np.bincount(rng.integers(0, episodes, episodes), minlength=episodes).astype(np.float64)
        cnt, cf, ht = pick @ counts, pick @ confs, pick @ hits
        out[b] = np.sum(np.abs(ht - cf)) / np.sum(cnt)
    return out


def niw_optimizer(lr: float, precision_lr: float):
    r"""Adam with step size ``lr`` for the NIW's mean and ``precision_lr`` for its log-scale parameters
    (:math:`\log\lambda`, :math:`\log v`, the dof parameter). Adam moves a parameter by at most about its step size
    per step. With ``lr`` = 3e-3 for all parameters (the first runs), 150 steps bound these log-scale parameters to
    a change of 0.45, and :math:`\log\lambda` and the dof parameter moved 92% and 94% of that bound: the ELBO was
    not converged in them. With ``precision_lr`` = 0.1 they stop well inside the bound (:math:`\lambda` about 64,
    :math:`\nu` about 8 at 5 shots)."""
    labels = lambda q: NIW(mean="mean", log_kappa="precision", scale_param="precision", dof_param="precision",
                           diagonal=q.diagonal)
    return optax.multi_transform({"mean": optax.adam(lr), "precision": optax.adam(precision_lr)}, labels)


METHOD_NAMES = ("niw", "protonet", "maml")


def omniglot_test_episodes(shot: int, episodes: int, *, query: int = 15, seed: int = 0, rotations: bool = False,
                           splits=None):
    """The test episodes of a run with ``seed``: 5-way ``shot``-shot episodes of the held-out alphabets, ``query``
    queries per class. ``rotations=True``: the held-out characters and their 90/180/270-degree rotations as new
    classes (424 classes), the test protocol of Vinyals et al. (2016) and Snell et al. (2017), whose meta-training
    classes carry the same rotations as ours. ``splits``: :func:`omniglot_splits`, if already loaded."""
    _, (xte, yte) = splits or omniglot_splits()
    sampler = F.EpisodeSampler(xte, yte, way=5, shot=shot, query=query, rotations=rotations)
    return sampler.sample(np.random.default_rng(seed + (2 if rotations else 1)), episodes)


def omniglot_models(*, channels: int, blocks: int, seed: int = 0) -> tuple[dict, NIW, object]:
    """The initial parameters of the three methods ({"niw", "protonet", "maml"}), the NIW prior and the NIW's
    ``unravel``. The initial parameters are also the templates :func:`pplvi.train.load_tree` reads saved ones
    into."""
    key = jax.random.key(seed)
    q, prior, unravel = F.init_niw(key, way=None, channels=channels, blocks=blocks)
    return {"niw": q, "protonet": F.init_convnet(key, way=None, channels=channels, blocks=blocks),
            "maml": F.init_convnet(key, channels=channels, blocks=blocks)}, prior, unravel


def train_omniglot(shot: int, *, steps: int, episodes_per_step: int, channels: int, blocks: int, query: int = 3,
                   lr: float = 3e-3, precision_lr: float = 0.1, curvature: str = "fisher", inner_steps: int = 1,
                   inner_lr: float = 0.4, predictive_samples: int = 1, seed: int = 0, methods=METHOD_NAMES,
                   splits=None) -> tuple[dict, object, dict]:
    """Trains ``methods`` (of NIW with ProtoNet's likelihood, ProtoNet, second-order MAML) with the same budget and
    training episodes (meta-training classes with rotations). Returns (trained parameters by method, the NIW's
    ``unravel``, training seconds by method). ``splits``: :func:`omniglot_splits`, if already loaded."""
    (xtr, ytr), _ = splits or omniglot_splits()
    train = F.EpisodeSampler(xtr, ytr, way=5, shot=shot, query=query, rotations=True)
    rng = np.random.default_rng(seed)
    batches = [train.sample(rng, episodes_per_step) for _ in range(steps)]
    init, prior, unravel = omniglot_models(channels=channels, blocks=blocks, seed=seed)
    objectives = {
        "niw": (F.niw_protonet_elbo(unravel, prior, steps * episodes_per_step, steps=inner_steps, lr=inner_lr,
                                    curvature=curvature, predictive_samples=predictive_samples),
                niw_optimizer(lr, precision_lr)),
        "protonet": (F.protonet_objective(5), optax.adam(lr)),
        "maml": (F.maml_objective(inner_steps, inner_lr), optax.adam(lr)),
    }
    params, timing = {}, {}
    for name in methods:
        objective, optimizer = objectives[name]
        t = time.perf_counter()
        r = pplvi.fit(objective, init[name], data=batches, optimizer=optimizer, steps=steps, key=seed + 7,
                      progress=False)
        params[name] = jax.block_until_ready(r.params)
        timing[name] = time.perf_counter() - t
    return params, unravel, timing


@functools.partial(jax.jit, static_argnames=("unravel", "half", "curvature", "inner_steps", "inner_lr"))
def niw_prediction_rules(key, q: NIW, sx, sy, qx, *, unravel, half: int, curvature: str, inner_steps: int,
                         inner_lr: float):
    """:func:`~pplvi.models.niw_meta.niw_predict`'s posterior predictive (ProtoNet head), as two halves of its
    ``2 * half`` draws; and, for the diagnosis, from the same :math:`q_i`: the prediction of the mean :math:`m_i`
    alone (plug-in), of one draw :math:`\\theta \\sim q_i` alone, and the linearized (GLM) predictive. The
    parameters are arguments, not constants of the compiled program: one compilation serves every model of the
    same shape."""
    ll, curv = F.protonet_log_likelihood(unravel, 5), F.protonet_curvature(unravel, 5, curvature)
    k_noise, k_draw = jax.random.split(key)
    m, v = local_posterior(q, ll, (sx, sy, sx, sy), steps=inner_steps, lr=inner_lr, curvature=curv,
                           curvature_noise=F.curvature_uniforms(curv, sx.shape[0], k_noise))
    logits = lambda th: F.protonet_logits(unravel(th), sx, sy, qx, 5)
    pred = lambda th: jax.nn.softmax(logits(th))
    draws = F.map_draws(lambda e: pred(m + jnp.sqrt(v) * e), jax.random.normal(k_draw, (2 * half,) + m.shape))
    linearized = F.posterior_predictive(k_draw, logits, m, v, 2 * half, "linearized")
    return draws[:half].mean(0), draws[half:].mean(0), pred(m), draws[0], linearized


_protonet_predict = jax.jit(F.protonet_predict, static_argnames="way")
_maml_predict = jax.jit(F.maml_predict, static_argnames=("steps", "lr"))


def score_omniglot(params: dict, unravel, tests, *, samples: int = 32, curvature: str = "fisher",
                   inner_steps: int = 1, inner_lr: float = 0.4, seed: int = 0, timing: dict | None = None,
                   say=print) -> dict:
    """Scores the trained ``params`` (by method) on the test episodes ``tests`` = (sx, sy, qx, qy): accuracy, ECE
    (15 bins) and mean query NLL per method, with standard errors over episodes (ECE: bootstrap over episodes), the
    NIW's other prediction rules from the same :math:`q_i` (``niw_linearized``, ``niw_plugin``, ``niw_one_draw``)
    and the paired differences NIW - ProtoNet (same episodes, same bootstrap resamples)."""
    timing = timing or {}
    out = {}
    predictors = {}
    mc_err, other = [], {"niw_plugin": [], "niw_one_draw": [], "niw_linearized": []}
    if "niw" in params:
        half = max(samples // 2, 1)  # two independent halves: their difference estimates the Monte Carlo error
        rules = {"unravel": unravel, "half": half, "curvature": curvature, "inner_steps": inner_steps,
                 "inner_lr": inner_lr}

        def niw(k, a, b, c):
            p1, p2, plug, one, lin = (np.asarray(x) for x in niw_prediction_rules(k, params["niw"], a, b, c, **rules))
            p = 0.5 * (p1 + p2)
            top = p.argmax(1)
            mc_err.append(0.5 * np.abs(p1 - p2)[np.arange(len(top)), top])
            other["niw_plugin"].append(plug)
            other["niw_one_draw"].append(one)
            other["niw_linearized"].append(lin)
            return p

        predictors["niw"] = niw
    if "protonet" in params:
        predictors["protonet"] = lambda k, a, b, c: _protonet_predict(params["protonet"], a, b, c, 5)
    if "niw" in params:  # diagnostics of the NIW predictive (filled by "niw" above)
        for name in other:
            predictors[name] = lambda k, a, b, c, name=name: other[name].pop(0)
    if "maml" in params:  # last: a run stopped while scoring it has printed every NIW and ProtoNet score
        predictors["maml"] = lambda k, a, b, c: _maml_predict(params["maml"], a, b, c, steps=inner_steps,
                                                               lr=inner_lr)
    sx, sy, qx, qy = tests
    episodes = len(sx)
    labels = np.asarray(qy).reshape(-1)
    per_ep, boot = {}, {}
    for name, predict in predictors.items():
        t = time.perf_counter()
        probs = np.concatenate([np.asarray(predict(jax.random.key(i), sx[i], sy[i], qx[i]), np.float64)
                                for i in range(episodes)])
        probs = probs / probs.sum(1, keepdims=True)
        hit = (probs.argmax(1) == labels).reshape(episodes, -1).mean(1)
        nll = -np.log(np.maximum(probs[np.arange(len(labels)), labels], 1e-12)).reshape(episodes, -1).mean(1)
        per_ep[name] = {"acc": hit, "nll": nll}
        boot[name] = episode_bootstrap(probs, labels, episodes, seed=seed)
        se = lambda v: float(v.std(ddof=1) / np.sqrt(episodes))
        out[f"{name}_acc"] = float(hit.mean())
        out[f"{name}_acc_se"] = se(hit)
        out[f"{name}_ece"] = F.expected_calibration_error(probs, labels)
        out[f"{name}_ece_se"] = float(boot[name].std(ddof=1))
        out[f"{name}_nll"] = float(nll.mean())
        out[f"{name}_nll_se"] = se(nll)
        out[f"{name}_mean_confidence"] = float(probs.max(1).mean())  # > acc: overconfident on average
        trained = timing.get(name, timing.get("niw"))
        if trained is not None:
            out[f"{name}_train_seconds"] = trained
        out[f"{name}_test_seconds"] = time.perf_counter() - t
        say(f"  {name:14s} acc {out[f'{name}_acc']:.3f} +- {out[f'{name}_acc_se']:.3f}  ECE {out[f'{name}_ece']:.3f}"
            f" +- {out[f'{name}_ece_se']:.3f}  NLL {out[f'{name}_nll']:.3f} +- {out[f'{name}_nll_se']:.3f}  "
            f"confidence {out[f'{name}_mean_confidence']:.3f}")
    if "niw" in per_ep and "protonet" in per_ep:
        for metric in ("acc", "nll"):
            d = per_ep["niw"][metric] - per_ep["protonet"][metric]
            out[f"niw_minus_protonet_{metric}"] = float(d.mean())
            out[f"niw_minus_protonet_{metric}_se"] = float(d.std(ddof=1) / np.sqrt(episodes))
        out["niw_minus_protonet_ece"] = out["niw_ece"] - out["protonet_ece"]
        out["niw_minus_protonet_ece_se"] = float((boot["niw"] - boot["protonet"]).std(ddof=1))
        for metric in ("acc", "ece", "nll"):
            say(f"  NIW - ProtoNet {metric}: {out[f'niw_minus_protonet_{metric}']:+.4f} +- "
                f"{out[f'niw_minus_protonet_{metric}_se']:.4f}")
    if "niw" in params:
        out["niw_predictive_samples"] = 2 * half
        out["niw_predictive_mc_se_top_prob"] = float(np.concatenate(mc_err).mean())
    return out


def omniglot_check(shot: int, *, steps: int, episodes_per_step: int, test_episodes: int, channels: int, blocks: int,
                   query: int = 3, test_query: int = 15, lr: float = 3e-3, precision_lr: float = 0.1,
                   curvature: str = "fisher", inner_steps: int = 1, inner_lr: float = 0.4, samples: int = 32,
                   predictive_samples: int = 1, seed: int = 0, methods=METHOD_NAMES, test_rotations: bool = False,
                   save_dir: Path | None = None, say=print) -> dict:
    """Trains NIW (ProtoNet likelihood), ProtoNet and MAML with the same budget (:func:`train_omniglot`) and scores
    them on the same ``test_episodes`` held-out episodes (:func:`score_omniglot`); ``test_rotations`` also scores
    them on the rotated test protocol (:func:`omniglot_test_episodes`), under ``"rotated_test"``. ``save_dir``
    keeps the trained parameters (``5w<shot>s_<method>.npz``) and the settings that scoring them needs
    (``5w<shot>s_config.json``), for :func:`evaluate`."""
    splits = omniglot_splits()
    params, unravel, timing = train_omniglot(
        shot, steps=steps, episodes_per_step=episodes_per_step, channels=channels, blocks=blocks, query=query, lr=lr,
        precision_lr=precision_lr, curvature=curvature, inner_steps=inner_steps, inner_lr=inner_lr,
        predictive_samples=predictive_samples, seed=seed, methods=methods, splits=splits)
    out = {}
    if "niw" in params:
        q = params["niw"]
        out["niw_dof"], out["niw_kappa"] = float(q.dof), float(q.kappa)
        out["niw_prior_precision_median"] = float(jnp.median(q.mean_precision()))
    if save_dir is not None:  # the trained parameters, to score other prediction rules or test sets without retraining
        for name, p in params.items():
            say(f"  saved {save_tree(Path(save_dir) / f'5w{shot}s_{name}.npz', p)}")
        config = {"shot": shot, "channels": channels, "blocks": blocks, "curvature": curvature,
                  "inner_steps": inner_steps, "inner_lr": inner_lr, "seed": seed, "steps": steps,
                  "episodes_per_step": episodes_per_step, "predictive_samples": predictive_samples,
                  "test_episodes": test_episodes, "test_query": test_query, "samples": samples}
        say(f"  saved {write_json(Path(save_dir) / f'5w{shot}s_config.json', config)}")
    scoring = {"samples": samples, "curvature": curvature, "inner_steps": inner_steps, "inner_lr": inner_lr,
               "seed": seed, "say": say}
    tests = omniglot_test_episodes(shot, test_episodes, query=test_query, seed=seed, splits=splits)
    out.update(score_omniglot(params, unravel, tests, timing=timing, **scoring))
    if test_rotations:
        say("  rotated test protocol (held-out characters and their rotations):")
        rotated = omniglot_test_episodes(shot, test_episodes, query=test_query, seed=seed, rotations=True,
                                         splits=splits)
        out["rotated_test"] = score_omniglot(params, unravel, rotated, **scoring)
    return out


def evaluate(save_dir: Path, shot: int, *, test_episodes: int | None = None, test_query: int | None = None,
             samples: int | None = None, rotations: bool = False, say=print) -> dict:
    """Scores parameters saved by a ``reproduce --save-params DIR`` run (every method whose file is in DIR) on that
    run's test episodes, or with ``rotations`` on the rotated test protocol, without retraining. ``test_episodes``,
    ``test_query`` and ``samples`` default to the run's (other values draw other episodes, not a subset)."""
    save_dir = Path(save_dir)
    config_path = save_dir / f"5w{shot}s_config.json"
    if not config_path.exists():
        raise pplvi.DataError(f"{config_path} not found: evaluate needs the directory a `reproduce --save-params "
                              f"DIR --shots {shot}` run wrote")
    config = json.loads(config_path.read_text())
    test_episodes = config["test_episodes"] if test_episodes is None else test_episodes
    test_query = config["test_query"] if test_query is None else test_query
    samples = config["samples"] if samples is None else samples
    like, _, unravel = omniglot_models(channels=config["channels"], blocks=config["blocks"], seed=config["seed"])
    params = {name: load_tree(save_dir / f"5w{shot}s_{name}.npz", like[name]) for name in METHOD_NAMES
              if (save_dir / f"5w{shot}s_{name}.npz").exists()}
    tests = omniglot_test_episodes(shot, test_episodes, query=test_query, seed=config["seed"], rotations=rotations)
    return score_omniglot(params, unravel, tests, samples=samples, curvature=config["curvature"],
                          inner_steps=config["inner_steps"], inner_lr=config["inner_lr"], seed=config["seed"],
                          say=say)


def run(*, steps: int = 150, episodes_per_step: int = 4, test_episodes: int = 200, test_query: int = 15,
        samples: int = 32, channels: int = 16, blocks: int = 4, linreg_steps: int = 3000, seed: int = 0,
        shots=(1, 5), precision_lr: float = 0.1, curvature: str = "fisher", predictive_samples: int = 1,
        methods=METHOD_NAMES, test_rotations: bool = False, save_dir: Path | None = None, out: Path | None = RUN_OUT,
        command=None, say=print) -> dict:
    t0 = time.perf_counter()
    say("1. hierarchical linear regression (quadratic approximation exact)")
    res = linreg_check(steps=linreg_steps, seed=seed, say=say)
    budget = {"steps": steps, "episodes_per_step": episodes_per_step, "test_episodes": test_episodes,
              "test_query_per_class": test_query, "niw_predictive_samples": samples, "channels": channels,
              "blocks": blocks, "query_per_class": 3, "inner_steps": 1, "inner_lr": 0.4, "optimizer": "adam 3e-3",
              "niw_precision_lr": precision_lr, "niw_training_predictive_samples": predictive_samples, "seed": seed,
              "niw_curvature": {"fisher": "per-image empirical Fisher (protonet_fisher)",
                                "expected_fisher": "Monte Carlo expected Fisher (protonet_expected_fisher, 8 label "
                                                   "draws)"}[curvature],
              "methods": list(methods),
              "train": "omniglot background_small1 + rotations", "test": "background_small2 " + ", ".join(HELD_OUT),
              **({"rotated_test": "the same alphabets, characters + rotations as new classes"}
                 if test_rotations else {}),
              "standard_errors": "acc, nll: over test episodes; ece: bootstrap over test episodes (1000 draws); "
                                 "niw_minus_protonet_*: paired (same episodes / same resamples)"}
    for shot in shots:
        say(f"2. Omniglot 5-way {shot}-shot: {steps} steps x {episodes_per_step} episodes, conv {blocks}x{channels}")
        res[f"omniglot_5w{shot}s"] = omniglot_check(shot, steps=steps, episodes_per_step=episodes_per_step,
                                                    test_episodes=test_episodes, test_query=test_query,
                                                    samples=samples, channels=channels, blocks=blocks, seed=seed,
                                                    precision_lr=precision_lr, curvature=curvature,
                                                    predictive_samples=predictive_samples, methods=methods,
                                                    test_rotations=test_rotations, save_dir=save_dir, say=say)
    res.update({"rows": summary_rows(res), "omniglot_budget": budget, "jax": jax.__version__, "device": device_name(),
                "date": datetime.date.today().isoformat(), "seconds": time.perf_counter() - t0,
                "command": command or "python -m pplvi.models.niw_meta reproduce"})
    if out is not None:
        say(f"wrote {write_json(out, res)}")
    return res


METHODS = {"niw": "NIW, posterior predictive", "niw_linearized": "NIW, linearized predictive",
           "niw_plugin": "NIW, mean m_i", "niw_one_draw": "NIW, one draw", "protonet": "ProtoNet",
           "maml": "MAML (2nd order)"}


def method_rows(scores: dict, **fields) -> list[dict]:
    """One table row per method scored in ``scores`` (a setting's results, or their mean over runs), on both test
    protocols where scored: ``fields``, then accuracy, ECE and NLL with standard errors, the mean confidence and,
    for means over runs, how many runs scored the method."""
    rows = []
    for protocol, r in (("held-out alphabets", scores), ("held-out alphabets + rotations",
                                                         scores.get("rotated_test", {}))):
        for key, name in METHODS.items():
            if f"{key}_acc" in r:
                rows.append({**fields, "test": protocol, "method": name,
                             **({"runs": r[f"{key}_runs"]} if f"{key}_runs" in r else {}),
                             **{f"{m}{se}": r.get(f"{key}_{m}{se}") for m in ("acc", "ece", "nll")
                                for se in ("", "_se")},
                             "mean_confidence": r[f"{key}_mean_confidence"]})
    return rows


def summary_rows(res: dict) -> list[dict]:
    """The results table of one run: one row per Omniglot setting, protocol and method."""
    return [row for setting in sorted(k for k in res if k.startswith("omniglot_5w"))
            for row in method_rows(res[setting], setting=setting)]


def run_identity(res: dict) -> tuple[int, int, int]:
    """(conv channels, training predictive samples K, seed) of a reproduce run's JSON (K and the seed read from its
    command where the budget does not record them)."""
    budget, command = res["omniglot_budget"], res.get("command", "")
    k = budget.get("niw_training_predictive_samples")
    seed = budget.get("seed")
    if k is None:
        found = re.search(r"--predictive-samples (\d+)", command)
        k = int(found.group(1)) if found else 1
    if seed is None:
        found = re.search(r"--seed (\d+)", command)
        seed = int(found.group(1)) if found else 0
    return int(budget["channels"]), int(k), int(seed)


SCORES = ("acc", "ece", "nll", "mean_confidence")
NIW_SCALARS = ("niw_dof", "niw_kappa", "niw_prior_precision_median", "niw_predictive_mc_se_top_prob")


def run_mean(results: list[dict]) -> dict:
    r"""Scores averaged over independent training runs of one configuration (a run: training with one seed on one
    accelerator, scored on that seed's test episodes). For every method and score: the mean over the runs that
    scored it, ``_se`` the standard error *between runs* :math:`s/\sqrt n` (training noise and test-episode noise
    together) where :math:`n \ge 2`, else the run's own standard error, and ``<method>_runs`` = :math:`n`.
    ``niw_minus_protonet_<score>`` are the per-run differences NIW (posterior predictive) - ProtoNet, averaged the
    same way (``..._by_run`` lists them); ``niw_ece_below_protonet`` counts the runs with the lower NIW ECE.
    ``rotated_test`` likewise, over the runs that scored that protocol (its ``runs`` says how many)."""
    out: dict = {"runs": len(results)}

    def average(key, has_se=False):
        values = [r[key] for r in results if key in r]
        if not values:
            return
        out[key] = float(np.mean(values))
        if len(values) >= 2:
            out[key + "_se"] = float(np.std(values, ddof=1) / np.sqrt(len(values)))
        elif has_se:
            out[key + "_se"] = next(r[key + "_se"] for r in results if key in r)
        return len(values)

    for method in METHODS:
        counts = [average(f"{method}_{s}", has_se=s != "mean_confidence") for s in SCORES]
        if counts[0]:
            out[f"{method}_runs"] = counts[0]
    paired = [r for r in results if "niw_acc" in r and "protonet_acc" in r]
    for s in ("acc", "ece", "nll") if paired else ():
        diffs = [r[f"niw_{s}"] - r[f"protonet_{s}"] for r in paired]
        out[f"niw_minus_protonet_{s}"] = float(np.mean(diffs))
        out[f"niw_minus_protonet_{s}_se"] = (float(np.std(diffs, ddof=1) / np.sqrt(len(diffs))) if len(diffs) >= 2
                                             else paired[0][f"niw_minus_protonet_{s}_se"])
        out[f"niw_minus_protonet_{s}_by_run"] = [float(d) for d in diffs]
    if paired:
        out["niw_ece_below_protonet"] = sum(r["niw_ece"] < r["protonet_ece"] for r in paired)
    for key in NIW_SCALARS:
        average(key)
    rotated = [r["rotated_test"] for r in results if "rotated_test" in r]
    if rotated:
        out["rotated_test"] = run_mean(rotated)
    return out


def merge(paths, out: Path, *, predictive_samples: int, channels: int, say=print) -> dict:
    """One results file from reproduce runs made separately (one per setting and seed, in parallel on one
    accelerator). The linear-regression check comes from the run with the most regression steps.
    ``omniglot_5w{1,5}s`` (the results contract) is the :func:`run_mean` of every run of the main configuration
    (``channels``, K = ``predictive_samples``); ``configurations`` holds the same for every configuration and
    setting found, ``replicates`` each run's own scores (with its channels, K, seed, file and command) and ``rows``
    the table of ``configurations``."""
    runs = [(Path(p), json.loads(Path(p).read_text())) for p in paths]
    if not runs:
        raise pplvi.PPLVIError("merge needs at least one reproduce JSON")
    res = {k: v for k, v in max(runs, key=lambda r: r[1].get("linreg_steps", 0))[1].items() if k.startswith("linreg")}
    groups: dict = {}
    replicates = []
    for path, r in runs:
        c, k, s = run_identity(r)
        for setting in (key for key in r if key.startswith("omniglot_5w")):
            entry = {"setting": setting, "channels": c, "training_predictive_samples": k, "seed": s,
                     "file": path.name, "command": r["command"], **({"partial": r["partial"]} if "partial" in r
                                                                     else {}), **r[setting]}
            replicates.append(entry)
            groups.setdefault((setting, c, k), []).append((path, r, entry))
    configurations = []
    for (setting, c, k), members in sorted(groups.items()):
        summary = {"setting": setting, "channels": c, "training_predictive_samples": k,
                   "seeds": [e["seed"] for _, _, e in members], "files": [p.name for p, _, _ in members],
                   **run_mean([r[setting] for _, r, _ in members])}
        configurations.append(summary)
        if (c, k) == (channels, predictive_samples):
            res[setting] = summary
            budget = next((r for _, r, _ in members if "partial" not in r), members[0][1])["omniglot_budget"]
            res["omniglot_budget"] = {**budget, "seed": "see seeds"}
    missing = [s for s in ("omniglot_5w1s", "omniglot_5w5s") if s not in res]
    if missing:
        raise pplvi.PPLVIError(f"no run with channels={channels}, predictive_samples={predictive_samples} for "
                               f"{missing}")
    res.update({"configurations": configurations, "rows": configuration_rows(configurations),
                "replicates": replicates, "jax": runs[0][1]["jax"],
                "device": ", ".join(sorted({r["device"] for _, r in runs})), "date": max(r["date"] for _, r in runs),
                "command": f"python -m pplvi.models.niw_meta merge --channels {channels} --predictive-samples "
                           f"{predictive_samples} " + " ".join(str(p) for p in paths)})
    say(f"wrote {write_json(out, res)}")
    return res


def configuration_rows(configurations: list[dict]) -> list[dict]:
    """The results table of a merge: one row per configuration, setting, protocol and method (means over runs,
    standard errors between runs)."""
    return [row for conf in configurations
            for row in method_rows(conf, setting=conf["setting"], net=f"conv 4x{conf['channels']}",
                                   K=conf["training_predictive_samples"])]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pplvi.models.niw_meta")
    p.add_argument("command", choices=["reproduce", "merge", "evaluate"],
                   help="reproduce: run the checks; merge: one results file from separate reproduce runs; evaluate: "
                        "score the parameters a reproduce --save-params run kept (--params DIR)")
    p.add_argument("runs", nargs="*", type=Path, help="merge: the reproduce JSONs")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run (20 steps, 10 test episodes, 200 regression steps); writes only with --out")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--episodes-per-step", type=int, default=4)
    p.add_argument("--test-episodes", type=int, default=None, help="default 200; evaluate: the run's")
    p.add_argument("--test-query", type=int, default=None, help="default 15; evaluate: the run's")
    p.add_argument("--samples", type=int, default=None,
                   help="posterior-predictive samples of the NIW model (default 32; evaluate: the run's)")
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--blocks", type=int, default=4)
    p.add_argument("--linreg-steps", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5], help="the Omniglot settings (5-way K-shot)")
    p.add_argument("--precision-lr", type=float, default=0.1,
                   help="Adam step size of the NIW's log-scale parameters (the mean's is 3e-3)")
    p.add_argument("--curvature", choices=["fisher", "expected_fisher"], default="fisher",
                   help="the NIW local iterate's curvature (per-image empirical or Monte Carlo expected Fisher)")
    p.add_argument("--predictive-samples", type=int, default=1,
                   help="K draws per query in NIW training: log of the K-draw predictive (1: the paper's ELBO)")
    p.add_argument("--save-params", type=Path, default=None, metavar="DIR",
                   help="also save the trained parameters: DIR/5w<shot>s_{niw,protonet,maml}.npz (save_tree)")
    p.add_argument("--methods", nargs="+", choices=METHOD_NAMES, default=list(METHOD_NAMES),
                   help="the methods to train and score")
    p.add_argument("--test-rotations", action="store_true",
                   help="also score on the rotated test protocol (held-out characters + rotations as classes); "
                        "evaluate: score on it instead")
    p.add_argument("--params", type=Path, default=None, metavar="DIR", help="evaluate: a --save-params directory")
    p.add_argument("--out", type=Path, default=None,
                   help=f"reproduce: default {RUN_OUT} (none with --quick); merge: default {RESULTS}")
    a = p.parse_intermixed_args(argv)
    if a.command == "reproduce" and a.runs:
        p.error(f"reproduce takes no run files (got {len(a.runs)}); did you mean merge?")
    if a.command == "merge":
        merge(a.runs, a.out or RESULTS, predictive_samples=a.predictive_samples, channels=a.channels)
        return 0
    if a.command == "evaluate":
        if a.params is None:
            p.error("evaluate needs --params DIR (the directory of a reproduce --save-params run)")
        command = "python -m pplvi.models.niw_meta " + " ".join(sys.argv[1:] if argv is None else argv)
        res = {f"omniglot_5w{shot}s": evaluate(a.params, shot, test_episodes=a.test_episodes, test_query=a.test_query,
                                                samples=a.samples, rotations=a.test_rotations)
               for shot in a.shots}
        res.update({"params": str(a.params), "test": "held-out alphabets" + (" + rotations" if a.test_rotations
                                                                             else ""),
                    "jax": jax.__version__, "device": device_name(), "date": datetime.date.today().isoformat(),
                    "command": command})
        if a.out is not None:
            print(f"wrote {write_json(a.out, res)}")
        return 0
    a.test_episodes = 200 if a.test_episodes is None else a.test_episodes
    a.test_query = 15 if a.test_query is None else a.test_query
    a.samples = 32 if a.samples is None else a.samples
    out = a.out if a.out is not None or a.quick else RUN_OUT
    if a.quick:
        a.steps, a.test_episodes, a.linreg_steps = min(a.steps, 20), min(a.test_episodes, 10), min(a.linreg_steps, 200)
    run(steps=a.steps, episodes_per_step=a.episodes_per_step, test_episodes=a.test_episodes, test_query=a.test_query,
        samples=a.samples, channels=a.channels, blocks=a.blocks, linreg_steps=a.linreg_steps, seed=a.seed,
        shots=tuple(a.shots), precision_lr=a.precision_lr, curvature=a.curvature,
        predictive_samples=a.predictive_samples, methods=tuple(a.methods), test_rotations=a.test_rotations,
        save_dir=a.save_params, out=out,
        command="python -m pplvi.models.niw_meta " + " ".join(sys.argv[1:] if argv is None else argv))
    return 0
