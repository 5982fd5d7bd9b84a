"""The VAE family, written in pplvi's public language.

* Gaussian-latent VAE (:class:`GaussianVAE`, MLP or convolutional encoder and decoder), with generative functions
  :func:`model` and :func:`guide` and the batch objectives :func:`elbo` and :func:`iwae`; :func:`log_likelihood`
  estimates the test log-likelihood (IWAE with many particles).
* Linear-Gaussian VAE (:class:`LinearGaussianVAE`, :func:`linear_model`, :func:`linear_guide`,
  :func:`linear_elbo`) and the exact probabilistic-PCA check (:func:`ppca_mle`, :func:`ppca_check`).
* Discrete-latent VAE (:class:`DiscreteVAE`: Bernoulli or Categorical latents), with :func:`discrete_model`,
  :func:`discrete_guide` and :func:`discrete_elbo` taking the guide's estimator (``"enum"``, ``"mvd"``,
  ``"reinforce"``, ``"baseline"`` or any :class:`pplvi.Estimator`), and :func:`discrete_vimco` (multi-sample).

Everything trains with :func:`pplvi.fit`: ``pplvi.fit(elbo(binarize=True), GaussianVAE.mlp(key), data=images,
batch_size=100, optimizer=optax.adam(1e-3), steps=..., key=...)``. ``python -m pplvi.models.vae reproduce`` runs
the full-size checks and writes ``benchmarks/results/vae.json``.
"""

from pplvi.models.vae.data import load_images
from pplvi.models.vae.discrete import (
    ESTIMATORS,
    DiscreteVAE,
    discrete_elbo,
    discrete_guide,
    discrete_log_likelihood,
    discrete_model,
    discrete_vimco,
    exact_discrete_elbo,
    guide_with,
)
from pplvi.models.vae.gaussian import GaussianVAE, elbo, guide, iwae, log_likelihood, model, reconstruct, sample_images
from pplvi.models.vae.linear import (
    LinearGaussianVAE,
    exact_linear_elbo,
    linear_elbo,
    linear_guide,
    linear_model,
    ppca_check,
    ppca_log_likelihood,
    ppca_mle,
    sample_ppca,
)
from pplvi.models.vae.networks import ConvDecoder, ConvEncoder, mlp
from pplvi.models.vae.objectives import batched, importance_log_likelihood

__all__ = [
    "ESTIMATORS", "ConvDecoder", "ConvEncoder", "DiscreteVAE", "GaussianVAE", "LinearGaussianVAE", "batched",
    "discrete_elbo", "discrete_guide", "discrete_log_likelihood", "discrete_model", "discrete_vimco", "elbo",
    "exact_discrete_elbo", "exact_linear_elbo", "guide", "guide_with", "importance_log_likelihood", "iwae",
    "linear_elbo", "linear_guide", "linear_model", "load_images", "log_likelihood", "mlp", "model", "ppca_check",
    "ppca_log_likelihood", "ppca_mle", "reconstruct", "sample_images", "sample_ppca",
]
