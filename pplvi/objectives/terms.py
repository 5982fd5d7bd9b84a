r"""Building blocks of objectives, callable inside any ``@pplvi.objective``.

Conventions shared by the whole library: a model and a guide are generative functions called with the same
arguments, ``model(params, *args)`` and ``guide(params, *args)`` (as in NumPyro, but with parameters passed
explicitly). Model choices that the guide does not propose are drawn from the model's prior and their proposal
density cancels (``generate``'s importance weight).
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from pplvi.core.gen import GenerativeFunction, Trace


class Terms(NamedTuple):
    r"""One guide sample and the pieces of its log importance weight.

    ``log w = likelihood + prior - guide`` where ``likelihood`` sums the model's observed sites, ``prior`` the model's
    sites proposed by the guide (and ``guide`` is :math:`\log q`). ``trace`` is the guide's trace."""

    likelihood: jax.Array
    prior: jax.Array
    guide: jax.Array
    trace: Trace

    @property
    def log_weight(self):
        return self.likelihood + self.prior - self.guide


def terms(model: GenerativeFunction, guide: GenerativeFunction, params, *args) -> Terms:
    """Sample the guide once and score the model on its choices (inside an objective)."""
    q = guide.simulate(params, *args)
    p, _ = model.generate(q.choices, params, *args)
    proposed = set(q.choices)
    likelihood = sum((jnp.sum(v) for a, v in p.log_probs.items() if a not in p.choices), jnp.zeros(()))
    prior = sum((jnp.sum(v) for a, v in p.log_probs.items() if a in proposed), jnp.zeros(()))
    return Terms(likelihood, prior, q.score, q)


def particles(model: GenerativeFunction, guide: GenerativeFunction, K: int, params, *args) -> Terms:
    """``K`` independent guide samples (a ``jax.vmap`` over particles); every field gains a leading axis ``K``."""
    return jax.vmap(lambda _: terms(model, guide, params, *args))(jnp.arange(K))


def stop_gradient(tree):
    """``jax.lax.stop_gradient`` on every array of a pytree; other leaves (e.g. an equinox module's activation
    functions) pass through unchanged."""
    return jax.tree_util.tree_map(lambda x: jax.lax.stop_gradient(x) if eqx.is_array(x) else x, tree)


def log_mean_exp(x, axis=0):
    return jax.nn.logsumexp(x, axis=axis) - jnp.log(x.shape[axis])
