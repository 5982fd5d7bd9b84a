r"""Sample-quality evaluation for the image diffusion models, with networks trained here (nothing downloaded).

One small MLP per dataset (``"mnist"``, ``"fashion_mnist"``) is trained by maximum likelihood of the labels,
:math:`\max_\theta \mathbb E_{(x, y)}[\log \mathrm{softmax}(f_\theta(x))_y]`, with :func:`pplvi.fit`, independently of
every diffusion model and every guidance network. Its penultimate layer (64 units) is the feature space of the
distribution metrics. ::

    python -m pplvi.diffusion.evaluation train mnist
    python -m pplvi.diffusion.evaluation train fashion_mnist

writes ``pplvi/diffusion/weights/eval_<dataset>.npz`` and ``eval_<dataset>.json`` (configuration, command, held-out
accuracy, seconds, machine). :func:`load_evaluator` returns an :class:`Evaluator`:

* ``predict(images)``: logits ``(N, 10)``; ``accuracy(images, labels)``: fraction classified as ``labels``;
* ``features(images)``: ``(N, 64)`` penultimate activations;
* ``frechet(a, b)``: the Fréchet distance between Gaussians fitted to the features of two image sets (Heusel et
  al. 2017's FID, in our feature space): :math:`\|\mu_a - \mu_b\|^2 + \operatorname{tr}(\Sigma_a + \Sigma_b -
  2 (\Sigma_a^{1/2}\Sigma_b\Sigma_a^{1/2})^{1/2})`;
* ``precision_recall(real, fake, k=3)``: Kynkäänniemi et al. (2019): the real manifold is the union of balls
  around each real feature vector with radius its distance to its ``k``-th nearest real neighbour; precision is the
  fraction of fake samples inside the real manifold, recall the fraction of real samples inside the fake one.

and :func:`saturation` measures pixels at the ends of the range. Images are ``(N, 28, 28)`` in [0, 1] throughout.
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
from pplvi.models.results import device_name, write_json
from pplvi.train import load_tree, save_tree

WEIGHTS = Path(__file__).resolve().parent / "weights"
DATASETS = ("mnist", "fashion_mnist")
CONFIG = dict(hidden=400, features=64, steps=4000, batch_size=256, lr=2e-3, pixel_noise=0.05, seed=0)


def _check_dataset(dataset: str) -> str:
    if dataset not in DATASETS:
        raise PPLVIError(f"evaluation: unknown dataset {dataset!r}; choose one of {DATASETS}")
    return dataset


def _check_images(images, where: str):
    x = jnp.asarray(images, jnp.float32)
    if x.ndim != 3 or x.shape[1:] != (28, 28):
        raise DataError(f"{where}: images must have shape (N, 28, 28) with pixels in [0, 1], got {x.shape}")
    return x


def _load_split(dataset: str, split: str):
    if dataset == "mnist":
        return pplvi.data.load_mnist(split)
    return pplvi.data.load_fashion_mnist(split)


class EvalNet(eqx.Module):
    """``784 -> hidden -> features -> 10`` MLP with GELU; :meth:`features` is the penultimate layer."""

    hidden: eqx.nn.Linear
    feature: eqx.nn.Linear
    head: eqx.nn.Linear

    def __init__(self, hidden: int = 400, features: int = 64, *, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.hidden = eqx.nn.Linear(784, hidden, key=k1)
        self.feature = eqx.nn.Linear(hidden, features, key=k2)
        self.head = eqx.nn.Linear(features, 10, key=k3)

    def features(self, image):
        h = jax.nn.gelu(self.hidden(2.0 * image.reshape(-1) - 1.0))
        return jax.nn.gelu(self.feature(h))

    def __call__(self, image):
        return self.head(self.features(image))


def _matrix_sqrt_psd(m):
    vals, vecs = np.linalg.eigh((m + m.T) / 2)
    return (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T


def frechet_distance(feat_a, feat_b) -> float:
    r"""Fréchet (2-Wasserstein) distance between the Gaussians fitted to two feature sets ``(n, d)``:
    :math:`\|\mu_a - \mu_b\|^2 + \operatorname{tr}\Sigma_a + \operatorname{tr}\Sigma_b -
    2\operatorname{tr}(\Sigma_a^{1/2}\Sigma_b\Sigma_a^{1/2})^{1/2}` (symmetric square roots by eigendecomposition,
    in float64)."""
    a, b = np.asarray(feat_a, np.float64), np.asarray(feat_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise DataError(f"frechet_distance: need two (n >= 2, d) feature arrays of equal d, got {a.shape}, {b.shape}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root_a = _matrix_sqrt_psd(cov_a)
    cross = np.trace(_matrix_sqrt_psd(root_a @ cov_b @ root_a))
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * cross)


def _pairwise(a, b):
    return np.sqrt(np.maximum((a**2).sum(1)[:, None] + (b**2).sum(1)[None] - 2 * a @ b.T, 0.0))


def precision_recall_features(real, fake, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of feature sets ``real (n, d)``, ``fake (m, d)``
    with ``k``-nearest-neighbour radii; returns ``(precision, recall)``."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if min(len(real), len(fake)) <= k:
        raise DataError(f"precision_recall: need more than k={k} samples in each set, got {len(real)}, {len(fake)}")

    def radii(x):  # distance to the k-th nearest other point (column 0 of the sorted row is the point itself)
        return np.sort(_pairwise(x, x), axis=1)[:, k]

    precision = np.mean(np.any(_pairwise(fake, real) <= radii(real)[None], axis=1))
    recall = np.mean(np.any(_pairwise(real, fake) <= radii(fake)[None], axis=1))
    return float(precision), float(recall)


def saturation(images01, tol: float = 1e-3) -> float:
    """Fraction of pixels within ``tol`` of either end of [0, 1] (after clipping to the range). On MNIST-like data
    most background pixels are 0 already (about 0.8 of the pixels of real MNIST digits); guidance at high scales
    pushes the strokes to 1 and the halo around them to 0, which raises it."""
    x = np.clip(np.asarray(images01, np.float64), 0.0, 1.0)
    return float(np.mean((x <= tol) | (x >= 1.0 - tol)))


class Evaluator:
    """A trained :class:`EvalNet` with batch metrics (see the module docs). Arrays come back as numpy."""

    def __init__(self, net: EvalNet, dataset: str, description: dict | None = None, batch: int = 2000):
        self.net, self.dataset, self.description, self.batch = net, dataset, description or {}, batch
        self._logits = jax.jit(jax.vmap(net))
        self._features = jax.jit(jax.vmap(net.features))

    def _batched(self, fn, images, where):
        x = _check_images(images, where)
        return np.concatenate([np.asarray(fn(x[i : i + self.batch])) for i in range(0, len(x), self.batch)])

    def predict(self, images01):
        """Logits ``(N, 10)``."""
        return self._batched(self._logits, images01, "Evaluator.predict")

    def accuracy(self, images01, labels) -> float:
        """Fraction of ``images01`` classified as ``labels`` (an int or ``(N,)``)."""
        logits = self.predict(images01)
        labels = np.broadcast_to(np.asarray(labels), (len(logits),))
        return float(np.mean(np.argmax(logits, -1) == labels))

    def features(self, images01):
        """Penultimate activations ``(N, 64)``."""
        return self._batched(self._features, images01, "Evaluator.features")

    def frechet(self, images_a, images_b) -> float:
        """:func:`frechet_distance` of the two image sets' features."""
        return frechet_distance(self.features(images_a), self.features(images_b))

    def precision_recall(self, real, fake, k: int = 3) -> tuple[float, float]:
        """:func:`precision_recall_features` of the two image sets' features."""
        return precision_recall_features(self.features(real), self.features(fake), k)

    def saturation(self, images01, tol: float = 1e-3) -> float:
        return saturation(images01, tol)


def classification_objective(pixel_noise: float = 0.0) -> pplvi.Objective:
    r"""Mean label log-likelihood :math:`\frac1B\sum_i \log \mathrm{softmax}(f(\tilde x_i))_{y_i}` (maximized), where
    :math:`\tilde x = \mathrm{clip}(x + \sigma\xi, 0, 1)` with a Gaussian choice ``"pixel_noise"`` :math:`\xi`
    (data augmentation that keeps the classifier calibrated on slightly noisy generated images)."""
    import numpyro.distributions as nd

    @pplvi.objective
    def label_log_likelihood(net: EvalNet, images, labels):
        if pixel_noise > 0:
            xi = pplvi.sample("pixel_noise", nd.Normal(jnp.zeros_like(images), 1.0).to_event(images.ndim))
            images = jnp.clip(images + pixel_noise * xi, 0.0, 1.0)
        logp = jax.nn.log_softmax(jax.vmap(net)(images))
        return jnp.mean(jnp.take_along_axis(logp, labels[:, None].astype(jnp.int32), 1))

    return label_log_likelihood


def _paths(dataset: str, path: Path | None = None) -> tuple[Path, Path]:
    npz = Path(path) if path else WEIGHTS / f"eval_{dataset}.npz"
    return npz, npz.with_suffix(".json")


def train(dataset: str, steps: int | None = None, out: Path | None = None, progress=None) -> Evaluator:
    """Train the evaluator for ``dataset`` (Adam with cosine decay) and write its weights and description."""
    _check_dataset(dataset)
    c = dict(CONFIG, steps=int(steps or CONFIG["steps"]))
    x, y = _load_split(dataset, "train")
    xt, yt = _load_split(dataset, "test")
    net = EvalNet(c["hidden"], c["features"], key=jax.random.key(c["seed"]))
    lr = optax.warmup_cosine_decay_schedule(0.0, c["lr"], min(200, c["steps"] // 10), c["steps"], c["lr"] * 0.02)
    t0 = time.time()
    res = pplvi.fit(
        classification_objective(c["pixel_noise"]), net, optimizer=optax.adam(lr), steps=c["steps"], key=c["seed"],
        data=(np.asarray(x, np.float32), np.asarray(y, np.int32)), batch_size=c["batch_size"], progress=progress,
        desc=f"evaluator {dataset}",
    )
    seconds = time.time() - t0
    evaluator = Evaluator(res.params, dataset)
    npz, desc = _paths(dataset, out)
    save_tree(npz, res.params)
    command = f"python -m pplvi.diffusion.evaluation train {dataset}"
    if steps:
        command += f" --steps {c['steps']}"
    write_json(
        desc,
        {
            "dataset": dataset, "config": c, "command": command,
            "test_accuracy": evaluator.accuracy(xt, yt), "train_seconds": round(seconds, 1),
            "final_log_likelihood": float(np.mean(np.asarray(res.history["objective"])[-200:])),
            "device": device_name(),
        },
    )
    evaluator.description = json.loads(desc.read_text())
    return evaluator


def load_evaluator(dataset: str, path: Path | None = None) -> Evaluator:
    """The committed evaluator for ``"mnist"`` or ``"fashion_mnist"``; a :class:`pplvi.DataError` names the file and
    the command that makes it when it is missing."""
    _check_dataset(dataset)
    npz, desc = _paths(dataset, path)
    if not npz.exists():
        raise DataError(f"no evaluator weights at {npz}; make them with "
                        f"`python -m pplvi.diffusion.evaluation train {dataset}`")
    c = json.loads(desc.read_text())["config"] if desc.exists() else CONFIG
    net = load_tree(npz, EvalNet(c["hidden"], c["features"], key=jax.random.key(0)))
    return Evaluator(net, dataset, json.loads(desc.read_text()) if desc.exists() else None)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pplvi.diffusion.evaluation")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train the independent classifier / feature extractor for a dataset")
    t.add_argument("dataset", choices=DATASETS)
    t.add_argument("--steps", type=int, default=None)
    t.add_argument("--out", default=None)
    a = p.parse_args(argv)
    ev = train(a.dataset, a.steps, a.out)
    print(json.dumps(ev.description, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
