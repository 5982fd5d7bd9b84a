r"""Discrete-latent VAEs: ``latent`` independent Bernoulli latents, or ``latent`` Categorical latents with
``categories`` classes each (fed to the decoder one-hot), with Bernoulli pixels:

.. math:: p(z) = \prod_j \mathrm{Bernoulli}(z_j; \tfrac12)\ \text{or}\ \prod_j \mathrm{Cat}(z_j; \tfrac1K),
          \quad p_\theta(x \mid z) = \prod_i \mathrm{Bernoulli}(x_i; \sigma(f_\theta(z)_i)), \quad
          q_\phi(z \mid x) = \prod_j q_\phi(z_j \mid x).

No reparameterization exists for ``z``: the guide's gradient comes from the estimator chosen at ``"z"``
(:data:`ESTIMATORS`), and every one of them is unbiased for the same ELBO gradient:

* ``"enum"`` — per-component enumeration (:data:`pplvi.enum`): :math:`\sum_c \sum_k \nabla q_c(k) f(z_{-c}, k)`;
* ``"mvd"`` — measure-valued derivatives (:data:`pplvi.mvd`): one extra evaluation per Bernoulli component, ``K`` per
  Categorical;
* ``"reinforce"`` — plain REINFORCE (:data:`pplvi.reinforce`), for comparison;
* ``"baseline"`` — REINFORCE with an input-dependent learned baseline :math:`b_\psi(x)` (NVIL, Mnih & Gregor 2014):
  :func:`pplvi.baseline` with ``learned=True``, so the same optimizer fits :math:`b_\psi` to each image's ELBO.

Each image's ELBO is emitted from its own ``jax.vmap`` lane (:func:`~pplvi.models.vae.objectives.batched`), so a
lane's score multiplies only its own image's bound, and ``enum`` / ``mvd`` evaluate each latent's alternatives for
all images at once (one batch evaluation per latent and value, reading each image's own term): about
``latent * K`` (``enum``) or ``latent`` (``mvd``, Bernoulli) batch evaluations per step, linear in the batch size.
"""

from __future__ import annotations

import functools
import itertools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpyro.distributions as dist

import pplvi
from pplvi import objectives as O
from pplvi.models.vae.networks import PIXELS, mlp
from pplvi.models.vae.objectives import batched, binarized, importance_log_likelihood

ESTIMATORS = ("enum", "mvd", "reinforce", "baseline")


class DiscreteVAE(eqx.Module):
    """Encoder ``x -> logits`` of ``q(z | x)`` (``latent`` values, or ``latent * categories``), decoder ``z ->``
    pixel logits, and ``baseline``, a network ``x -> scalar`` used only by the ``"baseline"`` estimator: it predicts
    the image's ELBO as ``data_dim * (baseline(x) - log 2)`` (so it starts near the ELBO of an untrained decoder,
    ``-data_dim log 2``, and one optimizer step moves it by about ``data_dim`` times the learning rate)."""

    encoder: eqx.Module
    decoder: eqx.Module
    baseline: eqx.Module
    latent: int = eqx.field(static=True)
    categories: int | None = eqx.field(static=True, default=None)
    data_dim: int = eqx.field(static=True, default=PIXELS)

    @classmethod
    def mlp(cls, key, latent: int = 30, categories: int | None = None, hidden=(200,), data_dim: int = PIXELS,
            activation=jnp.tanh):
        """MLP encoder, decoder and baseline (one hidden layer of 100 for the baseline). ``categories=None``:
        Bernoulli latents; an integer ``K >= 2``: Categorical latents with ``K`` classes."""
        if categories is not None and categories < 2:
            raise ValueError(f"categories must be None (Bernoulli latents) or at least 2, got {categories}")
        width = latent * (categories or 1)
        k_enc, k_dec, k_base = jax.random.split(key, 3)
        encoder = mlp(k_enc, data_dim, width, hidden, activation)
        decoder = mlp(k_dec, width, data_dim, tuple(reversed(tuple(hidden))), activation)
        baseline = eqx.nn.MLP(data_dim, "scalar", 100, 1, activation=activation, key=k_base)
        return cls(encoder, decoder, baseline, latent, categories, data_dim)

    def prior(self):
        if self.categories is None:
            return dist.Bernoulli(probs=jnp.full(self.latent, 0.5))
        return dist.Categorical(logits=jnp.zeros((self.latent, self.categories)))

    def posterior(self, x):
        logits = self.encoder(x)
        if self.categories is None:
            return dist.Bernoulli(logits=logits)
        return dist.Categorical(logits=logits.reshape(self.latent, self.categories))

    def decode(self, z):
        """Pixel logits for latents ``z`` (``(latent,)`` integers)."""
        if self.categories is None:
            return self.decoder(z.astype(jnp.float32))
        return self.decoder(jax.nn.one_hot(z, self.categories).reshape(-1))

    def predicted_elbo(self, x):
        """The learned baseline :math:`b_\\psi(x)` (nats)."""
        return self.data_dim * (self.baseline(x) - math.log(2.0))


@pplvi.gen
def discrete_model(vae, x):
    """``z ~ p(z)`` (uniform Bernoulli or Categorical latents), ``x ~ Bernoulli(logits = decode(z))``."""
    z = pplvi.sample("z", vae.prior())
    logits = vae.decode(z)
    pplvi.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)
    return logits


@pplvi.gen
def discrete_guide(vae, x):
    """``z ~ q(z | x)``, independent per latent. The estimator at ``"z"`` is REINFORCE unless chosen with
    :func:`guide_with` or :func:`pplvi.with_estimators`."""
    return pplvi.sample("z", vae.posterior(x))


@functools.cache
def guide_with(estimator: str) -> pplvi.GenerativeFunction:
    """:func:`discrete_guide` with the estimator ``"enum"``, ``"mvd"`` or ``"reinforce"`` at ``"z"`` (the same
    object for the same name). ``"baseline"`` needs the image, so it is applied by :func:`discrete_elbo`."""
    table = {"enum": pplvi.enum, "mvd": pplvi.mvd, "reinforce": pplvi.reinforce}
    if estimator not in table:
        raise ValueError(f"estimator={estimator!r}: guide_with takes one of {list(table)}")
    return pplvi.with_estimators(discrete_guide, {"z": table[estimator]})


def discrete_elbo(estimator="baseline", *, binarize: bool = False) -> pplvi.Objective:
    r"""The ELBO averaged over a minibatch, with the guide's gradient at ``"z"`` estimated by ``estimator``: one of
    :data:`ESTIMATORS`, or any :class:`pplvi.Estimator`. Call as ``objective(vae, images)``.

    With ``"baseline"``, image :math:`x_b`'s choice uses :math:`(f_b - b_\psi(x_b))\nabla \log q(z_b \mid x_b)` where
    :math:`f_b` is its own ELBO term (:func:`pplvi.baseline` with ``learned=True``; both are divided by the batch size
    ``B``, as the lane's share of the objective). The baseline's parameters then receive
    :math:`\nabla_\psi -\tfrac12 (f_b - b_\psi)^2` instead of an ELBO gradient."""
    if isinstance(estimator, pplvi.Estimator):
        return batched(O.elbo(discrete_model, pplvi.with_estimators(discrete_guide, {"z": estimator})),
                       binarize=binarize, name="discrete_elbo")
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator={estimator!r} is not one of {list(ESTIMATORS)} or a pplvi.Estimator")
    if estimator != "baseline":
        return batched(O.elbo(discrete_model, guide_with(estimator)), binarize=binarize,
                       name=f"discrete_elbo_{estimator}")

    @pplvi.objective
    def discrete_elbo_baseline(vae, images):
        images = binarized(images) if binarize else images
        n = images.shape[0]

        def lane(x):
            b = vae.predicted_elbo(x) / n
            guide = pplvi.with_estimators(discrete_guide, {"z": pplvi.baseline(pplvi.reinforce, b, learned=True)})
            pplvi.add_cost(O.elbo(discrete_model, guide)(vae, x) / n)

        jax.vmap(lane)(images)
        return jnp.zeros(())

    return discrete_elbo_baseline


def discrete_vimco(K: int, *, binarize: bool = False) -> pplvi.Objective:
    """The IWAE bound with ``K`` particles and VIMCO's leave-one-out baselines (``O.vimco``, Mnih & Rezende 2016)
    per image, over a minibatch."""
    return batched(O.vimco(discrete_model, discrete_guide, K), binarize=binarize, name=f"discrete_vimco{K}")


def exact_discrete_elbo(vae: DiscreteVAE, images) -> jax.Array:
    r"""The minibatch ELBO computed exactly, :math:`\frac1B\sum_b \sum_z q(z \mid x_b)\,[\log p(x_b, z) -
    \log q(z \mid x_b)]`, by enumerating all ``categories ** latent`` configurations (at most 65536). Differentiable:
    ``jax.grad`` of it is the exact gradient the estimators estimate (for tests on tiny models)."""
    K = vae.categories or 2
    if K**vae.latent > 2**16:
        raise ValueError(f"{K}**{vae.latent} configurations are too many to enumerate")
    configs = jnp.array(list(itertools.product(range(K), repeat=vae.latent)), jnp.int32)

    def one(x):
        def term(z):
            log_q = discrete_guide.assess({"z": z}, vae, x)
            log_p = discrete_model.assess({"z": z}, vae, x)
            return jnp.exp(log_q) * (log_p - log_q)

        return jnp.sum(jax.vmap(term)(configs))

    return jnp.mean(jax.vmap(one)(jnp.asarray(images)))


def discrete_log_likelihood(vae, images, key, K: int = 1000, chunk: int = 20):
    """Per-image IWAE-``K`` estimates of ``log p(x)`` with the discrete guide as proposal."""
    return importance_log_likelihood(vae, images, key, model=discrete_model, guide=discrete_guide, K=K, chunk=chunk)
