r"""The Gaussian-latent VAE (Kingma & Welling 2014; Rezende et al. 2014) on binary images:

.. math:: p_\theta(z) = \mathcal N(0, I), \quad p_\theta(x \mid z) = \prod_i \mathrm{Bernoulli}(x_i;
          \sigma(f_\theta(z)_i)), \qquad q_\phi(z \mid x) = \mathcal N(\mu_\phi(x), \mathrm{diag}\,\sigma_\phi(x)^2),

trained by the ELBO or by the IWAE bound (Burda et al. 2016). ``model`` and ``guide`` are generative functions of
``(vae, x)`` for one image ``x`` of 784 pixels; the objectives average over a minibatch.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpyro.distributions as dist

import pplvi
from pplvi import objectives as O
from pplvi.models.vae.networks import PIXELS, ConvDecoder, ConvEncoder, mlp
from pplvi.models.vae.objectives import batched, importance_log_likelihood


class GaussianVAE(eqx.Module):
    """Encoder ``x -> (loc, log_scale)`` of a ``latent``-dimensional diagonal Gaussian (one vector of ``2 * latent``)
    and decoder ``z -> 784`` Bernoulli logits. Build with :meth:`mlp` or :meth:`conv`, or pass any two equinox
    modules with those signatures."""

    encoder: eqx.Module
    decoder: eqx.Module
    latent: int = eqx.field(static=True)

    @classmethod
    def mlp(cls, key, latent: int = 50, hidden=(200, 200), data_dim: int = PIXELS, activation=jnp.tanh):
        """MLP encoder and decoder, ``data_dim -> hidden -> 2 latent`` and ``latent -> reversed(hidden) ->
        data_dim``; the defaults are Burda et al.'s one-stochastic-layer MNIST architecture (tanh, 200-200, 50)."""
        k_enc, k_dec = jax.random.split(key)
        encoder = mlp(k_enc, data_dim, 2 * latent, hidden, activation)
        decoder = mlp(k_dec, latent, data_dim, tuple(reversed(tuple(hidden))), activation)
        return cls(encoder, decoder, latent)

    @classmethod
    def conv(cls, key, latent: int = 16, channels=(32, 64)):
        """Convolutional encoder and decoder for 28x28 images (:class:`ConvEncoder` with ``channels``,
        :class:`ConvDecoder` with them reversed)."""
        k_enc, k_dec = jax.random.split(key)
        channels = tuple(channels)
        return cls(ConvEncoder(k_enc, 2 * latent, channels), ConvDecoder(k_dec, latent, channels[::-1]), latent)


@pplvi.gen
def model(vae, x):
    """``z ~ N(0, I)``, ``x ~ Bernoulli(logits = decoder(z))`` over the 784 pixels; returns the logits.
    ``x=None`` samples an image instead of observing one."""
    z = pplvi.sample("z", dist.Normal(jnp.zeros(vae.latent), 1.0).to_event(1))
    logits = vae.decoder(z)
    pplvi.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)
    return logits


@pplvi.gen
def guide(vae, x):
    """``z ~ N(loc(x), diag(exp(log_scale(x))^2))``; reparameterized (the default for a Normal)."""
    loc, log_scale = jnp.split(vae.encoder(x), 2)
    return pplvi.sample("z", dist.Normal(loc, jnp.exp(log_scale)).to_event(1))


def elbo(*, binarize: bool = False, analytic_kl: bool = False) -> pplvi.Objective:
    r"""The ELBO averaged over a minibatch, :math:`\frac1B \sum_b \mathbb{E}_q[\log p(x_b, z) - \log q(z \mid x_b)]`:
    ``O.elbo(model, guide)`` per image (``analytic_kl=True``: the Gaussian KL in closed form). ``binarize``: dynamic
    binarization of intensity images (see :func:`batched`). Call as ``objective(vae, images)``."""
    return batched(O.elbo(model, guide, analytic_kl=analytic_kl), binarize=binarize, name="elbo")


def iwae(K: int, *, binarize: bool = False) -> pplvi.Objective:
    r"""The IWAE bound with ``K`` particles averaged over a minibatch: ``O.iwae(model, guide, K)`` per image
    (Burda et al. 2016). ``K = 1`` is the ELBO."""
    return batched(O.iwae(model, guide, K), binarize=binarize, name=f"iwae{K}")


def log_likelihood(vae, images, key, K: int = 1000, chunk: int = 20):
    """Per-image IWAE-``K`` estimates of ``log p(x)`` for binary ``images`` ``(N, 784)``
    (:func:`~pplvi.models.vae.objectives.importance_log_likelihood` with this model and guide)."""
    return importance_log_likelihood(vae, images, key, model=model, guide=guide, K=K, chunk=chunk)


@eqx.filter_jit
def sample_images(vae, key, n: int = 64):
    """``n`` images from the model, as pixel probabilities ``sigmoid(decoder(z))``, ``z ~ N(0, I)``: ``(n, 784)``."""
    return jax.vmap(lambda k: jax.nn.sigmoid(model.simulate(k, vae, None).retval))(jax.random.split(key, n))


@eqx.filter_jit
def reconstruct(vae, key, images):
    """Pixel probabilities of ``decoder(z)`` with ``z ~ q(z | x)`` for each image: ``(N, 784)``."""
    keys = jax.random.split(key, images.shape[0])
    return jax.vmap(lambda k, x: jax.nn.sigmoid(vae.decoder(guide.simulate(k, vae, x).retval)))(keys, images)
