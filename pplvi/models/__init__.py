"""The model library: complete models written only in pplvi's public language (``pplvi``, ``pplvi.objectives``,
``pplvi.data``, ``equinox``, ``optax``, ``numpyro.distributions``). Each model exposes its generative functions and
its objectives, trains with :func:`pplvi.fit`, and has an example script in ``examples/`` and a documentation page.

* :mod:`pplvi.models.vae`: the VAE family — Gaussian-latent VAEs (MLP and convolutional), IWAE training, the
  linear-Gaussian VAE / probabilistic PCA check, and discrete-latent VAEs (Bernoulli and Categorical latents with
  enumeration, measure-valued derivatives or REINFORCE with a learned baseline).
"""

from pplvi.models import vae

__all__ = ["vae"]
