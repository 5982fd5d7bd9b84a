"""Approximate marginalization and normalization: generative functions with estimated densities."""

from pplvi.inference.marginal import Marginal, Normalize, marginal, normalize

__all__ = ["Marginal", "Normalize", "marginal", "normalize"]
