"""Where :func:`pplvi.fit` puts its arrays when it runs on a device mesh (``fit(..., mesh=...)``).

Data parallelism by sharding propagation: the parameters, the optimizer state and the keys are replicated over
the mesh (``NamedSharding(mesh, P())``), each step's data batch is split along its axis 0 over the mesh axis (or
axes) ``data_axis``, and XLA's SPMD partitioner partitions the objective's ``jax.vmap`` over the batch accordingly
(per-device gradients, then an all-reduce). Nothing about the computation changes — the same step keys, the same
batches — so a run on a mesh equals the single-device run up to the order of floating-point reductions.

Works across processes (``jax.distributed.initialize``): every process passes the same (global) ``data``, ``params``
and ``key``; host values are placed with ``jax.device_put`` of the global value, and results are replicated, so
every process reads them back.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from pplvi.core.errors import PPLVIError


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


class Placement:
    """The mesh of a run and how each kind of value is laid out on it."""

    def __init__(self, mesh, data_axis):
        if not isinstance(mesh, Mesh):
            raise PPLVIError(
                f"mesh= must be a jax.sharding.Mesh (e.g. jax.make_mesh((jax.device_count(),), ('data',))), got "
                f"{type(mesh).__name__}"
            )
        names = tuple(mesh.axis_names)
        axes = () if data_axis is None else (data_axis,) if isinstance(data_axis, str) else tuple(data_axis)
        bad = [a for a in axes if not isinstance(a, str) or a not in names]
        if bad or (data_axis is not None and not axes):
            raise PPLVIError(
                f"data_axis={data_axis!r} must name axes of the mesh (a name, a tuple of names, or None to "
                f"replicate the data); the mesh has axes {names}"
            )
        # fit partitions by sharding propagation: every axis is Auto (an Explicit mesh from jax.make_mesh becomes
        # the same devices and names with Auto axes; pplvi's traced objectives do not carry shardings in types)
        if any(t != AxisType.Auto for t in mesh.axis_types):
            mesh = Mesh(mesh.devices, names, axis_types=(AxisType.Auto,) * len(names))
        self.mesh = mesh
        self.axes = axes
        self.data_axis = data_axis
        self.n_data = math.prod(mesh.shape[a] for a in axes)
        self.replicated = NamedSharding(mesh, P())
        self.spec = None if not axes else axes[0] if len(axes) == 1 else axes
        # the mesh spans several processes: they must run the same sequence of compiled calls (same chunk sizes),
        # and only process 0 writes files
        self.multiprocess = any(d.process_index != jax.process_index() for d in mesh.devices.flat)

    def cache_key(self):
        return (self.mesh, self.axes)

    def context(self):
        """``jax.set_mesh(mesh)``: inside it, bare ``PartitionSpec``s (e.g. in ``with_sharding_constraint``) refer
        to the run's mesh."""
        return jax.set_mesh(self.mesh)

    # -- host values onto the mesh --------------------------------------------------------------------------------
    def _put(self, x, sharding):
        if _is_key(x):  # device_put cannot place key arrays across processes: place their data, wrap it there
            data = jax.device_put(np.asarray(jax.random.key_data(x)), sharding)
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return jax.device_put(x, sharding)  # already global: reshard on the devices
        if isinstance(x, jax.Array) and jax.process_count() > 1:
            x = np.asarray(x)  # a process-local device array: place its (global) value
        return jax.device_put(x, sharding)

    def replicate(self, tree):
        """Every array leaf replicated on every device of the mesh."""
        return jax.tree_util.tree_map(
            lambda x: self._put(x, self.replicated) if isinstance(x, (jax.Array, np.ndarray, np.generic)) else x,
            tree,
        )

    def split(self, tree, axis: int, what: str):
        """Array leaves split along ``axis`` over the data axes (leaves with fewer axes are replicated)."""
        if not self.axes:
            return self.replicate(tree)

        def one(x):
            if not isinstance(x, (jax.Array, np.ndarray, np.generic)):
                return x
            if np.ndim(x) <= axis:
                return self._put(x, self.replicated)
            self.check_divisible(np.shape(x)[axis], what)
            return self._put(x, NamedSharding(self.mesh, P(*([None] * axis), self.spec)))

        return jax.tree_util.tree_map(one, tree)

    def check_divisible(self, rows: int, what: str):
        if rows % self.n_data:
            raise PPLVIError(
                f"{what} has {rows} rows, which the {self.n_data} devices of mesh axis "
                f"{self.data_axis!r} cannot share equally: fit splits every batch along axis 0 over that axis. Use "
                f"a batch size divisible by {self.n_data}, a mesh with a data axis that divides {rows}, or "
                "data_axis=None to give every device the whole batch."
            )

    # -- inside the compiled loop ---------------------------------------------------------------------------------
    def constrain_batch(self, batch):
        """The step's batch split along axis 0 over the data axes (scalars replicated)."""
        if not self.axes:
            return batch
        return jax.tree_util.tree_map(
            lambda x: jax.lax.with_sharding_constraint(
                x, NamedSharding(self.mesh, P(self.spec) if x.ndim else P())), batch
        )


def shard(x, *spec):
    """``x`` constrained to ``PartitionSpec(*spec)`` on the mesh that :func:`pplvi.fit` runs on; ``x`` unchanged
    when there is no mesh (a single-device run) or the mesh lacks one of the named axes, so one objective serves
    both. For use inside an objective, e.g. the particles of an IWAE bound split over a ``"particles"`` axis::

        log_w = jax.vmap(one_particle)(jnp.arange(K))  # (K,) log weights
        log_w = pplvi.train.shard(log_w, "particles")

    Inside a ``jax.vmap`` over the batch the batch axis stays as the mesh splits it (vmap leaves it
    unconstrained), so this composes with ``fit``'s data parallelism."""
    mesh = jax.sharding.get_abstract_mesh()
    names = set() if mesh.empty else set(mesh.axis_names)
    used = {a for s in spec if s is not None for a in ((s,) if isinstance(s, str) else s)}
    if not used or not used <= names:
        return x
    return jax.lax.with_sharding_constraint(x, P(*spec))
