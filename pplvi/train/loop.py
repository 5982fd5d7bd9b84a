r"""``pplvi.fit``: maximize an objective with an optax optimizer.

Sign convention
---------------
A pplvi objective is a quantity to **maximize** (an ELBO, an IWAE bound, a log-likelihood). ``fit`` performs
gradient *ascent*: it hands optax the negated gradient estimate (optax minimizes), so any optax optimizer, schedule
or chain works unchanged. The recorded history is the objective itself — higher is better.

The loop
--------
Training runs in chunks of ``chunk`` steps. A chunk is one call of a jit-compiled ``lax.while_loop`` (same HLO
for every chunk: the step count is a traced argument), and the next chunk is dispatched before the previous one's
values are read back, so the host (progress bar, history, loaders) works while the device computes. Step ``t``
uses the key ``fold_in(k_step, t)`` and the batch of step ``t`` (a pure function of the run's key and ``t``), so a
run resumed from a checkpoint repeats exactly the computation of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from pplvi.core.errors import ObjectiveError, PPLVIError
from pplvi.core.objective import Objective
from pplvi.train import checkpoint as ckpt
from pplvi.train import history as hist
from pplvi.train.data import make_source
from pplvi.train.sharding import Placement

CHECKPOINT_FORMAT = "pplvi.fit checkpoint"
CHECKPOINT_VERSION = 1
TARGET_SECONDS = 0.2  # aimed-for duration of one compiled call (one progress-bar update)


@dataclasses.dataclass(frozen=True, repr=False)
class FitResult:
    """What :func:`fit` returns.

    * ``params``: the trained parameters (same structure as the ``params`` passed in; frozen leaves unchanged).
    * ``opt_state``: the optimizer state (of the trainable leaves).
    * ``history``: ``{"step", "objective", "skipped"}``, NumPy arrays with one entry per step. ``objective[t]`` is
      the estimate at the parameters after ``t`` updates; ``skipped[t]`` says the step was not applied
      (non-finite objective or gradient).
    * ``evaluations``: ``{"step": ..., name: ...}``, one entry per evaluation (see ``evaluate=``).
    * ``step``: steps done in total (including those before a resume); ``skipped``: how many were skipped.
    * ``stopped``: ``None`` when all ``steps`` ran, ``"non-finite"`` after ``max_bad_steps`` consecutive skipped
      steps (``params`` are then the last good ones), ``"data exhausted"`` when a one-shot iterator ran out.
    * ``seconds``: wall time of this call (compilation included).
    """

    params: Any
    opt_state: Any
    history: dict
    evaluations: dict
    step: int
    skipped: int
    stopped: str | None
    seconds: float

    def __repr__(self):
        last = self.history["objective"][-min(100, len(self.history["objective"])):]
        fin = last[np.isfinite(last)]
        obj = f", objective (mean of last {len(last)}) {fin.mean():.4g}" if fin.size else ""
        ev = [k for k in self.evaluations if k != "step"]
        return (f"FitResult(step={self.step}, skipped={self.skipped}, stopped={self.stopped!r}{obj}, "
                f"evaluations={ev}, seconds={self.seconds:.2f})")


class _State(NamedTuple):
    train: Any  # trainable leaves (None elsewhere)
    opt_state: Any
    skipped: jax.Array  # int32: skipped steps so far
    bad: jax.Array  # int32: consecutive skipped steps


# ---------------------------------------------------------------------------------------------------------------
# argument checks
# ---------------------------------------------------------------------------------------------------------------
def _positive(name, value, allow_none=True, allow_zero=False):
    if value is None and allow_none:
        return None
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= (0 if allow_zero else 1)
    if not ok:
        kind = "a non-negative" if allow_zero else "a positive"
        raise ObjectiveError(f"{name} must be {kind} integer{' or None' if allow_none else ''}, got {value!r}")
    return int(value)


def _as_key(key):
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return jax.random.key(int(key))
    if hasattr(key, "dtype") and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == ():
        return key
    if hasattr(key, "dtype") and key.dtype == jnp.uint32 and key.shape == (2,):
        return jax.random.wrap_key_data(key)
    raise ObjectiveError(
        f"key must be a single jax.random key (e.g. jax.random.key(0)) or an integer seed, got "
        f"{type(key).__name__}{list(getattr(key, 'shape', []))}"
    )


def _check_optimizer(optimizer):
    if not (callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))):
        raise ObjectiveError(
            f"optimizer must be an optax.GradientTransformation (e.g. optax.adam(1e-3)), got "
            f"{type(optimizer).__name__}. fit ascends the objective; give the optimizer a positive learning rate."
        )


def _arrayify(tree):
    """Python numbers become arrays of the default dtypes (float32, or float64 under jax_enable_x64)."""
    def conv(x):
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            return x
        return jnp.asarray(x, jax.dtypes.canonicalize_dtype(jnp.float64 if isinstance(x, float) else jnp.int64))

    return jax.tree_util.tree_map(conv, tree)


def _strong(tree):
    """Drop JAX's weak types from the array leaves (``jnp.asarray(0.0)``, or optimizer states built from it), so
    the compiled chunk sees the same input types on every call and compiles once."""
    return jax.tree_util.tree_map(
        lambda x: jnp.asarray(x, x.dtype) if isinstance(x, jax.Array) and x.weak_type else x, tree
    )


def _split(arrays, trainable):
    """(trainable float leaves, the other array leaves), both with ``None`` placeholders."""
    spec = True if trainable is None else trainable
    try:
        chosen, rest = eqx.partition(arrays, spec)
    except (ValueError, TypeError) as e:
        raise ObjectiveError(
            f"trainable= must be a callable leaf -> bool or a pytree of bools/callables shaped like (a prefix of) the "
            f"parameters, e.g. {{'local': True, 'global': False}} or eqx.tree_at(...) on a tree of False; "
            f"could not apply it: {e}"
        ) from None
    train, nondiff = eqx.partition(chosen, eqx.is_inexact_array)
    if not jax.tree_util.tree_leaves(train):
        raise ObjectiveError(
            "there is nothing to train: "
            + ("the parameters have no floating-point array leaves (use 1.0 rather than 1)" if trainable is None
               else "trainable= selects no floating-point array leaf of the parameters")
        )
    return train, eqx.combine(rest, nondiff)


def _restrict(grads, like):
    """``grads`` (a gradient for every float leaf) restricted to the leaves of ``like`` (None elsewhere)."""
    none = lambda x: x is None
    like_leaves, treedef = jax.tree_util.tree_flatten(like, is_leaf=none)
    grad_leaves = treedef.flatten_up_to(grads)
    return jax.tree_util.tree_unflatten(
        treedef, [None if t is None else g for t, g in zip(like_leaves, grad_leaves)]
    )


def _host_or_device(tree):
    """Data leaves as arrays: NumPy and JAX arrays kept as they are, Python numbers as ``jnp.asarray`` makes them
    (the single-device path's dtypes)."""
    return jax.tree_util.tree_map(lambda x: x if isinstance(x, (jax.Array, np.ndarray, np.generic))
                                  else jnp.asarray(x), tree)


def _all_finite(tree):
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree) if eqx.is_inexact_array(x)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


# ---------------------------------------------------------------------------------------------------------------
# evaluations
# ---------------------------------------------------------------------------------------------------------------
def _evaluators(evaluate) -> list[tuple[str | None, Callable]]:
    """``[(name, fn(params, key) -> scalar or dict)]``; name None means "the callable names its results"."""
    if evaluate is None:
        return []

    def one(name, ev):
        if isinstance(ev, Objective):
            return name or ev.name, lambda p, k, ev=ev: ev.estimate(k, p)
        if isinstance(ev, tuple) and ev and isinstance(ev[0], Objective):
            obj, *args = ev
            return name or obj.name, lambda p, k: obj.estimate(k, p, *args)
        if callable(ev):
            return name, ev
        raise ObjectiveError(
            f"evaluate{'[' + repr(name) + ']' if name else ''} must be a callable (params, key) -> scalar or dict, a "
            f"pplvi objective, or (objective, *args); got {type(ev).__name__}"
        )

    if isinstance(evaluate, dict):
        return [one(str(k), v) for k, v in evaluate.items()]
    name, fn = one(None, evaluate)
    return [(name, fn)]


def _run_evaluations(evaluators, params, key, step) -> dict[str, float]:
    out = {}
    k_step = jax.random.fold_in(key, step)
    for i, (name, fn) in enumerate(evaluators):
        value = fn(params, jax.random.fold_in(k_step, i))
        items = value.items() if isinstance(value, dict) else [(None, value)]
        for sub, v in items:
            label = "/".join(str(x) for x in (name, sub) if x is not None) or "eval"
            try:
                out[label] = float(v)
            except (TypeError, ValueError):
                raise ObjectiveError(
                    f"evaluation {label!r} at step {step} returned {type(v).__name__} with shape "
                    f"{getattr(v, 'shape', None)}; evaluations must return scalars (or a dict of scalars)"
                ) from None
    return out


class _Evaluations:
    def __init__(self):
        self.steps: list[int] = []
        self.values: dict[str, list[float]] = {}

    def add(self, step, values: dict):
        for k in values:
            self.values.setdefault(k, [math.nan] * len(self.steps))
        for k, col in self.values.items():
            col.append(values.get(k, math.nan))
        self.steps.append(step)

    def last_step(self):
        return self.steps[-1] if self.steps else None

    def arrays(self) -> dict:
        if not self.steps:
            return {}
        return {"step": np.asarray(self.steps, np.int64), **{k: np.asarray(v) for k, v in self.values.items()}}


# ---------------------------------------------------------------------------------------------------------------
# the compiled chunk
# ---------------------------------------------------------------------------------------------------------------
_CHUNKS: OrderedDict = OrderedDict()  # compiled chunk functions reused across fit calls (bounded)
_CHUNKS_MAX = 16


def _hashable_key(*parts):
    try:
        hash(parts)
        return parts
    except TypeError:
        return None


def _chunk_fn(objective, optimizer, static, source, skip_nonfinite, max_bad, value_dtype, placement=None,
              host_loop=False):
    """The jitted chunk, shared by fit calls with the same objective, optimizer object, static structure and mesh
    (so a second ``fit`` with the same ingredients, e.g. a resume, does not compile again)."""
    leaves, treedef = jax.tree_util.tree_flatten(static)
    key = _hashable_key(objective, optimizer, treedef, tuple(leaves), type(source), skip_nonfinite, max_bad,
                        np.dtype(value_dtype).name, None if placement is None else placement.cache_key(), host_loop)
    fn = _CHUNKS.get(key) if key is not None else None
    if fn is None:
        fn = _make_chunk(objective, optimizer, static, type(source).batch, skip_nonfinite, max_bad, value_dtype,
                         placement, host_loop)
        if key is not None:
            _CHUNKS[key] = fn
            while len(_CHUNKS) > _CHUNKS_MAX:
                _CHUNKS.popitem(last=False)
    else:
        _CHUNKS.move_to_end(key)
    return fn


def _has_convolution(tree) -> bool:
    """Whether a parameter pytree holds an equinox convolution (or transposed convolution) layer."""
    is_conv = lambda m: isinstance(m, (eqx.nn.Conv, eqx.nn.ConvTranspose))  # noqa: E731
    return any(is_conv(m) for m in jax.tree_util.tree_leaves(tree, is_leaf=is_conv))


def _choose_loop(loop: str, params, placement) -> bool:
    """``True`` for the host loop. ``"auto"``: the host loop on the CPU backend when the parameters hold equinox
    convolutions. XLA:CPU runs a convolution inside a ``while`` loop through a slow generic path (measured on
    jax 0.11 on 2 cores: a 32-channel 8x8 convolution 20x slower forward and its weight gradient 50x slower than the
    same op compiled outside a loop), so there one jitted call per step is much faster; elsewhere the compiled
    multi-step loop saves the per-step dispatch."""
    if loop not in ("auto", "device", "host"):
        raise PPLVIError(f"fit: loop must be 'auto', 'device' or 'host', got {loop!r}")
    if loop != "auto":
        return loop == "host"
    return placement is None and jax.default_backend() == "cpu" and _has_convolution(params)


def _make_chunk(objective, optimizer, static, get_batch, skip_nonfinite, max_bad, value_dtype, placement=None,
                host_loop=False):
    takes_extra = isinstance(optimizer, optax.GradientTransformationExtraArgs)

    def one_step(st: _State, frozen, data, xs, start, i, k_step):
        """Step ``start + i``: the new state, the objective estimate and whether the step was skipped."""
        step = start + i
        batch = get_batch(data, xs, i)
        if placement is not None:  # split the batch over the data axis: XLA partitions the objective's vmap
            batch = placement.constrain_batch(batch)
        params = eqx.combine(st.train, frozen, static)
        value, grads = objective.value_and_grad(jax.random.fold_in(k_step, step), params, *batch)
        grads = _restrict(grads, st.train)

        def update(train, opt_state):
            ascent = jax.tree_util.tree_map(jnp.negative, grads)  # optax minimizes; objectives are maximized
            # optax's extra-args transformations (e.g. reduce_on_plateau) see the loss: minus the objective
            extra = {"value": -value, "grad": ascent} if takes_extra else {}
            updates, opt_state = optimizer.update(ascent, opt_state, train, **extra)
            return eqx.apply_updates(train, updates), opt_state

        if skip_nonfinite:  # a bad step leaves parameters and optimizer state as they were
            ok = jnp.isfinite(value) & _all_finite(grads)
            train, opt_state = jax.lax.cond(ok, update, lambda *old: old, st.train, st.opt_state)
        else:
            ok = jnp.array(True)
            train, opt_state = update(st.train, st.opt_state)
        bad = jnp.where(ok, 0, st.bad + 1).astype(jnp.int32)
        st = _State(train, opt_state, st.skipped + (~ok).astype(jnp.int32), bad)
        return st, value.astype(value_dtype), ~ok

    def run(state: _State, frozen, data, xs, start, n, k_step):
        size = jax.tree_util.tree_leaves(xs)[0].shape[0]

        def cond(carry):
            i, st, _, _ = carry
            go = i < n
            return go if max_bad is None else go & (st.bad < max_bad)

        def body(carry):
            i, st, values, skips = carry
            st, value, skipped = one_step(st, frozen, data, xs, start, i, k_step)
            return i + 1, st, values.at[i].set(value), skips.at[i].set(skipped)

        init = (jnp.int32(0), state, jnp.full((size,), jnp.nan, value_dtype), jnp.zeros((size,), bool))
        done, state, values, skips = jax.lax.while_loop(cond, body, init)
        return state, values, skips, done

    if host_loop:
        # one compiled call per step, dispatched asynchronously; after `max_bad` consecutive skipped steps the
        # remaining calls of the chunk leave the state unchanged and are not counted (as the device loop stops)
        def guarded(st, frozen, data, xs, start, i, k_step, done):
            new, value, skipped = one_step(st, frozen, data, xs, start, i, k_step)
            if max_bad is None:
                return new, value, skipped, done + 1
            # a select, not lax.cond: XLA:CPU's slow path applies inside conditionals too
            active = st.bad < max_bad
            new = jax.tree_util.tree_map(lambda a, b: jnp.where(active, a, b), new, st)
            value = jnp.where(active, value, jnp.nan).astype(value_dtype)
            return new, value, skipped & active, done + active.astype(jnp.int32)

        step_fn = jax.jit(guarded)

        def run_host(state: _State, frozen, data, xs, start, n, k_step):
            values, skips, done = [], [], jnp.int32(0)
            for i in range(int(n)):
                state, value, skipped, done = step_fn(state, frozen, data, xs, start, np.int32(i), k_step, done)
                values.append(value)
                skips.append(skipped)
            return state, jnp.stack(values), jnp.stack(skips), done

        return run_host
    if placement is None:
        return jax.jit(run)
    return jax.jit(run, out_shardings=placement.replicated)  # state, history values: replicated on the mesh


# ---------------------------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------------------------
def _key_data(key) -> list[int]:
    return [int(x) for x in np.asarray(jax.random.key_data(key)).reshape(-1)]


def _save(path, *, arrays, opt_state, step, skipped, bad, stopped, key, source, position, values, skips, evals):
    p_desc, payload = ckpt.describe(arrays, "params")
    o_desc, o_arrays = ckpt.describe(opt_state, "opt_state")
    payload.update(o_arrays)
    payload["history/objective"] = np.asarray(values)
    payload["history/skipped"] = np.asarray(skips, bool)
    names = list(evals.values)
    payload["eval/step"] = np.asarray(evals.steps, np.int64)
    for i, k in enumerate(names):
        payload[f"eval/{i}"] = np.asarray(evals.values[k], np.float64)
    meta = {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "step": step, "skipped": skipped, "bad": bad,
        "stopped": stopped, "key": _key_data(key), "data": source.describe(), "data_position": position,
        "eval_names": names, "params": p_desc, "opt_state": o_desc, "jax": jax.__version__,
    }
    ckpt.write_npz(path, meta, payload, "checkpoint")


def _load(path, *, arrays_like, opt_like, key, source):
    meta, saved = ckpt.read_npz(path, "checkpoint")
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise PPLVIError(f"{path} is not a pplvi.fit checkpoint (format {meta.get('format')!r})")
    if meta["key"] != _key_data(key):
        raise PPLVIError(
            f"resume={str(path)!r}: the checkpoint was written by a run with a different key; pass the same key= "
            "to continue that run (the key fixes every step's randomness and the data order)"
        )
    if meta["data"] != source.describe():
        raise PPLVIError(
            f"resume={str(path)!r}: the data does not match the checkpoint's: saved {meta['data']}, given "
            f"{source.describe()}. Pass the same data, batch_size, shuffle and last_batch as the run that wrote it."
        )
    arrays = ckpt.restore(arrays_like, meta["params"], saved, "params", path)
    opt_state = ckpt.restore(opt_like, meta["opt_state"], saved, "opt_state", path)
    evals = _Evaluations()
    evals.steps = [int(s) for s in saved["eval/step"]]
    evals.values = {k: saved[f"eval/{i}"].tolist() for i, k in enumerate(meta["eval_names"])}
    values = [saved["history/objective"]]
    skips = [saved["history/skipped"]]
    return meta, arrays, opt_state, values, skips, evals


# ---------------------------------------------------------------------------------------------------------------
# fit
# ---------------------------------------------------------------------------------------------------------------
def fit(
    objective,
    params,
    *,
    optimizer,
    steps: int,
    key,
    data=None,
    batch_size: int | None = None,
    shuffle: bool = True,
    last_batch: str = "drop",
    trainable=None,
    evaluate=None,
    eval_every: int | None = None,
    checkpoint=None,
    checkpoint_every: int | None = None,
    resume=None,
    history_path=None,
    skip_nonfinite: bool = True,
    max_bad_steps: int | None = None,
    chunk: int = 100,
    progress: bool | None = None,
    desc: str | None = None,
    mesh: jax.sharding.Mesh | None = None,
    data_axis: str | tuple[str, ...] | None = "data",
    loop: str = "auto",
) -> FitResult:
    """Maximize ``objective`` over ``params`` with ``optimizer`` for ``steps`` steps.

    **Sign convention**: objectives are maximized. ``fit`` ascends the objective by giving optax the negated
    gradient estimate; ``history["objective"]`` records the objective (higher is better).

    Each step calls ``objective.value_and_grad(step_key, params, *batch)`` with ``step_key = fold_in(k, step)``.

    Args:
        objective: a :class:`pplvi.Objective` taking ``(params, *batch)``.
        params: any pytree (dicts, equinox modules...). Python floats become arrays.
        optimizer: an ``optax.GradientTransformation``. Transformations that take extra arguments (e.g.
            ``optax.contrib.reduce_on_plateau``) also get ``value=`` the loss, i.e. minus the objective estimate.
        steps: total number of steps (a resumed run continues up to ``steps``).
        key: a ``jax.random.key`` or an integer seed. It fixes every step's randomness and the data order.
        data: ``None`` (the objective takes only params); an array, a pytree of arrays, or a *tuple* of them (a
            tuple gives several positional arguments); or a loader: a list of batches, any re-iterable (iterated
            once per epoch), a function ``epoch -> iterable``, or a one-shot iterator.
        batch_size: rows per step for array data, sliced along axis 0 (``None``: all the data every step).
        shuffle: reshuffle array data every epoch. last_batch: ``"drop"`` or ``"pad"`` (see
            :class:`pplvi.train.data.ArrayBatches`).
        trainable: which leaves to train — a callable ``leaf -> bool`` or a pytree of bools (or callables) shaped
            like a prefix of ``params`` (equinox filter spec). Other leaves are frozen (returned bit-identical).
        evaluate: a callable ``(params, key) -> scalar or dict of scalars``, a pplvi objective (its estimate at the
            params), ``(objective, *args)``, or a dict of those by name. Run at step 0 and every ``eval_every``
            steps (only at the end when ``eval_every`` is None), and after the last step.
        checkpoint: file to write (``.npz``; no pickle) every ``checkpoint_every`` steps, at the end, and when the
            run is interrupted (KeyboardInterrupt or an exception). Writes are atomic.
        resume: a checkpoint file to continue from, or ``True`` to continue from ``checkpoint`` when it exists.
            The continuation is bit-identical to an uninterrupted run on the same machine (same key stream, data
            order and optimizer state).
        history_path: a ``.csv`` or ``.json`` file (or a list of them) for the history and evaluations, written
            with each checkpoint and at the end.
        skip_nonfinite: skip (do not apply) a step whose objective or gradient estimate has a NaN or an inf; the
            parameters and the optimizer state stay as they were. Skipped steps are counted and reported.
        max_bad_steps: stop after this many consecutive skipped steps; the returned params are the last good ones.
        chunk: the most steps per compiled call (the progress bar updates once per call). Fewer are run per call
            when steps are slow, aiming at about 5 calls a second; this never changes the results. (Processes
            sharing a mesh always run ``chunk`` steps per call.)
        progress: show a tqdm bar (objective, steps/s, ETA); ``None``: only when stderr is a terminal.
        mesh: a ``jax.sharding.Mesh`` to run on (several devices, possibly of several processes after
            ``jax.distributed.initialize``). Parameters, optimizer state and keys are replicated on it; each step's
            batch is split along axis 0 over ``data_axis``, and XLA partitions the objective's ``jax.vmap`` over the
            batch (data parallelism). Results equal the single-device run's up to floating-point reduction order.
            Inside the objective, bare ``PartitionSpec``s refer to this mesh (``fit`` runs under
            ``jax.set_mesh``): ``pplvi.train.shard(log_w, "particles")`` (or ``jax.lax.with_sharding_constraint(
            log_w, P("particles"))``) splits particles over another mesh axis. Mesh axes are used as
            ``AxisType.Auto`` (sharding propagation). Across processes, pass the same arguments everywhere; only
            process 0 writes files. See docs/training.md, "Several devices".
        data_axis: the mesh axis (or tuple of axes) that splits the batch; its size must divide the batch's rows
            (``batch_size``, the full data's rows, or a loader's batch). ``None``: every device gets the whole
            batch (e.g. to parallelize over particles only).

    Returns:
        a :class:`FitResult`.
    """
    t_start = time.perf_counter()
    if not isinstance(objective, Objective) and not callable(getattr(objective, "value_and_grad", None)):
        raise ObjectiveError(
            f"fit needs a pplvi objective (a function decorated with @pplvi.objective, or one from "
            f"pplvi.objectives), got {type(objective).__name__}"
        )
    name = getattr(objective, "name", "objective")
    _check_optimizer(optimizer)
    steps = _positive("steps", steps, allow_none=False, allow_zero=True)
    chunk = _positive("chunk", chunk, allow_none=False)
    eval_every = _positive("eval_every", eval_every)
    checkpoint_every = _positive("checkpoint_every", checkpoint_every)
    max_bad_steps = _positive("max_bad_steps", max_bad_steps)
    if max_bad_steps is not None and not skip_nonfinite:
        raise ObjectiveError("max_bad_steps counts skipped steps; it needs skip_nonfinite=True")
    if checkpoint_every is not None and checkpoint is None:
        raise PPLVIError("checkpoint_every= was given without checkpoint= (the file to write)")
    key = _as_key(key)
    if mesh is None and data_axis != "data":
        raise PPLVIError(f"data_axis={data_axis!r} names an axis of mesh=, which was not given")
    placement = None if mesh is None else Placement(mesh, data_axis)
    multiprocess = placement is not None and placement.multiprocess  # the mesh spans several processes
    evaluators = _evaluators(evaluate)
    if eval_every is not None and not evaluators:
        raise ObjectiveError("eval_every= was given without evaluate= (what to evaluate)")
    history_paths = [] if history_path is None else (
        [history_path] if isinstance(history_path, (str, Path)) else list(history_path))
    history_paths = [hist.check_path(p) for p in history_paths]
    if resume is True:
        if checkpoint is None:
            raise PPLVIError("resume=True continues from checkpoint=, which was not given")
        resume = Path(checkpoint) if Path(checkpoint).is_file() else None
    elif resume is False:
        resume = None
    if checkpoint is not None:
        checkpoint = ckpt.check_writable(checkpoint, "checkpoint")
    for p in history_paths:
        ckpt.check_writable(p, "history file")

    # parameters: arrays (trainable | frozen) and the static rest
    params = _arrayify(params)
    arrays, static = eqx.partition(params, eqx.is_array)
    arrays = _strong(arrays)
    train, frozen = _split(arrays, trainable)
    opt_state = _strong(optimizer.init(train))
    k_step, k_data, k_eval = jax.random.split(key, 3)
    puts = {} if placement is None else {
        "put_full": lambda args: placement.split(_host_or_device(args), 0, "data="),  # every step: all rows
        "put_table": lambda args: placement.replicate(_host_or_device(args)),  # rows gathered on each device
    }
    source = make_source(data, batch_size, shuffle, last_batch, np.asarray(jax.random.key_data(k_data)), **puts)
    if placement is not None and source.mode == "arrays":
        placement.check_divisible(batch_size, f"batch_size={batch_size}")

    step, skipped, bad, stopped = 0, 0, 0, None
    values, skips, evals = [], [], _Evaluations()
    if resume is not None:
        meta, arrays, opt_state, values, skips, evals = _load(
            resume, arrays_like=arrays, opt_like=opt_state, key=key, source=source)
        train, frozen = _split(arrays, trainable)
        step, skipped, bad = meta["step"], meta["skipped"], meta["bad"]
        if step > steps:
            raise PPLVIError(f"resume={str(resume)!r}: the checkpoint is at step {step}, beyond steps={steps}")
        source.seek(step, meta["data_position"])

    # one value dtype for the history: the default float (float64 under jax_enable_x64)
    value_dtype = jnp.zeros((), float).dtype
    run_chunk = _chunk_fn(objective, optimizer, static, source, skip_nonfinite, max_bad_steps, value_dtype,
                          placement, _choose_loop(loop, params, placement))
    state = _State(train, opt_state, jnp.int32(skipped), jnp.int32(bad))
    if placement is not None:  # everything but the data replicated on the mesh
        state, frozen, k_step, k_eval = placement.replicate((state, frozen, k_step, k_eval))

    def place_xs(xs):
        """A chunk's per-step inputs: index tables (chunk, batch) or stacked loader batches (chunk, batch, ...)
        split along the batch axis; the dummy of the other sources replicated."""
        if placement is None:
            return xs
        if source.mode in ("arrays", "loader"):
            what = "a loader batch" if source.mode == "loader" else f"batch_size={batch_size}"
            return placement.split(xs, 1, what)
        return placement.replicate(xs)

    # `committed`: the state whose history has been read back; everything written to disk comes from it
    committed = {"state": state, "step": step, "position": source.position()}
    first_step = step

    def params_of(st):
        return eqx.combine(st.train, frozen, static)

    def history_arrays():
        v = np.concatenate([np.asarray(x) for x in values]) if values else np.zeros((0,), value_dtype)
        s = np.concatenate([np.asarray(x, bool) for x in skips]) if skips else np.zeros((0,), bool)
        return {"step": np.arange(len(v), dtype=np.int64), "objective": v, "skipped": s}

    def write_files(stopped_reason):
        if multiprocess and jax.process_index() != 0:
            return  # the state is replicated: process 0 writes it for all
        st = committed["state"]
        h = history_arrays()
        if checkpoint is not None:
            _save(checkpoint, arrays=eqx.combine(st.train, frozen), opt_state=st.opt_state, step=committed["step"],
                  skipped=int(st.skipped), bad=int(st.bad), stopped=stopped_reason, key=key, source=source,
                  position=committed["position"], values=h["objective"], skips=h["skipped"], evals=evals)
        summary = {"objective_name": name, "steps": committed["step"], "skipped": int(st.skipped),
                   "stopped": stopped_reason}
        for p in history_paths:
            hist.write(p, h, evals.arrays(), summary)

    def maybe_evaluate(st, at, final=False):
        if not evaluators or evals.last_step() == at:
            return None
        due = final or (eval_every is not None and at % eval_every == 0)
        if not due:
            return None
        with mesh_context():
            result = _run_evaluations(evaluators, params_of(st), k_eval, at)
        evals.add(at, result)
        return result

    def next_stop(s):
        stop = steps
        for every in (eval_every, checkpoint_every):
            if every is not None:
                stop = min(stop, (s // every + 1) * every)
        return stop

    def mesh_context():
        return contextlib.nullcontext() if placement is None else placement.context()

    from tqdm.auto import tqdm

    if progress is None and multiprocess and jax.process_index() != 0:
        progress = False  # one bar (process 0's) for a multi-process run
    bar = tqdm(total=steps, initial=step, unit="step", desc=desc or f"fit {name}", dynamic_ncols=True,
               disable=(not progress) if progress is not None else None)
    postfix: dict = {}
    try:
        last_eval = maybe_evaluate(state, step)
        if last_eval:
            postfix.update({k: f"{v:.4g}" for k, v in last_eval.items()})
        pending = None
        d_state, d_step = state, step
        # steps per call: at most `chunk` (the compiled buffer size), fewer when steps are slow, so that the bar
        # updates about every TARGET_SECONDS; the step count is a traced argument, so this never recompiles.
        # Processes sharing a mesh keep `chunk` steps per call: they must all make the same sequence of calls.
        per_call, clock = (chunk if multiprocess else min(chunk, 8)), None
        while True:
            nxt = None
            if d_step < steps and stopped is None:
                n = min(per_call, next_stop(d_step) - d_step)
                xs, n = source.xs(d_step, n, chunk)
                if n > 0:
                    try:
                        with mesh_context():
                            out = run_chunk(d_state, frozen, source.device_data, place_xs(xs), np.int32(d_step),
                                            np.int32(n), k_step)
                    except TypeError as e:
                        if "positional argument" not in str(e):
                            raise
                        raise ObjectiveError(
                            f"{name} was called as {name}(params{', <data>' * source.n_args}) — params first, "
                            f"then {source.n_args} data argument(s) from data= (a tuple gives one argument per "
                            f"element) — and Python refused: {e}"
                        ) from None
                    nxt = (out, d_step, n, source.position())
                    d_state, d_step = out[0], d_step + n
                elif getattr(source, "exhausted", False) and pending is None:
                    stopped = "data exhausted"
            if pending is not None:
                (st, vals, sk, done), start, n, position = pending
                done = int(done)  # waits for this chunk only; the next one is already queued
                vals, sk = np.asarray(vals)[:done], np.asarray(sk)[:done]
                values.append(vals)
                skips.append(sk)
                at = start + done
                committed.update(state=st, step=at, position=position)
                now = time.perf_counter()
                if clock is not None and done and not multiprocess:  # the first chunk's time includes compilation
                    per_call = int(np.clip(done / max(now - clock, 1e-9) * TARGET_SECONDS, 1, chunk))
                clock = now
                finite = vals[np.isfinite(vals)]
                if finite.size:
                    postfix["objective"] = f"{finite.mean():.4g}"
                n_skipped = int(st.skipped)
                if n_skipped:
                    postfix["skipped"] = n_skipped
                if max_bad_steps is not None and int(st.bad) >= max_bad_steps:
                    stopped = "non-finite"
                elif getattr(source, "exhausted", False) and nxt is None:
                    stopped = "data exhausted"
                result = maybe_evaluate(st, at, final=stopped is not None or at == steps)
                if result:
                    postfix.update({k: f"{v:.4g}" for k, v in result.items()})
                bar.set_postfix(postfix, refresh=False)
                bar.update(done)
                if (checkpoint is not None and checkpoint_every is not None and at % checkpoint_every == 0
                        and at < steps and stopped is None):  # the final checkpoint is written after the loop
                    write_files(stopped)
                if stopped is not None:
                    break  # the chunk dispatched after this one ran no steps (or is discarded)
            if nxt is None:
                break
            pending = nxt
    except BaseException as e:
        bar.close()
        if checkpoint is not None and committed["step"] > first_step:
            try:
                write_files("interrupted")
                e.add_note(f"pplvi.fit: the state after step {committed['step']} was saved to {checkpoint}; "
                           f"continue with resume={str(checkpoint)!r}")
            except Exception as save_error:  # the run's own error is the one to report
                e.add_note(f"pplvi.fit: could not save a checkpoint on the way out: {save_error}")
        raise
    bar.close()

    st = committed["state"]
    maybe_evaluate(st, committed["step"], final=True)
    if checkpoint is not None or history_paths:
        write_files(stopped)
    h = history_arrays()
    total_skipped = int(st.skipped)
    if stopped == "non-finite":
        bad_steps = np.flatnonzero(h["skipped"])
        warnings.warn(
            f"pplvi.fit: stopped at step {committed['step']} after {max_bad_steps} consecutive steps with a "
            f"non-finite objective or gradient (steps {committed['step'] - max_bad_steps} to "
            f"{committed['step'] - 1}); the parameters returned are those of the last good step. {total_skipped} "
            f"steps were skipped in all (first at step {bad_steps[0]}). Lower the learning rate, check the data, or "
            "clip gradients (optax.clip_by_global_norm).",
            RuntimeWarning, stacklevel=2,
        )
    elif total_skipped:
        bad_steps = np.flatnonzero(h["skipped"])
        shown = ", ".join(map(str, bad_steps[:10])) + (", ..." if len(bad_steps) > 10 else "")
        warnings.warn(
            f"pplvi.fit: skipped {total_skipped} of {len(h['skipped'])} steps whose objective or gradient was "
            f"not finite (steps {shown}); their updates were not applied. See result.history['skipped'].",
            RuntimeWarning, stacklevel=2,
        )
    elif stopped == "data exhausted":
        warnings.warn(f"pplvi.fit: the data iterator ran out after {committed['step']} of {steps} steps",
                      RuntimeWarning, stacklevel=2)
    return FitResult(
        params=params_of(st), opt_state=st.opt_state, history=h, evaluations=evals.arrays(),
        step=committed["step"], skipped=total_skipped, stopped=stopped, seconds=time.perf_counter() - t_start,
    )
