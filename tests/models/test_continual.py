"""Variational continual learning with binary weights (pplvi.models.continual): the mean-field KL against exhaustive
enumeration, the Gaussian pre-activation approximation against sampled binary weights, teachers with the requested
correlation, and learning a task."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pplvi
from pplvi.models import continual as C


def test_binary_kl_equals_enumeration():
    h, g = jnp.array([0.3, -1.2, 2.0]), jnp.array([-0.5, 0.1, 1.0])

    def log_q(fields, w):
        return jnp.sum(fields * w - jnp.log(2 * jnp.cosh(fields)))

    exact = 0.0
    for w in itertools.product([-1.0, 1.0], repeat=3):
        w = jnp.array(w)
        exact += jnp.exp(log_q(h, w)) * (log_q(h, w) - log_q(g, w))
    assert float(C.binary_kl(h, g)) == pytest.approx(float(exact), abs=1e-5)
    assert float(C.binary_kl(h, h)) == pytest.approx(0.0, abs=1e-6)


def test_gaussian_preactivation_approximates_sampled_binary_weights():
    n = 400
    fields = 0.8 * jax.random.normal(jax.random.key(0), (n,))
    x = jax.random.normal(jax.random.key(1), (5, n))
    y = jnp.array([1.0, -1.0, 1.0, 1.0, -1.0])
    predicted = jnp.exp(C.log_correct_probability(fields, x, y))
    w = jnp.where(jax.random.uniform(jax.random.key(2), (20000, n)) < (1 + jnp.tanh(fields)) / 2, 1.0, -1.0)
    sampled = jnp.mean(jnp.sign(w @ x.T) == y, 0)
    # 20,000 draws: se <= 0.0036; the central-limit error at N = 400 is ~0.01
    np.testing.assert_allclose(predicted, sampled, atol=0.025)


def test_teachers_have_the_requested_overlap():
    t = C.make_teachers(jax.random.key(3), 200, 3, 0.25)
    assert set(np.unique(np.asarray(t))) == {-1.0, 1.0}
    for a, b in ((0, 1), (1, 2)):
        assert float(jnp.mean(t[a] * t[b])) == pytest.approx(0.5, abs=1e-9)
    with pytest.raises(pplvi.DataError, match="flip"):
        C.make_teachers(jax.random.key(0), 10, 2, 1.5)


def test_learning_one_task_aligns_the_student_and_the_kl_anchors_it():
    teachers = C.make_teachers(jax.random.key(4), 100, 2, 0.5)
    tasks = [C.make_task(jax.random.key(5 + t), teachers[t], 300) for t in range(2)]
    fields = C.learn_sequence(tasks, variational=True, steps=120, lr=5.0)
    assert C.overlap(fields[0], teachers[0]) > 0.6
    # the second task moved the fields toward its teacher
    assert C.overlap(fields[1], teachers[1]) > C.overlap(fields[0], teachers[1]) + 0.1
    # at the prior, the objective is the data term alone (KL = 0)
    obj = C.continual_objective(fields[0], 300)
    x, y = tasks[1]
    assert float(obj.estimate(jax.random.key(0), jnp.asarray(fields[0]), x, y)) == pytest.approx(
        float(jnp.mean(C.log_correct_probability(jnp.asarray(fields[0]), x, y))), rel=1e-5)
    with pytest.raises(pplvi.DataError, match="no tasks"):
        C.learn_sequence([], variational=True)
