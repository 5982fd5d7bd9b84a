"""The model library: complete models written only in pplvi's public language (``pplvi``, ``pplvi.objectives``,
``pplvi.data``, ``equinox``, ``optax``, ``numpyro.distributions``). Each model exposes its generative functions and
its objectives, trains with :func:`pplvi.fit`, and has an example script in ``examples/`` and a documentation page.

* :mod:`pplvi.models.vae`: the VAE family — Gaussian-latent VAEs (MLP and convolutional), IWAE training, the
  linear-Gaussian VAE / probabilistic PCA check, and discrete-latent VAEs (Bernoulli and Categorical latents with
  enumeration, measure-valued derivatives or REINFORCE with a learned baseline).
* :mod:`pplvi.models.air`: Attend-Infer-Repeat (Eslami et al. 2016) on multi-MNIST — spatial transformer, recurrent
  inference network, Bernoulli present bits with REINFORCE, learned baselines, enumeration or MVD, ELBO or IWAE.
* :mod:`pplvi.models.kvae`: the Koopman VAE (Naiman et al. 2024) for regular and irregular time series — GRU prior
  with a least-squares Koopman constraint, bi-GRU / ODE-RNN encoders, TimeGAN data, discriminative and predictive
  scores.
* :mod:`pplvi.models.fbm_sde`: SDEs driven by Markov-approximate fractional Brownian motion (Daems et al. 2024) —
  closed-form optimal OU weights, Girsanov ELBO, fOU bridge, Hurst learning, a toy latent video model.
* :mod:`pplvi.models.pvrnn`: PV-RNN (Ahmadi & Tani 2019) — multiple-timescale variational RNN with adaptive-vector
  posteriors, a per-layer meta-prior, error regression for online prediction, and an amortized VRNN baseline.
* :mod:`pplvi.models.niw_meta`: hierarchical Bayesian few-shot meta-learning with a Normal-Inverse-Wishart prior
  (Kim & Hospedales 2024) — closed-form NIW terms, the one-time local iterate, NIW / ProtoNet / MAML on Omniglot
  with calibration (ECE).
* :mod:`pplvi.models.dist_transformer`: Distribution Transformers (Whittle et al. 2025) — a Gaussian-mixture prior
  and observations mapped to the posterior mixture by attention, trained on the expected forward KL with prior
  consistency; per-problem SVI (mixture guide, enumeration), exact conjugate posteriors, EKF / particle-filter tracking.
* :mod:`pplvi.models.ate`, :mod:`pplvi.models.kinetic_paths`, :mod:`pplvi.models.instance_noise`,
  :mod:`pplvi.models.continual`: small variational methods — Align-Then-stEer guided flow-policy fine-tuning,
  kinetic-optimal Gaussian paths (Shaul et al. 2023), instance-noise ELBO training for singular distributions (Chae et
  al.), binary-weight variational continual learning (Li & Huang); reproduced together by
  :mod:`pplvi.models.variational_seeds`.
"""

from pplvi.models import (
    air,
    ate,
    continual,
    dist_transformer,
    fbm_sde,
    instance_noise,
    kinetic_paths,
    kvae,
    niw_meta,
    pvrnn,
    vae,
    variational_seeds,
)

__all__ = [
    "air", "ate", "continual", "dist_transformer", "fbm_sde", "instance_noise", "kinetic_paths", "kvae", "niw_meta",
    "pvrnn", "vae", "variational_seeds",
]
