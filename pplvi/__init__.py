"""pplvi: programmable variational inference in JAX.

Write models and guides as generative functions (:func:`gen`, :func:`sample`), write a variational objective as a
program (:func:`objective`), and get unbiased, jit-compiled gradient estimators of it. Each random choice carries a
gradient strategy (:data:`reparam`, :data:`reinforce`, :func:`baseline`, :data:`enum`, :data:`mvd`, or your own
:class:`Estimator`), and strategies compose soundly through ``jax.vmap``, ``lax.scan`` and ``lax.cond``.
"""

from pplvi.core.dual import Continuation, Dual, DualDistribution
from pplvi.core.errors import (
    AddressError,
    DataError,
    EstimatorError,
    ObjectiveError,
    PPLVIError,
    SupportError,
)
from pplvi.core.estimators import (
    MVD,
    Baseline,
    Enum,
    Estimator,
    Reinforce,
    Reparam,
    baseline,
    default_estimator,
    enum,
    enum_sequential,
    mvd,
    reinforce,
    reparam,
)
from pplvi.core.gen import GenerativeFunction, Trace, cond, gen, sample, scan, switch, vmap, with_estimators
from pplvi.core.objective import Objective, add_cost, objective
from pplvi.inference import marginal, normalize
from pplvi.train import fit

__version__ = "0.1.0"

__all__ = [
    "AddressError", "Baseline", "Continuation", "DataError", "Dual", "DualDistribution", "Enum", "Estimator",
    "EstimatorError", "GenerativeFunction", "MVD", "Objective", "ObjectiveError", "PPLVIError", "Reinforce",
    "Reparam", "SupportError", "Trace", "baseline", "default_estimator", "enum", "enum_sequential", "gen", "mvd",
    "objective", "marginal", "normalize", "cond", "switch", "reinforce", "reparam", "sample", "scan", "vmap",
    "with_estimators", "add_cost", "fit",
]
