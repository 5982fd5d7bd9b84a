"""pplvi.fit: posterior recovery, minibatching, parameter subsets, the non-finite guard, checkpoints and resume,
atomic writes, history files and error messages."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as nd
import optax
import pytest

import pplvi
from pplvi import objectives as O
from pplvi.core.errors import DataError, ObjectiveError, PPLVIError
from pplvi.train import fit, load_tree, save_tree
from pplvi.train.data import ArrayBatches

N_OBS = 20
X = np.asarray(jax.random.normal(jax.random.key(3), (N_OBS,)) + 1.0)


@pplvi.gen
def model(params, x):
    z = pplvi.sample("z", nd.Normal(0.0, 1.0))
    pplvi.sample("x", nd.Normal(z, 1.0).expand([x.shape[0]]).to_event(1), obs=x)


@pplvi.gen
def guide(params, x):
    pplvi.sample("z", nd.Normal(params["loc"], jnp.exp(params["log_scale"])))


ELBO = O.elbo(model, guide)
INIT = {"loc": 0.0, "log_scale": 0.0}


@pplvi.objective
def visits(params, idx):
    """Deterministic; its gradient is the number of times each index occurs in the batch. With optax.sgd(1.0),
    ascent adds it to ``params["w"]``, so ``w`` counts how often each datum was seen."""
    return jnp.sum(params["w"][idx])


@pplvi.objective
def fit_to_data(params, x):
    """-(w - x)^2 summed over the batch: NaN whenever the batch holds a NaN."""
    return -jnp.sum((params["w"] - x) ** 2)


def leaves_equal(a, b):
    """Same structure, and every leaf equal: arrays bit for bit (same dtype, NaN == NaN), other leaves by ==."""
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    return len(la) == len(lb) and all(
        np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(np.asarray(x), np.asarray(y), equal_nan=True)
        if eqx.is_array(x) else x == y
        for x, y in zip(la, lb)
    )


def results_equal(r1, r2):
    assert leaves_equal(r1.params, r2.params), "params differ"
    assert leaves_equal(r1.opt_state, r2.opt_state), "optimizer states differ"
    assert r1.history.keys() == r2.history.keys() and r1.evaluations.keys() == r2.evaluations.keys()
    for k in r1.history:
        assert np.array_equal(r1.history[k], r2.history[k], equal_nan=True), k
    for k in r1.evaluations:
        assert np.array_equal(r1.evaluations[k], r2.evaluations[k], equal_nan=True), k
    assert (r1.step, r1.skipped, r1.stopped) == (r2.step, r2.skipped, r2.stopped)
    return True


# ---------------------------------------------------------------------------------------------------------------
def test_recovers_the_conjugate_gaussian_posterior():
    """One reparameterized sample per step, Adam with a decaying rate: over 20 seeds the final errors have standard
    deviation 0.017 (mean) and 0.008 (sd); the tolerances are about 5 of those."""
    result = fit(ELBO, INIT, data=X, optimizer=optax.adam(optax.exponential_decay(0.1, 1000, 0.03)), steps=1000,
                 key=jax.random.key(0), progress=False)
    post_mean, post_sd = X.sum() / (N_OBS + 1), 1.0 / math.sqrt(N_OBS + 1)
    assert abs(float(result.params["loc"]) - post_mean) < 0.08
    assert abs(float(jnp.exp(result.params["log_scale"])) - post_sd) < 0.04
    h = result.history
    assert h["objective"].shape == h["skipped"].shape == h["step"].shape == (1000,)
    assert np.array_equal(h["step"], np.arange(1000)) and result.skipped == 0 and result.stopped is None
    assert h["objective"][-100:].mean() > h["objective"][:10].mean()  # the ELBO went up (ascent)
    assert set(result.params) == {"loc", "log_scale"}


def test_minibatches_see_every_datum_once_per_epoch():
    n = 12
    seen = []

    def record(params, key):
        seen.append(np.asarray(params["w"]).copy())
        return 0.0

    # 12 rows, batches of 4: 3 steps per epoch; w counts visits; evaluate after every epoch
    result = fit(visits, {"w": jnp.zeros(n)}, data=np.arange(n), batch_size=4, optimizer=optax.sgd(1.0), steps=15,
                 key=1, evaluate=record, eval_every=3, chunk=2, progress=False)
    assert len(seen) == 6
    for epoch, w in enumerate(seen):
        assert np.array_equal(w, np.full(n, float(epoch))), (epoch, w)
    assert np.array_equal(result.params["w"], np.full(n, 5.0))

    # 10 rows, batches of 4, pad: 3 steps per epoch, every datum at least once and two of them twice
    r = fit(visits, {"w": jnp.zeros(10)}, data=np.arange(10), batch_size=4, last_batch="pad",
            optimizer=optax.sgd(1.0), steps=3, key=2, progress=False)
    w = np.asarray(r.params["w"])
    assert w.min() == 1 and w.sum() == 12 and (w == 2).sum() == 2
    # drop: 2 steps per epoch, 8 distinct rows per epoch
    r = fit(visits, {"w": jnp.zeros(10)}, data=np.arange(10), batch_size=4, last_batch="drop",
            optimizer=optax.sgd(1.0), steps=2, key=2, progress=False)
    w = np.asarray(r.params["w"])
    assert w.max() == 1 and w.sum() == 8


def test_epoch_orders_are_permutations_reshuffled_every_epoch():
    src = ArrayBatches(np.arange(10), 3, True, "drop", np.array([1, 2], np.uint32))
    orders = [src.order(e) for e in range(4)]
    assert all(np.array_equal(np.sort(o), np.arange(10)) for o in orders)
    assert len({tuple(o) for o in orders}) == 4  # a new order each epoch
    again = ArrayBatches(np.arange(10), 3, True, "drop", np.array([1, 2], np.uint32))
    assert np.array_equal(again.indices(7), src.indices(7))  # a pure function of (seed, step)
    plain = ArrayBatches(np.arange(10), 3, False, "drop", np.array([1, 2], np.uint32))
    assert np.array_equal(plain.indices(0), [0, 1, 2]) and np.array_equal(plain.indices(3), [0, 1, 2])


def test_tuple_data_is_several_arguments_and_loaders_work():
    @pplvi.objective
    def weighted(params, idx, weight):
        return jnp.sum(params["w"][idx] * weight)

    idx, weight = np.arange(6), np.full(6, 2.0, np.float32)
    r = fit(weighted, {"w": jnp.zeros(6)}, data=(idx, weight), batch_size=3, optimizer=optax.sgd(1.0), steps=2,
            key=0, progress=False)
    assert np.array_equal(r.params["w"], np.full(6, 2.0))

    # a list of batches (iterated once per epoch); the short last batch is dropped or padded
    batches = [np.array([0, 1, 2]), np.array([3, 4, 5]), np.array([6])]
    r = fit(visits, {"w": jnp.zeros(7)}, data=batches, optimizer=optax.sgd(1.0), steps=3, key=0, progress=False)
    assert np.array_equal(r.params["w"], [2, 2, 2, 1, 1, 1, 0])
    r = fit(visits, {"w": jnp.zeros(7)}, data=batches, last_batch="pad", optimizer=optax.sgd(1.0), steps=3, key=0,
            progress=False)
    assert np.array_equal(r.params["w"], [1, 1, 1, 1, 1, 1, 3])
    # a function epoch -> batches
    r = fit(visits, {"w": jnp.zeros(4)}, data=lambda epoch: [np.array([epoch % 4])], optimizer=optax.sgd(1.0),
            steps=6, key=0, progress=False, chunk=4)
    assert np.array_equal(r.params["w"], [2, 2, 1, 1])
    # a one-shot iterator that runs out stops the run with a warning
    with pytest.warns(RuntimeWarning, match="ran out"):
        r = fit(visits, {"w": jnp.zeros(4)}, data=iter([np.array([0]), np.array([1])]), optimizer=optax.sgd(1.0),
                steps=5, key=0, progress=False)
    assert r.step == 2 and r.stopped == "data exhausted" and np.array_equal(r.params["w"], [1, 1, 0, 0])


def test_frozen_leaves_stay_bit_identical():
    @pplvi.objective
    def obj(params, x):
        z = pplvi.sample("z", nd.Normal(params["local"], 1.0).to_event(1))
        return -jnp.sum((z - x) ** 2) - jnp.sum((params["global"][:3] - z) ** 2) + 0.0 * params["count"]

    rng = np.random.default_rng(0)
    params = {"local": jnp.zeros(3), "global": jnp.asarray(rng.normal(size=4), jnp.float32),
              "count": jnp.asarray(7, jnp.int32)}
    x = np.ones(3, np.float32)
    for trainable in ({"local": True, "global": False, "count": False}, lambda leaf: leaf.shape == (3,)):
        r = fit(obj, params, data=x, trainable=trainable, optimizer=optax.adam(0.05), steps=50, key=0,
                progress=False)
        assert np.array_equal(r.params["global"], params["global"]) and r.params["global"].dtype == jnp.float32
        assert np.array_equal(r.params["count"], params["count"]) and r.params["count"].dtype == jnp.int32
        assert not np.array_equal(r.params["local"], params["local"])
        assert jax.tree_util.tree_leaves(r.opt_state[0].mu) and r.opt_state[0].mu["global"] is None

    # an equinox module: train only the bias of a linear layer
    lin = eqx.nn.Linear(3, 2, key=jax.random.key(1))

    @pplvi.objective
    def regress(layer, x):
        return -jnp.sum((layer(x) - 1.0) ** 2)

    spec = eqx.tree_at(lambda m: m.bias, jax.tree_util.tree_map(lambda _: False, lin), True)
    r = fit(regress, lin, data=x, trainable=spec, optimizer=optax.adam(0.1), steps=30, key=0, progress=False)
    assert np.array_equal(r.params.weight, lin.weight) and not np.array_equal(r.params.bias, lin.bias)

    with pytest.raises(ObjectiveError, match="selects no floating-point"):
        fit(obj, params, data=x, trainable={"local": False, "global": False, "count": True},
            optimizer=optax.adam(0.1), steps=1, key=0, progress=False)


def test_nonfinite_steps_are_skipped_and_counted():
    x = np.linspace(-1.0, 1.0, 12).astype(np.float32)
    x[5] = np.nan  # exactly one batch of every epoch holds it
    with pytest.warns(RuntimeWarning, match="skipped 4 of 12 steps"):
        r = fit(fit_to_data, {"w": jnp.zeros(())}, data=x, batch_size=4, optimizer=optax.adam(0.1), steps=12,
                key=3, chunk=5, progress=False)
    assert r.skipped == 4 and r.stopped is None and r.step == 12
    # per epoch (3 steps) exactly one skipped step, and it is the one whose value is NaN
    assert np.array_equal(r.history["skipped"].reshape(4, 3).sum(1), [1, 1, 1, 1])
    assert np.array_equal(r.history["skipped"], np.isnan(r.history["objective"]))
    assert np.isfinite(float(r.params["w"]))
    assert all(np.all(np.isfinite(np.asarray(v))) for v in jax.tree_util.tree_leaves(r.opt_state))


def test_stop_after_consecutive_bad_steps_restores_the_last_good_params():
    x = np.arange(16, dtype=np.float32)
    x[10:] = np.nan  # steps 10, 11, ... are bad
    kw = dict(data=x, batch_size=1, shuffle=False, optimizer=optax.adam(0.1), key=0, progress=False, chunk=4)
    with pytest.warns(RuntimeWarning, match="stopped at step 13 after 3 consecutive"):
        stopped = fit(fit_to_data, {"w": jnp.zeros(())}, steps=16, max_bad_steps=3, **kw)
    good = fit(fit_to_data, {"w": jnp.zeros(())}, steps=10, **kw)
    assert stopped.stopped == "non-finite" and stopped.step == 13 and stopped.skipped == 3
    assert leaves_equal(stopped.params, good.params) and leaves_equal(stopped.opt_state, good.opt_state)
    assert np.array_equal(stopped.history["objective"][:10], good.history["objective"])
    assert stopped.history["skipped"][10:].all()


def _resume_setup(tmp_path):
    iwae = O.iwae(model, guide, 8)
    return dict(
        data=X, batch_size=6, optimizer=optax.adam(optax.exponential_decay(0.05, 50, 0.1)), steps=50,
        key=jax.random.key(7), evaluate={"iwae": (iwae, X)}, eval_every=10, checkpoint_every=10,
        checkpoint=tmp_path / "run" / "ckpt.npz", progress=False,
    )


def test_resume_after_interruption_is_bit_identical(tmp_path):
    kw = _resume_setup(tmp_path)
    reference = fit(ELBO, INIT, **{**kw, "checkpoint": tmp_path / "ref.npz"}, chunk=7)

    # interrupt: an evaluation callback raises KeyboardInterrupt at step 30; the state after step 30 is saved
    calls = []

    def interrupting(params, key):
        calls.append(1)
        if len(calls) == 4:  # evaluations at steps 0, 10, 20, then 30
            raise KeyboardInterrupt
        return ELBO.estimate(key, params, X)

    with pytest.raises(KeyboardInterrupt) as info:
        fit(ELBO, INIT, **{**kw, "evaluate": {"iwae": kw["evaluate"]["iwae"], "elbo": interrupting}}, chunk=7)
    assert "resume=" in "".join(getattr(info.value, "__notes__", []))
    part = load_tree_meta(kw["checkpoint"])
    assert part["step"] == 30

    # continue with different chunk boundaries; evaluation "elbo" at step 30 was not recorded and is redone
    resumed = fit(ELBO, INIT, **{**kw, "evaluate": {"iwae": kw["evaluate"]["iwae"],
                                                       "elbo": lambda p, k: ELBO.estimate(k, p, X)}},
                  resume=kw["checkpoint"], chunk=4)
    full = fit(ELBO, INIT, **{**kw, "checkpoint": tmp_path / "ref2.npz",
                              "evaluate": {"iwae": kw["evaluate"]["iwae"],
                                           "elbo": lambda p, k: ELBO.estimate(k, p, X)}}, chunk=7)
    assert results_equal(resumed, full)
    assert leaves_equal(full.params, reference.params)
    assert np.array_equal(full.evaluations["iwae"], reference.evaluations["iwae"])
    assert np.array_equal(resumed.evaluations["step"], [0, 10, 20, 30, 40, 50])

    # a run that simply ended at step 20, resumed to 50 (resume=True: continue from checkpoint= when present)
    short = fit(ELBO, INIT, **{**kw, "steps": 20, "checkpoint": tmp_path / "short.npz"}, chunk=7)
    assert short.step == 20
    continued = fit(ELBO, INIT, **{**kw, "checkpoint": tmp_path / "short.npz"}, resume=True, chunk=7)
    assert results_equal(continued, reference)
    # resuming a finished run does nothing and returns the same result
    again = fit(ELBO, INIT, **{**kw, "checkpoint": tmp_path / "short.npz"}, resume=True, chunk=7)
    assert results_equal(again, reference)


def load_tree_meta(path):
    from pplvi.train.checkpoint import read_npz

    meta, _ = read_npz(path)
    return meta


def test_resume_with_a_loader_and_an_equinox_module(tmp_path):
    mlp = eqx.nn.MLP(2, 1, 8, 1, activation=jnp.tanh, key=jax.random.key(0))
    rng = np.random.default_rng(0)
    batches = [(rng.normal(size=(5, 2)).astype(np.float32), rng.normal(size=(5,)).astype(np.float32))
               for _ in range(3)]

    @pplvi.objective
    def noisy_fit(net, x, y):
        eps = pplvi.sample("eps", nd.Normal(jnp.zeros(y.shape), 0.1).to_event(1))
        return -jnp.mean((jax.vmap(net)(x)[:, 0] + eps - y) ** 2)

    kw = dict(data=batches, optimizer=optax.adam(1e-2), key=5, progress=False, chunk=3,
              checkpoint=tmp_path / "c.npz")
    full = fit(noisy_fit, mlp, steps=11, **kw)
    fit(noisy_fit, mlp, steps=7, **kw)
    resumed = fit(noisy_fit, mlp, steps=11, resume=True, **kw)
    assert results_equal(full, resumed)
    assert resumed.params.activation is mlp.activation


def test_checkpoint_and_resume_errors(tmp_path):
    path = tmp_path / "c.npz"
    kw = dict(data=X, optimizer=optax.adam(0.01), key=0, progress=False, checkpoint=path)
    fit(ELBO, INIT, steps=3, **kw)
    with pytest.raises(PPLVIError, match="structure"):
        fit(ELBO, {"loc": 0.0, "log_scale": 0.0, "extra": 1.0}, steps=5, resume=path, **kw)
    with pytest.raises(PPLVIError, match="was saved as float32\\[\\] but is float32\\[2\\]"):
        fit(ELBO, {"loc": jnp.zeros(2), "log_scale": 0.0}, steps=5, resume=path, **kw)
    with pytest.raises(PPLVIError, match="different key"):
        fit(ELBO, INIT, steps=5, resume=path, **{**kw, "key": 1})
    with pytest.raises(PPLVIError, match="data does not match"):
        fit(ELBO, INIT, steps=5, resume=path, **{**kw, "data": X[:10]})
    with pytest.raises(PPLVIError, match="beyond steps=2"):
        fit(ELBO, INIT, steps=2, resume=path, **kw)
    with pytest.raises(DataError, match="no checkpoint"):
        fit(ELBO, INIT, steps=5, resume=tmp_path / "missing.npz", **kw)
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(DataError, match="not a readable"):
        fit(ELBO, INIT, steps=5, resume=tmp_path / "junk.npz", **kw)
    with pytest.raises(PPLVIError, match="is a folder"):
        fit(ELBO, INIT, steps=5, **{**kw, "checkpoint": tmp_path})
    (tmp_path / "file").write_text("")
    with pytest.raises(PPLVIError, match="cannot write"):
        fit(ELBO, INIT, steps=5, **{**kw, "checkpoint": tmp_path / "file" / "c.npz"})


def test_writes_are_atomic(tmp_path, monkeypatch):
    path = tmp_path / "params.npz"
    first = {"a": jnp.arange(3.0), "b": jnp.ones((2, 2), jnp.int32)}
    save_tree(path, first)

    def broken_savez(f, **arrays):
        f.write(b"PK\x03\x04 partial")  # some bytes reach the file, then the disk fills up
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(PPLVIError, match="No space left"):
        save_tree(path, {"a": jnp.zeros(3), "b": jnp.zeros((2, 2), jnp.int32)})
    assert sorted(os.listdir(tmp_path)) == ["params.npz"]  # no temporary file left behind
    monkeypatch.undo()
    assert leaves_equal(load_tree(path, first), first)  # the previous file is intact

    # the same through fit: a failing final checkpoint leaves no partial file
    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(PPLVIError, match="cannot write the checkpoint"):
        fit(ELBO, INIT, data=X, optimizer=optax.adam(0.01), steps=3, key=0, progress=False,
            checkpoint=tmp_path / "ckpt.npz")
    assert sorted(os.listdir(tmp_path)) == ["params.npz"]


def test_history_files(tmp_path):
    paths = [tmp_path / "h.csv", tmp_path / "out" / "h.json"]
    r = fit(ELBO, INIT, data=X, optimizer=optax.adam(0.05), steps=12, key=0, progress=False, chunk=5,
            evaluate=lambda p, k: {"elbo": ELBO.estimate(k, p, X), "loc": p["loc"]}, eval_every=5,
            history_path=paths)
    assert np.array_equal(r.evaluations["step"], [0, 5, 10, 12])
    with open(paths[0]) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["step", "objective", "skipped", "elbo", "loc"]
    assert [int(row["step"]) for row in rows] == list(range(13))  # step 12: the evaluation after the last update
    assert np.array_equal([float(row["objective"]) for row in rows[:12]], r.history["objective"])
    assert rows[12]["objective"] == "" and rows[3]["elbo"] == "" and float(rows[10]["loc"]) == r.evaluations["loc"][2]
    doc = json.loads(paths[1].read_text())
    assert doc["steps"] == 12 and doc["skipped"] == 0 and doc["stopped"] is None
    assert np.array_equal(doc["history"]["objective"], r.history["objective"])
    assert doc["evaluations"]["step"] == [0, 5, 10, 12]
    with pytest.raises(PPLVIError, match=".csv or .json"):
        fit(ELBO, INIT, data=X, optimizer=optax.adam(0.05), steps=1, key=0, history_path=tmp_path / "h.txt")


def test_argument_errors():
    kw = dict(optimizer=optax.adam(0.01), steps=2, key=0, progress=False)
    with pytest.raises(ObjectiveError, match="optax.GradientTransformation"):
        fit(ELBO, INIT, data=X, **{**kw, "optimizer": optax.adam})
    with pytest.raises(ObjectiveError, match="pplvi objective"):
        fit(lambda p, x: 0.0, INIT, data=X, **kw)
    with pytest.raises(ObjectiveError, match="steps must be"):
        fit(ELBO, INIT, data=X, **{**kw, "steps": -1})
    with pytest.raises(ObjectiveError, match="key must be"):
        fit(ELBO, INIT, data=X, **{**kw, "key": "seed"})
    with pytest.raises(PPLVIError, match="larger than the data"):
        fit(ELBO, INIT, data=X, batch_size=50, **kw)
    with pytest.raises(PPLVIError, match="same leading length"):
        fit(visits, {"w": jnp.zeros(3)}, data=(np.arange(3), np.arange(4)), batch_size=2, **kw)
    with pytest.raises(PPLVIError, match="last_batch"):
        fit(ELBO, INIT, data=X, batch_size=2, last_batch="keep", **kw)
    with pytest.raises(ObjectiveError, match="nothing to train"):
        fit(visits, {"w": jnp.zeros(3, jnp.int32)}, data=np.arange(3), **kw)
    with pytest.raises(ObjectiveError, match="needs skip_nonfinite"):
        fit(ELBO, INIT, data=X, max_bad_steps=2, skip_nonfinite=False, **kw)
    with pytest.raises(PPLVIError, match="same structure"):
        fit(visits, {"w": jnp.zeros(3)}, data=[np.array([0, 1]), np.array([[0, 1]])], **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean run warns about nothing
        assert fit(ELBO, INIT, data=X, **kw).step == 2


def _slow_evaluation(params, key):
    time.sleep(0.05)  # slows the child down so that the signal arrives mid-run
    print("evaluated", flush=True)
    return ELBO.estimate(key, params, X)


def _sigint_run_kwargs(path):
    return dict(data=X, batch_size=6, optimizer=SIGINT_OPT, steps=3000, key=11, chunk=16, eval_every=20,
                checkpoint=path, checkpoint_every=500, progress=False)


SIGINT_OPT = optax.adam(optax.exponential_decay(0.05, 3000, 0.1))


def _sigint_child(path):  # runs in a child process (see the test below)
    # a process started in the background inherits SIGINT as ignored, and Python then keeps it ignored: install
    # Python's Ctrl-C handler so the child sees the interrupt however the test run was launched
    signal.signal(signal.SIGINT, signal.default_int_handler)
    fit(ELBO, INIT, evaluate={"elbo": _slow_evaluation}, **_sigint_run_kwargs(path))


def test_ctrl_c_in_another_process_then_resume_is_bit_identical(tmp_path):
    """A real interruption: SIGINT to a child process mid-run. fit saves the state after the last completed chunk;
    resuming here (another process, so a fresh compilation) equals an uninterrupted run bit for bit."""
    path = tmp_path / "ckpt.npz"
    root = Path(__file__).resolve().parents[2]
    code = f"import sys; sys.path.insert(0, {str(root)!r}); from tests.train.test_fit import _sigint_child; " \
           f"_sigint_child({str(path)!r})"
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(3):  # a few evaluations (20 steps each) have run
            assert child.stdout.readline().startswith("evaluated"), child.stderr.read()
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=60)
    finally:
        child.kill()
    assert "KeyboardInterrupt" in err and "continue with resume=" in err, err
    saved = load_tree_meta(path)
    assert 40 <= saved["step"] < 3000

    evaluate = {"elbo": lambda p, k: ELBO.estimate(k, p, X)}
    resumed = fit(ELBO, INIT, evaluate=evaluate, resume=path, **_sigint_run_kwargs(path))
    full = fit(ELBO, INIT, evaluate=evaluate, **_sigint_run_kwargs(tmp_path / "full.npz"))
    assert results_equal(resumed, full)


def test_a_run_ending_on_its_last_allowed_bad_step_reports_the_stop():
    x = np.array([1.0, 2.0, np.nan, np.nan], np.float32)
    with pytest.warns(RuntimeWarning, match="stopped at step 4 after 2 consecutive"):
        r = fit(fit_to_data, {"w": jnp.zeros(())}, data=x, batch_size=1, shuffle=False, optimizer=optax.sgd(0.1),
                steps=4, key=0, max_bad_steps=2, progress=False)
    assert r.stopped == "non-finite" and r.step == 4 and r.skipped == 2


def test_a_data_argument_mismatch_is_explained():
    with pytest.raises(ObjectiveError, match=r"called as fit_to_data\(params, <data>, <data>\).*2 data argument"):
        fit(fit_to_data, {"w": jnp.zeros(())}, data=(X, X), optimizer=optax.sgd(0.1), steps=1, key=0,
            progress=False)
    with pytest.raises(ObjectiveError, match=r"called as fit_to_data\(params\).*missing"):
        fit(fit_to_data, {"w": jnp.zeros(())}, optimizer=optax.sgd(0.1), steps=1, key=0, progress=False)


def test_extra_args_optimizers_see_the_loss():
    """optax.contrib.reduce_on_plateau reads value= (the loss, minus the objective): a plateau lowers its scale."""
    opt = optax.chain(optax.sgd(0.1), optax.contrib.reduce_on_plateau(patience=3, factor=0.5, cooldown=0))
    r = fit(fit_to_data, {"w": jnp.zeros(())}, data=np.ones(3, np.float32), optimizer=opt, steps=100, key=0,
            progress=False)
    assert float(r.opt_state[1].scale) < 1.0
    assert abs(float(r.params["w"]) - 1.0) < 1e-3
