r"""Training objective of the Distribution Transformer (Whittle et al., arXiv:2502.02463), as a pplvi
objective over simulated problems, and its training with :func:`pplvi.fit`.

The expected forward KL from the exact posterior to the network's, averaged over the meta-prior, equals up to a
constant independent of the network

.. math:: \mathcal J(\theta) = \mathbb E_{\phi \sim p(\phi),\, x \sim p(x\mid\phi),\, y \sim p(y\mid x)}
          \big[\log q_\theta(x \mid y, \phi)\big]
          = -\mathbb E_{p(\phi, y)}\, \mathrm{KL}\big(p(x\mid y,\phi) \,\|\, q_\theta(x\mid y,\phi)\big) + c,

so it needs only simulated triples :math:`(\phi, x, y)` — never the posterior. The paper adds a **prior-consistency**
term :math:`\lambda\, \mathbb E[\log \tilde q_\theta(x \mid \phi)]`, where :math:`\tilde q_\theta` is the mixture the
network builds from the prior alone (here :meth:`prior_mixture`: the converted parametric prior; for a prior that
already is a mixture it is that mixture, and the term is a constant). Both are maximized (pplvi's convention).

In the objective below :math:`\phi`, :math:`x` and :math:`y` are sample sites of the family's generative function
inside ``jax.vmap`` (independent problems per lane); their distributions do not depend on :math:`\theta`, so the
gradient is the pathwise gradient of :math:`\log q_\theta`, emitted per lane with :func:`pplvi.add_cost`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

import pplvi


def forward_kl_objective(family, batch: int, consistency: float = 1.0) -> pplvi.Objective:
    r"""The objective :math:`\mathcal J` over ``batch`` simulated problems of ``family`` (a
    :mod:`~pplvi.models.dist_transformer.problems` family), with prior-consistency weight ``consistency``.
    Call as ``objective.estimate(key, network)``; the value is the mean of
    :math:`\log q(x\mid y,\phi) + \lambda \log\tilde q(x\mid\phi)` over the batch."""
    if batch < 1 or consistency < 0:
        raise pplvi.DataError(f"forward_kl_objective: batch must be >= 1 and consistency >= 0 "
                              f"(got {batch}, {consistency})")
    joint = family.joint

    @pplvi.objective
    def amortized_forward_kl(network):
        def one_problem(_):
            prior, x, y = family.split(joint.simulate().choices)
            pplvi.add_cost(network(prior, y).log_prob(x) / batch)
            pplvi.add_cost(consistency * network.prior_mixture(prior).log_prob(x) / batch)
            return jnp.zeros(())

        jax.vmap(one_problem)(jnp.arange(batch))
        return jnp.zeros(())

    return amortized_forward_kl


def train(network, family, *, steps: int, batch: int = 256, learning_rate: float = 2e-3, consistency: float = 1.0,
          key=0, progress: bool = False):
    """Maximize :func:`forward_kl_objective` with Adam (linear warm-up over 5% of the steps, cosine decay, global
    norm clipping at 10) through :func:`pplvi.fit`. Returns the :class:`pplvi.train.FitResult`; the trained network
    is ``result.params``."""
    schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, max(1, steps // 20), steps, learning_rate / 50)
    optimizer = optax.chain(optax.clip_by_global_norm(10.0), optax.adam(schedule))
    return pplvi.fit(forward_kl_objective(family, batch, consistency), network, optimizer=optimizer, steps=steps,
                     key=key, progress=progress, desc=f"distribution transformer {getattr(family, 'name', '')}")
