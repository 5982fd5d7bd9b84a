"""Encoders and decoders (equinox modules) for 28x28 images stored flat, as 784 values in [0, 1].

Every encoder maps an image ``(784,)`` to a vector of parameters of ``q(z | x)``; every decoder maps a latent
vector to 784 Bernoulli logits. They are plain ``equinox.Module`` callables on one datum (batches go through
``jax.vmap`` in the objectives).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

SIDE = 28
PIXELS = SIDE * SIDE


def mlp(key, in_size: int, out_size: int, hidden=(200, 200), activation=jnp.tanh) -> eqx.Module:
    """An MLP ``in_size -> hidden... -> out_size`` (``hidden`` all of one width; ``()`` gives a linear map)."""
    hidden = tuple(hidden)
    if len(set(hidden)) > 1:
        raise ValueError(f"hidden layers must share one width (equinox.nn.MLP), got {hidden}")
    width = hidden[0] if hidden else 1
    return eqx.nn.MLP(in_size, out_size, width, len(hidden), activation=activation, key=key)


class ConvEncoder(eqx.Module):
    """28x28 image -> ``out_size``: two stride-2 convolutions (32 and 64 channels, 4x4, ReLU) and a linear layer."""

    conv1: eqx.nn.Conv2d
    conv2: eqx.nn.Conv2d
    head: eqx.nn.Linear

    def __init__(self, key, out_size: int, channels=(32, 64)):
        k1, k2, k3 = jax.random.split(key, 3)
        c1, c2 = channels
        self.conv1 = eqx.nn.Conv2d(1, c1, 4, stride=2, padding=1, key=k1)  # 28 -> 14
        self.conv2 = eqx.nn.Conv2d(c1, c2, 4, stride=2, padding=1, key=k2)  # 14 -> 7
        self.head = eqx.nn.Linear(c2 * 7 * 7, out_size, key=k3)

    def __call__(self, x):
        h = jax.nn.relu(self.conv1(x.reshape(1, SIDE, SIDE)))
        h = jax.nn.relu(self.conv2(h))
        return self.head(h.reshape(-1))


class ConvDecoder(eqx.Module):
    """latent -> 784 logits: a linear layer to 64x7x7 and two stride-2 transposed convolutions (ReLU between)."""

    head: eqx.nn.Linear
    deconv1: eqx.nn.ConvTranspose2d
    deconv2: eqx.nn.ConvTranspose2d
    channels: int = eqx.field(static=True)

    def __init__(self, key, in_size: int, channels=(64, 32)):
        k1, k2, k3 = jax.random.split(key, 3)
        c1, c2 = channels
        self.channels = c1
        self.head = eqx.nn.Linear(in_size, c1 * 7 * 7, key=k1)
        self.deconv1 = eqx.nn.ConvTranspose2d(c1, c2, 4, stride=2, padding=1, key=k2)  # 7 -> 14
        self.deconv2 = eqx.nn.ConvTranspose2d(c2, 1, 4, stride=2, padding=1, key=k3)  # 14 -> 28

    def __call__(self, z):
        h = jax.nn.relu(self.head(z)).reshape(self.channels, 7, 7)
        h = jax.nn.relu(self.deconv1(h))
        return self.deconv2(h).reshape(PIXELS)
