"""Adapter guidance distillation (pplvi.diffusion.agd)."""

import json
from pathlib import Path

import equinox as eqx
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


def _squared_error(agd, data):
    """The mean over recorded states of ||eps_AGD - eps_CFG||^2 (minus ``agd_regression`` on all of them)."""
    x_t, t, labels, w, target = data
    return jnp.mean(jnp.sum((agd.eps(x_t, t, labels, w) - target).reshape(len(target), -1) ** 2, -1))


def test_zero_adapter_is_the_conditional_model_exactly():
    # a small random U-Net: exactness does not need a trained base
    model = D.Diffusion(D.UNet(1, (8, 16), num_classes=10, key=jax.random.key(5), dim=32), D.CosineSchedule(),
                        num_classes=10)
    x = jax.random.normal(jax.random.key(1), (4, 1, 8, 8))
    labels = jnp.array([0, 3, 7, 9])
    ref = np.asarray(model.eps(x, 0.4, labels))
    for kind in ("features", "conditioning"):
        agd = A.AGD(model, key=jax.random.key(0), adapters=kind)
        assert agd.adapters == kind
        np.testing.assert_array_equal(np.asarray(agd.eps(x, 0.4, labels, jnp.array([1.0, 5.0, 2.5, 7.0]))), ref)
    mlp = _mlp_model()
    agd2 = A.AGD(mlp, key=jax.random.key(2), adapters="conditioning")
    z = jax.random.normal(jax.random.key(3), (5, 2))
    np.testing.assert_array_equal(np.asarray(agd2.eps(z, 0.7, 1, 3.0)), np.asarray(mlp.eps(z, 0.7, 1)))


def test_unet_block_adapters_run_after_every_block():
    """Block adapters are called once per residual block, in forward order, on that block's output; adapters adding
    zero give the plain network (``None``) bit for bit, adding a constant changes it; a wrong count raises."""
    net = P.load("digits").net
    x = jax.random.normal(jax.random.key(0), (1, 8, 8))
    e = net.conditioning(0.5, 3)
    plain = np.asarray(net.forward(x, e, block_adapters=None))
    n_blocks = len(net.down) + len(net.middle) + len(net.up)
    np.testing.assert_array_equal(np.asarray(net.forward(x, e, [jnp.zeros_like] * n_blocks)), plain)
    calls = []
    shifted = net.forward(x, e, [lambda h, i=i: calls.append((i, h.shape)) or jnp.full_like(h, 0.1)
                                 for i in range(n_blocks)])
    assert [i for i, _ in calls] == list(range(n_blocks))
    assert [shape[-1] for _, shape in calls] == [b.conv2.out_channels for b in (*net.down, *net.middle, *net.up)]
    assert float(jnp.max(jnp.abs(shifted - plain))) > 1e-3
    with pytest.raises(pplvi.PPLVIError, match="block adapters"):
        net.forward(x, e, [jnp.zeros_like] * (n_blocks - 1))


def test_trainable_spec_covers_exactly_the_adapter_arrays():
    model = P.load("digits")
    for kind in ("features", "conditioning"):
        agd = A.AGD(model, key=jax.random.key(0), adapters=kind)
        spec = agd.trainable()
        assert not any(jax.tree_util.tree_leaves(spec.base))
        # every floating array of the adapters trains, nothing else (activation functions, static fields) does
        adapters, adapter_spec = agd.adapter_weights(), (spec.adapter if kind == "conditioning" else
                                                         (spec.adapter, spec.feature_adapters))
        flags = jax.tree_util.tree_leaves(jax.tree_util.tree_map(
            lambda leaf, flag: flag == eqx.is_inexact_array(leaf), adapters, adapter_spec))
        assert flags and all(flags)
        n_arrays = sum(eqx.is_inexact_array(leaf) for leaf in jax.tree_util.tree_leaves(adapters))
        assert sum(jax.tree_util.tree_leaves(spec)) == n_arrays > 0
        if kind == "features":
            assert len(agd.feature_adapters.blocks) == len(model.net.down) + len(model.net.middle) + len(model.net.up)
        else:
            assert agd.feature_adapters is None


def test_feature_adapters_fit_cfg_better_than_the_conditioning_adapter():
    """Same CFG states (frozen 8x8 digits U-Net, 200 states), same 40 Adam steps (batch 32), minibatches and
    conditioning-adapter initialization: the feature adapters' regression error on the recorded states must fall
    below half the conditioning-only adapter's."""
    model = P.load("digits")
    labels = jnp.arange(10)
    traj = A.cfg_trajectories(model, jax.random.key(1), labels, [1.0, 5.0], (10, 1, 8, 8), steps=10)
    data = tuple(traj[k] for k in ("x_t", "t", "labels", "w", "target"))
    losses = {"zero": float(_squared_error(A.AGD(model, key=jax.random.key(0)), data))}
    for kind in ("conditioning", "features"):
        agd = A.train_agd(model, traj, key=0, steps=40, batch_size=32, lr=3e-3, width=32, feature_width=32,
                          adapters=kind)
        losses[kind] = float(_squared_error(agd, data))
    assert losses["conditioning"] < 0.9 * losses["zero"], losses
    assert losses["features"] < 0.5 * losses["conditioning"], losses


def test_one_network_evaluation_per_step():
    model = _mlp_model()
    agd = A.AGD(model, key=jax.random.key(0), adapters="conditioning")
    out = D.ddim(jax.random.key(1), A.AGDPredictor(agd, 0, 3.0), model.schedule, (8, 2), steps=7)
    ref = D.ddim(jax.random.key(1), D.cfg(model, 0, 3.0), model.schedule, (8, 2), steps=7)
    assert int(out.nfe) == 7 and int(ref.nfe) == 14


def test_adapter_learns_cfg_of_a_frozen_two_dimensional_model():
    """Held-out CFG states (another seed): the trained adapter's squared error to the CFG target must fall below a
    quarter of the untrained adapter's (the conditional model's), at a trained scale and an interpolated one."""
    model = _mlp_model()
    labels = jnp.arange(64) % 2
    traj = A.cfg_trajectories(model, jax.random.key(1), labels, [1.0, 3.0, 5.0], (64, 2), steps=10)
    agd = A.train_agd(model, traj, key=0, steps=400, batch_size=128, lr=3e-3, width=32, adapters="conditioning")
    base = A.AGD(model, key=jax.random.key(9), width=32, adapters="conditioning")
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
    with pytest.raises(pplvi.PPLVIError, match="needs a UNet"):
        A.AGD(_mlp_model(), key=jax.random.key(0))
    with pytest.raises(pplvi.PPLVIError, match="adapters must be"):
        A.AGD(P.load("digits"), key=jax.random.key(0), adapters="attention")


def test_committed_results_and_weights():
    res = json.loads((ROOT / "benchmarks/results/agd.json").read_text())
    for key in ("device", "dataset", "adapters", "samples", "steps", "w_values", "rows", "conditioning_adapter_rows"):
        assert key in res
    assert res["dataset"] == "mnist" and res["adapters"] == "features"
    for rows in (res["rows"], res["conditioning_adapter_rows"]):
        assert len(rows) == len(res["w_values"])
        for row in rows:
            for key in ("w", "cfg_accuracy", "agd_accuracy", "cfg_frechet", "agd_frechet", "cfg_nfe_per_sample",
                        "agd_nfe_per_sample", "mse_to_cfg", "agd_to_cfg_frechet", "cfg_to_cfg_frechet"):
                assert key in row
            assert row["agd_nfe_per_sample"] == res["steps"] and row["cfg_nfe_per_sample"] == 2 * res["steps"]
            # either adapter is closer to CFG than the conditional model it starts from (docs/diffusion/agd.md)
            assert row["mse_to_cfg"] < row["conditional_mse_to_cfg"]
    # the check: feature-adapter AGD (1 NFE/step) matches CFG (2 NFE/step) at every w within the tolerance,
    # and is closer to CFG than the conditioning-only adapter trained at the same budget
    for row, cond_row in zip(res["rows"], res["conditioning_adapter_rows"], strict=True):
        assert row["accuracy_within_2se"] and row["frechet_within_seed_noise"], row
        assert abs(row["agd_accuracy"] - row["cfg_accuracy"]) <= 2 * np.sqrt(2) * row["accuracy_se"]
        assert row["agd_to_cfg_frechet"] <= 1.5 * row["cfg_to_cfg_frechet"]
        assert row["mse_to_cfg"] < cond_row["mse_to_cfg"] and row["agd_to_cfg_frechet"] < cond_row["agd_to_cfg_frechet"]
    path = ROOT / "pplvi/diffusion/weights/agd_mnist.npz"
    assert path.stat().st_size <= 2_000_000
    meta = json.loads(path.with_suffix(".json").read_text())
    assert "command" in meta
    like = A.AGD(P.load("mnist"), key=jax.random.key(0), width=meta["adapter_width"], w_max=meta["w_max"],
                 adapters=meta.get("adapters", "conditioning"), feature_width=meta.get("feature_width", 64),
                 kernel_size=meta.get("kernel_size", 1))
    weights = load_tree(path, like.adapter_weights())
    last_layers = weights.mlp.layers[-1] if meta.get("adapters", "conditioning") == "conditioning" else [
        block.out for block in weights[1].blocks]
    assert any(float(jnp.max(jnp.abs(leaf))) > 0 for leaf in jax.tree_util.tree_leaves(last_layers))
