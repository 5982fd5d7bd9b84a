r"""A small flow-matching model (Lipman et al. 2023) on a Gaussian path used as its schedule, for 2-D problems.

The objective regresses a velocity network on the conditional velocity of the path,

.. math:: \mathcal L(\theta) = -\,\mathbb E_{t \sim U(0,1),\, x_0 \sim \mathcal N(0, I),\, x_1 \sim \text{data}}
          \big\|v_\theta(\alpha_t x_1 + \sigma_t x_0, t) - (\dot\alpha_t x_1 + \dot\sigma_t x_0)\big\|^2

(maximized, as every pplvi objective); ``t`` and ``x0`` are random choices of the objective. Samples come from Euler
steps of :math:`\dot x = v_\theta(x, t)` from :math:`x_0 \sim \mathcal N(0, I)` at :math:`t = 0` to :math:`t = 1`.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpyro.distributions as dist
import optax

import pplvi
from pplvi.models.kinetic_paths.paths import GaussianPath


class VelocityField(eqx.Module):
    """:math:`v_\\theta(x, t)`: an MLP on ``[x, t, sin(pi k t), cos(pi k t)]`` (k = 1, 2)."""

    mlp: eqx.nn.MLP

    def __init__(self, dim: int = 2, width: int = 64, depth: int = 3, *, key):
        self.mlp = eqx.nn.MLP(dim + 5, dim, width, depth, activation=jax.nn.silu, key=key)

    def __call__(self, x, t):
        t = jnp.broadcast_to(t, x.shape[:-1])[..., None]
        feats = jnp.concatenate([x, t, jnp.sin(jnp.pi * t), jnp.cos(jnp.pi * t),
                                 jnp.sin(2 * jnp.pi * t), jnp.cos(2 * jnp.pi * t)], -1)
        return jnp.vectorize(self.mlp, signature="(k)->(d)")(feats)


def flow_matching_term(path: GaussianPath, velocity, x1):
    """Inside an objective: draws ``"t"`` and ``"x0"`` and returns the (negated) flow-matching loss on ``x1``."""
    t = pplvi.sample("t", dist.Uniform(jnp.zeros(x1.shape[0]), 1.0).to_event(1))
    x0 = pplvi.sample("x0", dist.Normal(jnp.zeros_like(x1), 1.0).to_event(2))
    a, s = path.alpha(t)[:, None], path.sigma(t)[:, None]
    target = path.dalpha(t)[:, None] * x1 + path.dsigma(t)[:, None] * x0
    return -jnp.mean(jnp.sum((velocity(a * x1 + s * x0, t) - target) ** 2, -1))


def flow_matching(path: GaussianPath) -> pplvi.Objective:
    """The flow-matching objective above for ``path``, taking ``(velocity, x1)`` with ``x1`` a batch ``(B, d)``."""

    @pplvi.objective
    def flow_matching_objective(velocity, x1):
        return flow_matching_term(path, velocity, x1)

    return flow_matching_objective


def sample_flow(velocity, key, num: int, *, steps: int = 32, dim: int = 2):
    """``num`` samples by ``steps`` Euler steps of the learned ODE from t = 0 to 1."""
    x = jax.random.normal(key, (num, dim))
    dt = 1.0 / steps

    def step(x, k):
        return x + dt * velocity(x, k * dt), None

    x, _ = jax.lax.scan(step, x, jnp.arange(steps, dtype=x.dtype))
    return x


def train_flow(path: GaussianPath, data, *, steps: int = 3000, batch_size: int = 256, lr: float = 2e-3,
               width: int = 64, seed: int = 0, velocity=None, progress: bool = False):
    """Train a :class:`VelocityField` on ``data`` ``(n, d)`` with :func:`pplvi.fit` (Adam, cosine decay); returns
    the :class:`pplvi.train.FitResult`-like result of ``fit``."""
    data = jnp.asarray(data, jnp.float32)
    if velocity is None:
        velocity = VelocityField(data.shape[1], width, key=jax.random.key(seed))
    optimizer = optax.adam(optax.cosine_decay_schedule(lr, steps, alpha=0.05))
    return pplvi.fit(flow_matching(path), velocity, optimizer=optimizer, steps=steps, key=seed + 1, data=data,
                     batch_size=min(batch_size, data.shape[0]), progress=progress)
