r"""Batch objectives and the log-likelihood estimate shared by every VAE in this package.

The per-datum bounds come from :mod:`pplvi.objectives` (``O.elbo``, ``O.iwae``, ``O.vimco``, ...), which take
``(params, x)`` for one image; :func:`batched` turns any of them into an objective over a minibatch that
:func:`pplvi.fit` can train.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

import pplvi
from pplvi import objectives as O


def batched(per_datum: pplvi.Objective, *, binarize: bool = False, name: str | None = None) -> pplvi.Objective:
    r"""The mean over a minibatch ``images`` (``(B, ...)``) of ``per_datum(params, x)``.

    Each image's bound is emitted with :func:`pplvi.add_cost` from its own ``jax.vmap`` lane, so a score-function
    estimator at one image's latent multiplies only that image's bound (Rao-Blackwellization: the gradient variance
    per datum does not grow with the batch size). For reparameterized guides this changes nothing.

    ``binarize=True`` treats ``images`` as intensities in [0, 1] and redraws every pixel as ``Bernoulli(intensity)``
    at each evaluation (dynamic binarization); the draw is a random choice of the objective that no parameter
    influences, so it contributes no gradient term. The objective's value is the batch mean of the per-datum bound
    (with ``binarize``, its expectation over the binarization too)."""

    @pplvi.objective(unroll=per_datum.unroll)
    def batch_objective(params, images):
        images = binarized(images) if binarize else images
        n = images.shape[0]
        jax.vmap(lambda x: pplvi.add_cost(per_datum(params, x) / n))(images)
        return jnp.zeros(())

    batch_objective.name = name or f"batch_{per_datum.name}"
    return batch_objective


def binarized(images):
    """Inside an objective: every pixel redrawn as ``Bernoulli(intensity)`` (a random choice at ``"binarized"``
    whose distribution no parameter influences), as float32."""
    return pplvi.sample("binarized", dist.Bernoulli(probs=images), estimator=pplvi.reinforce).astype(jnp.float32)


_LL_CACHE: dict = {}


def importance_log_likelihood(params, images, key, *, model, guide, K: int = 1000, chunk: int = 20) -> np.ndarray:
    r"""Per-image estimates of :math:`\log p(x)` by importance sampling with the guide as proposal:
    :math:`\log \frac1K \sum_k p(x, z_k) / q(z_k \mid x)`, the IWAE-``K`` bound (Burda et al. 2016). Its expectation
    is below :math:`\log p(x)` and rises to it as ``K`` grows; ``K = 5000`` is the usual test-set estimate, ``1000``
    is within a fraction of a nat for the models here.

    ``images``: ``(N, ...)`` (already binary). Computed ``chunk`` images at a time (memory: about ``chunk * K`` decoder
    activations); image ``i`` uses the key ``fold_in(key, i)``, so the result does not depend on ``chunk``. Returns a
    float64 NumPy array ``(N,)``; its mean is the usual "test log-likelihood"."""
    cache_key = (id(model), id(guide), K)
    if cache_key not in _LL_CACHE:
        bound = O.iwae(model, guide, K)

        @eqx.filter_jit
        def run(params, xs, keys):
            return jax.vmap(lambda k, x: bound.estimate(k, params, x))(keys, xs)

        _LL_CACHE[cache_key] = (model, guide, run)  # holding model and guide keeps their ids from being reused
    run = _LL_CACHE[cache_key][2]
    images = np.asarray(images, np.float32)
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(len(images)))
    out = []
    for start in range(0, len(images), chunk):
        xs, ks = images[start:start + chunk], keys[start:start + chunk]
        pad = chunk - len(xs)  # one compiled shape: pad the last chunk, drop the padding after
        if pad:
            xs = np.concatenate([xs, np.repeat(xs[-1:], pad, 0)])
            ks = jnp.concatenate([ks, jnp.repeat(ks[-1:], pad, 0)])
        out.append(np.asarray(run(params, jnp.asarray(xs), ks), np.float64)[: chunk - pad])
    return np.concatenate(out)
