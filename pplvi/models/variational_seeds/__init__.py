"""The reproduction of issue 13's four small variational methods (ATE, kinetic-optimal paths, instance noise,
variational continual learning with binary weights): :func:`reproduce` writes
``benchmarks/results/variational_seeds.json``; the methods live in :mod:`pplvi.models.ate`,
:mod:`pplvi.models.kinetic_paths`, :mod:`pplvi.models.instance_noise` and :mod:`pplvi.models.continual`."""

from pplvi.models.variational_seeds.reproduce import (
    ate_check,
    continual_check,
    instance_noise_check,
    ko_check,
    reproduce,
)

__all__ = ["ate_check", "continual_check", "instance_noise_check", "ko_check", "reproduce"]
