"""Distribution Transformers (Whittle, Ziomek, Rawling & Osborne, "Distribution Transformers: Fast Approximate
Bayesian Inference With On-The-Fly Prior Adaptation", arXiv:2502.02463), written in pplvi's public language.

A prior given as a Gaussian mixture and a set of observations go in; the posterior, again a Gaussian mixture, comes
out of one forward pass. The prior is an *input*, so it can be changed at test time without retraining, and the
posterior can be fed back as the next prior (sequential inference).

* Mixtures and exact posteriors (:mod:`~pplvi.models.dist_transformer.mixture`): :class:`GaussianMixture`
  (Cholesky-parameterized), :func:`linear_gaussian_posterior`, the log-inverse-gamma density, :func:`kl_monte_carlo`.
* Network (:mod:`~pplvi.models.dist_transformer.model`): :class:`DistributionTransformer` (component tokens with
  self-attention, cross-attention to observation tokens, no positional encodings), :class:`PriorConverter` and
  :class:`ConvertedDistributionTransformer` for parametric priors.
* Problems (:mod:`~pplvi.models.dist_transformer.problems`): meta-priors as generative functions —
  :func:`narrow` / :func:`wide` inverse-gamma variance problems, :func:`gmm_1d` / :func:`gmm_2d` mixture priors with
  linear-Gaussian observations, :class:`MixturePrior`.
* Objective (:mod:`~pplvi.models.dist_transformer.objective`): :func:`forward_kl_objective` (expected forward KL +
  prior consistency, a ``@pplvi.objective``), :func:`train` (``pplvi.fit``).
* Baselines: per-problem SVI with a mixture guide (:mod:`~pplvi.models.dist_transformer.svi`, ``pplvi.enum`` over
  the component); EKF, bootstrap particle filter and grid filter for tracking
  (:mod:`~pplvi.models.dist_transformer.tracking`).

``python -m pplvi.models.dist_transformer reproduce`` runs every check and writes
``benchmarks/results/dist_transformer.json``.
"""

from pplvi.models.dist_transformer.evaluate import inverse_gamma_kl, mean_kl, mixture_kl, timed_inference
from pplvi.models.dist_transformer.mixture import (
    GaussianMixture,
    check_mixture,
    gaussian,
    kl_monte_carlo,
    linear_gaussian_posterior,
    log_inverse_gamma_log_prob,
    log_inverse_gamma_sample,
)
from pplvi.models.dist_transformer.model import (
    Block,
    ConvertedDistributionTransformer,
    DistributionTransformer,
    PriorConverter,
)
from pplvi.models.dist_transformer.objective import forward_kl_objective, train
from pplvi.models.dist_transformer.problems import (
    InverseGammaVariance,
    LogInverseGamma,
    MixturePrior,
    gmm_1d,
    gmm_2d,
    narrow,
    simulate_problems,
    wide,
)
from pplvi.models.dist_transformer.svi import fit_one as svi_fit_one
from pplvi.models.dist_transformer.svi import inverse_gamma_model, mixture_elbo, mixture_guide
from pplvi.models.dist_transformer.tracking import (
    TrackingProblem,
    compare_filters,
    distribution_transformer_filter,
    extended_kalman_filter,
    grid_filter,
    particle_filter,
    tracking_family,
)

__all__ = [
    "Block", "ConvertedDistributionTransformer", "DistributionTransformer", "GaussianMixture",
    "InverseGammaVariance", "LogInverseGamma", "MixturePrior", "PriorConverter", "TrackingProblem", "check_mixture",
    "compare_filters", "distribution_transformer_filter", "extended_kalman_filter", "forward_kl_objective",
    "gaussian", "gmm_1d", "gmm_2d", "grid_filter", "inverse_gamma_kl", "inverse_gamma_model", "kl_monte_carlo",
    "linear_gaussian_posterior", "log_inverse_gamma_log_prob", "log_inverse_gamma_sample", "mean_kl",
    "mixture_elbo", "mixture_guide", "mixture_kl", "narrow", "particle_filter", "simulate_problems", "svi_fit_one",
    "timed_inference", "tracking_family", "train", "wide",
]
