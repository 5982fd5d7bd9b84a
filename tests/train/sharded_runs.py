"""Runs ``pplvi.fit`` on one device and on an 8-device CPU mesh and prints the differences as JSON (one line).

Run by tests/train/test_sharding.py in a subprocess (the device count is fixed when JAX starts):

    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu python tests/train/sharded_runs.py
"""

from __future__ import annotations

import json
import re
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import optax

import pplvi
from pplvi.core.errors import PPLVIError
from pplvi.objectives.terms import log_mean_exp

D, H, Z, K, STEPS = 12, 32, 3, 16, 20


def init_params():
    rng = np.random.default_rng(0)
    w = lambda *s: jnp.asarray(rng.normal(size=s) * 0.3, jnp.float32)
    return {"enc_w": w(H, D), "enc_b": jnp.zeros(H), "enc_out": w(2 * Z, H), "dec_w": w(D, Z), "dec_b": jnp.zeros(D)}


def encode(params, x):
    h = jnp.tanh(params["enc_w"] @ x + params["enc_b"])
    out = params["enc_out"] @ h
    return out[:Z], out[Z:]


def log_joint_minus_q(params, x, z, loc, log_s):
    prior = dist.Normal(0.0, 1.0).log_prob(z).sum()
    lik = dist.Normal(params["dec_w"] @ z + params["dec_b"], 1.0).log_prob(x).sum()
    return lik + prior - dist.Normal(loc, jnp.exp(log_s)).log_prob(z).sum()


@pplvi.objective
def vae_elbo(params, xs):
    """A small VAE's minibatch ELBO: a jax.vmap over the batch, one reparameterized sample per datum."""

    def one(x):
        loc, log_s = encode(params, x)
        z = pplvi.sample("z", dist.Normal(loc, jnp.exp(log_s)).to_event(1))
        return log_joint_minus_q(params, x, z, loc, log_s)

    return jnp.mean(jax.vmap(one)(xs))


def make_iwae(shard_particles: bool):
    @pplvi.objective
    def iwae(params, xs):
        """IWAE with K particles per datum (a jax.vmap over jnp.arange(K) inside the vmap over the batch)."""

        def one(x):
            loc, log_s = encode(params, x)

            def particle(_):
                z = pplvi.sample("z", dist.Normal(loc, jnp.exp(log_s)).to_event(1))
                return log_joint_minus_q(params, x, z, loc, log_s)

            log_w = jax.vmap(particle)(jnp.arange(K))
            if shard_particles:
                log_w = pplvi.train.shard(log_w, "particles")
            return log_mean_exp(log_w)

        return jnp.mean(jax.vmap(one)(xs))

    return iwae


def max_abs_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
               for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def max_rel_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)) / (np.abs(np.asarray(y)) + 1e-6)))
               for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def summary(one, many):
    """How far the mesh run ``many`` is from the single-device run ``one``."""
    leaves = jax.tree_util.tree_leaves(many.params)
    close = all(np.allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)
                for x, y in zip(leaves, jax.tree_util.tree_leaves(one.params)))
    out = {
        "allclose": close,
        "max_abs": max_abs_diff(many.params, one.params), "max_rel": max_rel_diff(many.params, one.params),
        "moved": max_abs_diff(one.params, init_params()),  # how far training took the parameters
        "objective_max_abs": float(np.max(np.abs(one.history["objective"] - many.history["objective"]))),
        "devices": len(leaves[0].sharding.device_set),
        "param_specs": sorted({str(x.sharding.spec) for x in leaves}),
        "steps": many.step,
    }
    for k in one.evaluations:
        if k != "step":
            out[f"eval_{k}_max_abs"] = float(np.max(np.abs(one.evaluations[k] - many.evaluations[k])))
    return out


def per_device_shapes(objective, data, mesh, batch):
    """The f32 shapes in the compiled 8-device step (to see that the batch, and particles, are split)."""
    placement = pplvi.train.sharding.Placement(mesh, "data")
    xs = placement.split(jnp.asarray(data[:batch]), 0, "batch")
    params = placement.replicate(init_params())
    k = placement.replicate(jax.random.key(0))
    with placement.context():
        f = jax.jit(lambda k, p, x: objective.value_and_grad(k, p, placement.constrain_batch(x)))
        text = f.lower(k, params, xs).compile().as_text()
    return sorted(set(re.findall(r"f32\[[0-9,]+\]", text)))


def main():
    assert jax.device_count() == 8, jax.devices()
    data = np.random.default_rng(1).normal(size=(256, D)).astype(np.float32)
    adam = optax.adam(1e-2)  # one optimizer object: fits with the same ingredients share their compiled chunk
    kw = dict(optimizer=adam, steps=STEPS, key=jax.random.key(7), data=data, batch_size=64, progress=False)
    mesh = jax.make_mesh((8,), ("data",))  # Explicit axes by default: fit uses them as Auto
    mesh2 = jax.make_mesh((4, 2), ("data", "particles"))
    out = {"devices": jax.device_count()}

    # a VAE: the batch of 64 split over 8 devices (8 rows each); evaluations run on the mesh too
    ev = dict(evaluate=(vae_elbo, data[:64]), eval_every=10)
    one = pplvi.fit(vae_elbo, init_params(), **kw, **ev)
    out["vae"] = summary(one, pplvi.fit(vae_elbo, init_params(), mesh=mesh, **kw, **ev))
    out["shapes_vae_8"] = per_device_shapes(vae_elbo, data, mesh, 64)

    # IWAE, K particles per datum: batch over 8 devices; then batch over 4 and particles over 2 (pplvi.train.shard)
    iwae = make_iwae(shard_particles=True)  # without a "particles" mesh axis, shard() does nothing
    one = pplvi.fit(iwae, init_params(), **kw)
    out["iwae"] = summary(one, pplvi.fit(iwae, init_params(), mesh=mesh, **kw))
    out["iwae_particles_4x2"] = summary(one, pplvi.fit(iwae, init_params(), mesh=mesh2, **kw))
    out["shapes_iwae_4x2"] = per_device_shapes(make_iwae(False), data, mesh2, 64)
    out["shapes_iwae_particles_4x2"] = per_device_shapes(iwae, data, mesh2, 64)

    # resume on a mesh continues bit for bit
    with tempfile.TemporaryDirectory() as d:
        r = dict(kw, mesh=mesh, key=jax.random.key(3))
        pplvi.fit(vae_elbo, init_params(), **{**r, "steps": 10}, checkpoint=f"{d}/c.npz")
        rest = pplvi.fit(vae_elbo, init_params(), **r, checkpoint=f"{d}/c.npz", resume=True)
        whole = pplvi.fit(vae_elbo, init_params(), **r)
        out["resume_bit_identical"] = bool(
            max_abs_diff(rest.params, whole.params) == 0
            and np.array_equal(rest.history["objective"], whole.history["objective"]))

    # a batch that the data axis cannot split
    try:
        pplvi.fit(vae_elbo, init_params(), **{**kw, "batch_size": 60}, mesh=mesh)
        out["indivisible_error"] = None
    except PPLVIError as e:
        out["indivisible_error"] = str(e)
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
