r"""The Koopman VAE objective (Naiman et al., ICLR 2024, Eq. 8) in pplvi's public language, and its trainer.

For a minibatch :math:`x^{(1..B)}` with masks :math:`m^{(b)}` the objective to **maximize** is

.. math::
    \mathcal J(\theta, \phi) = \frac1B \sum_b \Big( \mathbb{E}_{q_\phi(z \mid x^{(b)})}\Big[\sum_t m_t
        \log p_\theta(x^{(b)}_t \mid z)\Big] - w_{\text{kl}} \sum_t \mathbb{E}_{q_\phi}\big[
        \mathrm{KL}\big(q_\phi(z_t \mid x^{(b)}) \,\|\, p_\theta(z_t \mid z_{<t})\big)\big] \Big)
    - w_{\text{pred}}\, \mathcal L_{\text{pred}}(\bar Z, A) - w_{\text{spec}}\, \mathcal L_{\text{spec}}(A)

where :math:`\bar Z` are ``koopman_samples`` latent paths drawn from the prior :math:`p_\theta(z)` (reparameterized),
:math:`A = \bar Z_{1:T-1}^+ \bar Z_{2:T}` is their least-squares Koopman operator,
:math:`\mathcal L_{\text{pred}}` the normalized multi-step prediction error of :math:`\bar z A^j` and
:math:`\mathcal L_{\text{spec}}` the spectral penalty (:mod:`pplvi.models.kvae.koopman`). With
:math:`w_{\text{kl}} = 1` and :math:`w_{\text{pred}} = w_{\text{spec}} = 0` this is the ELBO of
:func:`~pplvi.models.kvae.model.model` with guide :func:`~pplvi.models.kvae.model.guide`.

The KL is in closed form per step (two diagonal Gaussians), conditionally on the guide's sampled :math:`z_{<t}` that
feed the prior GRU — the sequential ELBO of Chung et al. 2015 (VRNN). (The paper's code evaluates the KL against the
prior's parameters along an independent prior sample instead; conditioning on the posterior path is what makes the
sum a bound on :math:`\log p(x)`.) Each sequence's term is emitted with :func:`pplvi.add_cost` from its own
``jax.vmap`` lane; the Koopman penalties, which couple the whole batch of prior paths, are the return value.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from numpyro.distributions import kl_divergence

import pplvi
from pplvi.models.kvae.data import check_sequences
from pplvi.models.kvae.koopman import koopman_operator, prediction_error, spectral_penalty
from pplvi.models.kvae.model import guide, model, prior


def sequence_elbo(kvae, x, mask, w_kl: float = 1.0):
    r"""Inside an objective: one sample of :math:`\sum_t m_t \log p(x_t \mid z) - w_{\text{kl}} \sum_t
    \mathrm{KL}(q(z_t \mid x) \| p(z_t \mid z_{<t}))` for one sequence, :math:`z \sim q`."""
    q = guide.simulate(kvae, x, mask)
    p, _ = model.generate(q.choices, kvae, x, mask)
    kl = jnp.sum(kl_divergence(q.distributions["z/t"], p.distributions["z/t"]))
    return jnp.sum(p.log_probs["x"]) - w_kl * kl


def koopman_penalty(kvae, length: int, *, samples: int, w_pred: float, prediction_steps: int = 1,
                    w_spectral: float = 0.0, spectral_modes: int = 0, radius: float = 1.0):
    r"""Inside an objective: :math:`w_{\text{pred}} \mathcal L_{\text{pred}} + w_{\text{spec}}
    \mathcal L_{\text{spec}}` on ``samples`` prior paths of ``length`` steps (drawn here, reparameterized)."""
    zbar = jax.vmap(lambda _: prior.simulate(kvae, length).retval)(jnp.arange(samples))
    A = koopman_operator(zbar)
    total = w_pred * prediction_error(zbar, A, prediction_steps)
    if w_spectral and spectral_modes:
        total = total + w_spectral * spectral_penalty(A, spectral_modes, radius)
    return total


def kvae_objective(*, w_kl: float = 1.0, w_pred: float = 1.0, prediction_steps: int = 1, w_spectral: float = 0.0,
                   spectral_modes: int = 0, radius: float = 1.0, koopman_samples: int | None = None
                   ) -> pplvi.Objective:
    r"""The Koopman VAE objective :math:`\mathcal J` (module docstring), called as ``objective(kvae, x, mask)`` with
    ``x`` ``(B, T, D)`` (missing values may be NaN) and ``mask`` ``(B, T)`` (1 = observed). Its estimate is the
    batch mean of :func:`sequence_elbo` minus the Koopman penalties on ``koopman_samples`` prior paths (default:
    ``B``). ``w_pred = 0`` drops the Koopman terms (a plain sequential VAE with a GRU prior)."""
    for name, value in (("w_kl", w_kl), ("w_pred", w_pred), ("w_spectral", w_spectral)):
        if value < 0:
            raise ValueError(f"{name}={value} must be >= 0 (the objective is maximized; weights scale penalties)")

    @pplvi.objective
    def kvae(params, x, mask):
        batch, length = mask.shape
        jax.vmap(lambda xi, mi: pplvi.add_cost(sequence_elbo(params, xi, mi, w_kl) / batch))(x, mask)
        if not w_pred and not (w_spectral and spectral_modes):
            return jnp.zeros(())
        return -koopman_penalty(params, length, samples=koopman_samples or batch, w_pred=w_pred,
                                prediction_steps=prediction_steps, w_spectral=w_spectral,
                                spectral_modes=spectral_modes, radius=radius)

    kvae.name = "kvae"
    return kvae


def train(kvae, x, mask=None, *, steps: int, key, batch_size: int = 64, learning_rate: float = 1e-3,
          objective: pplvi.Objective | None = None, progress: bool | None = None, desc: str | None = None,
          **objective_options):
    """Maximize :func:`kvae_objective` (or ``objective``) with Adam (step ``learning_rate``, cosine-decayed to a
    tenth, global-norm clipping at 10) through :func:`pplvi.fit`; ``mask=None`` means fully observed. Returns the
    :class:`pplvi.train.FitResult`. The data are checked first (:func:`~pplvi.models.kvae.data.check_sequences`:
    a :class:`pplvi.DataError` names a malformed array and its first bad index)."""
    x, mask = check_sequences(x, mask)
    objective = objective or kvae_objective(**objective_options)
    schedule = optax.cosine_decay_schedule(learning_rate, max(steps, 1), alpha=0.1)
    optimizer = optax.chain(optax.clip_by_global_norm(10.0), optax.adam(schedule))
    return pplvi.fit(objective, kvae, data=(x, mask), batch_size=batch_size, optimizer=optimizer, steps=steps,
                     key=key, progress=progress, desc=desc or f"training {objective.name}")
