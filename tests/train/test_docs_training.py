"""docs/training.md runs as written, and what it says about its examples holds."""

from __future__ import annotations

import math
import pathlib
import re

import jax
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_training_page_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the page writes runs/...
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs/training.md").read_text(), flags=re.S)
    ns: dict = {}
    exec(blocks[0], ns)
    # the first fit is close to the exact posterior N(sum(x) / 21, 1 / 21) (tolerances: tests/train/test_fit.py)
    params, x = ns["result"].params, ns["x"]
    assert abs(float(params["loc"]) - x.sum() / 21) < 0.08
    assert abs(math.exp(float(params["log_scale"])) - 21**-0.5) < 0.04
    assert ns["result"].history["objective"][-100:].mean() > ns["result"].history["objective"][:10].mean()
    # the minibatch objective targets the posterior given all 1000 observations
    exec(blocks[1], ns)
    big = ns["big"]
    assert abs(float(ns["result"].params["loc"]) - big.sum() / 1001) < 0.05
    for block in blocks[2:]:
        exec(block, ns)
    assert np.array_equal(ns["result"].evaluations["step"], [0, 200, 400, 600])
    assert (tmp_path / "runs/first/history.csv").is_file() and (tmp_path / "runs/first/history.json").is_file()
    assert ns["part"].step == 400 and ns["rest"].step == 1000 and (tmp_path / "runs/minibatch/ckpt.npz").is_file()
    # the mesh section: a fit on a mesh (of this process's devices) matches the single-device fit
    assert isinstance(ns["sharded"].params["loc"].sharding, jax.sharding.NamedSharding)
    assert abs(float(ns["sharded"].params["loc"]) - float(ns["single"].params["loc"])) < 1e-4
    assert ns["particle_fit"].step == 100 and np.isfinite(ns["particle_fit"].history["objective"]).all()
