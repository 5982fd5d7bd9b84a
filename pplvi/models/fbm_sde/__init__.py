"""Neural SDEs driven by Markov-approximate fractional Brownian motion, trained variationally (Daems, Opper,
Crevecoeur & Birdal, "Variational Inference for SDEs Driven by Fractional Noise", ICLR 2024), written in pplvi's
public language.

* Markov approximation (:mod:`~pplvi.models.fbm_sde.markov`): :func:`speeds` (geometric grid of OU speeds),
  :func:`optimal_weights` and :func:`approximation_cost` (closed form, type ``"I"`` Mandelbrot-Van Ness or ``"II"``
  Riemann-Liouville, differentiable in H), :func:`weight_system` (the linear system A w = b), :class:`MarkovFBM`
  (the driver), :func:`hurst_from_raw` / :func:`raw_from_hurst` (H = sigmoid(raw)).
* Exact fBM and checks (:mod:`~pplvi.models.fbm_sde.exact`): :func:`fbm_covariance`, :func:`sample_fbm`
  (Cholesky), :func:`fbm_log_likelihood`, :func:`monte_carlo_cost` (type I cost from exact joint fBM/OU paths),
  :func:`quadrature_cost` (type II cost by quadrature of the kernel error).
* The augmented SDE (:mod:`~pplvi.models.fbm_sde.sde`): :func:`solve` (Euler-Maruyama inside an objective, Brownian
  increments as reparameterized sample sites ``"dB"``, the Girsanov path KL), :func:`refined_steps` (grids refined
  towards observations), :class:`LinearFeedbackControl`, :func:`time_to_go_rate`, :class:`InitialOUPosterior` (a
  learned Gaussian law of the type I driver's initial OU state, with its KL to the stationary prior),
  :func:`stationary_root`, :class:`Path`.
* Exact linear-Gaussian computations (:mod:`~pplvi.models.fbm_sde.linear`): Kalman likelihood, the smallest ELBO
  gap of a drift-only posterior on a grid, exact moments under a linear-feedback control.
* fOU bridge (:mod:`~pplvi.models.fbm_sde.bridge`): :class:`BridgeProblem`, :func:`bridge_elbo`,
  :func:`gaussian_posterior`, :func:`markov_posterior`, :func:`posterior_moments`, :func:`fit_bridge`.
* Hurst recovery (:mod:`~pplvi.models.fbm_sde.hurst`): :class:`HurstProblem`, :func:`hurst_elbo`,
  :func:`fit_hurst`, :func:`baselines` (exact-fBM and Markov-model maximum likelihood), :func:`prior_start_gap`.
* Toy latent video model (:mod:`~pplvi.models.fbm_sde.video`): :class:`VideoConfig`, :func:`bar_videos`,
  :class:`VideoSDE`, :func:`video_elbo`, :func:`train_video`, :func:`heldout_elbo`, :func:`video_check`.

Every objective is a :func:`pplvi.objective` (maximized) and trains with :func:`pplvi.fit`.
``python -m pplvi.models.fbm_sde reproduce [--quick]`` runs the checks and writes
``benchmarks/results/fbm_sde.json``.
"""

from pplvi.models.fbm_sde import linear
from pplvi.models.fbm_sde.bridge import (
    BridgeProblem,
    bridge_elbo,
    fit_bridge,
    gaussian_posterior,
    markov_posterior,
    posterior_moments,
)
from pplvi.models.fbm_sde.exact import (
    fbm_covariance,
    fbm_log_likelihood,
    monte_carlo_cost,
    quadrature_cost,
    sample_fbm,
)
from pplvi.models.fbm_sde.hurst import (
    FractionalBrownianModel,
    HurstProblem,
    baselines,
    best_control_elbo,
    fit_hurst,
    hurst_elbo,
    prior_start_gap,
)
from pplvi.models.fbm_sde.markov import (
    MarkovFBM,
    approximation_cost,
    hurst_from_raw,
    optimal_weights,
    raw_from_hurst,
    speeds,
    weight_system,
)
from pplvi.models.fbm_sde.sde import (
    InitialOUPosterior,
    LinearFeedbackControl,
    Path,
    refined_steps,
    sample_increments,
    sample_initial_ou_state,
    solve,
    stationary_root,
    time_to_go_rate,
)
from pplvi.models.fbm_sde.video import (
    VideoConfig,
    VideoSDE,
    bar_videos,
    heldout_elbo,
    train_video,
    video_check,
    video_elbo,
)

__all__ = [
    "BridgeProblem", "FractionalBrownianModel", "HurstProblem", "LinearFeedbackControl", "MarkovFBM", "Path",
    "VideoConfig", "VideoSDE", "approximation_cost", "bar_videos", "bridge_elbo", "fbm_covariance", "fit_bridge",
    "fit_hurst", "gaussian_posterior", "heldout_elbo", "hurst_elbo", "hurst_from_raw", "markov_posterior",
    "monte_carlo_cost", "optimal_weights", "posterior_moments", "quadrature_cost", "raw_from_hurst",
    "sample_fbm", "sample_increments", "sample_initial_ou_state", "solve", "speeds", "time_to_go_rate",
    "train_video", "video_check", "video_elbo", "weight_system", "baselines", "fbm_log_likelihood", "linear",
    "refined_steps", "best_control_elbo", "InitialOUPosterior", "prior_start_gap", "stationary_root",
]
