"""Where each step's data batch comes from: nothing, the full data, minibatches of arrays, or a loader.

A *data batch* is a tuple of positional arguments appended after the parameters in the objective call. Array
minibatches are gathered on the device inside the compiled loop from a table of indices that the host computes per
chunk (one permutation per epoch, from NumPy's generator seeded by the run's key and the epoch number, so the order
is reproducible and resumable without device round trips). Loader batches are pulled on the host, stacked per chunk
and transferred once per chunk.
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np

from pplvi.core.errors import PPLVIError

LAST_BATCH = ("drop", "pad")


def _is_array(x) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic, int, float, bool)) or (
        hasattr(x, "__array__") and hasattr(x, "shape") and hasattr(x, "dtype")
    )


def _as_args(data) -> tuple:
    """A plain tuple is a tuple of positional arguments; anything else is one argument."""
    return data if type(data) is tuple else (data,)


def _array_leaves(args, what: str):
    leaves = jax.tree_util.tree_leaves(args)
    bad = [type(x).__name__ for x in leaves if not _is_array(x)]
    if bad or not leaves:
        raise PPLVIError(
            f"{what} must be an array or a pytree (tuple, dict) of arrays; found leaves of type "
            f"{sorted(set(bad)) or 'none'}. Pass arrays (NumPy or JAX), or a loader (see pplvi.fit's data=)."
        )
    return leaves


def is_loader(data) -> bool:
    """A list, or anything iterable or callable that is not a pytree of arrays (a tuple, dict, NamedTuple or
    equinox module of arrays is data, not a loader)."""
    if isinstance(data, list):
        return True
    if data is None or isinstance(data, (tuple, dict)) or _is_array(data):
        return False
    if hasattr(data, "__iter__"):
        return True
    if callable(data):  # a function epoch -> batches, unless it is a pytree of arrays (an equinox module)
        leaves = jax.tree_util.tree_leaves(data)
        return not (leaves and all(_is_array(x) for x in leaves))
    return False


class NoData:
    mode = "none"
    device_data = None
    n_args = 0  # data arguments passed after the parameters

    def describe(self) -> dict:
        return {"mode": self.mode}

    def position(self):
        return None

    def seek(self, step, position):
        pass

    @staticmethod
    def batch(data, xs, i) -> tuple:
        """The arguments of step ``i`` of a chunk (traced): ``xs`` is what :meth:`xs` prepared for the chunk."""
        return ()

    def xs(self, start, n, size):
        return np.zeros((size,), np.int32), n


def _to_device(tree):
    return jax.tree_util.tree_map(jnp.asarray, tree)


class FullData(NoData):
    """Every step sees all of ``data``."""

    mode = "full"

    def __init__(self, data, put=None):
        self.args = _as_args(data)
        self.n_args = len(self.args)
        leaves = _array_leaves(self.args, "data")
        self.device_data = (put or _to_device)(self.args)
        self.spec = [[list(np.shape(x)), jnp.result_type(x).name] for x in leaves]

    def describe(self) -> dict:
        return {"mode": self.mode, "leaves": self.spec}

    @staticmethod
    def batch(data, xs, i) -> tuple:
        return data


class ArrayBatches(NoData):
    """Minibatches of ``batch_size`` rows (axis 0 of every leaf), reshuffled every epoch.

    ``last_batch="drop"``: an epoch is ``N // batch_size`` full batches; the ``N % batch_size`` rows left over (a
    different set each epoch when shuffling) are not seen in that epoch. ``"pad"``: ``ceil(N / batch_size)`` batches;
    the last one is completed with the first rows of the same epoch's order, so every row is seen at least once per
    epoch (those few twice)."""

    mode = "arrays"

    def __init__(self, data, batch_size: int, shuffle: bool, last_batch: str, seed: np.ndarray, put=None):
        self.args = _as_args(data)
        self.n_args = len(self.args)
        leaves = _array_leaves(self.args, "data")
        sizes = {int(np.shape(x)[0]) if np.ndim(x) else None for x in leaves}
        if None in sizes or len(sizes) != 1:
            shapes = jax.tree_util.tree_map(lambda x: list(np.shape(x)), self.args)
            raise PPLVIError(
                f"minibatching slices every data array along axis 0, so they need the same leading length; got "
                f"shapes {shapes}. Pass arrays with one row per datum, or batch_size=None to use all the data "
                "every step."
            )
        (self.n,) = sizes
        if batch_size > self.n:
            raise PPLVIError(
                f"batch_size={batch_size} is larger than the data ({self.n} rows): not one full batch. Use "
                f"batch_size <= {self.n}, or batch_size=None for full-batch training."
            )
        self.batch_size, self.shuffle, self.last_batch = batch_size, shuffle, last_batch
        self.steps_per_epoch = self.n // batch_size if last_batch == "drop" else math.ceil(self.n / batch_size)
        self.seed = [int(s) for s in np.asarray(seed).reshape(-1)]
        self.device_data = (put or _to_device)(self.args)
        self.spec = [[list(np.shape(x)), jnp.result_type(x).name] for x in leaves]
        self._epochs: dict[int, np.ndarray] = {}

    def describe(self) -> dict:
        return {"mode": self.mode, "leaves": self.spec, "batch_size": self.batch_size, "shuffle": self.shuffle,
                "last_batch": self.last_batch}

    def order(self, epoch: int) -> np.ndarray:
        """The row order of ``epoch``: a permutation of ``range(N)`` (the identity without shuffling)."""
        if not self.shuffle:
            return np.arange(self.n, dtype=np.int32)
        rng = np.random.default_rng(np.random.SeedSequence([*self.seed, epoch]))
        return rng.permutation(self.n).astype(np.int32)

    def epoch_table(self, epoch: int) -> np.ndarray:
        """``(steps_per_epoch, batch_size)`` row indices of the batches of ``epoch``."""
        table = self._epochs.get(epoch)
        if table is None:
            order = self.order(epoch)
            need = self.steps_per_epoch * self.batch_size
            order = np.concatenate([order, order[: need - self.n]]) if need > self.n else order[:need]
            table = order.reshape(self.steps_per_epoch, self.batch_size)
            self._epochs = {e: t for e, t in self._epochs.items() if e >= epoch - 1}  # keep at most two epochs
            self._epochs[epoch] = table
        return table

    def indices(self, step: int) -> np.ndarray:
        epoch, j = divmod(step, self.steps_per_epoch)
        return self.epoch_table(epoch)[j]

    def xs(self, start, n, size):
        out = np.zeros((size, self.batch_size), np.int32)
        for i in range(n):
            out[i] = self.indices(start + i)
        return out, n

    @staticmethod
    def batch(data, xs, i) -> tuple:
        idx = jax.lax.dynamic_index_in_dim(xs, i, keepdims=False)
        return jax.tree_util.tree_map(lambda a: a.at[idx].get(mode="promise_in_bounds"), data)


class LoaderBatches(NoData):
    """Batches pulled from a loader on the host.

    ``loader`` is a function ``epoch -> iterable of batches``, a re-iterable (a list of batches, a DataLoader) that
    is iterated once per epoch, or a one-shot iterator (training stops when it runs out). Each batch is an array, a
    pytree of arrays, or a tuple of positional arguments. Every batch must have the shapes of the first; a batch
    with fewer rows (the last of an epoch) is dropped (``last_batch="drop"``) or completed by repeating its rows
    (``"pad"``)."""

    mode = "loader"

    def __init__(self, loader, last_batch: str):
        self.loader, self.last_batch = loader, last_batch
        self.one_shot = not callable(loader) and iter(loader) is loader
        self.epoch, self.pulled, self._it = 0, 0, None
        self.ref = None  # (treedef, [(shape, dtype)]) of the first batch
        self.exhausted = False

    def describe(self) -> dict:
        return {"mode": self.mode, "last_batch": self.last_batch}

    def position(self):
        return [self.epoch, self.pulled]

    def _open(self, epoch):
        it = self.loader(epoch) if callable(self.loader) and not hasattr(self.loader, "__iter__") else self.loader
        return iter(it)

    def seek(self, step, position):
        """Continue after ``position = [epoch, batches pulled in that epoch]`` (replays that epoch's first batches,
        which reproduces the same batches when the loader is deterministic)."""
        if position is None:
            return
        self.epoch, pulled = position
        self.pulled = 0
        self._it = iter(self.loader) if self.one_shot else self._open(self.epoch)
        for _ in itertools.islice(self._it, pulled):
            self.pulled += 1

    def _next_raw(self):
        if self._it is None:
            self._it = iter(self.loader) if self.one_shot else self._open(self.epoch)
        while True:
            try:
                item = next(self._it)
                self.pulled += 1
                return item
            except StopIteration:
                if self.one_shot:
                    return None
                if self.pulled == 0:
                    raise PPLVIError(f"the data loader yielded no batches in epoch {self.epoch}") from None
                self.epoch, self.pulled = self.epoch + 1, 0
                self._it = self._open(self.epoch)

    def _normalize(self, item):
        args = jax.tree_util.tree_map(np.asarray, _as_args(item))
        leaves, treedef = jax.tree_util.tree_flatten(args)
        _array_leaves(args, "each loader batch")
        spec = [(x.shape, x.dtype) for x in leaves]
        if self.ref is None:
            if any(x.ndim == 0 for x in leaves):
                raise PPLVIError(
                    "each loader batch must have a leading batch axis on every array (a list given as data= is read "
                    "as a list of batches; for array data pass an array, e.g. np.asarray(the_list))"
                )
            self.ref = (treedef, spec)
            self.n_args = len(args)
            return args
        ref_tree, ref_spec = self.ref
        full = ref_spec[0][0][0]
        rows = {s[0][0] if s[0] else None for s in spec}
        same_tail = treedef == ref_tree and all(
            s[0][1:] == r[0][1:] and s[1] == r[1] for s, r in zip(spec, ref_spec)
        )
        if same_tail and rows == {full}:
            return args
        if same_tail and len(rows) == 1 and 0 < next(iter(rows)) < full:
            if self.last_batch == "drop":
                return None
            b = next(iter(rows))
            return jax.tree_util.tree_map(lambda x: x[np.arange(full) % b], args)
        raise PPLVIError(
            f"loader batch {self.pulled - 1} of epoch {self.epoch} has shapes "
            f"{[(tuple(s[0]), s[1].name) for s in spec]}, but the first batch had "
            f"{[(tuple(s[0]), s[1].name) for s in ref_spec]}: every batch needs the same structure, trailing shapes "
            "and dtypes (only the last batch of an epoch may have fewer rows)."
        )

    def xs(self, start, n, size):
        batches = []
        while len(batches) < n:
            item = self._next_raw()
            if item is None:
                self.exhausted = True
                break
            args = self._normalize(item)
            if args is not None:
                batches.append(args)
        if not batches:
            return None, 0
        pad = [batches[-1]] * (size - len(batches))
        stacked = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *batches, *pad)
        return stacked, len(batches)

    @staticmethod
    def batch(data, xs, i) -> tuple:
        return jax.tree_util.tree_map(lambda a: jax.lax.dynamic_index_in_dim(a, i, keepdims=False), xs)


def make_source(data, batch_size, shuffle: bool, last_batch: str, seed, put_full=None, put_table=None):
    """The data source of a run. ``put_full(args)`` / ``put_table(args)`` place full data (every step sees all of
    it) and minibatched tables (rows gathered on the device) on the devices; the default is ``jnp.asarray``."""
    if last_batch not in LAST_BATCH:
        raise PPLVIError(f"last_batch must be one of {LAST_BATCH}, got {last_batch!r}")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer))
                                   or batch_size < 1):
        raise PPLVIError(f"batch_size must be a positive integer or None, got {batch_size!r}")
    if data is None:
        if batch_size is not None:
            raise PPLVIError(f"batch_size={batch_size} was given without data=; pass the data to minibatch")
        return NoData()
    if is_loader(data):
        if batch_size is not None:
            raise PPLVIError(
                "batch_size applies to array data; a loader chooses its own batch size (remove batch_size=)"
            )
        return LoaderBatches(data, last_batch)
    if batch_size is None:
        return FullData(data, put_full)
    return ArrayBatches(data, int(batch_size), shuffle, last_batch, seed, put_table)
