r"""The PV-RNN network (Ahmadi & Tani, "A Novel Predictive-Coding-Inspired Variational RNN Model for Online
Prediction and Recognition", Neural Computation 31(11), 2019; arXiv:1811.01339), Eqs. 1-7.

Layers :math:`l = 1..L` (1 = bottom) are multiple-timescale RNNs with time constants :math:`\tau_l` (larger = slower).
Each has deterministic units :math:`d^l_t` and stochastic units :math:`z^l_t`:

.. math::
    h^l_t &= \big(1 - \tfrac{1}{\tau_l}\big) h^l_{t-1} + \tfrac{1}{\tau_l}\big(W^l_{dd} d^l_{t-1}
        + W^l_{zd} z^l_t + W^{l}_{\text{top}} d^{l+1}_t + b^l\big), \qquad d^l_t = \tanh h^l_t \\
    p_\theta(z^l_t \mid d^l_{t-1}) &= \mathcal N\big(\tanh(W^l_\mu d^l_{t-1}), \exp(W^l_\sigma d^l_{t-1})^2\big)
        \ (t \ge 2), \qquad p(z^l_1) = \mathcal N(0, I) \\
    q(z^l_t) &= \mathcal N\big(\tanh A^{l,\mu}_t, \exp(A^{l,\sigma}_t)^2\big) \\
    \hat x_t &= W_{\text{out}} d^1_t + b_{\text{out}}

(the top layer has no top-down input; the layers update top-down within a step). The posterior's parameters
:math:`A_t` — the *adaptive vectors* — are free variational parameters, one set per sequence and per step (not an
amortized encoder): :class:`AdaptiveVectors`. :func:`unroll` runs the network given latents; :func:`generate` runs it
forward from the learned prior; :class:`Encoder` is the amortized posterior of the VRNN baseline
(:mod:`pplvi.models.pvrnn.baseline`).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

import pplvi

LOG_SCALE_MIN, LOG_SCALE_MAX = -6.0, 2.0


def _scale(log_scale):
    return jnp.exp(jnp.clip(log_scale, LOG_SCALE_MIN, LOG_SCALE_MAX))


class Layer(eqx.Module):
    """One MTRNN layer: recurrent, latent-to-deterministic, top-down weights and the prior head."""

    recurrent: eqx.nn.Linear
    latent_in: eqx.nn.Linear
    top_down: eqx.nn.Linear | None
    prior_head: eqx.nn.Linear
    tau: float = eqx.field(static=True)
    hidden: int = eqx.field(static=True)
    latent: int = eqx.field(static=True)


class PVRNN(eqx.Module):
    """The network weights :math:`\\theta` of a PV-RNN (layers bottom first, and the read-out). Build with
    :meth:`init`."""

    layers: tuple
    readout: eqx.nn.Linear
    data_dim: int = eqx.field(static=True)

    @classmethod
    def init(cls, key, data_dim: int, *, hidden=(24, 12), latent=(2, 1), tau=(2.0, 8.0)):
        """A PV-RNN for ``data_dim`` outputs with ``len(hidden)`` layers (bottom first): ``hidden[l]`` deterministic
        units, ``latent[l]`` stochastic units and time constant ``tau[l] >= 1``."""
        hidden, latent, tau = tuple(hidden), tuple(latent), tuple(float(t) for t in tau)
        if not (len(hidden) == len(latent) == len(tau) >= 1):
            raise pplvi.ObjectiveError(f"hidden, latent and tau need one entry per layer, got {hidden}, {latent}, "
                                       f"{tau}")
        if data_dim < 1 or min(hidden) < 1 or min(latent) < 1 or min(tau) < 1.0:
            raise pplvi.ObjectiveError(f"need data_dim, hidden, latent >= 1 and tau >= 1, got data_dim={data_dim}, "
                                       f"hidden={hidden}, latent={latent}, tau={tau}")
        keys = jax.random.split(key, 4 * len(hidden) + 1)
        layers = []
        for i, (h, z, t) in enumerate(zip(hidden, latent, tau)):
            k = keys[4 * i:4 * i + 4]
            top = eqx.nn.Linear(hidden[i + 1], h, use_bias=False, key=k[2]) if i + 1 < len(hidden) else None
            layers.append(Layer(eqx.nn.Linear(h, h, key=k[0]), eqx.nn.Linear(z, h, use_bias=False, key=k[1]), top,
                                eqx.nn.Linear(h, 2 * z, key=k[3]), t, h, z))
        return cls(tuple(layers), eqx.nn.Linear(hidden[0], data_dim, key=keys[-1]), data_dim)

    @property
    def latents(self) -> tuple[int, ...]:
        return tuple(layer.latent for layer in self.layers)

    def initial_state(self):
        """:math:`h_0 = 0` for every layer (a tuple, bottom first)."""
        return tuple(jnp.zeros(layer.hidden) for layer in self.layers)

    def prior(self, h, first):
        """``[(loc, scale)]`` per layer of :math:`p(z_t \\mid d_{t-1})` given the internal states ``h`` of step
        ``t - 1``; the unit Gaussian where ``first`` (``t = 1``)."""
        out = []
        for layer, hl in zip(self.layers, h):
            loc, log_scale = jnp.split(layer.prior_head(jnp.tanh(hl)), 2)
            out.append((jnp.where(first, 0.0, jnp.tanh(loc)), jnp.where(first, 1.0, _scale(log_scale))))
        return out

    def step(self, h, z):
        """One step: internal states ``h`` (tuple) of ``t - 1`` and latents ``z`` (tuple) of ``t`` to the states of
        ``t`` and the output :math:`\\hat x_t`."""
        new = [None] * len(self.layers)
        above = None
        for i in reversed(range(len(self.layers))):
            layer = self.layers[i]
            drive = layer.recurrent(jnp.tanh(h[i])) + layer.latent_in(z[i])
            if layer.top_down is not None:
                drive = drive + layer.top_down(above)
            new[i] = (1 - 1 / layer.tau) * h[i] + drive / layer.tau
            above = jnp.tanh(new[i])
        return tuple(new), self.readout(jnp.tanh(new[0]))


class AdaptiveVectors(eqx.Module):
    """The posterior's free parameters for ``n`` sequences of ``length`` steps: ``A[l]`` ``(n, length, 2 z_l)``
    (``[mu-part, log-sigma-part]``) and the initial internal states ``h0[l]`` ``(n, hidden_l)`` (zero and frozen
    in training; free in error regression, where a window starts mid-sequence)."""

    A: tuple
    h0: tuple

    @classmethod
    def init(cls, network: PVRNN, n: int, length: int, *, log_scale: float = 0.0):
        """Posterior means 0 (:math:`\\tanh 0`), scales ``exp(log_scale)``; zero initial states."""
        A = tuple(jnp.concatenate([jnp.zeros((n, length, z)), jnp.full((n, length, z), log_scale)], -1)
                  for z in network.latents)
        return cls(A, tuple(jnp.zeros((n, layer.hidden)) for layer in network.layers))

    def posterior(self, i):
        """``[(loc, scale)]`` per layer of sequence ``i``'s :math:`q(z_t)`, each ``(length, z_l)``."""
        out = []
        for a in self.A:
            loc, log_scale = jnp.split(a[i], 2, axis=-1)
            out.append((jnp.tanh(loc), _scale(log_scale)))
        return out


def unroll(network: PVRNN, h0, z, *, start_at_one: bool = True):
    """Run the network over given latents ``z`` (tuple of ``(T, z_l)``) from internal states ``h0``. Returns
    ``(outputs (T, D), priors, h_T)`` with ``priors`` ``[(loc, scale)]`` per layer, each ``(T, z_l)``.
    ``start_at_one``: the first step's prior is the unit Gaussian of ``t = 1`` (a sequence start); otherwise the
    learned prior given ``h0`` (a window inside a sequence)."""
    length = z[0].shape[0]

    def body(h, inputs):
        t, zt = inputs
        prior = network.prior(h, jnp.logical_and(start_at_one, t == 0))
        h, out = network.step(h, zt)
        return h, (out, prior)

    h_last, (outputs, priors) = jax.lax.scan(body, h0, (jnp.arange(length), z))
    return outputs, priors, h_last


def generate(network: PVRNN, key, h0, length: int, *, first=None, start_at_one: bool = True, mean: bool = False):
    """Run the network forward from the learned prior for ``length`` steps from internal states ``h0``: outputs
    ``(length, D)`` and the final states. ``start_at_one``: the first step uses the unit prior of ``t = 1``
    (otherwise the learned prior given ``h0``); ``first`` (tuple) fixes the first step's latents; ``mean`` replaces
    every draw by the prior mean."""

    def body(h, inputs):
        t, k = inputs
        prior = network.prior(h, jnp.logical_and(start_at_one, t == 0))
        keys = jax.random.split(k, len(prior))
        z = tuple(loc if mean else loc + scale * jax.random.normal(kk, loc.shape)
                  for (loc, scale), kk in zip(prior, keys))
        if first is not None:
            z = tuple(jnp.where(t == 0, f, zl) for f, zl in zip(first, z))
        h, out = network.step(h, z)
        return h, out

    h_last, outputs = jax.lax.scan(body, h0, (jnp.arange(length), jax.random.split(key, length)))
    return outputs, h_last


class Encoder(eqx.Module):
    """The VRNN baseline's amortized posterior :math:`q_\\phi(z^l_t \\mid x_t, d_{t-1})` (Chung et al., NeurIPS
    2015): an MLP of the observation and every layer's previous deterministic state to ``[loc, log_scale]`` per
    layer."""

    mlp: eqx.nn.MLP
    latents: tuple = eqx.field(static=True)

    @classmethod
    def init(cls, key, network: PVRNN, *, width: int = 32):
        inputs = network.data_dim + sum(layer.hidden for layer in network.layers)
        return cls(eqx.nn.MLP(inputs, 2 * sum(network.latents), width, 2, activation=jnp.tanh, key=key),
                   network.latents)

    def __call__(self, x_t, h):
        params = self.mlp(jnp.concatenate([x_t, *(jnp.tanh(hl) for hl in h)]))
        out, start = [], 0
        for z in self.latents:
            out.append((jnp.tanh(params[start:start + z]), _scale(params[start + z:start + 2 * z])))
            start += 2 * z
        return out
