"""pplvi.fit(..., mesh=...): data parallelism (and particles) over a device mesh.

The 8-device checks run in a subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (JAX fixes the
device count when it starts; this process has one CPU device) — see tests/train/sharded_runs.py. A one-device mesh
exercises the placement of every data source in this process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import pplvi
from pplvi.core.errors import PPLVIError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def eight_devices():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, str(ROOT / "tests/train/sharded_runs.py")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", ["vae", "iwae", "iwae_particles_4x2"])
def test_eight_devices_give_the_single_device_parameters(eight_devices, case):
    """20 Adam steps on batches of 64: the 8-device run ends where the 1-device run does, up to reduction order."""
    r = eight_devices[case]
    assert r["devices"] == 8 and r["param_specs"] == ["P()"] and r["steps"] == 20  # replicated params on 8 devices
    assert r["moved"] > 0.1  # training moved the parameters: the comparison is not trivial
    assert r["allclose"], r  # rtol 1e-5, atol 1e-6
    assert r["max_abs"] < 1e-5 and r["objective_max_abs"] < 1e-4, r


def test_the_batch_and_the_particles_are_split(eight_devices):
    """Per-device shapes in the compiled step: 64 rows of 12 features over 8 devices -> 8 rows; with a (4, 2) mesh,
    16 rows x 16 particles, and 16 x 8 once the particles are split with pplvi.train.shard."""
    vae = eight_devices["shapes_vae_8"]
    assert "f32[8,12]" in vae and "f32[64,12]" not in vae
    plain, split = eight_devices["shapes_iwae_4x2"], eight_devices["shapes_iwae_particles_4x2"]
    assert "f32[16,16]" in plain and "f32[16,8]" not in plain
    assert "f32[16,8]" in split and "f32[16,16]" not in split


def test_mesh_runs_resume_bit_for_bit_and_check_the_batch_size(eight_devices):
    assert eight_devices["resume_bit_identical"]
    assert eight_devices["vae"]["eval_vae_elbo_max_abs"] < 1e-4
    msg = eight_devices["indivisible_error"]
    assert msg and "batch_size=60" in msg and "8 devices" in msg and "'data'" in msg


# ---------------------------------------------------------------------------------------------------------------
@pplvi.objective
def fit_mean(params, x):
    """A per-datum vmap with noise: -(w - x - eps)^2 averaged over the batch."""
    def one(xi):
        eps = pplvi.sample("eps", pplvi_normal())
        return -jnp.sum((params["w"] - xi - 0.1 * eps) ** 2)

    return jnp.mean(jax.vmap(one)(x))


def pplvi_normal():
    import numpyro.distributions as nd

    return nd.Normal(0.0, 1.0)


X = np.random.default_rng(0).normal(size=(32, 3)).astype(np.float32)


@pytest.mark.parametrize("source", ["minibatch", "full", "loader", "none", "replicated"])
def test_one_device_mesh_matches_no_mesh(source):
    mesh = jax.make_mesh((1,), ("data",))
    kw = dict(optimizer=optax.adam(0.1), steps=6, key=3, progress=False, chunk=4)
    data_kw = {"minibatch": dict(data=X, batch_size=8), "full": dict(data=X), "none": {},
               "loader": dict(data=[X[i:i + 8] for i in range(0, 32, 8)]),
               "replicated": dict(data=X, batch_size=8, data_axis=None)}[source]
    objective = fit_mean
    if source == "none":
        objective = pplvi.objective(lambda params: fit_mean.fn(params, X))
    ref = pplvi.fit(objective, {"w": jnp.zeros(3)}, **kw, **{k: v for k, v in data_kw.items() if k != "data_axis"})
    res = pplvi.fit(objective, {"w": jnp.zeros(3)}, mesh=mesh, **kw, **data_kw)
    assert isinstance(res.params["w"].sharding, jax.sharding.NamedSharding)
    np.testing.assert_allclose(res.params["w"], ref.params["w"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(res.history["objective"], ref.history["objective"], rtol=1e-5)


def test_mesh_argument_errors():
    kw = dict(optimizer=optax.adam(0.1), steps=2, key=0, progress=False, data=X, batch_size=8)
    with pytest.raises(PPLVIError, match="must be a jax.sharding.Mesh"):
        pplvi.fit(fit_mean, {"w": jnp.zeros(3)}, mesh=jax.devices(), **kw)
    with pytest.raises(PPLVIError, match=r"data_axis='batch' must name axes of the mesh.*\('data',\)"):
        pplvi.fit(fit_mean, {"w": jnp.zeros(3)}, mesh=jax.make_mesh((1,), ("data",)), data_axis="batch", **kw)


def test_shard_is_a_no_op_without_a_mesh_axis():
    x = jnp.arange(4.0)
    assert pplvi.train.shard(x, "particles") is x
    with jax.set_mesh(jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))):
        assert pplvi.train.shard(x, "particles") is x  # no such axis


# ---------------------------------------------------------------------------------------------------------------
def test_multihost_example_two_processes(tmp_path):
    """examples/multihost_fit.py as docs/training.md launches it: 2 processes x 2 CPU devices joined by
    jax.distributed over loopback, one global 4-device mesh; the parameters match a single-device fit, process 0
    writes the checkpoint, and both processes exit by themselves."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    cmd = [sys.executable, str(ROOT / "examples/multihost_fit.py"), "--coordinator", f"127.0.0.1:{port}",
           "--num-processes", "2", "--cpu-devices", "2", "--steps", "30", "--check", "--timeout", "60",
           "--checkpoint", str(tmp_path / "ckpt.npz")]
    procs = [subprocess.Popen(cmd + ["--process-id", str(i)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=240))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-4000:]
    out0 = outs[0][0]
    assert "processes 2, devices 4 (2 here), mesh {'data': 4}; 30 steps" in out0, out0
    diff = float(out0.split("max |params(mesh) - params(1 device)| = ")[1].split()[0])
    assert diff < 1e-5, out0
    assert (tmp_path / "ckpt.npz").is_file()
