"""Attend-Infer-Repeat (Eslami et al. 2016) on multi-MNIST, written in pplvi's public language.

* :func:`multi_mnist`: 50 x 50 canvases with 0-2 MNIST digits, built deterministically from ``$PPLVI_DATA``.
* :class:`AIR` (networks), :func:`air_model` and :func:`air_guide` (generative functions for one image), with the
  spatial transformer :func:`crop` / :func:`place`.
* Objectives over a minibatch: :func:`air_elbo` (``estimator`` at the present bits: ``"reinforce"``, ``"baseline"``,
  ``"enum"``, ``"mvd"`` or any :class:`pplvi.Estimator`) and :func:`air_iwae` (``K`` particles).
* :func:`infer_counts` / :func:`count_accuracy`: the number of objects the guide finds.

Train with :func:`pplvi.fit`: ``pplvi.fit(air_elbo("enum"), AIR.init(key), data=images, batch_size=32,
optimizer=optax.adam(1e-4), steps=..., key=...)``. ``benchmarks/air.py`` times every estimator against NumPyro's
``TraceGraph_ELBO`` on the same networks.
"""

from pplvi.models.air.data import multi_mnist
from pplvi.models.air.model import (
    AIR,
    ESTIMATORS,
    air_elbo,
    air_guide,
    air_iwae,
    air_model,
    count_accuracy,
    guide_with,
    infer_counts,
)
from pplvi.models.air.transformer import crop, geometry, place

__all__ = [
    "AIR", "ESTIMATORS", "air_elbo", "air_guide", "air_iwae", "air_model", "count_accuracy", "crop", "geometry",
    "guide_with", "infer_counts", "multi_mnist", "place",
]
