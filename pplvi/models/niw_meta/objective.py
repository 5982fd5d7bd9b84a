r"""The NIW meta-learning ELBO (Kim & Hospedales, ICLR 2024, Eq. 6-9) as a :func:`pplvi.objective`.

For a batch of :math:`E` episodes out of :math:`N` (the size of the episode population the global posterior is
fitted to), the objective maximized is the per-episode ELBO

.. math:: \frac1E \sum_{i=1}^E \Big(\mathbb{E}_{q_i}\log p(D_i \mid \theta_i)
          - \mathbb{E}_{q(\phi)}\mathrm{KL}(q_i \| \mathcal{N}(\mu, \Sigma))\Big)
          - \frac1N \mathrm{KL}(q(\phi) \| p(\phi)),

with :math:`q_i = \mathcal{N}(m_i, V_i)` from the one-time local iterate
(:func:`~pplvi.models.niw_meta.local_posterior`) and the NIW terms in closed form (:mod:`~pplvi.models.niw_meta.niw`).
:math:`\theta_i` is a random choice
``"theta"`` drawn with :data:`pplvi.reparam` inside each episode's ``jax.vmap`` lane (its cost emitted with
:func:`pplvi.add_cost`); everything else is plain arithmetic. The local posterior is fitted to the episode's
``support`` data and the likelihood counts ``support`` and ``query``: any :math:`q_i` gives a lower bound, and
fitting it to the support set is what prediction does on a new episode.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro.distributions as dist

import pplvi
from pplvi.models.niw_meta.local import local_posterior
from pplvi.models.niw_meta.niw import NIW, expected_gaussian_kl, niw_kl


def sample_theta(m_i, v_i, diagonal: bool):
    """Inside an objective: :math:`\\theta \\sim \\mathcal{N}(m_i, V_i)` at ``"theta"``, reparameterized."""
    d = dist.Normal(m_i, jnp.sqrt(v_i)).to_event(1) if diagonal else dist.MultivariateNormal(m_i, v_i)
    return pplvi.sample("theta", d, estimator=pplvi.reparam)


def niw_elbo(log_likelihood, prior: NIW, num_episodes: int, *, steps: int = 0, lr: float = 0.1,
             curvature="hessian") -> pplvi.Objective:
    r"""The ELBO above as an objective ``(q, support, query=None)``: ``q`` a :class:`NIW` (the trained
    parameters), ``support`` / ``query`` pytrees of arrays with a leading episode axis :math:`E` (``query=None``:
    the local posterior and the likelihood both use ``support``). ``log_likelihood(theta, data)`` returns per-example
    log-likelihoods; ``steps``, ``lr`` and ``curvature`` go to :func:`~pplvi.models.niw_meta.local_posterior`."""
    if not isinstance(prior, NIW):
        raise pplvi.PPLVIError(f"prior must be a pplvi.models.niw_meta.NIW, got {type(prior).__name__}")
    if not (isinstance(num_episodes, int) and num_episodes > 0):
        raise pplvi.PPLVIError(f"num_episodes must be a positive integer (the episode population size), got "
                               f"{num_episodes!r}")

    @pplvi.objective
    def niw_meta_elbo(q, support, query=None):
        if not isinstance(q, NIW) or q.diagonal != prior.diagonal or q.dim != prior.dim:
            raise pplvi.PPLVIError(f"the parameters must be an NIW like the prior (diagonal={prior.diagonal}, "
                                   f"d={prior.dim}), got {q!r:.200}")
        n_ep = jax.tree_util.tree_leaves(support)[0].shape[0]

        def episode(s, qd):
            m_i, v_i = local_posterior(q, log_likelihood, s, steps=steps, lr=lr, curvature=curvature)
            theta = sample_theta(m_i, v_i, q.diagonal)
            ll = jnp.sum(log_likelihood(theta, s))
            if qd is not None:
                ll = ll + jnp.sum(log_likelihood(theta, qd))
            return pplvi.add_cost((ll - expected_gaussian_kl(q, m_i, v_i)) / n_ep)

        if query is None:
            jax.vmap(lambda s: episode(s, None))(support)
        else:
            jax.vmap(episode)(support, query)
        return -niw_kl(q, prior) / num_episodes

    return niw_meta_elbo
