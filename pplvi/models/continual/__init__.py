"""Variational continual learning with binary weights (Li, Huang, Zou & Huang, PRE 2023): mean-field fields,
Gaussian pre-activations, the previous task's posterior as the prior; teacher-student perceptron tasks."""

from pplvi.models.continual.perceptron import (
    binary_kl,
    continual_objective,
    learn_sequence,
    log_correct_probability,
    make_task,
    make_teachers,
    overlap,
)

__all__ = [
    "binary_kl", "continual_objective", "learn_sequence", "log_correct_probability", "make_task", "make_teachers",
    "overlap",
]
