"""Gradient diagnostics: how noisy is an objective's gradient estimator, leaf by leaf?"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pplvi.core.objective import Objective


def gradient_variance(objective: Objective, params, key, n: int, *args, argnums: int = 0) -> dict:
    r"""Draw ``n`` gradient estimates (vmapped, jitted) and summarize them per parameter leaf.

    Returns a dict of pytrees shaped like ``params``: ``mean`` (:math:`\bar g`), ``variance`` (elementwise, over the
    ``n`` draws), ``snr`` (signal-to-noise ratio :math:`|\bar g| / \mathrm{sd}(g)`, Rainforth et al. 2018), and
    ``total_variance``: the sum of all elementwise variances (a scalar)."""
    keys = jax.random.split(key, n)
    grads = jax.jit(jax.vmap(lambda k: objective.grad(k, params, *args, argnums=argnums)))(keys)
    mean = jax.tree_util.tree_map(lambda g: jnp.mean(g, axis=0), grads)
    variance = jax.tree_util.tree_map(lambda g: jnp.var(g, axis=0), grads)
    snr = jax.tree_util.tree_map(lambda m, v: jnp.abs(m) / jnp.sqrt(v + 1e-30), mean, variance)
    total = sum(jnp.sum(v) for v in jax.tree_util.tree_leaves(variance))
    return {"mean": mean, "variance": variance, "snr": snr, "total_variance": total}
