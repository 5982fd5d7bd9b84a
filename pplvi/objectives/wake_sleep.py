r"""Reweighted wake-sleep and forward-KL objectives (Bornschein & Bengio 2015; Le et al. 2019).

These are *surrogates*: their gradients, not their values, are what matter. Each samples with stopped parameters
(so the sampling distribution does not depend on the parameters) and maximizes a weighted log density; the value
returned is the surrogate itself.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pplvi.core.gen import GenerativeFunction
from pplvi.core.objective import Objective, objective
from pplvi.objectives.terms import particles, stop_gradient


def _normalized_weights(model, guide, K, params, *args):
    stopped = stop_gradient(params)
    t = particles(model, guide, K, stopped, *args)
    return jax.lax.stop_gradient(jax.nn.softmax(t.log_weight)), jax.lax.stop_gradient(t.trace.choices)


def q_wake(model: GenerativeFunction, guide: GenerativeFunction, K: int) -> Objective:
    r"""Wake update of the guide: :math:`\sum_k \tilde w_k \log q_\phi(z_k \mid x)` with :math:`z_k \sim q`
    (stopped) and self-normalized weights :math:`\tilde w_k`. Its gradient estimates
    :math:`-\nabla_\phi \mathrm{KL}(p(z \mid x) \,\|\, q_\phi(z \mid x))`: forward-KL (inclusive) variational
    inference."""

    @objective
    def q_wake_objective(params, *args):
        w, z = _normalized_weights(model, guide, K, params, *args)
        log_q = jax.vmap(lambda c: guide.assess(c, params, *args))(z)
        return jnp.sum(w * log_q)

    return q_wake_objective


forward_kl = q_wake


def p_wake(model: GenerativeFunction, guide: GenerativeFunction, K: int) -> Objective:
    r"""Wake update of the model: :math:`\sum_k \tilde w_k \log p_\theta(x, z_k)`, an estimate of
    :math:`\nabla_\theta \log p_\theta(x)` (the same as IWAE's model gradient)."""

    @objective
    def p_wake_objective(params, *args):
        w, z = _normalized_weights(model, guide, K, params, *args)
        log_p = jax.vmap(lambda c: model.generate(c, params, *args)[1])(z)
        return jnp.sum(w * log_p)

    return p_wake_objective


def sleep(model: GenerativeFunction, guide: GenerativeFunction, data: str = "x") -> Objective:
    r"""Sleep update of the guide: :math:`\mathbb{E}_{p_\theta(z, x)}[\log q_\phi(z \mid x)]` with ``(z, x)``
    dreamt from the model (stopped parameters). The objective takes ``(params, *args)`` with ``args`` such that
    ``model(params, *args)`` *samples* its data (e.g. ``x=None`` for a model that observes ``obs=x``); the dreamt
    choice at address ``data`` is handed to the guide as ``guide(params, x)`` and the other choices are assessed."""

    @objective
    def sleep_objective(params, *args):
        dream = model.simulate(stop_gradient(params), *args)
        choices = jax.lax.stop_gradient(dream.choices)
        x = choices.pop(data)
        return guide.assess(choices, params, x)

    return sleep_objective
