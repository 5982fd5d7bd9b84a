"""Align-Then-stEer (ATE) at small scale: a reverse-KL-constrained VAE alignment of new-domain actions into the modes
of a pretrained latent space, then guided fine-tuning of a flow policy on 2-D action mixtures."""

from pplvi.models.ate.align_steer import (
    AffineAdapter,
    LatentVAE,
    alignment_elbo,
    coverage,
    euler_actions,
    fit_adapter,
    guided_finetune_objective,
    latent_guidance,
    latent_prior,
    mode_centres,
    pretrain,
    pretraining_elbo,
    sample_actions,
    steps_to_cover,
)

__all__ = [
    "AffineAdapter", "LatentVAE", "alignment_elbo", "coverage", "euler_actions", "fit_adapter",
    "guided_finetune_objective", "latent_guidance", "latent_prior", "mode_centres", "pretrain", "pretraining_elbo",
    "sample_actions", "steps_to_cover",
]
