"""pplvi.fit's two loops — one compiled while-loop per chunk ("device") or one compiled call per step ("host"), chosen
automatically for convolutional models on CPU. Both compute the same steps."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import pplvi
from pplvi import PPLVIError
from pplvi.train.loop import _choose_loop


class TinyConv(eqx.Module):
    conv: eqx.nn.Conv2d

    def __call__(self, x):
        return jnp.mean(self.conv(x))


@pplvi.objective
def fit_target(model, xs):
    return -jnp.mean((jax.vmap(model)(xs) - 1.0) ** 2)


def test_host_and_device_loops_agree():
    model = TinyConv(eqx.nn.Conv2d(1, 2, 3, padding=1, key=jax.random.key(0)))
    xs = jax.random.normal(jax.random.key(1), (32, 1, 6, 6))
    runs = {
        loop: pplvi.fit(fit_target, model, optimizer=optax.adam(1e-2), steps=25, key=3, data=xs, batch_size=8,
                        chunk=10, progress=False, loop=loop)
        for loop in ("device", "host")
    }
    np.testing.assert_allclose(runs["host"].history["objective"], runs["device"].history["objective"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(runs["host"].params), jax.tree.leaves(runs["device"].params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_host_loop_stops_after_max_bad_steps_like_the_device_loop():
    @pplvi.objective
    def blows_up(p):
        return jnp.where(p["w"] > 0.5, jnp.nan, -((p["w"] - 2.0) ** 2))

    res = {}
    for loop in ("device", "host"):
        res[loop] = pplvi.fit(blows_up, {"w": jnp.float32(0.0)}, optimizer=optax.sgd(0.05), steps=50, key=0,
                              max_bad_steps=3, progress=False, loop=loop, chunk=7)
        assert res[loop].stopped == "non-finite", loop
    assert float(res["host"].params["w"]) == float(res["device"].params["w"])
    h, d = res["host"].history["objective"], res["device"].history["objective"]
    assert len(h) == len(d) and np.isnan(h[-1]) and np.array_equal(np.isnan(h), np.isnan(d))


def test_auto_picks_the_host_loop_for_convolutions_on_cpu_only():
    conv = TinyConv(eqx.nn.Conv2d(1, 2, 3, key=jax.random.key(0)))
    mlp = eqx.nn.MLP(2, 2, 4, 1, key=jax.random.key(0))
    on_cpu = jax.default_backend() == "cpu"
    assert _choose_loop("auto", conv, None) is on_cpu
    assert _choose_loop("auto", mlp, None) is False
    assert _choose_loop("host", mlp, None) is True
    with pytest.raises(PPLVIError, match="loop must be"):
        _choose_loop("python", mlp, None)


def test_load_tree_accepts_an_abstract_structure(tmp_path):
    make = lambda: eqx.nn.MLP(3, 2, 8, 2, key=jax.random.key(5))  # noqa: E731
    path = pplvi.train.save_tree(tmp_path / "mlp.npz", make())
    concrete = pplvi.train.load_tree(path, eqx.nn.MLP(3, 2, 8, 2, key=jax.random.key(6)))
    abstract = pplvi.train.load_tree(path, eqx.filter_eval_shape(make))
    for a, b in zip(jax.tree.leaves(concrete), jax.tree.leaves(abstract)):
        np.testing.assert_array_equal(a, b)
    assert abstract(jnp.ones(3)).shape == (2,)
