r"""Small diffusion models trained here (nothing is downloaded), their exact training commands, and loading.

::

    python -m pplvi.diffusion train digits          # 8x8 sklearn digits, minutes on a CPU
    python -m pplvi.diffusion train mnist           # 28x28 MNIST (a GPU makes it minutes)
    python -m pplvi.diffusion train fashion_mnist

Each writes ``pplvi/diffusion/weights/<name>.npz`` (pplvi's pickle-free tree format, written atomically) and
``<name>.json`` (the configuration, the training command, its final loss and the machine). Every model is
class-conditional with a null token (trained with label dropout ``p_uncond``), so one network serves as the
conditional model, the unconditional model and classifier-free guidance. Pixels are scaled to [-1, 1]
(:func:`to_model_space`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import pplvi
from pplvi import DataError, PPLVIError
from pplvi.diffusion.model import Diffusion, denoising_objective
from pplvi.diffusion.networks import UNet
from pplvi.diffusion.schedules import schedule as make_schedule
from pplvi.models.results import device_name, write_json
from pplvi.train import load_tree, save_tree

WEIGHTS = Path(__file__).resolve().parent / "weights"

CONFIGS = {
    "digits": dict(
        dataset="digits", size=8, channels=(32, 64), schedule="cosine", prediction="eps", num_classes=10,
        p_uncond=0.1, steps=6000, batch_size=128, lr=2e-3,
    ),
    "mnist": dict(
        dataset="mnist", size=28, channels=(32, 64, 64), schedule="cosine", prediction="eps", num_classes=10,
        p_uncond=0.1, steps=30000, batch_size=128, lr=1e-3,
    ),
    "fashion_mnist": dict(
        dataset="fashion_mnist", size=28, channels=(32, 64, 64), schedule="cosine", prediction="eps",
        num_classes=10, p_uncond=0.1, steps=30000, batch_size=128, lr=1e-3,
    ),
}


def _config(name: str) -> dict:
    if name not in CONFIGS:
        raise PPLVIError(f"no pretrained diffusion configuration {name!r}; choose one of {sorted(CONFIGS)}")
    return CONFIGS[name]


def to_model_space(images):
    """Pixels in [0, 1], shape ``(N, H, W)`` -> the model's ``(N, 1, H, W)`` in [-1, 1]."""
    return (2.0 * jnp.asarray(images, jnp.float32) - 1.0)[:, None]


def to_pixels(x):
    """The model's ``(N, 1, H, W)`` in [-1, 1] -> ``(N, H, W)`` pixels clipped to [0, 1]."""
    return jnp.clip((x[:, 0] + 1.0) / 2.0, 0.0, 1.0)


def load_images(dataset: str, split: str = "train"):
    """``(images in [0, 1] (N, H, W), labels)`` of ``"digits"`` (split ``"train"``: the first 1,500, ``"test"``:
    the other 297), ``"mnist"`` or ``"fashion_mnist"``."""
    if dataset == "digits":
        x, y = pplvi.data.load_digits()
        return (x[:1500], y[:1500]) if split == "train" else (x[1500:], y[1500:])
    if dataset == "mnist":
        return pplvi.data.load_mnist(split)
    if dataset == "fashion_mnist":
        return pplvi.data.load_fashion_mnist(split)
    raise PPLVIError(f"unknown image dataset {dataset!r}; choose 'digits', 'mnist' or 'fashion_mnist'")


def build(name: str, key=None) -> Diffusion:
    """An untrained model with ``name``'s configuration."""
    c = _config(name)
    net = UNet(1, c["channels"], c["num_classes"], key=jax.random.key(0) if key is None else key)
    return Diffusion(net, make_schedule(c["schedule"]), c["prediction"], c["num_classes"])


def train(name: str, steps: int | None = None, seed: int = 0, out: Path | None = None, progress=None,
          checkpoint=None) -> Diffusion:
    """Train ``name``'s model with :func:`pplvi.fit` on :func:`denoising_objective` (Adam, cosine-decayed learning
    rate with warm-up) and write its weights and description (see the module docs). ``checkpoint``: a
    :func:`pplvi.fit` checkpoint file written every 2,000 steps (and resumed from when it exists)."""
    c = _config(name)
    steps = int(steps or c["steps"])
    x, y = load_images(c["dataset"], "train")
    data = (np.asarray(to_model_space(x)), np.asarray(y, np.int32))
    model = build(name, jax.random.key(seed))
    lr = optax.warmup_cosine_decay_schedule(0.0, c["lr"], min(500, steps // 10), steps, c["lr"] * 0.02)
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(lr))
    t0 = time.time()
    res = pplvi.fit(
        denoising_objective(p_uncond=c["p_uncond"]), model, optimizer=opt, steps=steps, key=seed, data=data,
        batch_size=c["batch_size"], progress=progress, desc=f"diffusion {name}", chunk=200,
        checkpoint=checkpoint, checkpoint_every=2000 if checkpoint else None, resume=True if checkpoint else None,
    )
    seconds = time.time() - t0
    hist = np.asarray(res.history["objective"])
    out = Path(out) if out else WEIGHTS / f"{name}.npz"
    save_tree(out, res.params)
    write_json(
        out.with_suffix(".json"),
        {
            "name": name, "config": {k: list(v) if isinstance(v, tuple) else v for k, v in c.items()},
            "steps": steps, "seed": seed, "command": f"python -m pplvi.diffusion train {name} --steps {steps}",
            "final_loss": float(-np.mean(hist[-min(len(hist), 500):])), "train_seconds": round(seconds, 1),
            "device": device_name(),
            "parameters": int(sum(a.size for a in jax.tree.leaves(res.params) if hasattr(a, "size"))),
        },
    )
    return res.params


def load(name: str, path: Path | None = None) -> Diffusion:
    """The trained model ``name`` from ``pplvi/diffusion/weights`` (or ``path``); a :class:`pplvi.DataError` names
    the file and the command that makes it when it is missing."""
    path = Path(path) if path else WEIGHTS / f"{name}.npz"
    if not path.exists():
        raise DataError(
            f"no trained diffusion model at {path}; make it with `python -m pplvi.diffusion train {name}`"
        )
    return load_tree(path, eqx.filter_eval_shape(build, name))


def describe(name: str, path: Path | None = None) -> dict:
    """The JSON description written next to the weights."""
    path = (Path(path) if path else WEIGHTS / f"{name}.npz").with_suffix(".json")
    return json.loads(path.read_text())


def sample_grid(name: str, out, weights=None, guidance: float = 1.0, steps: int = 50, per_class: int = 10, seed=0):
    """Write a PNG grid of DDIM samples of ``name``'s model, one row per class, with classifier-free guidance
    scale ``guidance``; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pplvi.diffusion.samplers import cfg, ddim

    model = load(name, weights)
    c = _config(name)
    labels = jnp.repeat(jnp.arange(c["num_classes"]), per_class)
    shape = (labels.shape[0], 1, c["size"], c["size"])
    x = jax.jit(lambda k: ddim(k, cfg(model, labels, guidance), model.schedule, shape, steps).x)(jax.random.key(seed))
    img = np.asarray(to_pixels(x)).reshape(c["num_classes"], per_class, c["size"], c["size"])
    grid = img.transpose(0, 2, 1, 3).reshape(c["num_classes"] * c["size"], per_class * c["size"])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    plt.imsave(out, grid, cmap="gray", vmin=0, vmax=1)
    return out
