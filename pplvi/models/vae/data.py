"""MNIST and Fashion-MNIST as flat ``(N, 784)`` float32 arrays for the VAEs, read from ``$PPLVI_DATA`` by
:mod:`pplvi.data` (never downloaded).

Binarization, as in Burda et al. (2016) and most VAE papers on binary MNIST:

* training sets are kept as intensities in [0, 1] and **binarized dynamically** — every pixel redrawn as
  ``Bernoulli(intensity)`` at every step, inside the objective (``binarize=True`` in :func:`~pplvi.models.vae.elbo`
  and the other objective builders);
* test sets are binarized **once**, by one fixed draw (``binarize="sample"``, seeded), so that every model is
  evaluated on the same binary images.
"""

from __future__ import annotations

import numpy as np

from pplvi.data import load_fashion_mnist, load_mnist

DATASETS = {"mnist": load_mnist, "fashion-mnist": load_fashion_mnist}


def load_images(dataset: str = "mnist", split: str = "train", binarize: str | None = None, seed: int = 0):
    """Images of ``dataset`` (``"mnist"`` or ``"fashion-mnist"``) as float32 ``(N, 784)``.

    ``binarize``: ``None`` keeps the intensities in [0, 1] (for dynamic binarization during training);
    ``"sample"`` draws each pixel once as ``Bernoulli(intensity)`` with NumPy's generator seeded by ``seed`` (the
    fixed stochastic binarization of a test set); ``"threshold"`` thresholds at 0.5. Raises
    :class:`pplvi.DataError` when the files are missing."""
    if dataset not in DATASETS:
        raise ValueError(f"dataset={dataset!r} is not one of {list(DATASETS)}")
    if binarize not in (None, "sample", "threshold"):
        raise ValueError(f"binarize={binarize!r} is not one of [None, 'sample', 'threshold']")
    images, _ = DATASETS[dataset](split)
    images = images.reshape(len(images), -1).astype(np.float32)
    if binarize == "sample":
        images = (np.random.default_rng(seed).random(images.shape, dtype=np.float32) < images).astype(np.float32)
    elif binarize == "threshold":
        images = (images > 0.5).astype(np.float32)
    return images
