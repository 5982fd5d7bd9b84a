r"""Guidance by a *clean-image* classifier applied to the denoised estimate :math:`\hat x_0(x_t)`, as predictors
(``init(x) -> state``, ``__call__(x, t, state) -> (eps, state, nfe)``; see :mod:`pplvi.diffusion.guidance`).

* :class:`GFCG` — gradient-free classifier guidance, Shenoy et al. (2024), "Gradient-Free Classifier Guidance for
  Diffusion Model Sampling" (arXiv:2411.15393). The classifier is only *evaluated* (no gradients) on the
  conditional :math:`\hat x_0`; it picks a per-sample reference class and a time-adaptive scale, and the rule
  extrapolates away from the reference-class prediction, like classifier-free guidance with a reference class in
  place of the null token.
* :class:`EluCD` — off-the-shelf classifier guidance in the style of Ma et al. (2023), "Elucidating The Design
  Space of Classifier-Guided Diffusion Generation" (arXiv:2310.11311): the gradient of a temperature-calibrated
  clean classifier's log-probability, taken through the denoiser's :math:`\hat x_0(x_t)`, with a time schedule of the
  scale.

A classifier here is a function ``logits_fn(x0) -> (B, C)`` on a batch in the diffusion model's space.
:func:`mixture_classifier` is the exact Bayes classifier of a labelled Gaussian mixture (tests);
:func:`load_guide_classifier` is the committed MNIST guide classifier (an MLP with smooth softplus activations,
trained by :func:`train_guide_classifier`, independent of the evaluation classifier)::

    python -m pplvi.diffusion.classifier_guidance train

writes ``weights/guide_classifier_mnist.npz`` and ``.json`` (configuration, command, accuracy, calibrated
temperature).
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
import optax

import pplvi
import pplvi.data
from pplvi import DataError, PPLVIError
from pplvi.diffusion.analytic import GaussianMixture
from pplvi.diffusion.guidance import ModelDenoiser, denoiser
from pplvi.models.results import device_name, write_json
from pplvi.train import load_tree, save_tree

WEIGHTS = Path(__file__).resolve().parent / "weights"
GUIDE_NPZ = WEIGHTS / "guide_classifier_mnist.npz"
CONFIG = dict(hidden=256, softplus_beta=2.0, steps=2000, batch_size=256, lr=2e-3, seed=1, calib_images=1000)


def _fence(v):
    return jax.lax.optimization_barrier(v)


def _check_scale(name, w):
    if isinstance(w, (int, float)) and w < 0:
        raise PPLVIError(f"{name}: the guidance scale must be >= 0, got {w}")
    return w


def _conditional_any(den, x, t, labels, num_classes):
    """Conditional noise prediction with a *per-sample* label vector ``labels (B,)`` (1 NFE per sample)."""
    if isinstance(den, ModelDenoiser):
        return den.model.eps(x, t, labels)
    per_class = jnp.stack([den.conditional(x, t, c) for c in range(num_classes)])  # (C, B, ...)
    return jnp.take_along_axis(per_class, labels.reshape((1, -1) + (1,) * (x.ndim - 1)), 0)[0]


def _num_classes(den):
    if isinstance(den, ModelDenoiser):
        return den.model.num_classes
    return int(np.max(np.asarray(den.mixture.labels))) + 1


def _x0(den, eps, x, t):
    a, s = den.schedule.signal_noise(t)
    return (x - s * eps) / a


# ----------------------------------------------------------------------------------------------------------------
# GFCG
# ----------------------------------------------------------------------------------------------------------------


class GFCG:
    r"""Gradient-free classifier guidance (Shenoy et al. 2024). At a step, with target class :math:`c` (per sample):

    1. :math:`\hat\varepsilon_c = \varepsilon(x_t, c)`, :math:`\hat x_0 = (x_t - s_t\hat\varepsilon_c)/a_t` and the
       classifier's probabilities :math:`p = \mathrm{softmax}(f(\hat x_0))` (evaluated only, no gradient);
    2. reference class :math:`r = \arg\max_{k \ne c} p_k`, the class the current estimate is most confused with;
    3. adaptive scale :math:`w_t = w\,\min(1, p_r / p_c)`: large while the estimate looks more like :math:`r` than
       like :math:`c`, vanishing once the classifier is sure of :math:`c`;
    4. :math:`\hat\varepsilon = \hat\varepsilon_c + w_t(\hat\varepsilon_c - \varepsilon(x_t, r))`.

    ``reference`` fixes the reference class instead (an int, e.g. the null token for classifier-free guidance
    :math:`\hat\varepsilon_c + w(\hat\varepsilon_c - \hat\varepsilon_u)`, or the target itself: the plain
    conditional prediction) and ``adaptive=False`` uses :math:`w_t = w`. 2 NFE per step (the target then the
    reference prediction); the classifier call is not counted. The confusion ratio in step 3 is our reading of the
    paper's "time-adaptive scale": only its abstract and summary could be consulted here."""

    nfe_per_step = 2

    def __init__(self, source, labels, logits_fn, w: float = 1.0, reference=None, adaptive: bool = True,
                 schedule=None):
        if not callable(logits_fn):
            raise PPLVIError(f"GFCG: logits_fn must be a function x0 -> (B, C) logits, got {type(logits_fn).__name__}")
        self.denoiser = denoiser(source, schedule)
        self.labels, self.logits_fn, self.w = labels, logits_fn, _check_scale("GFCG", w)
        self.reference, self.adaptive = reference, adaptive
        self.num_classes = _num_classes(self.denoiser)
        top = self.num_classes if isinstance(self.denoiser, ModelDenoiser) else self.num_classes - 1
        if reference is not None and not (isinstance(reference, (int, np.integer)) and 0 <= reference <= top):
            raise PPLVIError(f"GFCG: reference must be None (adaptive) or a class in 0..{top}, got {reference!r}")

    def init(self, x):
        return None

    def __call__(self, x, t, state):
        d, n = self.denoiser, x.shape[0]
        target = jnp.broadcast_to(jnp.asarray(self.labels, jnp.int32), (n,))
        e_c = _fence(_conditional_any(d, x, t, target, self.num_classes))
        logp = jax.nn.log_softmax(jax.lax.stop_gradient(self.logits_fn(_x0(d, e_c, x, t))), -1)
        if logp.shape != (n, self.num_classes):
            raise PPLVIError(f"GFCG: the classifier returned logits of shape {logp.shape}, expected "
                             f"{(n, self.num_classes)}")
        others = jnp.where(jax.nn.one_hot(target, self.num_classes, dtype=bool), -jnp.inf, logp)
        if self.reference is None:
            ref = jnp.argmax(others, -1).astype(jnp.int32)
        else:
            ref = jnp.broadcast_to(jnp.asarray(self.reference, jnp.int32), (n,))
        w = self.w
        if self.adaptive and self.reference is None:
            ratio = jnp.exp(jnp.take_along_axis(logp, ref[:, None], 1) - jnp.take_along_axis(logp, target[:, None], 1))
            w = w * jnp.minimum(1.0, ratio[:, 0]).reshape((n,) + (1,) * (x.ndim - 1))
        e_r = _conditional_any(d, x, t, ref, self.num_classes)
        return _fence(e_c + w * (e_c - e_r)), state, jnp.int32(2)


# ----------------------------------------------------------------------------------------------------------------
# EluCD
# ----------------------------------------------------------------------------------------------------------------

SCHEDULES = ("constant", "sin")


class EluCD:
    r"""Off-the-shelf clean-classifier guidance on :math:`\hat x_0` (Ma et al. 2023), for an unconditional
    prediction (a class-conditional model's null token, or a mixture's unconditional denoiser):

    .. math:: \hat\varepsilon = \varepsilon_u(x_t) - s_t\,w(t)\,\nabla_{x_t}
              \log \mathrm{softmax}\!\big(f(\hat x_0(x_t)) / T\big)_y,\qquad
              \hat x_0(x_t) = \frac{x_t - s_t\,\varepsilon_u(x_t)}{a_t},

    i.e. the score :math:`-\varepsilon/s_t` gains :math:`w(t)\nabla\log p_T(y\mid\hat x_0(x_t))`, the gradient taken
    through the denoiser (a vector-Jacobian product of the network). ``temperature`` :math:`T` is the calibration
    (fit by minimizing the held-out negative log-likelihood, :func:`calibrate_temperature`; ``T = 1``: the raw
    classifier). The classifier must be smooth (the MNIST guide uses softplus activations in place of ReLU, the
    paper's smoothing). ``scale_schedule``: ``"constant"`` :math:`w(t) = w`, or ``"sin"``
    :math:`w(t) = w \sin(\pi t / 2)` (strong at high noise, vanishing at :math:`t = 0`; our reading of the paper's
    schedule, whose exact form could not be consulted here). NFE per step: 2 (the forward pass and its
    vector-Jacobian product, counted as one evaluation). ``w`` may be traced; ``w = 0`` returns the unconditional
    prediction unchanged."""

    nfe_per_step = 2

    def __init__(self, source, labels, logits_fn, w: float = 1.0, temperature: float = 1.0,
                 scale_schedule: str = "constant", schedule=None):
        if not callable(logits_fn):
            raise PPLVIError(f"EluCD: logits_fn must be a function x0 -> (B, C) logits, got "
                             f"{type(logits_fn).__name__}")
        if isinstance(temperature, (int, float)) and temperature <= 0:
            raise PPLVIError(f"EluCD: temperature must be positive, got {temperature}")
        if scale_schedule not in SCHEDULES:
            raise PPLVIError(f"EluCD: scale_schedule must be one of {SCHEDULES}, got {scale_schedule!r}")
        self.denoiser = denoiser(source, schedule)
        self.labels, self.logits_fn, self.w = labels, logits_fn, _check_scale("EluCD", w)
        self.temperature, self.scale_schedule = temperature, scale_schedule

    def init(self, x):
        return None

    def scale(self, t):
        return self.w * (jnp.sin(0.5 * jnp.pi * t) if self.scale_schedule == "sin" else 1.0)

    def __call__(self, x, t, state):
        d, n = self.denoiser, x.shape[0]
        target = jnp.broadcast_to(jnp.asarray(self.labels, jnp.int32), (n,))
        a, s = d.schedule.signal_noise(t)

        def log_prob(xt):
            e_u = d.unconditional(xt, t)
            logp = jax.nn.log_softmax(self.logits_fn((xt - s * e_u) / a) / self.temperature, -1)
            return jnp.sum(jnp.take_along_axis(logp, target[:, None], 1)), e_u

        grad, e_u = jax.grad(log_prob, has_aux=True)(x)
        e_u = _fence(e_u)
        return _fence(e_u - s * self.scale(t) * grad), state, jnp.int32(2)


# ----------------------------------------------------------------------------------------------------------------
# Classifiers
# ----------------------------------------------------------------------------------------------------------------


def mixture_classifier(mixture: GaussianMixture):
    r"""The exact Bayes classifier of clean data from a labelled mixture: logits
    :math:`\log\sum_{k: y_k = c}\pi_k\,\mathcal N(x_0; \mu_k, \Sigma_k)` (batch ``(B, d)`` -> ``(B, C)``)."""
    if mixture.labels is None:
        raise PPLVIError("mixture_classifier: the Gaussian mixture carries no component labels")
    labels = np.asarray(mixture.labels)
    num = int(labels.max()) + 1
    onehot = jnp.asarray(labels[:, None] == np.arange(num)[None], jnp.float32)
    log_w = jnp.log(jnp.asarray(mixture.weights))
    means, covs = jnp.asarray(mixture.means), jnp.asarray(mixture.covs)

    def logits(x0):
        comp = jax.vmap(lambda m, c: jax.scipy.stats.multivariate_normal.logpdf(x0, m, c), out_axes=1)(means, covs)
        comp = comp + log_w
        return jax.nn.logsumexp(comp[:, :, None] + jnp.log(onehot)[None], axis=1)

    return logits


def softplus_beta(x, beta):
    r""":math:`\log(1 + e^{\beta x})/\beta`: a smooth ReLU (the ReLU as :math:`\beta\to\infty`)."""
    return jax.nn.softplus(beta * x) / beta


class GuideNet(eqx.Module):
    """``784 -> hidden -> hidden -> 10`` MLP with softplus(beta) activations, on images in the diffusion model's
    space ([-1, 1], any shape with 784 pixels)."""

    layers: tuple
    beta: float = eqx.field(static=True)

    def __init__(self, hidden: int = 256, beta: float = 2.0, *, key):
        k = jax.random.split(key, 3)
        self.layers = (eqx.nn.Linear(784, hidden, key=k[0]), eqx.nn.Linear(hidden, hidden, key=k[1]),
                       eqx.nn.Linear(hidden, 10, key=k[2]))
        self.beta = beta

    def __call__(self, x):
        h = x.reshape(-1)
        for layer in self.layers[:-1]:
            h = softplus_beta(layer(h), self.beta)
        return self.layers[-1](h)


def _guide_objective():
    @pplvi.objective
    def label_log_likelihood(net: GuideNet, images, labels):
        logp = jax.nn.log_softmax(jax.vmap(net)(2.0 * images - 1.0))
        return jnp.mean(jnp.take_along_axis(logp, labels[:, None].astype(jnp.int32), 1))

    return label_log_likelihood


def calibrate_temperature(logits, labels, grid=None) -> float:
    """The temperature minimizing the mean negative log-likelihood of ``labels`` under ``softmax(logits / T)``
    (grid search over log T, then refined around the best)."""
    logits, labels = np.asarray(logits, np.float64), np.asarray(labels)
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise DataError(f"calibrate_temperature: need logits (N, C) and labels (N,), got {logits.shape}, "
                        f"{labels.shape}")

    def nll(temp):
        z = logits / temp
        z = z - z.max(1, keepdims=True)
        return float(np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(len(z)), labels]))

    grid = np.exp(np.linspace(np.log(0.05), np.log(100.0), 200)) if grid is None else grid
    best = grid[int(np.argmin([nll(g) for g in grid]))]
    fine = best * np.exp(np.linspace(-0.05, 0.05, 41))
    return float(fine[int(np.argmin([nll(g) for g in fine]))])


def noisy_x0_logits(net, model, images01, key, batch: int = 250):
    r"""Classifier logits on the model's unconditional :math:`\hat x_0(x_t)` of held-out images noised at
    :math:`t \sim U(0, 1)` — the inputs the guide sees during sampling (one network evaluation per image)."""
    x0 = 2.0 * jnp.asarray(images01, jnp.float32)[:, None] - 1.0
    kt, ke = jax.random.split(key)
    t = jax.random.uniform(kt, (len(x0),))
    eps = jax.random.normal(ke, x0.shape)

    @jax.jit
    def one(x0b, tb, eb):
        a, s = model.schedule.signal_noise(tb)
        a, s = a[:, None, None, None], s[:, None, None, None]
        xt = a * x0b + s * eb
        return jax.vmap(net)((xt - s * model.eps(xt, tb, None)) / a)

    return np.concatenate([np.asarray(one(x0[i:i + batch], t[i:i + batch], eps[i:i + batch]))
                           for i in range(0, len(x0), batch)])


def train_guide_classifier(steps: int | None = None, out: Path | None = None, progress=None) -> dict:
    """Train the MNIST guide classifier (Adam, label log-likelihood, :func:`pplvi.fit`), calibrate its temperature on
    held-out data (clean test images and the diffusion model's x0-hat of noised ones) and write weights + JSON."""
    from pplvi.diffusion import pretrained as P

    c = dict(CONFIG, steps=int(steps or CONFIG["steps"]))
    x, y = pplvi.data.load_mnist("train")
    xt, yt = pplvi.data.load_mnist("test")
    net = GuideNet(c["hidden"], c["softplus_beta"], key=jax.random.key(c["seed"]))
    lr = optax.cosine_decay_schedule(c["lr"], c["steps"], 0.05)
    t0 = time.time()
    res = pplvi.fit(_guide_objective(), net, optimizer=optax.adam(lr), steps=c["steps"], key=c["seed"],
                    data=(np.asarray(x, np.float32), np.asarray(y, np.int32)), batch_size=c["batch_size"],
                    progress=progress, desc="guide classifier mnist")
    seconds = time.time() - t0
    net = res.params
    logits_fn = jax.jit(jax.vmap(net))
    clean = np.asarray(logits_fn(2.0 * jnp.asarray(xt, jnp.float32) - 1.0))
    m = c["calib_images"]
    noisy = noisy_x0_logits(net, P.load("mnist"), xt[-m:], jax.random.key(c["seed"] + 7))
    temp_clean = calibrate_temperature(clean[:5000], np.asarray(yt)[:5000])
    temp_noisy = calibrate_temperature(noisy, np.asarray(yt)[-m:])
    npz = Path(out) if out else GUIDE_NPZ
    save_tree(npz, net)
    command = "python -m pplvi.diffusion.classifier_guidance train" + (f" --steps {c['steps']}" if steps else "")
    desc = {
        "config": c, "command": command, "test_accuracy": float(np.mean(clean.argmax(1) == np.asarray(yt))),
        "temperature_clean": temp_clean, "temperature": temp_noisy,
        "temperature_note": "temperature: NLL-optimal on the unconditional x0-hat of the last "
                            f"{m} test images noised at t ~ U(0, 1) (what the guide sees); temperature_clean: "
                            "NLL-optimal on the first 5000 clean test images",
        "train_seconds": round(seconds, 1), "device": device_name(),
    }
    write_json(npz.with_suffix(".json"), desc)
    return desc


def load_guide_net(path: Path | None = None):
    """``(net, description)``: the committed MNIST guide classifier as a :class:`GuideNet` (one image -> logits)
    and its JSON description."""
    npz = Path(path) if path else GUIDE_NPZ
    if not npz.exists():
        raise DataError(f"no guide classifier weights at {npz}; make them with "
                        "`python -m pplvi.diffusion.classifier_guidance train`")
    desc = json.loads(npz.with_suffix(".json").read_text())
    c = desc["config"]
    net = load_tree(npz, GuideNet(c["hidden"], c["softplus_beta"], key=jax.random.key(0)))
    return net, desc


def load_guide_classifier(path: Path | None = None):
    """``(logits_fn, description)``: the committed MNIST guide classifier as a batch function on model-space images
    ``(B, 1, 28, 28)`` and its JSON description (``"temperature"`` is the calibrated temperature)."""
    net, desc = load_guide_net(path)
    return jax.vmap(net), desc


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pplvi.diffusion.classifier_guidance")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train and calibrate the MNIST guide classifier")
    t.add_argument("--steps", type=int, default=None)
    t.add_argument("--out", default=None)
    a = p.parse_args(argv)
    print(json.dumps(train_guide_classifier(a.steps, a.out), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
