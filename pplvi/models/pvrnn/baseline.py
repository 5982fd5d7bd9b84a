r"""The variational RNN baseline: the same generative network as PV-RNN, inferred with an **amortized** encoder
:math:`q_\phi(z_t \mid x_t, d_{t-1})` (Chung et al., "A Recurrent Latent Variable Model for Sequential Data",
NeurIPS 2015) instead of free adaptive vectors. Its objective is the free energy of
:func:`~pplvi.models.pvrnn.objectives.pvrnn_objective` with the same meta-prior. The posterior's noise is one
reparameterized standard-normal site ``"eps<l>"`` per layer, :math:`z_t = \mu_\phi + \sigma_\phi \odot
\epsilon_t`, because the encoder's parameters depend on the path. Prediction filters the window with the encoder's
means and continues on the prior.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpyro.distributions as dist
import optax

import pplvi
from pplvi.models.pvrnn.data import check_sequences
from pplvi.models.pvrnn.model import PVRNN, Encoder, generate
from pplvi.models.pvrnn.objectives import _per_layer, gaussian_kl, weighted_free_energy


def filter_sequence(network: PVRNN, encoder: Encoder, x, eps, h0, *, start_at_one: bool = True):
    """Run the network over ``x`` ``(T, D)`` with latents from the encoder, ``z = mu + sigma * eps`` (``eps``: a
    tuple of ``(T, z_l)``; zeros give the posterior means). Returns ``(squared error (T,), KL per layer (T,) list,
    h_T)``."""

    def body(h, inputs):
        t, xt, e = inputs
        prior = network.prior(h, jnp.logical_and(start_at_one, t == 0))
        post = encoder(xt, h)
        z = tuple(loc + scale * el for (loc, scale), el in zip(post, e))
        h, out = network.step(h, z)
        kl = jnp.stack([jnp.sum(gaussian_kl(q, p)) for q, p in zip(post, prior)])
        return h, (jnp.sum((xt - out) ** 2), kl)

    h, (squared, kl) = jax.lax.scan(body, h0, (jnp.arange(x.shape[0]), x, eps))
    return squared, list(kl.T), h


def vrnn_objective(network: PVRNN, *, w=1e-2, w1=None, obs_scale: float = 2 ** -0.5) -> pplvi.Objective:
    """The VRNN free energy, negated, batch-averaged; called as ``objective({"network", "encoder"}, x)``."""
    layers = len(network.layers)
    w = _per_layer(w, layers, "w")
    w1 = w if w1 is None else _per_layer(w1, layers, "w1")

    @pplvi.objective
    def vrnn(params, x):
        net, enc = params["network"], params["encoder"]
        batch, length = x.shape[:2]

        def one(xi):
            eps = tuple(pplvi.sample(f"eps{i}", dist.Normal(0.0, 1.0).expand((length, z)).to_event(2))
                        for i, z in enumerate(net.latents))
            squared, kls, _ = filter_sequence(net, enc, xi, eps, net.initial_state())
            pplvi.add_cost(-weighted_free_energy(squared, kls, w=w, w1=w1, obs_scale=obs_scale) / batch)

        jax.vmap(one)(x)
        return jnp.zeros(())

    vrnn.name = "vrnn"
    return vrnn


def train_vrnn(network: PVRNN, x, *, steps: int, key, learning_rate: float = 3e-3, batch_size: int | None = None,
               encoder_width: int = 32, progress: bool | None = None, **objective_options):
    """Train the network and an amortized :class:`~pplvi.models.pvrnn.model.Encoder` on ``x`` with
    :func:`pplvi.fit`. Returns the :class:`pplvi.train.FitResult` (``params`` ``{"network", "encoder"}``)."""
    x = check_sequences(x)
    params = {"network": network, "encoder": Encoder.init(jax.random.fold_in(jax.random.key(0), 7), network,
                                                          width=encoder_width)}
    schedule = optax.cosine_decay_schedule(learning_rate, max(steps, 1), alpha=0.1)
    return pplvi.fit(vrnn_objective(network, **objective_options), params, data=x, batch_size=batch_size,
                     optimizer=optax.chain(optax.clip_by_global_norm(100.0), optax.adam(schedule)), steps=steps,
                     key=key, progress=progress, desc="training vrnn")


@eqx.filter_jit
def vrnn_predict(network: PVRNN, encoder: Encoder, windows, key, horizon: int, *, samples: int = 32):
    """Filter each window ``(n, W, D)`` with the encoder's means (from a zero state, with the learned prior at the
    window start), then average ``samples`` prior continuations: ``(n, horizon, D)``."""
    def one(x, k):
        eps = tuple(jnp.zeros((x.shape[0], z)) for z in network.latents)
        _, _, h = filter_sequence(network, encoder, x, eps, network.initial_state(), start_at_one=False)
        outs = jax.vmap(lambda kk: generate(network, kk, h, horizon, start_at_one=False)[0])(
            jax.random.split(k, samples))
        return outs.mean(0)
    return jax.vmap(one)(windows, jax.random.split(key, windows.shape[0]))
