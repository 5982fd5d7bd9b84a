r"""Sequence networks of the Koopman VAE (equinox modules acting on one sequence ``(T, D)``; batches go through
``jax.vmap`` in the objectives).

* :class:`BiGRUEncoder`: a bidirectional GRU, the regular-data encoder (Naiman et al. 2024, Sec. 3.1).
* :class:`ODERNNEncoder`: a bidirectional ODE-RNN (Rubanova, Chen & Duvenaud, NeurIPS 2019) for irregularly
  sampled data. Between grid points the hidden state follows :math:`\dot h = f_\theta(h)` (one Tsit5 step of
  ``diffrax`` per grid interval); at an observed point it jumps to :math:`\mathrm{GRU}(x_t, h)`; at a missing one
  it only flows. The feature at every grid point (observed or not) is the concatenation of the forward and the
  backward state, so the posterior has a distribution for every time step.

  *Why an ODE-RNN and not the paper's neural CDE*: the NCDE (Kidger et al. 2020) needs an interpolation of the
  observed path (natural cubic splines, fitted per sequence) before encoding; the ODE-RNN consumes the observations
  as they come, with one ODE solve per interval and no preprocessing, which keeps CPU training cheap. Both are
  continuous-time encoders whose state carries information across gaps of any length; Naiman et al. report that the
  irregular results depend mostly on the prior, not on the choice of the continuous-time encoder.
* :class:`Decoder`: a GRU over the latent path and a linear read-out squashed to [0, 1] (the data are min-max
  scaled), the mean of the Gaussian observation model.
"""

from __future__ import annotations

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp


def run_gru(cell: eqx.nn.GRUCell, inputs, reverse: bool = False):
    """Hidden states ``(T, H)`` of ``cell`` run over ``inputs`` ``(T, D)`` from a zero state."""

    def step(h, x):
        h = cell(x, h)
        return h, h

    _, hs = jax.lax.scan(step, jnp.zeros(cell.hidden_size), inputs, reverse=reverse)
    return hs


class BiGRUEncoder(eqx.Module):
    """``(x (T, D), mask (T,)) -> (T, 2 hidden)``: forward and backward GRU states at every step. Regular data
    only: the mask is not used (every point is taken as observed)."""

    forward_cell: eqx.nn.GRUCell
    backward_cell: eqx.nn.GRUCell

    def __init__(self, key, data_dim: int, hidden: int):
        k1, k2 = jax.random.split(key)
        self.forward_cell = eqx.nn.GRUCell(data_dim, hidden, key=k1)
        self.backward_cell = eqx.nn.GRUCell(data_dim, hidden, key=k2)

    @property
    def features(self) -> int:
        return 2 * self.forward_cell.hidden_size

    def __call__(self, x, mask=None):
        return jnp.concatenate([run_gru(self.forward_cell, x), run_gru(self.backward_cell, x, reverse=True)], -1)


class _VectorField(eqx.Module):
    mlp: eqx.nn.MLP

    def __call__(self, t, h, args):
        return self.mlp(h)


class ODERNNEncoder(eqx.Module):
    r"""``(x (T, D), mask (T,)) -> (T, 2 hidden)``: a forward and a backward ODE-RNN on the grid ``t = 0..T-1``
    (unit spacing). Unobserved values of ``x`` are never read (they may be NaN). ``substeps`` Tsit5 steps per grid
    interval."""

    forward_cell: eqx.nn.GRUCell
    backward_cell: eqx.nn.GRUCell
    forward_field: _VectorField
    backward_field: _VectorField
    substeps: int = eqx.field(static=True)

    def __init__(self, key, data_dim: int, hidden: int, substeps: int = 1):
        k1, k2, k3, k4 = jax.random.split(key, 4)
        self.forward_cell = eqx.nn.GRUCell(data_dim, hidden, key=k1)
        self.backward_cell = eqx.nn.GRUCell(data_dim, hidden, key=k2)
        make = lambda k: _VectorField(eqx.nn.MLP(hidden, hidden, hidden, 1, activation=jnp.tanh,
                                                 final_activation=jnp.tanh, key=k))
        self.forward_field, self.backward_field = make(k3), make(k4)
        self.substeps = substeps

    @property
    def features(self) -> int:
        return 2 * self.forward_cell.hidden_size

    def _flow(self, field, h):
        """The state one grid interval later under :math:`\\dot h = f(h)`."""
        solution = diffrax.diffeqsolve(
            diffrax.ODETerm(field), diffrax.Tsit5(), 0.0, 1.0, 1.0 / self.substeps, h,
            stepsize_controller=diffrax.ConstantStepSize(), saveat=diffrax.SaveAt(t1=True),
            max_steps=self.substeps,
        )
        return solution.ys[0]

    def _run(self, cell, field, x, mask, reverse):
        def step(carry, inp):
            h, started = carry
            x_t, m_t = inp
            h = jnp.where(started, self._flow(field, h), h)  # no flow before the first grid point
            h = jnp.where(m_t, cell(jnp.where(m_t, x_t, 0.0), h), h)
            return (h, jnp.ones((), bool)), h

        init = (jnp.zeros(cell.hidden_size), jnp.zeros((), bool))
        _, hs = jax.lax.scan(step, init, (x, mask), reverse=reverse)
        return hs

    def __call__(self, x, mask):
        mask = mask.astype(bool)
        forward = self._run(self.forward_cell, self.forward_field, x, mask, reverse=False)
        backward = self._run(self.backward_cell, self.backward_field, x, mask, reverse=True)
        return jnp.concatenate([forward, backward], -1)


class Decoder(eqx.Module):
    """``z (T, latent) -> (T, D)`` means in (0, 1): a GRU over the latent path, a linear layer, a sigmoid."""

    cell: eqx.nn.GRUCell
    head: eqx.nn.Linear

    def __init__(self, key, latent: int, hidden: int, data_dim: int):
        k1, k2 = jax.random.split(key)
        self.cell = eqx.nn.GRUCell(latent, hidden, key=k1)
        self.head = eqx.nn.Linear(hidden, data_dim, key=k2)

    def __call__(self, z):
        return jax.nn.sigmoid(jax.vmap(self.head)(run_gru(self.cell, z)))
