r"""Likelihood estimation of a singular distribution with instance noise (Chae, Kim, Kim & Lin, "A likelihood
approach to nonparametric estimation of a singular distribution using deep generative models", JMLR 2023).

The truth :math:`P_0` lives on a low-dimensional set (here the unit circle in :math:`\mathbb R^2`), so it has no
density and maximum likelihood for it is ill-posed. Chae et al. perturb the data with **instance noise**,
:math:`Y_i = X_i + \sigma\epsilon_i`, :math:`\epsilon_i \sim \mathcal N(0, I)`, and fit by likelihood the deep
generative model

.. math:: z \sim \mathcal N(0, I_k), \qquad Y \mid z \sim \mathcal N(g_\theta(z), \sigma^2 I),

whose noise level is that same :math:`\sigma`; the estimate of :math:`P_0` is the noise-free push-forward
:math:`g_\theta \# \mathcal N(0, I_k)`. The likelihood is intractable, so we maximize the ELBO with an amortized
Gaussian encoder :math:`q_\phi(z \mid y) = \mathcal N(\mu_\phi(y), \mathrm{diag}\, s_\phi(y)^2)` (a VAE-type model),

.. math:: \mathcal L = \frac1B\sum_{i=1}^B \mathbb E_{q_\phi(z \mid y_i)}\big[\log \mathcal N(y_i; g_\theta(z),
          \sigma^2 I) + \log \mathcal N(z; 0, I) - \log q_\phi(z \mid y_i)\big].

The noise level trades two errors: as :math:`\sigma \to 0` the likelihood of a singular model degenerates (and in
practice the ELBO, whose data term scales as :math:`1/\sigma^2`, becomes ill-conditioned), while a large
:math:`\sigma` blurs the data and makes the deconvolution harder. The :math:`W_1` error of the estimate is therefore
U-shaped in :math:`\sigma` (the check in ``pplvi.models.variational_seeds``).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import optax

import pplvi


def sample_circle(key, num: int, radius: float = 1.0) -> jnp.ndarray:
    """``num`` points uniform on the circle of ``radius`` in :math:`\\mathbb R^2`."""
    angle = jax.random.uniform(key, (num,), maxval=2 * np.pi)
    return radius * jnp.stack([jnp.cos(angle), jnp.sin(angle)], -1)


def add_instance_noise(key, data, sigma: float) -> jnp.ndarray:
    """:math:`Y_i = X_i + \\sigma \\epsilon_i` (drawn once: the perturbed sample is the data)."""
    if not sigma > 0:
        raise pplvi.DataError(f"add_instance_noise: sigma must be > 0, got {sigma!r}")
    return data + sigma * jax.random.normal(key, data.shape)


class InstanceNoiseVAE(eqx.Module):
    """Decoder :math:`g_\\theta: \\mathbb R^k \\to \\mathbb R^2` and Gaussian encoder, MLPs of ``width``."""

    decoder: eqx.nn.MLP
    encoder: eqx.nn.MLP
    latent: int = eqx.field(static=True)

    def __init__(self, latent: int = 1, width: int = 64, depth: int = 2, dim: int = 2, *, key):
        k1, k2 = jax.random.split(key)
        self.decoder = eqx.nn.MLP(latent, dim, width, depth, activation=jax.nn.silu, key=k1)
        self.encoder = eqx.nn.MLP(dim, 2 * latent, width, depth, activation=jax.nn.silu, key=k2)
        self.latent = latent

    def generate(self, z):
        """:math:`g_\\theta(z)` for a batch ``(B, k)``."""
        return jax.vmap(self.decoder)(z)

    def encode(self, y):
        out = jax.vmap(self.encoder)(y)
        return out[:, : self.latent], jax.nn.softplus(out[:, self.latent:]) + 1e-4


def generative_model(sigma: float):
    """The model above as a generative function ``(vae, y)`` with choices ``"z"`` and ``"y"`` (observed)."""

    @pplvi.gen
    def model(vae, y):
        z = pplvi.sample("z", dist.Normal(jnp.zeros((y.shape[0], vae.latent)), 1.0).to_event(2))
        pplvi.sample("y", dist.Normal(vae.generate(z), sigma).to_event(2), obs=y)

    return model


@pplvi.gen
def encoder_guide(vae, y):
    """:math:`q_\\phi(z \\mid y)`, reparameterized."""
    loc, scale = vae.encode(y)
    pplvi.sample("z", dist.Normal(loc, scale).to_event(2))


def instance_noise_elbo(sigma: float) -> pplvi.Objective:
    """The per-datum ELBO :math:`\\mathcal L` above for noise level ``sigma``, as an objective ``(vae, y)``."""
    if not sigma > 0:
        raise pplvi.PPLVIError(f"instance_noise_elbo: sigma must be > 0, got {sigma!r}")
    model = generative_model(sigma)

    @pplvi.objective
    def elbo_per_datum(vae, y):
        trace = encoder_guide.simulate(vae, y)
        return (model.assess(trace.choices, vae, y) - trace.score) / y.shape[0]

    return elbo_per_datum


def fit_instance_noise(data, sigma: float, *, steps: int = 3000, batch_size: int = 256, lr: float = 2e-3,
                       latent: int = 1, width: int = 64, seed: int = 0, progress: bool = False):
    """Perturb ``data`` with instance noise ``sigma`` and train an :class:`InstanceNoiseVAE` on it by the ELBO with
    :func:`pplvi.fit` (Adam, cosine decay). Returns ``fit``'s result."""
    data = jnp.asarray(data, jnp.float32)
    if data.ndim != 2 or data.shape[1] != 2:
        raise pplvi.DataError(f"fit_instance_noise: data must be (n, 2), got shape {data.shape}")
    noisy = add_instance_noise(jax.random.key(seed + 7), data, sigma)
    vae = InstanceNoiseVAE(latent, width, key=jax.random.key(seed))
    optimizer = optax.adam(optax.cosine_decay_schedule(lr, steps, alpha=0.05))
    return pplvi.fit(instance_noise_elbo(sigma), vae, optimizer=optimizer, steps=steps, key=seed + 1, data=noisy,
                     batch_size=min(batch_size, data.shape[0]), progress=progress)


def sample_generator(vae: InstanceNoiseVAE, key, num: int) -> jnp.ndarray:
    """``num`` draws from the estimate :math:`g_\\theta \\# \\mathcal N(0, I_k)` (no output noise)."""
    return vae.generate(jax.random.normal(key, (num, vae.latent)))
