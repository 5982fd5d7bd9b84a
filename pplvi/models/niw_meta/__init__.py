"""Hierarchical Bayesian few-shot meta-learning with a Normal-Inverse-Wishart prior (Kim & Hospedales, "A
Hierarchical Bayesian Model for Deep Few-Shot Meta Learning", ICLR 2024, arXiv 2306.09702), in pplvi's public
language.

* :mod:`~pplvi.models.niw_meta.niw`: the NIW family (:class:`NIW`, full or diagonal) and its closed forms —
  :func:`expected_log_det`, :func:`expected_gaussian_kl`, :func:`niw_kl`, :func:`niw_log_prob`, :func:`niw_sample`.
* :func:`local_posterior`: the one-time local iterate (quadratic approximation, closed-form :math:`(m_i, V_i)`,
  stop-gradient through the inner steps; curvature: exact Hessian, the empirical Fisher
  (:func:`empirical_fisher_diagonal`, :func:`protonet_fisher`) or the expected Fisher (:func:`expected_fisher_diagonal`,
  :func:`categorical_expected_fisher`, :func:`protonet_expected_fisher`)); :func:`exact_linreg_posterior` and
  friends for the exact check.
* :func:`niw_elbo`: the ELBO as a :func:`pplvi.objective`; train it with :func:`pplvi.fit`.
* Few-shot classification (:mod:`~pplvi.models.niw_meta.fewshot`): conv net, NIW / ProtoNet / MAML objectives and
  predictors, :func:`expected_calibration_error`, :class:`EpisodeSampler`.

``python -m pplvi.models.niw_meta reproduce`` writes ``benchmarks/results/niw_meta.json``.
"""

from pplvi.models.niw_meta.fewshot import (
    EpisodeSampler,
    categorical_expected_fisher,
    categorical_log_likelihood,
    convnet_apply,
    convnet_features,
    expected_calibration_error,
    init_convnet,
    init_niw,
    maml_objective,
    maml_predict,
    map_draws,
    niw_fewshot_elbo,
    niw_predict,
    niw_protonet_elbo,
    posterior_predictive,
    protonet_expected_fisher,
    protonet_fisher,
    protonet_log_likelihood,
    protonet_logits,
    protonet_objective,
    protonet_predict,
)
from pplvi.models.niw_meta.local import (
    empirical_fisher_diagonal,
    exact_linreg_posterior,
    expected_fisher_diagonal,
    linreg_log_likelihood,
    local_posterior,
    sample_linreg_episodes,
)
from pplvi.models.niw_meta.niw import (
    NIW,
    expected_gaussian_kl,
    expected_log_det,
    niw_kl,
    niw_log_prob,
    niw_sample,
)
from pplvi.models.niw_meta.objective import niw_elbo, sample_theta

__all__ = [
    "NIW", "EpisodeSampler", "categorical_expected_fisher", "categorical_log_likelihood", "convnet_apply",
    "convnet_features", "empirical_fisher_diagonal", "exact_linreg_posterior", "expected_calibration_error",
    "expected_fisher_diagonal", "expected_gaussian_kl", "expected_log_det", "init_convnet", "init_niw",
    "linreg_log_likelihood", "local_posterior", "maml_objective", "maml_predict", "map_draws", "niw_elbo",
    "niw_fewshot_elbo",
    "niw_kl", "niw_log_prob", "niw_predict", "niw_protonet_elbo", "niw_sample", "posterior_predictive",
    "protonet_expected_fisher",
    "protonet_fisher", "protonet_log_likelihood", "protonet_logits", "protonet_objective", "protonet_predict",
    "sample_linreg_episodes",
    "sample_theta",
]
