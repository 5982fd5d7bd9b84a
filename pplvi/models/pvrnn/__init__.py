"""PV-RNN, the predictive-coding-inspired variational RNN (Ahmadi & Tani, "A Novel Predictive-Coding-Inspired
Variational RNN Model for Online Prediction and Recognition", Neural Computation 31(11), 2019; arXiv:1811.01339),
written in pplvi's public language.

* Model (:mod:`~pplvi.models.pvrnn.model`): :class:`PVRNN` (multiple-timescale layers with time constants
  :math:`\\tau_l`, learned priors :math:`p(z_t \\mid d_{t-1})`), :class:`AdaptiveVectors` (the free per-sequence,
  per-step posterior parameters), :func:`unroll`, :func:`generate`.
* Objective, training, error regression (:mod:`~pplvi.models.pvrnn.objectives`): :func:`pvrnn_objective`
  (reconstruction + meta-prior-weighted KL, maximized as its negative), :func:`train`, :func:`error_regression`
  (frozen network, ``pplvi.fit(..., trainable=...)``), :func:`predict`, :func:`predict_from_prior`,
  :func:`reconstruct`.
* Baseline (:mod:`~pplvi.models.pvrnn.baseline`): the VRNN with an amortized :class:`Encoder`:
  :func:`vrnn_objective`, :func:`train_vrnn`, :func:`vrnn_predict`.
* Data (:mod:`~pplvi.models.pvrnn.data`): :class:`FSM`, :func:`branching_fsm`, :func:`fsm_sequences`,
  :func:`linear_gaussian_sequences`, :func:`kalman_smoother`; Omniglot pen strokes as pen-move sequences:
  :func:`resample_stroke`, :func:`drawing_offsets`, :func:`stroke_sequences`, :func:`character_split`.
* Metrics (:mod:`~pplvi.models.pvrnn.metrics`): :func:`branching_error`, :func:`branching_standard_error`,
  :func:`determinism`.

``python -m pplvi.models.pvrnn reproduce [--only SECTIONS]`` runs the meta-prior sweep, the error-regression checks
and the Omniglot pen-stroke experiment and writes ``benchmarks/results/pvrnn.json`` (figures next to it).
"""

from pplvi.models.pvrnn.baseline import filter_sequence, train_vrnn, vrnn_objective, vrnn_predict
from pplvi.models.pvrnn.data import (
    FSM,
    branching_fsm,
    character_split,
    check_fsm,
    check_sequences,
    classify_segments,
    drawing_offsets,
    fsm_sequences,
    kalman_smoother,
    linear_gaussian_sequences,
    resample_stroke,
    stroke_sequences,
    transition_frequencies,
)
from pplvi.models.pvrnn.metrics import (
    branching_error,
    branching_frequencies,
    branching_standard_error,
    determinism,
    noise_ratio,
    within_path_variance,
)
from pplvi.models.pvrnn.model import PVRNN, AdaptiveVectors, Encoder, Layer, generate, unroll
from pplvi.models.pvrnn.objectives import (
    error_regression,
    free_energy_terms,
    gaussian_kl,
    predict,
    predict_from_prior,
    pvrnn_objective,
    reconstruct,
    train,
    weighted_free_energy,
)

__all__ = [
    "AdaptiveVectors", "Encoder", "FSM", "Layer", "PVRNN", "branching_error", "branching_frequencies",
    "branching_fsm", "branching_standard_error", "noise_ratio", "within_path_variance", "character_split", "check_fsm",
    "check_sequences",
    "classify_segments", "determinism", "drawing_offsets", "error_regression", "filter_sequence",
    "free_energy_terms", "fsm_sequences", "gaussian_kl", "generate", "kalman_smoother", "linear_gaussian_sequences",
    "predict", "predict_from_prior", "pvrnn_objective", "reconstruct", "resample_stroke", "stroke_sequences",
    "train", "train_vrnn", "transition_frequencies", "unroll", "vrnn_objective", "vrnn_predict",
    "weighted_free_energy",
]
