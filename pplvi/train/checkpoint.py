"""Safe, atomic serialization of pytrees: an ``.npz`` of the flattened array leaves plus a JSON description of the
tree (each leaf's key path, shape and dtype). Nothing is pickled; loading never executes code.

Every file is written to a temporary file in the destination folder and moved into place with ``os.replace``, so a
reader sees either the previous complete file or the new complete file, never a partial one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from pplvi.core.errors import DataError, PPLVIError

FORMAT = "pplvi.tree"
VERSION = 1
_META = "__meta__"


# ---------------------------------------------------------------------------------------------------------------
# atomic files
# ---------------------------------------------------------------------------------------------------------------
def atomic_write(path, write: Callable, what: str = "file") -> Path:
    """Write ``path`` atomically: ``write(f)`` fills a temporary binary file in the same folder, which is then
    fsynced and moved over ``path`` with ``os.replace``. On any failure the temporary file is removed, ``path`` is
    left as it was, and (for ``OSError``) a :class:`PPLVIError` says which file could not be written."""
    path = Path(path)
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise PPLVIError(f"cannot write the {what} {path}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise PPLVIError(f"cannot write the {what} {path}: {e.strerror or e}") from None
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable (POSIX); best effort
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


def check_writable(path, what: str = "file") -> Path:
    """Fail early (before training) when ``path`` cannot be written: create its folder and a probe file there."""
    path = Path(path)
    if path.is_dir():
        raise PPLVIError(f"the {what} path {path} is a folder; give a file name, e.g. {path / 'checkpoint.npz'}")
    atomic_write(path.with_name(f".{path.name}.probe"), lambda f: None, what)
    with contextlib.suppress(OSError):
        os.unlink(path.with_name(f".{path.name}.probe"))
    return path


# ---------------------------------------------------------------------------------------------------------------
# trees <-> arrays + JSON
# ---------------------------------------------------------------------------------------------------------------
def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _encode(x) -> tuple[np.ndarray, dict]:
    """A leaf as a NumPy array plus its description. Typed PRNG keys are stored as their key data; dtypes NumPy
    cannot name portably (bfloat16, float8...) are stored as raw bytes."""
    if _is_key(x):
        data = np.asarray(jax.random.key_data(x))
        return data, {"shape": list(x.shape), "dtype": "key", "impl": str(jax.random.key_impl(x))}
    a = np.asarray(x)
    desc = {"shape": list(a.shape), "dtype": a.dtype.name}
    if a.dtype.kind not in "biufc":
        a = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
        desc["raw"] = True
    return a, desc


def _spec(x) -> tuple[list[int], str]:
    """(shape, dtype name) of a leaf without copying it to the host."""
    if _is_key(x):
        return list(x.shape), "key"
    return list(np.shape(x)), jnp.result_type(x).name if not hasattr(x, "dtype") else np.dtype(x.dtype).name


def _decode(a: np.ndarray, desc: dict):
    if desc["dtype"] == "key":
        return jax.random.wrap_key_data(jnp.asarray(a), impl=desc["impl"])
    if desc.get("raw"):
        a = a.view(jnp.dtype(desc["dtype"])).reshape(desc["shape"])
    return jnp.asarray(a)


def describe(tree, name: str) -> tuple[list[dict], dict[str, np.ndarray]]:
    """The leaves of ``tree`` (``None`` is an empty subtree) as ``{"<name>/<i>": array}`` and their descriptions
    (key path, shape, dtype)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    descs, arrays = [], {}
    for i, (path, leaf) in enumerate(flat):
        a, d = _encode(leaf)
        d["path"] = jax.tree_util.keystr(path)
        descs.append(d)
        arrays[f"{name}/{i}"] = a
    return descs, arrays


def restore(like, descs: list[dict], arrays, name: str, source) -> object:
    """Rebuild a tree with the structure of ``like`` from saved leaves, checking every key path, shape and dtype."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(like)
    expected = [jax.tree_util.keystr(p) for p, _ in flat]
    saved = [d["path"] for d in descs]
    if expected != saved:
        missing = [p for p in expected if p not in saved]
        extra = [p for p in saved if p not in expected]
        raise PPLVIError(
            f"{source}: the saved {name} do not have the structure given here: {len(saved)} saved leaves, "
            f"{len(expected)} here" + (f"; missing from the file: {missing[:5]}" if missing else "")
            + (f"; only in the file: {extra[:5]}" if extra else "")
            + ". Pass the same parameters (and trainable selection and optimizer) as the run that wrote it."
        )
    leaves = []
    for i, ((_, leaf), d) in enumerate(zip(flat, descs)):
        shape, dtype = _spec(leaf)
        if (shape, dtype) != (d["shape"], d["dtype"]):
            raise PPLVIError(
                f"{source}: {name}{d['path']} was saved as {d['dtype']}{d['shape']} but is "
                f"{dtype}{shape} here. Pass the same parameters as the run that wrote it."
            )
        leaves.append(_decode(arrays[f"{name}/{i}"], d))
    return jax.tree_util.tree_unflatten(treedef, leaves)


# ---------------------------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------------------------
def write_npz(path, meta: dict, arrays: dict[str, np.ndarray], what: str = "checkpoint") -> Path:
    """Atomically write ``arrays`` and the JSON ``meta`` (stored as bytes under ``__meta__``) to one ``.npz``."""
    payload = dict(arrays)
    payload[_META] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    return atomic_write(path, lambda f: np.savez(f, **payload), what)


def read_npz(path, what: str = "checkpoint") -> tuple[dict, dict[str, np.ndarray]]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no {what} at {path}" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(arrays.pop(_META).tobytes().decode())
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, UnicodeDecodeError) as e:
        raise DataError(f"the {what} {path} is not a readable pplvi file ({type(e).__name__}: {e})") from None
    return meta, arrays


def save_tree(path, tree) -> Path:
    """Save the array leaves of a pytree (parameters, an equinox module, an optimizer state) to ``path`` (.npz),
    atomically and without pickle. Non-array leaves (functions, static fields) are not saved: :func:`load_tree`
    takes them from its ``like`` argument."""
    import equinox as eqx

    descs, arrays = describe(eqx.filter(tree, eqx.is_array), "leaf")
    return write_npz(path, {"format": FORMAT, "version": VERSION, "leaves": descs}, arrays, "tree file")


def load_tree(path, like):
    """Load a file written by :func:`save_tree` into the structure of ``like`` (same key paths, shapes and dtypes,
    checked); ``like``'s non-array leaves are kept. ``like`` may be abstract — e.g. ``eqx.filter_eval_shape(make)``,
    whose array leaves are ``jax.ShapeDtypeStruct`` — so a large model need not be initialized only to be
    overwritten."""
    import equinox as eqx

    meta, arrays = read_npz(path, "tree file")
    if meta.get("format") != FORMAT:
        raise DataError(f"{path} is not a pplvi tree file (format {meta.get('format')!r}); see pplvi.train.save_tree")
    dynamic, static = eqx.partition(like, lambda x: eqx.is_array(x) or isinstance(x, jax.ShapeDtypeStruct))
    return eqx.combine(restore(dynamic, meta["leaves"], arrays, "leaf", path), static)
