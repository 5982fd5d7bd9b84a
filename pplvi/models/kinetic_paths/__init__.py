"""Kinetic-optimal Gaussian probability paths (Shaul et al., ICML 2023): the data separation function by Monte
Carlo, the kinetic energy of a Gaussian path through it, the KO path in closed form, and a small flow-matching model
that uses a path as its schedule. See :mod:`pplvi.models.kinetic_paths.paths` for the math."""

from pplvi.models.kinetic_paths.flow import VelocityField, flow_matching, flow_matching_term, sample_flow, train_flow
from pplvi.models.kinetic_paths.paths import (
    GaussianPath,
    SeparationCurve,
    data_separation,
    kinetic_energy,
    kinetic_energy_monte_carlo,
    kinetic_optimal_path,
    ko_energy,
    normalize_dataset,
    posterior_mean,
)

__all__ = [
    "GaussianPath", "SeparationCurve", "VelocityField", "data_separation", "flow_matching", "flow_matching_term",
    "kinetic_energy", "kinetic_energy_monte_carlo", "kinetic_optimal_path", "ko_energy", "normalize_dataset",
    "posterior_mean", "sample_flow", "train_flow",
]
