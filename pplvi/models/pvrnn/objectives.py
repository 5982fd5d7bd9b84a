r"""The PV-RNN objective (Ahmadi & Tani 2019, Eq. 10) in pplvi's public language, its trainer, and error
regression.

For sequences :math:`x^{(i)}_{1:T}` with adaptive vectors :math:`A^{(i)}` the objective to **maximize** is minus the
paper's free energy,

.. math::
    \mathcal J(\theta, A) = \frac1B \sum_i \mathbb E_{q_{A^{(i)}}(z)}\Big[ -\sum_t
        \frac{\lVert x^{(i)}_t - \hat x_t \rVert^2}{2 s^2}
        - \sum_l \Big( w^l_1\, \mathrm{KL}\big(q(z^l_1) \,\|\, p(z^l_1)\big)
        + w^l \sum_{t \ge 2} \mathrm{KL}\big(q(z^l_t) \,\|\, p_\theta(z^l_t \mid d^l_{t-1})\big)\Big)\Big],

the reconstruction term plus the **meta-prior** :math:`w^l` weighting each layer's KL (and a separate
:math:`w^l_1` at :math:`t = 1`). With :math:`w = w_1 = 1` it is the ELBO of a Gaussian observation model of scale
:math:`s`; the paper's loss (summed squared error) is the case :math:`2 s^2 = 1`, our default. Each layer's latent
path is one reparameterized :func:`pplvi.sample` site ``"z<l>"`` with the posterior
:math:`\mathcal N(\tanh A^\mu, \exp(A^\sigma)^2)`; the KL terms are analytic per step, conditionally on the sampled
path that drives :math:`d_{t-1}`. Each sequence's term is emitted with :func:`pplvi.add_cost` from its own
``jax.vmap`` lane.

**Error regression** (:func:`error_regression`, the paper's Sec. 2.3): with the network weights frozen, only the
adaptive vectors of a window of the most recent observations (and the window's initial internal state, which stands
in for the state that the paper carries over from the previous window) are optimized for a few iterations by
:func:`pplvi.fit` with a ``trainable=`` mask; :func:`predict` then runs the network past the window on the learned
prior.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpyro.distributions as dist
import optax

import pplvi
from pplvi.models.pvrnn.data import check_sequences
from pplvi.models.pvrnn.model import PVRNN, AdaptiveVectors, generate, unroll


def gaussian_kl(q, p):
    """:math:`\\mathrm{KL}(\\mathcal N(\\mu_q, \\sigma_q^2) \\| \\mathcal N(\\mu_p, \\sigma_p^2))` elementwise for
    ``(loc, scale)`` pairs."""
    (mq, sq), (mp, sp) = q, p
    return jnp.log(sp / sq) + (sq ** 2 + (mq - mp) ** 2) / (2 * sp ** 2) - 0.5


def _per_layer(value, layers: int, name: str) -> tuple[float, ...]:
    values = tuple(float(v) for v in value) if isinstance(value, (tuple, list)) else (float(value),) * layers
    if len(values) != layers or min(values) < 0:
        raise pplvi.ObjectiveError(f"{name}={value} must be one non-negative number or one per layer ({layers})")
    return values


def free_energy_terms(network: PVRNN, h0, posterior, x, *, start_at_one: bool = True):
    r"""Inside an objective: sample every layer's latent path from ``posterior`` (``[(loc, scale)]``, site
    ``"z<l>"``), run the network from ``h0``, and return ``(reconstruction squared error per step (T,),
    KL per layer and step (L, T) as a list)``."""
    z = tuple(pplvi.sample(f"z{i}", dist.Normal(loc, scale).to_event(2)) for i, (loc, scale) in enumerate(posterior))
    outputs, priors, _ = unroll(network, h0, z, start_at_one=start_at_one)
    squared = jnp.sum((x - outputs) ** 2, -1)
    kls = [jnp.sum(gaussian_kl(q, p), -1) for q, p in zip(posterior, priors)]
    return squared, kls


def weighted_free_energy(squared, kls, *, w, w1, obs_scale: float):
    """:math:`\\sum_t \\lVert x_t - \\hat x_t \\rVert^2 / 2s^2 + \\sum_l (w^l_1 \\mathrm{KL}^l_1 + w^l \\sum_{t\\ge2}
    \\mathrm{KL}^l_t)` from :func:`free_energy_terms`' values (``w``, ``w1``: tuples per layer)."""
    energy = jnp.sum(squared) / (2 * obs_scale ** 2)
    for kl, wl, w1l in zip(kls, w, w1):
        energy = energy + w1l * kl[0] + wl * jnp.sum(kl[1:])
    return energy


def pvrnn_objective(network: PVRNN, *, w=1e-2, w1=None, obs_scale: float = 2 ** -0.5, start_at_one: bool = True
                    ) -> pplvi.Objective:
    r"""The PV-RNN objective :math:`\mathcal J` (module docstring), called as ``objective(params, x, index)`` with
    ``params = {"network": PVRNN, "adaptive": AdaptiveVectors}``, a batch ``x`` ``(B, T, D)`` and the batch's rows
    ``index`` ``(B,)`` into the adaptive vectors. ``w``/``w1``: the meta-prior, one number or one per layer
    (``w1`` defaults to ``w``). ``start_at_one=False`` scores windows inside sequences (error regression)."""
    layers = len(network.layers)
    w = _per_layer(w, layers, "w")
    w1 = w if w1 is None else _per_layer(w1, layers, "w1")
    if not obs_scale > 0:
        raise pplvi.ObjectiveError(f"obs_scale={obs_scale} must be > 0")

    @pplvi.objective
    def pvrnn(params, x, index):
        net, adaptive = params["network"], params["adaptive"]
        batch = x.shape[0]

        def one(xi, i):
            h0 = tuple(h[i] for h in adaptive.h0)
            squared, kls = free_energy_terms(net, h0, adaptive.posterior(i), xi, start_at_one=start_at_one)
            pplvi.add_cost(-weighted_free_energy(squared, kls, w=w, w1=w1, obs_scale=obs_scale) / batch)

        jax.vmap(one)(x, index)
        return jnp.zeros(())

    pvrnn.name = "pvrnn"
    return pvrnn


def _optimizer(learning_rate, steps):
    schedule = optax.cosine_decay_schedule(learning_rate, max(steps, 1), alpha=0.1)
    return optax.chain(optax.clip_by_global_norm(100.0), optax.adam(schedule))


def train(network: PVRNN, x, *, steps: int, key, learning_rate: float = 3e-3, adaptive_learning_rate=None,
          batch_size: int | None = None, progress: bool | None = None, desc: str | None = None, **objective_options):
    """Learn the network weights and every training sequence's adaptive vectors together (the initial states stay
    zero): :func:`pvrnn_objective` maximized with Adam through :func:`pplvi.fit`. ``adaptive_learning_rate``
    (default ``10 * learning_rate``) is the adaptive vectors' step. Returns the :class:`pplvi.train.FitResult`;
    its ``params`` are ``{"network", "adaptive"}``."""
    x = check_sequences(x)
    n, length, _ = x.shape
    if x.shape[-1] != network.data_dim:
        raise pplvi.DataError(f"x has {x.shape[-1]} features but the network outputs {network.data_dim}")
    params = {"network": network, "adaptive": AdaptiveVectors.init(network, n, length)}
    trainable = {"network": True, "adaptive": AdaptiveVectors(A=True, h0=False)}
    labels = {"network": "network", "adaptive": "adaptive"}
    optimizer = optax.multi_transform(
        {"network": _optimizer(learning_rate, steps),
         "adaptive": _optimizer(adaptive_learning_rate or 10 * learning_rate, steps)},
        lambda p: {k: jax.tree_util.tree_map(lambda _, v=v: v, p[k]) for k, v in labels.items()})
    return pplvi.fit(pvrnn_objective(network, **objective_options), params, data=(x, jnp.arange(n)),
                     batch_size=batch_size, optimizer=optimizer, steps=steps, key=key, trainable=trainable,
                     progress=progress, desc=desc or "training pvrnn")


def error_regression(network: PVRNN, windows, *, steps: int = 100, key=0, learning_rate: float = 0.05,
                     progress: bool | None = False, **objective_options):
    """Error regression on ``windows`` ``(n, W, D)`` (each the most recent ``W`` observations of a sequence): the
    network is frozen (``trainable={"network": False, ...}``: its weights come back bit-identical) and each
    window's adaptive vectors and initial internal state are fitted for ``steps`` Adam iterations. The objective
    is :func:`pvrnn_objective` with ``start_at_one=False``. Returns the :class:`pplvi.train.FitResult` (``params``
    ``{"network", "adaptive"}``)."""
    windows = check_sequences(windows, name="windows")
    n, length, _ = windows.shape
    params = {"network": network, "adaptive": AdaptiveVectors.init(network, n, length)}
    objective = pvrnn_objective(network, start_at_one=False, **objective_options)
    return pplvi.fit(objective, params, data=(windows, jnp.arange(n)), batch_size=None,
                     optimizer=optax.adam(learning_rate), steps=steps, key=key,
                     trainable={"network": False, "adaptive": True}, progress=progress, desc="error regression")


@eqx.filter_jit
def reconstruct(network: PVRNN, adaptive: AdaptiveVectors, *, start_at_one: bool = True):
    """The network's outputs ``(n, T, D)`` with every latent at its posterior mean."""
    def one(i):
        z = tuple(loc for loc, _ in adaptive.posterior(i))
        return unroll(network, tuple(h[i] for h in adaptive.h0), z, start_at_one=start_at_one)[0]
    return jax.vmap(one)(jnp.arange(adaptive.A[0].shape[0]))


@eqx.filter_jit
def predict(network: PVRNN, adaptive: AdaptiveVectors, key, horizon: int, *, samples: int = 32,
            start_at_one: bool = False):
    """Predictions ``(n, horizon, D)`` past the windows of ``adaptive``: run each window at its posterior means,
    then ``samples`` continuations from the learned prior, averaged (the predictive mean)."""
    def one(i, k):
        z = tuple(loc for loc, _ in adaptive.posterior(i))
        _, _, h = unroll(network, tuple(h[i] for h in adaptive.h0), z, start_at_one=start_at_one)
        outs = jax.vmap(lambda kk: generate(network, kk, h, horizon, start_at_one=False)[0])(
            jax.random.split(k, samples))
        return outs.mean(0)
    n = adaptive.A[0].shape[0]
    return jax.vmap(one)(jnp.arange(n), jax.random.split(key, n))


@eqx.filter_jit
def predict_from_prior(network: PVRNN, key, n: int, window: int, horizon: int, *, samples: int = 32):
    """Prediction without observations: ``samples`` runs of ``window + horizon`` steps from the prior (zero initial
    state), averaged, last ``horizon`` steps; the same for all ``n`` windows ``(n, horizon, D)``."""
    outs = jax.vmap(lambda k: generate(network, k, network.initial_state(), window + horizon)[0])(
        jax.random.split(key, samples))
    return jnp.broadcast_to(outs.mean(0)[window:], (n, horizon, network.data_dim))
