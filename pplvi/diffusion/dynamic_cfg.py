r"""Dynamic classifier-free guidance via online feedback (Papalampidi et al. 2025, "Dynamic Classifier-Free Diffusion
Guidance via Online Feedback", arXiv:2509.16131): a per-step, per-sample greedy choice of the guidance scale from a
candidate set, scored by small *latent-space* evaluators of the noisy state.

At step :math:`t` the rule computes the conditional and unconditional predictions once (2 NFE per sample). Guided
predictions are affine in the scale, :math:`\hat\varepsilon(w) = \hat\varepsilon_u + w(\hat\varepsilon_c -
\hat\varepsilon_u)`, so every candidate :math:`w_k` costs no extra network evaluation. Each candidate's one-step
DDIM look-ahead

.. math:: \hat x_0(w) = \frac{x_t - s_t\hat\varepsilon(w)}{a_t},\qquad
          x_{s}(w) = a_{s}\hat x_0(w) + s_{s}\hat\varepsilon(w),\quad s = \max(t - \delta, t_{\min}),

is scored by

.. math:: S_k = \log p_\phi(y \mid x_s(w_k), s) + \lambda\,\mathrm{logit}\,D_\psi(x_s(w_k), s),

an alignment term (a noise-aware classifier) plus a fidelity term (the logit of a real/fake discriminator, i.e. an
estimate of :math:`\log p_{\rm data,s}/p_{\rm model,s}`), and the rule returns :math:`\hat\varepsilon(w_{k^*})`,
:math:`k^* = \arg\max_k S_k` (first maximizer on ties). The chosen scales are kept in the state (one row per call).

Evaluators for the committed MNIST model (:func:`train_evaluators`, :func:`load_evaluators`) are small MLPs on the
flattened :math:`x_t` with time features, trained with :func:`pplvi.fit` on log-likelihood objectives in which the
time and the noise are random choices::

    python -m pplvi.diffusion.dynamic_cfg train

writes ``weights/dcfg_classifier.npz|json`` and ``weights/dcfg_discriminator.npz|json``.
The paper's evaluators act on a latent diffusion model's latents; here the "latent" is the pixel-space state.
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
import numpyro.distributions as nd
import optax

import pplvi
from pplvi import DataError, PPLVIError
from pplvi.diffusion.guidance import denoiser
from pplvi.models.results import device_name, write_json
from pplvi.train import load_tree, save_tree

WEIGHTS = Path(__file__).resolve().parent / "weights"
CONFIG = dict(hidden=256, steps=1500, batch_size=256, lr=2e-3, seed=3, fake_per_scale=150, fake_scales=(0.0, 5.0),
              fake_steps=25, real_images=2000)


def _fence(v):
    return jax.lax.optimization_barrier(v)


# ----------------------------------------------------------------------------------------------------------------
# The rule
# ----------------------------------------------------------------------------------------------------------------


class DynamicCFG:
    r"""Dynamic CFG (see the module docs). ``alignment(x, t, labels) -> (B,)`` is :math:`\log p(y\mid x_t, t)`;
    ``fidelity(x, t) -> (B,)`` the discriminator logit (``None``: alignment only); ``candidates`` the scales;
    ``fidelity_weight`` :math:`\lambda`; ``lookahead`` :math:`\delta` (about one DDIM step, ``1/steps``);
    ``record`` the number of calls whose chosen scales the state keeps (later calls are not recorded);
    ``window = (t_lo, t_hi)``: the rule chooses only at times :math:`t_{lo} \le t \le t_{hi}` and uses
    ``outside_scale`` elsewhere (default ``(0, 1)``: every step; a middle window keeps the greedy scores away from
    the almost pure-noise first steps, where guidance costs diversity, after Kynkäänniemi et al. 2024, "Applying
    Guidance in a Limited Interval Improves Sample and Distribution Quality"). The state is
    ``(call counter, chosen (record, B))``; 2 NFE per step (evaluator calls are not counted)."""

    nfe_per_step = 2

    def __init__(self, source, labels, alignment, fidelity=None, candidates=(0.0, 1.0, 2.0, 3.0, 5.0),
                 fidelity_weight: float = 1.0, lookahead: float = 0.04, record: int = 64, schedule=None,
                 window=(0.0, 1.0), outside_scale: float = 1.0):
        cand = np.asarray(candidates, np.float32).reshape(-1)
        if cand.size == 0 or not np.all(np.isfinite(cand)):
            raise PPLVIError(f"DynamicCFG: candidates must be a non-empty list of finite scales, got {candidates!r}")
        if not callable(alignment):
            raise PPLVIError(f"DynamicCFG: alignment must be a function (x, t, labels) -> (B,) log p(y | x_t), got "
                             f"{type(alignment).__name__}")
        if fidelity is not None and not callable(fidelity):
            raise PPLVIError(f"DynamicCFG: fidelity must be None or a function (x, t) -> (B,) logits, got "
                             f"{type(fidelity).__name__}")
        if not lookahead >= 0:
            raise PPLVIError(f"DynamicCFG: lookahead must be >= 0, got {lookahead}")
        if int(record) < 1:
            raise PPLVIError(f"DynamicCFG: record must be >= 1, got {record}")
        if len(window) != 2 or not 0.0 <= float(window[0]) <= float(window[1]) <= 1.0:
            raise PPLVIError(f"DynamicCFG: window must be (t_lo, t_hi) with 0 <= t_lo <= t_hi <= 1, got {window!r}")
        self.window, self.outside_scale = (float(window[0]), float(window[1])), float(outside_scale)
        self.denoiser, self.labels = denoiser(source, schedule), labels
        self.alignment, self.fidelity, self.fidelity_weight = alignment, fidelity, fidelity_weight
        self.candidates, self.lookahead, self.record = jnp.asarray(cand), float(lookahead), int(record)

    def init(self, x):
        return jnp.int32(0), jnp.zeros((self.record, x.shape[0]), jnp.float32)

    def scores(self, x, t, e_c, e_u):
        """``(K, B)`` scores of the candidates (see the module docs)."""
        sched = self.denoiser.schedule
        a_t, s_t = sched.signal_noise(t)
        s = jnp.maximum(t - self.lookahead, sched.t_min)
        a_s, s_s = sched.signal_noise(s)

        def one(w):
            eps = e_u + w * (e_c - e_u)
            x_s = a_s * (x - s_t * eps) / a_t + s_s * eps
            score = self.alignment(x_s, s, self.labels)
            if self.fidelity is not None:
                score = score + self.fidelity_weight * self.fidelity(x_s, s)
            return score

        return jax.lax.map(one, self.candidates)

    def __call__(self, x, t, state):
        i, chosen = state
        x, t = _fence((x, t))
        e_c, e_u = self.denoiser.both(x, t, self.labels)
        best = jnp.argmax(self.scores(x, t, e_c, e_u), axis=0)
        inside = (t >= self.window[0]) & (t <= self.window[1])
        w = jnp.where(inside, self.candidates[best], self.outside_scale)
        eps = e_u + w.reshape((-1,) + (1,) * (x.ndim - 1)) * (e_c - e_u)
        return _fence(eps), (i + 1, chosen.at[i].set(w, mode="drop")), jnp.int32(2)


def chosen_scales(state, calls: int):
    """The ``(calls, B)`` scales a :class:`DynamicCFG` chose, from its final state."""
    _, chosen = state
    if calls > chosen.shape[0]:
        raise PPLVIError(f"chosen_scales: the state recorded {chosen.shape[0]} calls, asked for {calls}")
    return chosen[:calls]


# ----------------------------------------------------------------------------------------------------------------
# Latent evaluators
# ----------------------------------------------------------------------------------------------------------------


class LatentEvaluator(eqx.Module):
    """``(d + 3) -> hidden -> hidden -> out`` MLP with GELU on a flattened noisy state and the time features
    :math:`(t, \\sin\\pi t, \\cos\\pi t)`; acts on one example."""

    layers: tuple

    def __init__(self, dim: int, out: int, hidden: int = 256, *, key):
        k = jax.random.split(key, 3)
        self.layers = (eqx.nn.Linear(dim + 3, hidden, key=k[0]), eqx.nn.Linear(hidden, hidden, key=k[1]),
                       eqx.nn.Linear(hidden, out, key=k[2]))

    def __call__(self, x, t):
        t = jnp.asarray(t, jnp.float32)
        h = jnp.concatenate([x.reshape(-1), jnp.stack([t, jnp.sin(jnp.pi * t), jnp.cos(jnp.pi * t)])])
        for layer in self.layers[:-1]:
            h = jax.nn.gelu(layer(h))
        return self.layers[-1](h)


def _noised(schedule, x0):
    """Random choices ``t ~ U(t_min, 1)`` and ``eps ~ N(0, I)`` per example; returns ``(x_t, t)``."""
    n = x0.shape[0]
    t = pplvi.sample("t", nd.Uniform(schedule.t_min, 1.0).expand([n]).to_event(1))
    eps = pplvi.sample("eps", nd.Normal(jnp.zeros_like(x0), 1.0).to_event(x0.ndim))
    a, s = schedule.signal_noise(t)
    return a[:, None] * x0 + s[:, None] * eps, t


def noisy_classifier_objective(schedule) -> pplvi.Objective:
    r""":math:`\frac1B\sum_i \log \mathrm{softmax}(f(x_{t_i}, t_i))_{y_i}` with :math:`x_t = a_t x_0 + s_t
    \varepsilon` (maximized); data ``(x0 (B, d), labels (B,))``."""

    @pplvi.objective
    def noisy_label_log_likelihood(net: LatentEvaluator, x0, labels):
        x_t, t = _noised(schedule, x0)
        logp = jax.nn.log_softmax(jax.vmap(net)(x_t, t))
        return jnp.mean(jnp.take_along_axis(logp, labels[:, None].astype(jnp.int32), 1))

    return noisy_label_log_likelihood


def discriminator_objective(schedule) -> pplvi.Objective:
    r"""Bernoulli log-likelihood of the real/fake flag, :math:`\frac1B\sum_i r_i\log\sigma(\ell_i) + (1 - r_i)
    \log\sigma(-\ell_i)` with :math:`\ell_i = D(x_{t_i}, t_i)` (maximized); data ``(x0 (B, d), real (B,))``. With
    balanced classes its optimum logit is :math:`\log p_{{\rm data},t}(x_t)/p_{{\rm model},t}(x_t)`."""

    @pplvi.objective
    def real_fake_log_likelihood(net: LatentEvaluator, x0, real):
        x_t, t = _noised(schedule, x0)
        logit = jax.vmap(net)(x_t, t)[:, 0]
        return jnp.mean(real * jax.nn.log_sigmoid(logit) + (1.0 - real) * jax.nn.log_sigmoid(-logit))

    return real_fake_log_likelihood


def _paths(name):
    return WEIGHTS / f"dcfg_{name}.npz", WEIGHTS / f"dcfg_{name}.json"


def _fit(objective, net, data, c, desc):
    lr = optax.warmup_cosine_decay_schedule(0.0, c["lr"], min(100, c["steps"] // 10), c["steps"], c["lr"] * 0.02)
    return pplvi.fit(objective, net, optimizer=optax.adam(lr), steps=c["steps"], key=c["seed"], data=data,
                     batch_size=c["batch_size"], progress=False, desc=desc)


def train_evaluators(steps: int | None = None):
    """Train the MNIST noise-aware classifier and real/fake discriminator for ``P.load("mnist")`` and write them.
    The discriminator's fake data are DDIM samples of the committed model at the scales ``fake_scales``."""
    import pplvi.diffusion as D
    from pplvi.diffusion import pretrained as P

    c = dict(CONFIG, steps=int(steps or CONFIG["steps"]))
    command = "python -m pplvi.diffusion.dynamic_cfg train" + (f" --steps {c['steps']}" if steps else "")
    model = P.load("mnist")
    sched = model.schedule
    x, y = P.load_images("mnist", "train")
    x0 = np.asarray(P.to_model_space(x)).reshape(len(x), -1)
    key = jax.random.key(c["seed"])

    t0 = time.time()
    clf = LatentEvaluator(784, 10, c["hidden"], key=jax.random.fold_in(key, 1))
    res = _fit(noisy_classifier_objective(sched), clf, (x0, np.asarray(y, np.int32)), c, "dcfg classifier")
    clf_seconds = time.time() - t0
    npz, desc = _paths("classifier")
    save_tree(npz, res.params)
    write_json(desc, {"config": c, "command": command, "train_seconds": round(clf_seconds, 1),
                      "final_log_likelihood": float(np.mean(np.asarray(res.history["objective"])[-100:])),
                      "device": device_name()})

    t0 = time.time()
    n = c["fake_per_scale"]
    fakes = []
    for j, w in enumerate(c["fake_scales"]):
        labels = jnp.arange(n, dtype=jnp.int32) % 10
        fn = jax.jit(lambda k, labels=labels, w=w: D.ddim(k, D.cfg(model, labels, w), sched, (n, 1, 28, 28),
                                                          c["fake_steps"]).x)
        fakes.append(np.asarray(fn(jax.random.fold_in(key, 100 + j))).reshape(n, -1))
    fake = np.concatenate(fakes)
    real = x0[np.random.default_rng(c["seed"]).choice(len(x0), c["real_images"], replace=False)]
    real = np.concatenate([real] * max(1, len(fake) // len(real)))
    fake = np.concatenate([fake] * max(1, len(real) // len(fake)))
    data = (np.concatenate([real, fake]).astype(np.float32),
            np.concatenate([np.ones(len(real)), np.zeros(len(fake))]).astype(np.float32))
    gen_seconds = time.time() - t0
    t0 = time.time()
    disc = LatentEvaluator(784, 1, c["hidden"], key=jax.random.fold_in(key, 2))
    res = _fit(discriminator_objective(sched), disc, data, c, "dcfg discriminator")
    npz, desc = _paths("discriminator")
    save_tree(npz, res.params)
    write_json(desc, {"config": c, "command": command, "fake_generation_seconds": round(gen_seconds, 1),
                      "train_seconds": round(time.time() - t0, 1), "fake_images": int(len(fake)),
                      "real_images": int(len(real)),
                      "final_log_likelihood": float(np.mean(np.asarray(res.history["objective"])[-100:])),
                      "device": device_name()})


def load_evaluators():
    """``(alignment, fidelity)`` functions for :class:`DynamicCFG` on ``P.load("mnist")`` (images ``(B, 1, 28,
    28)`` in [-1, 1]); a :class:`pplvi.DataError` names the missing file and the command that makes it."""
    nets = []
    for name, out in (("classifier", 10), ("discriminator", 1)):
        npz, desc = _paths(name)
        if not npz.exists():
            raise DataError(f"no dynamic-CFG {name} weights at {npz}; make them with "
                            "`python -m pplvi.diffusion.dynamic_cfg train`")
        hidden = json.loads(desc.read_text())["config"]["hidden"] if desc.exists() else CONFIG["hidden"]
        nets.append(load_tree(npz, LatentEvaluator(784, out, hidden, key=jax.random.key(0))))
    clf, disc = nets

    def alignment(x, t, labels):
        logits = jax.vmap(clf, (0, None))(x.reshape(x.shape[0], -1), t)
        lab = jnp.broadcast_to(jnp.asarray(labels, jnp.int32), (x.shape[0],))
        return jnp.take_along_axis(jax.nn.log_softmax(logits), lab[:, None], 1)[:, 0]

    def fidelity(x, t):
        return jax.vmap(disc, (0, None))(x.reshape(x.shape[0], -1), t)[:, 0]

    return alignment, fidelity


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pplvi.diffusion.dynamic_cfg")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train the MNIST latent classifier and discriminator")
    t.add_argument("--steps", type=int, default=None)
    a = p.parse_args(argv)
    train_evaluators(a.steps)
    for name in ("classifier", "discriminator"):
        print(_paths(name)[1].read_text())
    return 0


__all__ = [
    "DynamicCFG", "LatentEvaluator", "chosen_scales", "discriminator_objective", "load_evaluators",
    "noisy_classifier_objective", "train_evaluators",
]

if __name__ == "__main__":
    sys.exit(main())
