"""The code shown to users in README.md and the documentation pages runs as written."""

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


def run_page(path) -> dict:
    """Run a documentation page's Python blocks in order, in one namespace, as a reader would."""
    namespace: dict = {}
    for block in python_blocks(path):
        exec(block, namespace)
    return namespace


def test_site_home_page_example_runs():
    grads = run_page("docs/index.md")["grads"]
    assert all(jnp.isfinite(g) for g in jax.tree_util.tree_leaves(grads))


def test_getting_started_runs_and_fits_the_posterior():
    ns = run_page("docs/getting-started.md")
    assert abs(float(ns["params"]["loc"]) - 5.8 / 6) < 0.15  # exact posterior N(sum(x) / 6, 1 / 6)
    assert abs(float(jnp.exp(ns["params"]["log_scale"])) - 6**-0.5) < 0.1
    assert jnp.isfinite(ns["bound"]) and all(jnp.isfinite(g) for g in jax.tree_util.tree_leaves(ns["grads"]))
    assert float(ns["stats"]["variance"]["logit"]) < 1e-8  # the last strategy is enum: exact


def test_concepts_examples_run():
    ns = run_page("docs/concepts.md")
    assert ns["trace"].choices["c"].shape == (3,)
    assert jnp.isfinite(ns["grads"]["phi"]).all() and jnp.isfinite(ns["value"])


def test_interop_examples_run():
    ns = run_page("docs/interop.md")
    assert jnp.isfinite(ns["value"]) and all(jnp.isfinite(g) for g in jax.tree_util.tree_leaves(ns["grads"]))


def test_fbm_sde_page_example_runs_and_raises_the_elbo():
    ns = run_page("docs/models/fbm_sde.md")
    assert ns["result"].history["objective"][-1] > ns["result"].history["objective"][0]
