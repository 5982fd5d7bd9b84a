r"""Scoring against exact posteriors: :math:`\mathrm{KL}(p_{\text{exact}} \,\|\, q)` by Monte Carlo over draws of
the exact posterior, averaged over test problems, with its standard error; and the timing of one batched forward
pass of the network (compiled once, median of repeats)."""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from pplvi.models.dist_transformer.mixture import GaussianMixture, kl_monte_carlo


def mean_kl(per_problem_kl, per_problem_se) -> dict:
    """Mean over problems and the standard error of that mean (independent Monte Carlo errors per problem)."""
    kl, se = np.asarray(per_problem_kl, np.float64), np.asarray(per_problem_se, np.float64)
    return {"kl": float(kl.mean()), "kl_se": float(np.sqrt(np.sum(se ** 2)) / kl.size),
            "kl_median": float(np.median(kl)), "problems": int(kl.size)}


def inverse_gamma_kl(family, priors, ys, posteriors: GaussianMixture, key, samples: int = 2000):
    """Per-problem :math:`\\mathrm{KL}(\\mathrm{exact} \\| q)` for the inverse-gamma family (``posteriors`` batched
    like ``priors``), and their standard errors."""

    def one(k, prior, y, q):
        draws = family.exact_sample(k, prior, y, samples)
        return kl_monte_carlo(lambda x: family.exact_log_prob(prior, y, x), draws, q.log_prob)

    keys = jax.random.split(key, priors.shape[0])
    return jax.lax.map(lambda a: one(*a), (keys, priors, ys, posteriors), batch_size=100)


@functools.partial(jax.jit, static_argnames="samples")
def mixture_kl(exact: GaussianMixture, approx: GaussianMixture, key, samples: int = 2000):
    """Per-problem :math:`\\mathrm{KL}(\\mathrm{exact} \\| \\mathrm{approx})` for batched mixtures (compiled once
    per shape)."""

    def one(k, p, q):
        return kl_monte_carlo(p.log_prob, p.sample(k, samples), q.log_prob)

    keys = jax.random.split(key, exact.logits.shape[0])
    return jax.lax.map(lambda a: one(*a), (keys, exact, approx), batch_size=100)


def timed_inference(network, priors, ys, repeats: int = 7):
    """``(posteriors, seconds)``: one ``jax.jit(jax.vmap(network))`` call over every problem, compiled first; the
    median wall time of ``repeats`` calls (results blocked on)."""
    infer = jax.jit(jax.vmap(network))
    jax.block_until_ready(infer(priors, ys))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(infer(priors, ys))
        times.append(time.perf_counter() - t0)
    return out, float(np.median(times))


def finite_fraction(tree) -> float:
    leaves = [jnp.all(jnp.isfinite(x), axis=tuple(range(1, x.ndim))) for x in jax.tree_util.tree_leaves(tree)]
    return float(jnp.mean(jnp.stack(leaves).all(0)))
