r"""TimeGAN's two scores of synthetic time series (Yoon, Jarrett & van der Schaar, NeurIPS 2019, Sec. 5), as used
by the Koopman VAE paper (Naiman et al., ICLR 2024, Sec. 5). Both train a small post-hoc GRU network — with
:func:`pplvi.fit`, on a deterministic objective — so both are random variables of the seed; papers report means
over repeated runs.

* **Discriminative score** :math:`|\mathrm{acc} - \tfrac12|`: a GRU classifier (``D // 2`` units, its last state
  read by a linear layer) learns to tell real from generated sequences on 80% of each, and ``acc`` is its accuracy
  on the held-out 20% of both. 0 means indistinguishable; 0.5 means perfectly separable.
* **Predictive score** (train on synthetic, test on real): a GRU (``D // 2`` units) reads features
  :math:`1..D-1` of steps :math:`1..T-1` and predicts feature :math:`D` of steps :math:`2..T` (a sigmoid read-out
  at every step), trained by mean absolute error on the *generated* data; the score is its mean absolute error on
  the *real* data. ``predictive_score(real, real)`` (train and test on the real data, as TimeGAN's "original data"
  row) is the reference a good generator should match.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import pplvi
from pplvi.models.kvae.networks import run_gru


class SequenceClassifier(eqx.Module):
    """``(T, D) -> logit``: a GRU and a linear read-out of its last state."""

    cell: eqx.nn.GRUCell
    head: eqx.nn.Linear

    def __init__(self, key, data_dim: int, hidden: int):
        k1, k2 = jax.random.split(key)
        self.cell = eqx.nn.GRUCell(data_dim, hidden, key=k1)
        self.head = eqx.nn.Linear(hidden, "scalar", key=k2)

    def __call__(self, x):
        return self.head(run_gru(self.cell, x)[-1])


class StepPredictor(eqx.Module):
    """``(T-1, D-1) -> (T-1,)`` in (0, 1): a GRU and a sigmoid read-out at every step."""

    cell: eqx.nn.GRUCell
    head: eqx.nn.Linear

    def __init__(self, key, in_dim: int, hidden: int):
        k1, k2 = jax.random.split(key)
        self.cell = eqx.nn.GRUCell(in_dim, hidden, key=k1)
        self.head = eqx.nn.Linear(hidden, "scalar", key=k2)

    def __call__(self, x):
        return jax.nn.sigmoid(jax.vmap(self.head)(run_gru(self.cell, x)))


@pplvi.objective
def classification_log_likelihood(net, x, label):
    """Mean Bernoulli log-likelihood of the labels (1 = real) under the classifier's logits (maximized)."""
    logits = jax.vmap(net)(x)
    return jnp.mean(label * jax.nn.log_sigmoid(logits) + (1 - label) * jax.nn.log_sigmoid(-logits))


@pplvi.objective
def negative_absolute_error(net, inputs, targets):
    """Minus the mean absolute error of the one-step predictions (maximized)."""
    return -jnp.mean(jnp.abs(jax.vmap(net)(inputs) - targets))


def _hidden(data_dim: int) -> int:
    return max(data_dim // 2, 1)


def _check_pair(real, generated, what: str):
    real, generated = np.asarray(real, np.float32), np.asarray(generated, np.float32)
    if real.ndim != 3 or generated.ndim != 3 or real.shape[1:] != generated.shape[1:]:
        raise pplvi.DataError(f"{what}: real and generated data must be (N, T, D) arrays with the same T and D, got "
                              f"{real.shape} and {generated.shape}")
    for name, arr in (("real", real), ("generated", generated)):
        if not np.all(np.isfinite(arr)):
            i = tuple(int(v) for v in np.argwhere(~np.isfinite(arr))[0])
            raise pplvi.DataError(f"{what}: {name}{list(i)} is {arr[i]}; the scores need complete, finite data")
    return real, generated


def discriminative_score(real, generated, *, seed: int = 0, steps: int = 2000, batch_size: int = 128,
                         hidden: int | None = None, learning_rate: float = 1e-3) -> float:
    """:math:`|\\mathrm{acc} - 1/2|` of a post-hoc GRU classifier (module docstring): ``real`` and ``generated``
    ``(N, T, D)`` are each split 80/20 (random, by ``seed``); ``batch_size`` real plus ``batch_size`` generated
    sequences per step, ``steps`` Adam steps (TimeGAN: 2000 of 128)."""
    real, generated = _check_pair(real, generated, "discriminative_score")
    rng = np.random.default_rng(seed)

    def split(a):
        idx = rng.permutation(len(a))
        cut = int(0.8 * len(a))
        return a[idx[:cut]], a[idx[cut:]]

    (real_train, real_test), (gen_train, gen_test) = split(real), split(generated)
    x = np.concatenate([real_train, gen_train])
    y = np.concatenate([np.ones(len(real_train)), np.zeros(len(gen_train))]).astype(np.float32)
    net = SequenceClassifier(jax.random.key(seed), real.shape[-1], hidden or _hidden(real.shape[-1]))
    result = pplvi.fit(classification_log_likelihood, net, data=(x, y), batch_size=min(2 * batch_size, len(x)),
                       optimizer=optax.adam(learning_rate), steps=steps, key=seed, progress=False)
    logits = np.concatenate([np.asarray(_logits(result.params, jnp.asarray(a))) for a in (real_test, gen_test)])
    labels = np.concatenate([np.ones(len(real_test)), np.zeros(len(gen_test))])
    accuracy = float(np.mean((logits > 0) == (labels == 1)))
    return abs(accuracy - 0.5)


@eqx.filter_jit
def _logits(net, x):
    return jax.vmap(net)(x)


@eqx.filter_jit
def _predictions(net, x):
    return jax.vmap(net)(x)


def predictive_score(train, test, *, seed: int = 0, steps: int = 5000, batch_size: int = 128,
                     hidden: int | None = None, learning_rate: float = 1e-3) -> float:
    """Mean absolute error on ``test`` of a GRU one-step predictor of the last feature trained on ``train`` (both
    ``(N, T, D)``, ``D >= 2``): train on generated data and test on real data for the score; ``steps`` Adam
    steps of ``batch_size`` sequences (TimeGAN: 5000 of 128)."""
    train, test = _check_pair(test, train, "predictive_score")[::-1]
    D = train.shape[-1]
    if D < 2:
        raise pplvi.DataError(f"predictive_score needs D >= 2 features (inputs 1..D-1, target D), got D = {D}")
    net = StepPredictor(jax.random.key(seed), D - 1, hidden or _hidden(D))
    inputs, targets = train[:, :-1, : D - 1], train[:, 1:, D - 1]
    result = pplvi.fit(negative_absolute_error, net, data=(inputs, targets), batch_size=min(batch_size, len(train)),
                       optimizer=optax.adam(learning_rate), steps=steps, key=seed, progress=False)
    predicted = np.asarray(_predictions(result.params, jnp.asarray(test[:, :-1, : D - 1])))
    return float(np.mean(np.abs(predicted - test[:, 1:, D - 1])))
