"""The Koopman VAE (Naiman, Erichson, Ren, Mahoney & Azencot, "Generative Modeling of Regular and Irregular Time
Series Data via Koopman VAEs", ICLR 2024), written in pplvi's public language.

* Model (:mod:`~pplvi.models.kvae.model`): :class:`KoopmanVAE` (parameters: sequence encoder, GRU prior, GRU
  decoder), the generative functions :func:`model` (GRU prior :math:`p(z_t \\mid z_{<t})`, Gaussian observations
  under a mask), :func:`guide` (:math:`q(z_t \\mid x)` per step from a bidirectional GRU or, for irregular data, a
  bidirectional ODE-RNN) and :func:`prior`; :func:`generate` and :func:`reconstruct`.
* Koopman operator (:mod:`~pplvi.models.kvae.koopman`): :func:`koopman_operator` (least squares,
  differentiable), :func:`prediction_error` (normalized multi-step), :func:`spectral_penalty`,
  :func:`eigenvalues`, :func:`linear_system_latents`.
* Objective and training (:mod:`~pplvi.models.kvae.objectives`): :func:`kvae_objective` (sequential ELBO with
  analytic per-step KL, weighted, minus the Koopman prediction and spectral penalties), :func:`sequence_elbo`,
  :func:`koopman_penalty`, :func:`train` (through :func:`pplvi.fit`).
* Data (:mod:`~pplvi.models.kvae.data`): :func:`load_sequences` (TimeGAN's sines, stocks, energy),
  :func:`drop_time_points`, :func:`with_missing`, :func:`check_sequences`.
* Metrics (:mod:`~pplvi.models.kvae.metrics`): :func:`discriminative_score`, :func:`predictive_score`.

``python -m pplvi.models.kvae reproduce`` trains on every benchmark and writes ``benchmarks/results/kvae.json``.
"""

from pplvi.models.kvae.data import DATASETS, check_sequences, drop_time_points, load_sequences, with_missing
from pplvi.models.kvae.koopman import (
    eigenvalues,
    koopman_operator,
    linear_system_latents,
    prediction_error,
    spectral_penalty,
)
from pplvi.models.kvae.metrics import discriminative_score, predictive_score
from pplvi.models.kvae.model import KoopmanVAE, generate, guide, model, prior, reconstruct
from pplvi.models.kvae.networks import BiGRUEncoder, Decoder, ODERNNEncoder
from pplvi.models.kvae.objectives import koopman_penalty, kvae_objective, sequence_elbo, train

__all__ = [
    "DATASETS", "BiGRUEncoder", "Decoder", "KoopmanVAE", "ODERNNEncoder", "check_sequences", "discriminative_score",
    "drop_time_points", "eigenvalues", "generate", "guide", "koopman_operator", "koopman_penalty", "kvae_objective",
    "linear_system_latents", "load_sequences", "model", "prediction_error", "predictive_score", "prior",
    "reconstruct", "sequence_elbo", "spectral_penalty", "train", "with_missing",
]
