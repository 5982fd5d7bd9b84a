"""Data, closed-form objectives and networks shared by the benchmark suites (no pplvi, NumPyro or genjax code).

* ``gaussian10``: ``z ~ N(0, I_10)``, ``x ~ N(z, I)`` observed at ``GAUSS_X``; mean-field Normal guide with
  parameters ``loc`` and ``log_scale``. The posterior ``N(x/2, I/2)`` is in the family, so the best ELBO equals the
  log evidence.
* ``mixture20``: ``MIX_X`` (20 points), ``c_i ~ Bernoulli(1/2)``, ``x_i ~ N(locs[c_i], 1)`` with learned ``locs``;
  guide ``c_i ~ Bernoulli(sigmoid(logits_i))``. Its ELBO is a sum over the components, computed exactly.
* ``vae_mnist``: the networks of ``overhead.py`` (encoder 784-200-(10+10), decoder 10-200-784, ReLU).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

LATENT, HIDDEN, PIXELS = 10, 200, 784
LOG2PI = float(np.log(2 * np.pi))

GAUSS_X = jnp.linspace(-1.0, 1.0, LATENT)

N_MIX = 20
MIX_X = jnp.concatenate([jnp.linspace(-2.5, -1.5, N_MIX // 2), jnp.linspace(1.5, 2.5, N_MIX - N_MIX // 2)])


def normal_logpdf(x, loc, scale):
    return -0.5 * ((x - loc) / scale) ** 2 - jnp.log(scale) - 0.5 * LOG2PI


def gauss_init():
    return {"loc": jnp.zeros(LATENT), "log_scale": jnp.zeros(LATENT)}


def gauss_check_params():
    """A point away from the initialization, where no gradient coordinate vanishes by symmetry."""
    return {"loc": jnp.linspace(-0.5, 0.5, LATENT), "log_scale": jnp.full(LATENT, -0.3)}


def gauss_log_weight(z, params, x=GAUSS_X):
    """``log p(z) + log p(x | z) - log q(z)`` written in plain JAX (the body every system's ELBO runs)."""
    scale = jnp.exp(params["log_scale"])
    log_p = jnp.sum(normal_logpdf(z, 0.0, 1.0)) + jnp.sum(normal_logpdf(x, z, 1.0))
    return log_p - jnp.sum(normal_logpdf(z, params["loc"], scale))


def gauss_exact_elbo(params, x=GAUSS_X):
    """``E_q[log N(z; 0, 1) + log N(x; z, 1) - log q(z)]`` in closed form."""
    loc, s2 = params["loc"], jnp.exp(2 * params["log_scale"])
    prior = -0.5 * (loc**2 + s2) - 0.5 * LOG2PI
    lik = -0.5 * ((x - loc) ** 2 + s2) - 0.5 * LOG2PI
    entropy = params["log_scale"] + 0.5 * (LOG2PI + 1.0)
    return jnp.sum(prior + lik + entropy)


def gauss_log_evidence(x=GAUSS_X) -> float:
    return float(jnp.sum(normal_logpdf(x, 0.0, jnp.sqrt(2.0))))


def mix_init():
    # Not logits = 0: numpyro's BernoulliLogits.log_prob has a wrong gradient at exactly 0 (the subgradients of clip
    # and abs give d/dl log p(c=1) = 1 instead of 1/2), which biases every score-function or enumeration gradient
    # there, in NumPyro and in pplvi alike.
    return {"logits": jnp.linspace(-0.5, 0.5, N_MIX), "locs": jnp.array([-0.5, 0.5])}


def mix_log_weight(c, params, x=MIX_X):
    """``log p(c) + log p(x | c) - log q(c)`` in plain JAX; ``c`` is 0/1 (any dtype)."""
    c = c.astype(jnp.float32)
    mean = params["locs"][0] * (1.0 - c) + params["locs"][1] * c
    log_q = c * jax.nn.log_sigmoid(params["logits"]) + (1.0 - c) * jax.nn.log_sigmoid(-params["logits"])
    return jnp.sum(normal_logpdf(x, mean, 1.0)) + x.shape[0] * jnp.log(0.5) - jnp.sum(log_q)


def mix_exact_elbo(params, x=MIX_X):
    """The ELBO of the factorized guide, summed exactly over each ``c_i``."""
    p = jax.nn.sigmoid(params["logits"])
    t0 = normal_logpdf(x, params["locs"][0], 1.0) + jnp.log(0.5) - jax.nn.log_sigmoid(-params["logits"])
    t1 = normal_logpdf(x, params["locs"][1], 1.0) + jnp.log(0.5) - jax.nn.log_sigmoid(params["logits"])
    return jnp.sum((1 - p) * t0 + p * t1)


def make_vae_nets(key=None, hidden: int = HIDDEN):
    k_enc, k_dec = jax.random.split(jax.random.key(42) if key is None else key)
    encoder = eqx.nn.MLP(PIXELS, 2 * LATENT, hidden, 1, activation=jax.nn.relu, key=k_enc)
    decoder = eqx.nn.MLP(LATENT, PIXELS, hidden, 1, activation=jax.nn.relu, key=k_dec)
    return encoder, decoder
