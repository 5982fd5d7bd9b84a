r"""The Koopman VAE's generative model and guide (Naiman, Erichson, Ren, Mahoney & Azencot, "Generative Modeling
of Regular and Irregular Time Series Data via Koopman VAEs", ICLR 2024), for one sequence
:math:`x_{1:T} \in [0, 1]^{T \times D}` with an observation mask :math:`m_{1:T}`:

.. math::
    p_\theta(z_t \mid z_{<t}) &= \mathcal N\big(\mu_\theta(h_t), \mathrm{diag}\,\sigma_\theta(h_t)^2\big),
        \quad h_t = \mathrm{GRU}_\theta(z_{t-1}, h_{t-1}),\ z_0 = h_0 = 0 \\
    p_\theta(x_t \mid z_{1:T}) &= \mathcal N\big(g_\theta(z_{1:t}), s^2 I\big)^{m_t}
        \quad (g: \text{a GRU decoder with a sigmoid read-out; unobserved points are not scored}) \\
    q_\phi(z_{1:T} \mid x) &= \prod_t \mathcal N\big(\mu_\phi(e_t), \mathrm{diag}\,\sigma_\phi(e_t)^2\big),
        \quad e_{1:T} = \mathrm{Encoder}_\phi(x, m)

with a bidirectional GRU encoder for regular data and a bidirectional ODE-RNN for irregular data
(:mod:`pplvi.models.kvae.networks`). The latent path is stored at address ``"z/t"`` (shape ``(T, latent)``, one
row per step, written with the :func:`pplvi.scan` combinator), the data at ``"x"`` (``(T, D)``).

The observation scale :math:`s` is fixed (a hyperparameter): the paper's loss, summed squared error plus
:math:`\beta` times the KL, is the negative ELBO of this model with :math:`2 s^2 = \beta`, up to a constant.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpyro.distributions as dist

import pplvi
from pplvi.models.kvae.networks import BiGRUEncoder, Decoder, ODERNNEncoder

ENCODERS = ("gru", "odernn")
LOG_SCALE_MIN, LOG_SCALE_MAX = -7.0, 2.0


def _gaussian(params):
    """``(loc, scale)`` from a vector ``[loc, log_scale]`` (the log scale clipped for stability)."""
    loc, log_scale = jnp.split(params, 2, axis=-1)
    return loc, jnp.exp(jnp.clip(log_scale, LOG_SCALE_MIN, LOG_SCALE_MAX))


class KoopmanVAE(eqx.Module):
    """Parameters of the Koopman VAE. Build with :meth:`init`.

    * ``encoder``: :class:`~pplvi.models.kvae.networks.BiGRUEncoder` or
      :class:`~pplvi.models.kvae.networks.ODERNNEncoder`; ``posterior_head`` maps its features to
      ``[loc, log_scale]`` of :math:`q(z_t \\mid x)`.
    * ``prior_cell``/``prior_head``: the autoregressive GRU prior :math:`p(z_t \\mid z_{<t})`.
    * ``decoder``: :class:`~pplvi.models.kvae.networks.Decoder`.
    * ``obs_scale`` (static): the observation noise :math:`s`.
    """

    encoder: eqx.Module
    posterior_head: eqx.nn.Linear
    prior_cell: eqx.nn.GRUCell
    prior_head: eqx.nn.Linear
    decoder: Decoder
    latent: int = eqx.field(static=True)
    data_dim: int = eqx.field(static=True)
    obs_scale: float = eqx.field(static=True)

    @classmethod
    def init(cls, key, data_dim: int, *, latent: int = 8, hidden: int = 32, encoder: str = "gru",
             obs_scale: float = 0.05, ode_substeps: int = 1):
        """A Koopman VAE for ``data_dim`` features: ``latent`` latent dimensions, GRUs of ``hidden`` units,
        ``encoder="gru"`` (regular data) or ``"odernn"`` (irregular data; ``ode_substeps`` Tsit5 steps per grid
        interval)."""
        if encoder not in ENCODERS:
            raise ValueError(f"encoder={encoder!r} is not one of {list(ENCODERS)}")
        if min(data_dim, latent, hidden) < 1 or obs_scale <= 0:
            raise ValueError(f"need data_dim, latent, hidden >= 1 and obs_scale > 0, got {data_dim}, {latent}, "
                             f"{hidden}, {obs_scale}")
        keys = jax.random.split(key, 5)
        enc = (BiGRUEncoder(keys[0], data_dim, hidden) if encoder == "gru"
               else ODERNNEncoder(keys[0], data_dim, hidden, ode_substeps))
        return cls(
            encoder=enc,
            posterior_head=eqx.nn.Linear(enc.features, 2 * latent, key=keys[1]),
            prior_cell=eqx.nn.GRUCell(latent, hidden, key=keys[2]),
            prior_head=eqx.nn.Linear(hidden, 2 * latent, key=keys[3]),
            decoder=Decoder(keys[4], latent, hidden, data_dim),
            latent=latent, data_dim=data_dim, obs_scale=float(obs_scale),
        )

    def prior_step(self, h, z_prev):
        """One step of the prior: the new GRU state and :math:`(\\mu, \\sigma)` of :math:`p(z_t \\mid z_{<t})`."""
        h = self.prior_cell(z_prev, h)
        return h, _gaussian(self.prior_head(h))

    def posterior(self, x, mask):
        """:math:`(\\mu, \\sigma)` of every :math:`q(z_t \\mid x)`, each ``(T, latent)``."""
        return _gaussian(jax.vmap(self.posterior_head)(self.encoder(x, mask)))


def _initial_state(kvae):
    return jnp.zeros(kvae.prior_cell.hidden_size), jnp.zeros(kvae.latent)


def prior_chain(kvae: KoopmanVAE, length: int) -> pplvi.GenerativeFunction:
    """The prior as a :func:`pplvi.scan` over ``length`` steps, called with ``(initial_state, None)``; its choices
    are ``"t"`` (``(length, latent)``)."""

    @pplvi.gen
    def step(carry, _):
        h, z_prev = carry
        h, (loc, scale) = kvae.prior_step(h, z_prev)
        z = pplvi.sample("t", dist.Normal(loc, scale).to_event(1))
        return (h, z), z

    return pplvi.scan(step, length=length)


def posterior_chain() -> pplvi.GenerativeFunction:
    """The guide's latent path as a :func:`pplvi.scan` over ``(loc, scale)`` rows (choices ``"t"``), so that its
    distributions line up step by step with :func:`prior_chain`'s."""

    @pplvi.gen
    def step(carry, loc_scale):
        loc, scale = loc_scale
        return carry, pplvi.sample("t", dist.Normal(loc, scale).to_event(1))

    return pplvi.scan(step)


@pplvi.gen
def prior(kvae: KoopmanVAE, length: int):
    """The latent path alone, :math:`z_{1:T} \\sim p_\\theta`; returns ``(length, latent)``."""
    _, z = pplvi.sample("z", prior_chain(kvae, length)(_initial_state(kvae), None))
    return z


@pplvi.gen
def model(kvae: KoopmanVAE, x, mask):
    """:math:`z_{1:T} \\sim p_\\theta(z)`, :math:`x_t \\sim \\mathcal N(g_\\theta(z)_t, s^2 I)` where ``mask[t]``
    (``x`` ``(T, D)``; ``x=None`` samples every point). Returns the decoder means ``(T, D)``."""
    length = mask.shape[0]
    _, z = pplvi.sample("z", prior_chain(kvae, length)(_initial_state(kvae), None))
    mean = kvae.decoder(z)
    observed = jnp.broadcast_to(mask.astype(bool)[:, None], mean.shape)
    x = None if x is None else jnp.where(observed, x, 0.0)  # missing values (NaN) are never scored
    pplvi.sample("x", dist.Normal(mean, kvae.obs_scale).mask(observed).to_event(2), obs=x)
    return mean


@pplvi.gen
def guide(kvae: KoopmanVAE, x, mask):
    """:math:`z_t \\sim q_\\phi(z_t \\mid x)` independently per step given the encoder's features."""
    x = jnp.where(mask.astype(bool)[:, None], x, 0.0)
    loc, scale = kvae.posterior(x, mask)
    _, z = pplvi.sample("z", posterior_chain()(None, (loc, scale)))
    return z


@eqx.filter_jit
def generate(kvae: KoopmanVAE, key, n: int, length: int):
    """``n`` sequences from the model: decoder means :math:`g_\\theta(z)` with :math:`z \\sim p_\\theta`
    (``(n, length, D)``), the synthetic data the metrics compare with the real data."""
    keys = jax.random.split(key, n)
    return jax.vmap(lambda k: kvae.decoder(prior.simulate(k, kvae, length).retval))(keys)


@eqx.filter_jit
def reconstruct(kvae: KoopmanVAE, key, x, mask):
    """Decoder means for latents drawn from the guide, one per sequence: ``(N, T, D)``."""
    keys = jax.random.split(key, x.shape[0])
    return jax.vmap(lambda k, xi, mi: kvae.decoder(guide.simulate(k, kvae, xi, mi).retval))(keys, x, mask)
