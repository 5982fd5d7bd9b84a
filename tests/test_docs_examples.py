"""The code shown to users in README.md and docs/objectives.md runs as written."""

from __future__ import annotations

import pathlib
import re

import jax
import jax.numpy as jnp
import numpyro.distributions as dist

import pplvi

ROOT = pathlib.Path(__file__).resolve().parents[1]


def python_blocks(path):
    return re.findall(r"```python\n(.*?)```", (ROOT / path).read_text(), flags=re.S)


def test_readme_example_runs_and_gives_finite_gradients():
    namespace: dict = {}
    exec(python_blocks("README.md")[0], namespace)
    grads = namespace["grads"]
    assert set(grads) == {"loc", "log_scale"}
    assert all(jnp.isfinite(g) for g in jax.tree_util.tree_leaves(grads))


def test_write_your_own_objective_examples_run():
    @pplvi.gen
    def model(params, x):
        z = pplvi.sample("z", dist.Normal(0.0, 1.0))
        pplvi.sample("x", dist.Normal(z, 1.0), obs=x)

    @pplvi.gen
    def guide(params, x):
        pplvi.sample("z", dist.Normal(params["loc"], 1.0))

    namespace = {"pplvi": pplvi, "jnp": jnp, "model": model, "guide": guide, "key": jax.random.key(0),
                 "params": {"loc": jnp.array(0.1)}, "x": jnp.array(0.5)}
    for block in python_blocks("docs/objectives.md"):
        exec(block, namespace)
    value, grads = namespace["value"], namespace["grads"]
    assert jnp.isfinite(value) and jnp.isfinite(grads["loc"])
    assert jnp.isfinite(namespace["tempered_iwae"].estimate(jax.random.key(1), {"loc": jnp.array(0.1)}, 0.5))
