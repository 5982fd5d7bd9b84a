"""Diffusion models in pplvi: noise schedules, denoising networks, the training objective (a reweighted ELBO written
as a pplvi objective), samplers with NFE accounting, and exactly known models for checks.

Inverse problems (RED-Diff), guidance and score distillation build on these: :mod:`pplvi.diffusion.inverse`,
:mod:`pplvi.diffusion.guidance`, :mod:`pplvi.diffusion.distill`; :mod:`pplvi.diffusion.evaluation` scores samples
with a classifier and features trained here.
"""

from pplvi.diffusion import (
    agd,
    classifier_guidance,
    distill,
    dynamic_cfg,
    evaluation,
    feynman_kac,
    guidance,
    inverse,
    ppap,
    pretrained,
)
from pplvi.diffusion.analytic import GaussianMixture, energy_distance, gaussian_x0
from pplvi.diffusion.model import PREDICTIONS, Diffusion, denoising_objective
from pplvi.diffusion.networks import MLPDenoiser, UNet
from pplvi.diffusion.samplers import (
    SAMPLERS,
    Samples,
    cfg,
    conditional,
    ddim,
    ddpm,
    dpm_solver_pp,
    heun,
    karras_times,
    predictor,
    sample,
    uniform_times,
)
from pplvi.diffusion.schedules import CosineSchedule, EDMSchedule, LinearSchedule, Schedule, schedule

__all__ = [
    "agd", "classifier_guidance", "distill", "dynamic_cfg", "evaluation", "feynman_kac", "guidance", "inverse", "ppap",
    "pretrained",
    "CosineSchedule", "Diffusion", "EDMSchedule", "GaussianMixture", "LinearSchedule", "MLPDenoiser", "PREDICTIONS",
    "SAMPLERS", "Samples", "Schedule", "UNet", "cfg", "conditional", "ddim", "ddpm", "denoising_objective",
    "dpm_solver_pp", "energy_distance", "gaussian_x0", "heun", "karras_times", "predictor", "sample", "schedule",
    "uniform_times",
]
