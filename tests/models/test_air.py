"""pplvi.models.air: multi-MNIST, the spatial transformer, and the AIR objectives' present-bit gradients (every
estimator unbiased for the same gradient: they must agree within their standard errors)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import pplvi
from pplvi.models import air as A
from pplvi.models.air import transformer as T


# ---------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------
def test_multi_mnist_is_deterministic_and_counts_match_the_canvases():
    x1, c1 = A.multi_mnist(60, seed=3)
    x2, c2 = A.multi_mnist(60, seed=3)
    assert x1.shape == (60, 2500) and x1.dtype == np.float32
    assert np.array_equal(x1, x2) and np.array_equal(c1, c2)
    assert set(np.unique(c1)) <= {0, 1, 2} and len(np.unique(c1)) == 3
    assert 0.0 <= x1.min() and x1.max() <= 1.0
    ink = x1.sum(1)
    assert np.all(ink[c1 == 0] == 0) and np.all(ink[c1 > 0] > 20)
    assert ink[c1 == 2].mean() > 1.5 * ink[c1 == 1].mean()  # two digits (overlaps combine by max) ~ twice the ink
    assert not np.array_equal(A.multi_mnist(60, seed=4)[0], x1)


def test_multi_mnist_missing_data_is_a_pplvi_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PPLVI_DATA", str(tmp_path))
    with pytest.raises(pplvi.DataError, match="mnist"):
        A.multi_mnist(4)


# ---------------------------------------------------------------------------------------------------------------
# Spatial transformer
# ---------------------------------------------------------------------------------------------------------------
def _reference(image, rows, cols):
    grid_r, grid_c = jnp.meshgrid(rows, cols, indexing="ij")
    return jax.scipy.ndimage.map_coordinates(image, [grid_r, grid_c], order=1, mode="constant", cval=0.0)


@pytest.mark.parametrize("where", [(0.3, 0.4, -0.6), (-1.0, -0.9, 0.2), (2.0, 0.0, 0.0)])
def test_place_and_crop_are_bilinear_interpolation(where):
    rng = np.random.default_rng(0)
    window, canvas = jnp.asarray(rng.random((20, 20))), jnp.asarray(rng.random((50, 50)))
    where = jnp.asarray(where)
    s, tx, ty = T.geometry(where)
    u, w = T._centres(50), T._centres(20)
    placed = _reference(window, T._index((u - ty) / s, 20), T._index((u - tx) / s, 20))
    cropped = _reference(canvas, T._index(s * w + ty, 50), T._index(s * w + tx, 50))
    assert jnp.allclose(A.place(window, where), placed, atol=1e-5)
    assert jnp.allclose(A.crop(canvas, where), cropped, atol=1e-5)


def test_crop_inverts_place_for_a_pixel_aligned_window():
    # scale 20/50 maps window pixels one-to-one onto canvas pixels; a shift of 2k/50 moves by k whole pixels
    s0 = jnp.log(0.4 / T.SCALE0) / T.SCALE_SPREAD
    where = jnp.array([s0, 2 * 7 / 50 / T.SHIFT_SPREAD, -2 * 5 / 50 / T.SHIFT_SPREAD])
    window = jnp.asarray(np.random.default_rng(1).random((20, 20)))
    canvas = A.place(window, where)
    assert jnp.allclose(A.crop(canvas, where), window, atol=1e-5)
    assert jnp.allclose(canvas[10:30, 22:42], window, atol=1e-5) and jnp.isclose(canvas.sum(), window.sum(), rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# Objectives and estimators
# ---------------------------------------------------------------------------------------------------------------
def tiny_air(steps=2):
    return A.AIR.init(jax.random.key(0), steps=steps, what_dim=4, hidden=16, embed=16)


@pytest.fixture(scope="module")
def canvases():
    x, counts = A.multi_mnist(8, seed=5)
    return jnp.asarray(x), counts


def present_logit_grads(objective, air, images, n):
    dyn, static = eqx.partition(air, eqx.is_inexact_array)
    one = jax.jit(jax.vmap(lambda k: objective.grad(k, eqx.combine(dyn, static), images).predict.bias[0]))
    return np.asarray(one(jax.random.split(jax.random.key(1), n)), np.float64)


def test_present_bit_estimators_agree_on_the_gradient(canvases):
    # REINFORCE, enumeration and MVD are each unbiased for the ELBO's gradient in the guide's present logit
    images, _ = canvases
    air = tiny_air()
    draws = {name: present_logit_grads(A.air_elbo(name, steps=2), air, images[:4], 600)
             for name in ("enum", "mvd", "reinforce")}
    means = {k: v.mean() for k, v in draws.items()}
    ses = {k: v.std() / np.sqrt(v.size) for k, v in draws.items()}
    for name in ("mvd", "reinforce"):
        z = (means[name] - means["enum"]) / np.hypot(ses[name], ses["enum"])
        assert abs(z) < 5, (name, means, ses)
    assert ses["enum"] < ses["reinforce"] / 3 and ses["mvd"] < ses["reinforce"] / 3, ses
    assert abs(means["enum"]) > 5 * ses["enum"]  # a gradient the comparison can see


def test_training_steps_raise_the_bound_and_counts_are_reported(canvases):
    images, counts = canvases
    air = tiny_air()
    result = pplvi.fit(A.air_iwae(2, "mvd", steps=2), air, data=images, batch_size=4, optimizer=optax.adam(3e-3),
                       steps=30, key=jax.random.key(2), progress=False, chunk=10)
    h = np.asarray(result.history["objective"])
    assert np.all(np.isfinite(h)) and h[-10:].mean() > h[:10].mean()
    accuracy = A.count_accuracy(result.params, images, counts, jax.random.key(3))
    assert 0.0 <= accuracy <= 1.0
    inferred = A.infer_counts(result.params, images, jax.random.key(3))
    assert inferred.shape == (8,) and int(inferred.min()) >= 0 and int(inferred.max()) <= 2


def test_bad_arguments_are_reported():
    with pytest.raises(ValueError, match="steps"):
        A.AIR.init(jax.random.key(0), steps=0)
    with pytest.raises(ValueError, match="pres_prior"):
        A.AIR.init(jax.random.key(0), pres_prior=1.0)
    with pytest.raises(ValueError, match="K must be"):
        A.air_iwae(0)
    with pytest.raises(ValueError, match="not one of"):
        A.air_elbo("bogus")
