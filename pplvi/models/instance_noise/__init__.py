"""Instance noise for singular distributions (Chae et al., JMLR 2023): ELBO training of a VAE-type deep generative
model on data perturbed with instance noise, and the exact Wasserstein-1 of the estimate to the truth."""

from pplvi.models.instance_noise.model import (
    InstanceNoiseVAE,
    add_instance_noise,
    encoder_guide,
    fit_instance_noise,
    generative_model,
    instance_noise_elbo,
    sample_circle,
    sample_generator,
)
from pplvi.models.instance_noise.wasserstein import wasserstein1

__all__ = [
    "InstanceNoiseVAE", "add_instance_noise", "encoder_guide", "fit_instance_noise", "generative_model",
    "instance_noise_elbo", "sample_circle", "sample_generator", "wasserstein1",
]
