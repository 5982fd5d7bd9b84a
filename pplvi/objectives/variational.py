r"""Variational bounds written in the public language. Each function returns a :class:`pplvi.Objective` taking
``(params, *args)``; the model and guide are called as ``model(params, *args)`` and ``guide(params, *args)``.
All objectives are maximized.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from numpyro.distributions import kl_divergence

from pplvi.core.gen import GenerativeFunction
from pplvi.core.objective import Objective, objective
from pplvi.objectives.terms import log_mean_exp, particles, stop_gradient, terms


def elbo(
    model: GenerativeFunction, guide: GenerativeFunction, beta: float = 1.0, analytic_kl: bool = False
) -> Objective:
    r"""Evidence lower bound (Jordan et al. 1999; Kingma & Welling 2014; Higgins et al. 2017 for ``beta``):

    .. math:: \mathcal{L} = \mathbb{E}_q[\log p(x \mid z) + \beta(\log p(z) - \log q(z))] \le \log p(x)
              \quad (\beta = 1).

    ``analytic_kl=True`` replaces :math:`\mathbb{E}_q[\log p(z_a) - \log q(z_a)]` by :math:`-\mathrm{KL}(q_a \| p_a)`
    at every site ``a`` where numpyro has a closed form (conditionally on the sampled upstream choices; other sites
    keep the sampled log ratio). For warm-up schedules pass ``beta`` at call time instead: write the objective with
    :func:`terms` (see the docs' "write your own objective")."""

    @objective
    def elbo_objective(params, *args):
        t = terms(model, guide, params, *args)
        if not analytic_kl:
            return t.likelihood + beta * (t.prior - t.guide)
        return t.likelihood + beta * analytic_kl_term(model, t, params, *args)

    return elbo_objective


def analytic_kl_term(model: GenerativeFunction, t, params, *args):
    r""":math:`\sum_a -\mathrm{KL}(q_a \| p_a)` over the guide's sites with a closed form, plus the sampled
    :math:`\log p(z_a) - \log q(z_a)` at the others."""
    p, _ = model.generate(t.trace.choices, params, *args)
    total = jnp.zeros(())
    for a in t.trace.choices:
        q_a, p_a = t.trace.distributions.get(a), p.distributions.get(a)
        try:
            total = total - jnp.sum(kl_divergence(q_a, p_a))
        except (NotImplementedError, TypeError, AttributeError):
            total = total + jnp.sum(p.log_probs[a]) - jnp.sum(t.trace.log_probs[a])
    return total


def iwae(model: GenerativeFunction, guide: GenerativeFunction, K: int) -> Objective:
    r"""Importance-weighted bound IWELBO / IWAE (Burda et al. 2016):
    :math:`\mathbb{E}[\log \tfrac1K \sum_k w_k]`, :math:`w_k = p(x, z_k) / q(z_k)`, increasing in ``K`` to
    :math:`\log p(x)`."""

    @objective
    def iwae_objective(params, *args):
        return log_mean_exp(particles(model, guide, K, params, *args).log_weight)

    return iwae_objective


def renyi(model: GenerativeFunction, guide: GenerativeFunction, alpha: float, K: int) -> Objective:
    r"""Variational Rényi bound (Li & Turner 2016), its ``K``-sample estimator:

    .. math:: \mathcal{L}_\alpha = \tfrac{1}{1-\alpha} \mathbb{E}\Big[\log \tfrac1K \sum_k w_k^{1-\alpha}\Big].

    ``alpha = 0`` is IWAE, ``alpha -> 1`` the ELBO; ``alpha < 0`` gives a quantity above the ELBO (an upper bound on
    :math:`\log p(x)` as :math:`K \to \infty` for sufficiently negative ``alpha``). Non-increasing in ``alpha``."""
    if alpha == 1.0:
        return elbo(model, guide)

    @objective
    def renyi_objective(params, *args):
        log_w = particles(model, guide, K, params, *args).log_weight
        return log_mean_exp((1.0 - alpha) * log_w) / (1.0 - alpha)

    return renyi_objective


def cubo(model: GenerativeFunction, guide: GenerativeFunction, n: float = 2.0, K: int = 1) -> Objective:
    r"""Scaled :math:`\chi^n` upper bound (Dieng et al. 2017), in the form whose gradient is unbiased:

    .. math:: L = -\mathbb{E}_q[w^n] / n, \qquad \mathrm{CUBO}_n = \tfrac1n \log \mathbb{E}_q[w^n] \ge \log p(x).

    Maximizing ``L`` minimizes the upper bound (``exp`` is monotone). For the bound's value use
    :func:`cubo_bound`. ``K`` averages ``K`` samples inside the expectation (variance reduction)."""

    @objective
    def cubo_objective(params, *args):
        log_w = particles(model, guide, K, params, *args).log_weight
        return -jnp.mean(jnp.exp(n * log_w)) / n

    return cubo_objective


def cubo_bound(model: GenerativeFunction, guide: GenerativeFunction, n: float = 2.0, K: int = 1000) -> Objective:
    r"""``K``-sample estimate of :math:`\mathrm{CUBO}_n = \tfrac1n \log \tfrac1K \sum_k w_k^n` (consistent in ``K``;
    by Jensen its expectation sits below CUBO, so use large ``K`` when comparing with :math:`\log p(x)`)."""

    @objective
    def cubo_bound_objective(params, *args):
        log_w = particles(model, guide, K, params, *args).log_weight
        return log_mean_exp(n * log_w) / n

    return cubo_bound_objective


def _surrogate(value, surrogate):
    """``value`` whose gradient is the gradient of ``surrogate``."""
    return value + surrogate - jax.lax.stop_gradient(surrogate)


def stl(model: GenerativeFunction, guide: GenerativeFunction, K: int = 1) -> Objective:
    r""""Sticking the landing" (Roeder et al. 2017): the ELBO (``K = 1``) or IWAE with the score term of
    :math:`\log q` removed — the guide's density is evaluated with stopped parameters, so only the pathwise term
    remains. Unbiased for the same bound; zero variance at the exact posterior. Requires a reparameterizable guide."""

    @objective
    def stl_objective(params, *args):
        def one(_):
            q = guide.simulate(params, *args)
            _, log_p = model.generate(q.choices, params, *args)
            log_q = guide.assess(q.choices, stop_gradient(params), *args)
            return log_p - log_q

        return log_mean_exp(jax.vmap(one)(jnp.arange(K)))

    return stl_objective


def dreg(model: GenerativeFunction, guide: GenerativeFunction, K: int) -> Objective:
    r"""IWAE with the doubly reparameterized gradient for the guide (Tucker et al. 2019):

    .. math:: \nabla_\phi = \mathbb{E}\Big[\sum_k \tilde w_k^2\, \frac{\partial \log w_k}{\partial z_k}
              \frac{\partial z_k}{\partial \phi}\Big], \quad
              \nabla_\theta = \mathbb{E}\Big[\sum_k \tilde w_k \nabla_\theta \log p_\theta(x, z_k)\Big]

    with :math:`\tilde w` the normalized weights. The value is the IWAE bound. Requires a reparameterizable guide."""

    @objective
    def dreg_objective(params, *args):
        stopped = stop_gradient(params)

        def one(_):
            q = guide.simulate(params, *args)
            z_fixed = jax.lax.stop_gradient(q.choices)
            log_q = guide.assess(q.choices, stopped, *args)
            _, log_p_theta = model.generate(z_fixed, params, *args)  # model parameters only, z held fixed
            _, log_p_path = model.generate(q.choices, stopped, *args)  # guide parameters only, through z
            return log_p_theta - jax.lax.stop_gradient(log_q), log_p_path - log_q

        log_w_theta, log_w_path = jax.vmap(one)(jnp.arange(K))
        value = log_mean_exp(jax.lax.stop_gradient(log_w_path))
        w = jax.lax.stop_gradient(jax.nn.softmax(log_w_path))
        surrogate = jnp.sum(w * log_w_theta) + jnp.sum(w**2 * log_w_path)
        return _surrogate(value, surrogate)

    return dreg_objective


def vimco(model: GenerativeFunction, guide: GenerativeFunction, K: int) -> Objective:
    r"""IWAE with VIMCO's leave-one-out control variates (Mnih & Rezende 2016), for guides with discrete (or any
    non-reparameterized) choices. With :math:`\hat L = \log \tfrac1K \sum_k w_k` and
    :math:`\hat L_{-k} = \log \tfrac1K \big(\sum_{j \ne k} w_j + \exp(\tfrac{1}{K-1}\sum_{j\ne k}\log w_j)\big)`:

    .. math:: \nabla = \mathbb{E}\Big[\sum_k (\hat L - \hat L_{-k}) \nabla_\phi \log q(z_k)
              + \sum_k \tilde w_k \nabla \log w_k\Big].

    Written with stopped-parameter sampling and an explicit score term: every guide choice is treated by the score
    function with these baselines, whatever its estimator. The value is the IWAE bound."""
    if K < 2:
        raise ValueError("vimco needs K >= 2 particles")

    @objective
    def vimco_objective(params, *args):
        stopped = stop_gradient(params)
        z = jax.vmap(lambda _: guide.simulate(stopped, *args).choices)(jnp.arange(K))
        z = jax.lax.stop_gradient(z)
        log_q = jax.vmap(lambda c: guide.assess(c, params, *args))(z)
        log_p = jax.vmap(lambda c: model.generate(c, params, *args)[1])(z)
        log_w = log_p - log_q
        bound = log_mean_exp(log_w)
        lw = jax.lax.stop_gradient(log_w)
        others_mean = (jnp.sum(lw) - lw) / (K - 1)
        # row k: every log weight, with log w_k replaced by the mean of the others (geometric mean of the weights)
        swapped = jnp.where(jnp.eye(K, dtype=bool), others_mean[:, None], lw[None, :])
        loo = jax.nn.logsumexp(swapped, axis=1) - jnp.log(K)
        signal = jax.lax.stop_gradient(bound) - loo
        return _surrogate(jax.lax.stop_gradient(bound), bound + jnp.sum(signal * log_q))

    return vimco_objective


def tail_adaptive(model: GenerativeFunction, guide: GenerativeFunction, K: int, beta: float = -1.0) -> Objective:
    r"""Tail-adaptive f-divergence (Wang, Liu & Liu 2018), reparameterized form: ascend
    :math:`\sum_k \tilde\gamma_k \log w_k` with :math:`\gamma_k = \hat F(w_k)^{\beta}`, :math:`\hat F` the
    empirical CDF of the ``K`` weights (ranks), normalized. ``beta = -1`` gives mass-covering updates robust to heavy
    weight tails. Requires a reparameterizable guide; the value returned is the IWAE bound of the same particles."""

    @objective
    def tail_adaptive_objective(params, *args):
        def one(_):  # log w with the guide density at stopped parameters: the gradient flows through z only
            q = guide.simulate(params, *args)
            _, log_p = model.generate(q.choices, params, *args)
            return log_p - guide.assess(q.choices, stop_gradient(params), *args)

        log_w = jax.vmap(one)(jnp.arange(K))
        lw = jax.lax.stop_gradient(log_w)
        cdf = jnp.sum(lw[None, :] <= lw[:, None], axis=1) / K
        gamma = cdf**beta
        gamma = gamma / jnp.sum(gamma)
        return _surrogate(log_mean_exp(lw), jnp.sum(gamma * log_w))

    return tail_adaptive_objective
