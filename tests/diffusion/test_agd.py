"""Adapter guidance distillation (pplvi.diffusion.agd)."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pplvi
import pplvi.diffusion as D
from pplvi.diffusion import agd as A
from pplvi.diffusion import pretrained as P
from pplvi.train import load_tree

ROOT = Path(__file__).resolve().parents[2]


def _mlp_model(key=0):
    net = D.MLPDenoiser(2, 2, key=jax.random.key(key), width=32, depth=2, cond_dim=16)
    return D.Diffusion(net, D.CosineSchedule(), num_classes=2)


def test_zero_adapter_is_the_conditional_model_exactly():
    model = P.load("digits")
    agd = A.AGD(model, key=jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (4, 1, 8, 8))
    labels = jnp.array([0, 3, 7, 9])
    for w in (1.0, 5.0):
        np.testing.assert_array_equal(np.asarray(agd.eps(x, 0.4, labels, w)), np.asarray(model.eps(x, 0.4, labels)))
    mlp = _mlp_model()
    agd2 = A.AGD(mlp, key=jax.random.key(2))
    z = jax.random.normal(jax.random.key(3), (5, 2))
    np.testing.assert_array_equal(np.asarray(agd2.eps(z, 0.7, 1, 3.0)), np.asarray(mlp.eps(z, 0.7, 1)))


def test_one_network_evaluation_per_step():
    model = _mlp_model()
    agd = A.AGD(model, key=jax.random.key(0))
    out = D.ddim(jax.random.key(1), A.AGDPredictor(agd, 0, 3.0), model.schedule, (8, 2), steps=7)
    ref = D.ddim(jax.random.key(1), D.cfg(model, 0, 3.0), model.schedule, (8, 2), steps=7)
    assert int(out.nfe) == 7 and int(ref.nfe) == 14


def test_adapter_learns_cfg_of_a_frozen_two_dimensional_model():
    """Held-out CFG states (another seed): the trained adapter's squared error to the CFG target must fall below a
    quarter of the untrained adapter's (the conditional model's), at a trained scale and an interpolated one."""
    model = _mlp_model()
    labels = jnp.arange(64) % 2
    traj = A.cfg_trajectories(model, jax.random.key(1), labels, [1.0, 3.0, 5.0], (64, 2), steps=10)
    agd = A.train_agd(model, traj, key=0, steps=400, batch_size=128, lr=3e-3, width=32)
    base = A.AGD(model, key=jax.random.key(9), width=32)
    held = A.cfg_trajectories(model, jax.random.key(2), labels, [2.0, 5.0], (64, 2), steps=10)
    args = tuple(held[k] for k in ("x_t", "t", "labels", "w", "target"))
    mse_trained = float(jnp.mean(jnp.sum((agd.eps(*args[:4]) - args[4]) ** 2, -1)))
    mse_zero = float(jnp.mean(jnp.sum((base.eps(*args[:4]) - args[4]) ** 2, -1)))
    assert mse_zero > 0.01
    assert mse_trained < 0.25 * mse_zero, (mse_trained, mse_zero)
    # the base is frozen
    np.testing.assert_array_equal(np.asarray(agd.base.net.mlp.layers[0].weight),
                                  np.asarray(model.net.mlp.layers[0].weight))


def test_bad_inputs_raise():
    net = D.MLPDenoiser(2, 0, key=jax.random.key(0))
    with pytest.raises(pplvi.PPLVIError, match="class-conditional"):
        A.AGD(D.Diffusion(net, D.CosineSchedule()), key=jax.random.key(0))
    with pytest.raises(pplvi.PPLVIError, match="labels"):
        A.cfg_trajectories(_mlp_model(), jax.random.key(0), jnp.zeros(3, jnp.int32), [1.0], (4, 2))


def test_committed_results_and_weights():
    res = json.loads((ROOT / "benchmarks/results/agd.json").read_text())
    for key in ("device", "dataset", "samples", "steps", "w_values", "rows"):
        assert key in res
    assert res["dataset"] == "mnist" and len(res["rows"]) == len(res["w_values"])
    for row in res["rows"]:
        for key in ("w", "cfg_accuracy", "agd_accuracy", "cfg_frechet", "agd_frechet", "cfg_nfe_per_sample",
                    "agd_nfe_per_sample", "mse_to_cfg"):
            assert key in row
        assert row["agd_nfe_per_sample"] == res["steps"] and row["cfg_nfe_per_sample"] == 2 * res["steps"]
        # the adapter is closer to CFG than the conditional model it starts from (the claim of docs/diffusion/agd.md)
        assert row["mse_to_cfg"] < row["conditional_mse_to_cfg"]
    path = ROOT / "pplvi/diffusion/weights/agd_mnist.npz"
    assert path.stat().st_size <= 2_000_000
    meta = json.loads(path.with_suffix(".json").read_text())
    assert "command" in meta
    like = A.AGD(P.load("mnist"), key=jax.random.key(0), width=meta["adapter_width"], w_max=meta["w_max"]).adapter
    adapter = load_tree(path, like)
    assert any(float(jnp.max(jnp.abs(leaf))) > 0 for leaf in jax.tree_util.tree_leaves(adapter.mlp.layers[-1]))
