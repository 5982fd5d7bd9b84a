"""Data-parallel ``pplvi.fit`` over the devices of several processes (multi-host), with ``jax.distributed``.

Every process runs this same script: it joins the others with ``jax.distributed.initialize``, builds one global
``Mesh`` over ``jax.devices()`` (the devices of *all* processes) and calls ``pplvi.fit(..., mesh=mesh)`` with the
same data, parameters and key. Each step's batch is split over all devices; parameters stay replicated. Process 0
prints the result (and, with ``--check``, how far it is from a single-device run of the same fit).

Two processes on one machine, CPU only, two devices each (loopback; the same commands work across machines with
the coordinator's address and each process's id)::

    export JAX_PLATFORMS=cpu
    python examples/multihost_fit.py --coordinator 127.0.0.1:12355 --num-processes 2 --process-id 0 \\
        --cpu-devices 2 --check &
    python examples/multihost_fit.py --coordinator 127.0.0.1:12355 --num-processes 2 --process-id 1 \\
        --cpu-devices 2 --check
    wait

On a GPU/TPU cluster launch one process per host (or per GPU) and leave out ``--cpu-devices``; under SLURM, Open
MPI or on Cloud TPU, ``--auto-detect`` lets ``jax.distributed.initialize()`` find the coordinator, process count and
id by itself. ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` may replace the flags.
Without any of them the script runs as a single process over its local devices.
"""

from __future__ import annotations

import argparse
import os


def parse_args():
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--coordinator", default=env("JAX_COORDINATOR_ADDRESS"), help="host:port of process 0")
    p.add_argument("--num-processes", type=int, default=int(env("JAX_NUM_PROCESSES", 0)) or None)
    p.add_argument("--process-id", type=int, default=int(env("JAX_PROCESS_ID", -1)) if env("JAX_PROCESS_ID") else None)
    p.add_argument("--auto-detect", action="store_true",
                   help="jax.distributed.initialize() with no arguments (SLURM, Open MPI, Cloud TPU)")
    p.add_argument("--cpu-devices", type=int, default=None, help="CPU devices per process (CPU demo only)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=64, help="global batch (all devices together)")
    p.add_argument("--timeout", type=int, default=60, help="seconds to wait for the other processes to join")
    p.add_argument("--check", action="store_true", help="also fit on one device and compare the parameters")
    p.add_argument("--checkpoint", default=None,
                   help="checkpoint file (written by process 0 every 50 steps; a rerun resumes from it)")
    return p.parse_args()


args = parse_args()
if args.cpu_devices:  # must be set before JAX starts
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={args.cpu_devices}").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
import optax  # noqa: E402

import pplvi  # noqa: E402

D, Z, H, K = 16, 4, 64, 8  # data dimension, latent dimension, encoder width, particles


@pplvi.objective
def iwae(params, xs):
    """A small VAE's IWAE bound with K particles per datum, averaged over the batch (a jax.vmap that fit splits
    over the mesh's "data" axis)."""

    def bound(x):
        h = jnp.tanh(params["enc_w"] @ x + params["enc_b"])
        loc, log_scale = jnp.split(params["enc_out"] @ h, 2)
        q = dist.Normal(loc, jnp.exp(log_scale)).to_event(1)

        def log_weight(_):
            z = pplvi.sample("z", q)
            lik = dist.Normal(params["dec_w"] @ z + params["dec_b"], 0.5).to_event(1).log_prob(x)
            return lik + dist.Normal(0.0, 1.0).expand([Z]).to_event(1).log_prob(z) - q.log_prob(z)

        log_w = jax.vmap(log_weight)(jnp.arange(K))
        return jax.nn.logsumexp(log_w) - jnp.log(K)

    return jnp.mean(jax.vmap(bound)(xs))


def make_data(n=2048, seed=0):
    """The same synthetic data on every process: a linear-Gaussian latent variable model."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(D, Z))
    return (rng.normal(size=(n, Z)) @ w.T + 0.5 * rng.normal(size=(n, D))).astype(np.float32)


def init_params(seed=1):
    rng = np.random.default_rng(seed)
    w = lambda *s: (0.1 * rng.normal(size=s)).astype(np.float32)
    return {"enc_w": w(H, D), "enc_b": np.zeros(H, np.float32), "enc_out": w(2 * Z, H), "dec_w": w(D, Z),
            "dec_b": np.zeros(D, np.float32)}


def main():
    if (args.num_processes or 0) > 1 or args.coordinator:
        jax.distributed.initialize(coordinator_address=args.coordinator, num_processes=args.num_processes,
                                   process_id=args.process_id, initialization_timeout=args.timeout)
    elif args.auto_detect:
        jax.distributed.initialize(initialization_timeout=args.timeout)  # the cluster environment says who is who
    me = jax.process_index()
    # one global mesh over every device of every process; the batch is split over all of them
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    data = make_data()
    kw = dict(optimizer=optax.adam(3e-3), steps=args.steps, key=jax.random.key(0), data=data,
              batch_size=args.batch_size, progress=False)
    ckpt = {} if args.checkpoint is None else dict(checkpoint=args.checkpoint, checkpoint_every=50, resume=True)
    result = pplvi.fit(iwae, init_params(), mesh=mesh, **kw, **ckpt)
    params = jax.tree_util.tree_map(np.asarray, result.params)  # replicated: every process can read them
    h = result.history["objective"]
    if me == 0:
        print(f"processes {jax.process_count()}, devices {jax.device_count()} ({jax.local_device_count()} here), "
              f"mesh {dict(mesh.shape)}; {result.step} steps in {result.seconds:.1f}s; "
              f"IWAE {h[:10].mean():.3f} (first 10 steps) -> {h[-10:].mean():.3f} (last 10)", flush=True)
    if args.check:  # the same fit on this process's first device alone
        single = pplvi.fit(iwae, init_params(), **kw)
        diff = max(float(np.max(np.abs(a - np.asarray(b))))
                   for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(single.params)))
        if me == 0:
            print(f"max |params(mesh) - params(1 device)| = {diff:.3g}", flush=True)
        assert diff < 1e-4, diff
    if jax.process_count() > 1:
        jax.distributed.shutdown()


if __name__ == "__main__":
    main()
