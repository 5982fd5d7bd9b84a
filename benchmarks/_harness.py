"""Measurement helpers shared by the benchmark suites ``numpyro.py``, ``genjax.py`` and ``scaling.py``.

The conventions are those of ``overhead.py``: every timed function is jitted and each call is followed by
``jax.block_until_ready``; functions compared with each other are timed *interleaved* (they take turns and which
goes first rotates), and we report the median, min and max over samples; XLA flops come from
``jit(f).lower(...).compile().cost_analysis()``; time to the first call is measured in a fresh Python process.

Suites comparing against another library are named ``vs_<library>.py`` (``vs_numpyro.py``, ``vs_genjax.py``): a
file named after the package would shadow it for every script in this folder. Their results keep the suite name
(``results/numpyro.json``), and ``pplvi bench numpyro`` finds ``vs_numpyro.py``.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import gzip
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TARGET_SAMPLE_MS = 2.0  # calls shorter than this are repeated back to back within one timing sample
MAX_REPEAT = 100


@dataclass(frozen=True)
class Mode:
    """How much work a run does. ``quick``: a few minutes on 2 CPU cores; ``smoke``: seconds, for the tests."""

    name: str
    samples: int  # interleaved timing samples per function
    first_runs: int  # fresh processes per time-to-first-call (best of)
    fresh_process: bool  # False: time the first call in this process (smoke only; caches are warm)
    grad_keys: int  # keys for gradient-mean / variance checks
    steps_scale: float  # multiplies each case's number of optimizer steps

    @property
    def quick(self) -> bool:
        return self.name != "full"


MODES = {
    "full": Mode("full", samples=200, first_runs=3, fresh_process=True, grad_keys=4000, steps_scale=1.0),
    "quick": Mode("quick", samples=100, first_runs=1, fresh_process=True, grad_keys=1000, steps_scale=0.3),
    "smoke": Mode("smoke", samples=2, first_runs=1, fresh_process=False, grad_keys=64, steps_scale=0.01),
}


def parse_args(description: str, argv: Sequence[str] | None) -> tuple[argparse.Namespace, Mode]:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="fewer samples and steps (a few minutes on 2 cores)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, 2 samples, no fresh processes (tests)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for <suite>.json and <suite>.md")
    parser.add_argument("--first", nargs="+", help=argparse.SUPPRESS)  # child process of first_call_s
    args = parser.parse_args(argv)
    mode = MODES["smoke" if args.smoke else "quick" if args.quick else "full"]
    return args, mode


# ----------------------------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------------------------
def block(x):
    return jax.block_until_ready(x)


def calibrate_repeat(thunks: Sequence[Callable[[], object]]) -> int:
    """Back-to-back calls per sample so that a sample of the fastest function lasts about ``TARGET_SAMPLE_MS``.

    Single calls of tens of microseconds have a bimodal time distribution on a loaded machine (see
    ``overhead.py``); averaging a few back-to-back calls per sample makes the median stable."""
    fastest = math.inf
    for thunk in thunks:
        for _ in range(3):
            block(thunk())  # warm up: dispatch caches, allocator
        start = time.perf_counter()
        for _ in range(5):
            block(thunk())
        fastest = min(fastest, 1e3 * (time.perf_counter() - start) / 5)
    return int(min(MAX_REPEAT, max(1, math.ceil(TARGET_SAMPLE_MS / max(fastest, 1e-6)))))


def interleaved_ms(thunks: Sequence[Callable[[], object]], samples: int, repeat: int | None = None):
    """Wall times (ms per call) of each zero-argument function, interleaved; returns ``(times, repeat)``.

    The functions take turns and which goes first rotates; each sample is the mean of ``repeat`` back-to-back
    calls, each ``block_until_ready``."""
    if repeat is None:
        repeat = calibrate_repeat(thunks)
    times: list[list[float]] = [[] for _ in thunks]
    for i in range(samples):
        for j in range(len(thunks)):
            k = (i + j) % len(thunks)
            start = time.perf_counter()
            for _ in range(repeat):
                block(thunks[k]())
            times[k].append(1e3 * (time.perf_counter() - start) / repeat)
    return times, repeat


def stats(prefix: str, times: list[float]) -> dict:
    return {
        f"{prefix}_ms": statistics.median(times),
        f"{prefix}_min_ms": min(times),
        f"{prefix}_max_ms": max(times),
    }


def paired_ratio(a: list[float], b: list[float]) -> float:
    """Median over rounds of ``a / b`` within the same round (less sensitive to load that comes and goes)."""
    return statistics.median(x / y for x, y in zip(a, b))


def flops_and_compile_s(fn: Callable, *args) -> tuple[float, float]:
    """XLA's cost analysis (flops) of the optimized program of ``jax.jit(fn)`` at ``args``, and the trace + lower +
    compile time it took in this process (not a fresh one: shared caches are warm)."""
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    seconds = time.perf_counter() - start
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", float("nan"))), seconds


def xla_flops(fn: Callable, *args) -> float:
    return flops_and_compile_s(fn, *args)[0]


def warm_up():
    """Start JAX's backend and compile one small program, so no measurement pays process-wide start-up costs.

    Deliberately library-neutral: nothing of pplvi, NumPyro or genjax is warmed, so each library's own first-use
    costs (tracing its interpreter, building guides) stay in its time to first call."""
    x = jnp.ones(3)
    block(jax.jit(jax.value_and_grad(lambda v, k: jnp.sum(jnp.sin(v) * jax.random.normal(k, v.shape))))(
        x, jax.random.key(0)))


def first_call_s(script: str, spec: Sequence[str], mode: Mode, in_process: Callable[[], dict]) -> dict:
    """Time to a first result, each run in a fresh Python process; the run with the smallest ``total`` of
    ``mode.first_runs``.

    The child is ``python <script> --first <spec...>``; its last line of output is a JSON object of phases in
    seconds with at least ``total`` (see :func:`staged_first_call`). In smoke mode ``in_process`` (the child's own
    function) is called here instead: cheaper, but caches are warm."""
    if not mode.fresh_process:
        return in_process()
    best: dict = {"total": math.inf}
    for _ in range(mode.first_runs):
        cmd = [sys.executable, script, "--first", *spec]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
        phases = json.loads(proc.stdout.strip().splitlines()[-1])
        best = min(best, phases, key=lambda p: p["total"])
    return best


def staged_first_call(setup: Callable[[], tuple[Callable, tuple]]) -> dict:
    """Phases of a first call, in seconds: ``setup()`` builds everything and returns ``(fn, args)`` (``svi.init``
    happens here), then ``jax.jit(fn)`` is traced and lowered (``trace``), compiled (``compile``) and run once
    (``run``); ``total`` is their sum, the same work as a first ``jax.jit(fn)(*args)`` call."""
    start = time.perf_counter()
    fn, args = setup()
    t_setup = time.perf_counter()
    lowered = jax.jit(fn).lower(*args)
    t_trace = time.perf_counter()
    compiled = lowered.compile()
    t_compile = time.perf_counter()
    block(compiled(*args))
    end = time.perf_counter()
    return {"total": end - start, "setup": t_setup - start, "trace": t_trace - t_setup,
            "compile": t_compile - t_trace, "run": end - t_compile}


def first_call_fields(prefix: str, phases: dict) -> dict:
    """``<prefix>_first_s`` (the total) and ``<prefix>_first_<phase>_s`` for each phase."""
    out = {f"{prefix}_first_s": phases["total"]}
    out.update({f"{prefix}_first_{k}_s": v for k, v in phases.items() if k != "total"})
    return out


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    block(fn())
    return time.perf_counter() - start


# ----------------------------------------------------------------------------------------------------------------
# Gradient checks
# ----------------------------------------------------------------------------------------------------------------
def flat_tree(tree) -> np.ndarray:
    return np.concatenate([np.asarray(x, np.float64).reshape(x.shape[0], -1) for x in jax.tree_util.tree_leaves(tree)],
                          axis=1)


def gradient_check(grad_fn: Callable, n_keys: int, exact=None, seed: int = 12345, chunk: int = 500) -> dict:
    """Mean and variance of a gradient estimator ``grad_fn(key) -> grads`` over ``n_keys`` keys.

    With ``exact`` (a pytree like the gradient) also per-coordinate z-scores ``(mean - exact) / se``: for an
    unbiased estimator ``mean_z2`` is close to 1 and ``max_abs_z`` moderate. A coordinate whose estimates do not
    vary across keys has ``se = 0``; if it also misses the exact value its z-score is infinite."""
    batched = jax.jit(jax.vmap(grad_fn))
    keys = jax.random.split(jax.random.key(seed), n_keys)
    total = total_sq = 0.0
    for i in range(0, n_keys, chunk):
        g = flat_tree(batched(keys[i:i + chunk]))
        total, total_sq = total + g.sum(0), total_sq + (g * g).sum(0)
    mean = total / n_keys
    var = np.maximum(total_sq / n_keys - mean * mean, 0.0) * n_keys / max(n_keys - 1, 1)
    out = {"grad_var": float(var.sum()), "key_dependent": bool(np.any(var > 1e-12 * (1.0 + mean * mean)))}
    if exact is not None:
        ex = np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree_util.tree_leaves(exact)])
        se = np.sqrt(var / n_keys)
        diff = mean - ex
        tol = 1e-5 * np.maximum(1.0, np.abs(ex))
        z = np.where(se > 0, diff / np.where(se > 0, se, 1.0), np.where(np.abs(diff) <= tol, 0.0, np.inf))
        out.update(
            grad_mean=mean.tolist() if mean.size <= 4 else None,
            grad_max_abs_z=float(np.max(np.abs(z))),
            grad_mean_z2=float(np.mean(np.minimum(z * z, 1e30))),
            grad_max_abs_err=float(np.max(np.abs(diff))),
            # unbiased within Monte Carlo error: |z| below 5 everywhere (about 1 in 10^6 false alarms per coordinate)
            unbiased=bool(np.max(np.abs(z)) < 5.0),
        )
    return out


# ----------------------------------------------------------------------------------------------------------------
# Data and results
# ----------------------------------------------------------------------------------------------------------------
@functools.cache
def load_mnist(n: int) -> tuple[np.ndarray, str]:
    """``n`` binarized, flattened MNIST training images (float32 0/1) and where they came from.

    Read from ``$PPLVI_DATA/mnist/train-images-idx3-ubyte.part0.gz`` (default ``../shared/data``); random binary
    images when the file is missing (the JSON says so)."""
    data_dir = Path(os.environ.get("PPLVI_DATA", ROOT.parent / "shared" / "data"))
    path = data_dir / "mnist" / "train-images-idx3-ubyte.part0.gz"
    if path.exists():
        raw = gzip.open(path).read()
        images = np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28 * 28)
        if images.shape[0] >= n:
            return (images[:n] / 255.0 > 0.5).astype(np.float32), f"MNIST {path} (first {n} images)"
    rng = np.random.default_rng(0)
    return (rng.random((n, 28 * 28)) < 0.13).astype(np.float32), f"random binary images: no MNIST at {path}"


def device_string() -> str:
    device = jax.devices()[0]
    cpu = platform.processor() or platform.machine()
    return f"{device.platform}: {device.device_kind} ({cpu}, {os.cpu_count()} cores)"


def header(mode: Mode) -> dict:
    return {
        "jax_version": jax.__version__,
        "device": device_string(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "quick": mode.quick,
        "mode": mode.name,
        "samples_per_timing": mode.samples,
    }


def _jsonable(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        return _jsonable(x.item())
    return x


def write_results(suite: str, result: dict, out: Path) -> Path:
    """``out/<suite>.json`` and ``out/<suite>.md`` (the table from :mod:`report`)."""
    import report  # benchmarks/report.py

    out.mkdir(parents=True, exist_ok=True)
    result = _jsonable(result)
    path = out / f"{suite}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{suite}.md").write_text(report.suite_markdown(suite, result))
    return path
