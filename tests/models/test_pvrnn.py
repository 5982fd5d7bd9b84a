"""PV-RNN (pplvi.models.pvrnn): fast versions of its checks.

* The FSM generator's empirical branching frequencies match its parameters; the Kalman smoother beats the raw
  observations on its own model.
* Shapes and finite values of the network, the objective and predictions.
* A few optimization steps raise the objective (PV-RNN and the VRNN baseline).
* Error regression changes only the adaptive vectors: the network weights come back bit-identical.
* Bad input raises a pplvi error naming what is wrong.

The meta-prior sweep and the error-regression comparisons are ``python -m pplvi.models.pvrnn reproduce``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pplvi
from pplvi.models import pvrnn as P

SMALL = {"hidden": (8, 4), "latent": (2, 1), "tau": (2.0, 4.0)}


@pytest.fixture(scope="module")
def data():
    x, _ = P.fsm_sequences(0, 8, 30, noise=0.05)
    return x


def test_fsm_branching_frequencies_match_its_parameters():
    fsm = P.branching_fsm(p=0.3)
    _, states = P.fsm_sequences(1, 2000, 200, fsm)
    freq = P.transition_frequencies(states, 3)
    n = (states[:, :-1] == 0).sum()
    se = np.sqrt(0.3 * 0.7 / n)
    assert abs(freq[0, 1] - 0.3) < 4 * se and abs(freq[0, 2] - 0.7) < 4 * se
    np.testing.assert_array_equal(freq[1:], [[1, 0, 0], [1, 0, 0]])


def test_segment_classification_recovers_the_states_of_noisy_data():
    fsm = P.branching_fsm()
    x, states = P.fsm_sequences(2, 50, 60, fsm, noise=0.05)
    np.testing.assert_array_equal(P.classify_segments(x, fsm), states)
    assert P.branching_error(x, fsm) < 0.15  # the data themselves reproduce their branching
    assert P.branching_error(np.zeros_like(x), fsm) > 0.25  # constant output: always one branch


def test_kalman_smoother_is_closer_to_the_state_than_the_observations():
    x, s = P.linear_gaussian_sequences(0, 200, 40)
    smooth = P.kalman_smoother(x)
    assert ((smooth - s) ** 2).mean() < 0.7 * ((x - s) ** 2).mean()


def test_determinism_is_one_for_identical_generations_and_low_for_noise():
    rng = np.random.default_rng(0)
    same = np.broadcast_to(rng.normal(size=(1, 20, 2)), (16, 20, 2))
    assert P.determinism(same, 1.0) == 1.0
    assert P.determinism(rng.normal(size=(16, 20, 2)), 1.0) < 0.2


def test_shapes_and_finite_values(data):
    net = P.PVRNN.init(jax.random.key(0), 2, **SMALL)
    adaptive = P.AdaptiveVectors.init(net, 8, 30)
    assert [a.shape for a in adaptive.A] == [(8, 30, 4), (8, 30, 2)]
    rec = P.reconstruct(net, adaptive)
    assert rec.shape == (8, 30, 2) and bool(jnp.all(jnp.isfinite(rec)))
    out, h = P.generate(net, jax.random.key(1), net.initial_state(), 12)
    assert out.shape == (12, 2) and [hl.shape for hl in h] == [(8,), (4,)]
    objective = P.pvrnn_objective(net, w=(1e-2, 1e-3), w1=1.0)
    value = objective.estimate(jax.random.key(2), {"network": net, "adaptive": adaptive}, data, jnp.arange(8))
    assert np.isfinite(float(value))
    pred = P.predict(net, adaptive, jax.random.key(3), 5, samples=4)
    assert pred.shape == (8, 5, 2) and bool(jnp.all(jnp.isfinite(pred)))


def test_gaussian_kl_matches_numpyro():
    from numpyro.distributions import Normal, kl_divergence
    q, p = (jnp.array([0.3, -1.0]), jnp.array([0.5, 2.0])), (jnp.array([0.0, 0.4]), jnp.array([1.5, 0.7]))
    np.testing.assert_allclose(P.gaussian_kl(q, p), kl_divergence(Normal(*q), Normal(*p)), rtol=1e-5)


def test_a_few_steps_raise_the_pvrnn_objective(data):
    net = P.PVRNN.init(jax.random.key(0), 2, **SMALL)
    result = P.train(net, data, steps=40, key=1, learning_rate=1e-2, w=1e-2, progress=False)
    obj = result.history["objective"]
    assert np.isfinite(obj).all() and obj[-10:].mean() > obj[:10].mean() + 5
    # the initial states are frozen in training
    assert all(bool(jnp.all(h == 0)) for h in result.params["adaptive"].h0)


def test_a_few_steps_raise_the_vrnn_objective(data):
    net = P.PVRNN.init(jax.random.key(0), 2, **SMALL)
    obj = P.train_vrnn(net, data, steps=40, key=1, learning_rate=1e-2, progress=False).history["objective"]
    assert np.isfinite(obj).all() and obj[-10:].mean() > obj[:10].mean() + 5


def test_error_regression_changes_only_the_adaptive_vectors(data):
    net = P.PVRNN.init(jax.random.key(0), 2, **SMALL)
    windows = data[:4, :12]
    result = P.error_regression(net, windows, steps=40, key=3, learning_rate=0.05, w=1e-2)
    before = jax.tree_util.tree_leaves(net)
    after = jax.tree_util.tree_leaves(result.params["network"])
    assert all(bool(jnp.array_equal(a, b)) for a, b in zip(before, after))
    start = P.AdaptiveVectors.init(net, 4, 12)
    assert any(not bool(jnp.array_equal(a, b)) for a, b in zip(jax.tree_util.tree_leaves(start),
                                                               jax.tree_util.tree_leaves(result.params["adaptive"])))
    obj = result.history["objective"]
    assert obj[-5:].mean() > obj[:5].mean()


def test_bad_input_raises_a_pplvi_error_naming_the_problem(data):
    net = P.PVRNN.init(jax.random.key(0), 2, **SMALL)
    with pytest.raises(pplvi.DataError, match=r"x must be sequences of shape \(N, T, D\)"):
        P.train(net, data[0], steps=1, key=0)
    bad = data.copy()
    bad[1, 3, 0] = np.nan
    with pytest.raises(pplvi.DataError, match=r"x\[1, 3, 0\] is nan"):
        P.train(net, bad, steps=1, key=0)
    with pytest.raises(pplvi.DataError, match="3 features but the network outputs 2"):
        P.train(net, np.zeros((2, 5, 3)), steps=1, key=0)
    with pytest.raises(pplvi.DataError, match=r"p=1.5 must lie in \[0, 1\]"):
        P.branching_fsm(p=1.5)
    fsm = P.branching_fsm()
    with pytest.raises(pplvi.DataError, match="row 0 must be a probability vector"):
        P.fsm_sequences(0, 2, 10, P.FSM(fsm.prototypes, fsm.transitions * 2, 0))
    with pytest.raises(pplvi.ObjectiveError, match="w=.* one per layer"):
        P.pvrnn_objective(net, w=(1.0, 2.0, 3.0))
    with pytest.raises(pplvi.ObjectiveError, match="tau >= 1"):
        P.PVRNN.init(jax.random.key(0), 2, hidden=(4,), latent=(1,), tau=(0.5,))
