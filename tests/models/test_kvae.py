"""The Koopman VAE (pplvi.models.kvae): fast versions of its checks.

* The least-squares Koopman operator recovers the eigenvalues of a known linear system; the prediction error and
  the spectral penalty vanish where they should and are differentiable.
* TimeGAN's data: shapes, [0, 1] range, irregular masks.
* A few optimization steps of the regular (bidirectional GRU) and irregular (ODE-RNN) variants raise the objective.
* The discriminative and predictive scores separate obviously different data.
* Malformed data and missing files raise :class:`pplvi.DataError` naming what and where.

The trained-model scores (sines, stocks, energy, irregular sines) are ``python -m pplvi.models.kvae reproduce``.
"""

from __future__ import annotations

import ast
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pplvi
from pplvi.models import kvae as K

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _timegan_available() -> bool:
    try:
        return (pplvi.data.data_dir() / "timegan").is_dir()
    except pplvi.DataError:
        return False


needs_timegan = pytest.mark.skipif(not _timegan_available(), reason="shared/data not found (set PPLVI_DATA)")


def test_kvae_imports_only_the_public_language():
    allowed = ("pplvi", "pplvi.objectives", "pplvi.data", "pplvi.models", "equinox", "optax", "numpyro.distributions",
               "jax", "numpy", "diffrax", "__future__")
    stdlib = {"argparse", "datetime", "json", "os", "platform", "sys", "time", "pathlib"}
    for path in (ROOT / "pplvi" / "models" / "kvae").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                ok = name.split(".")[0] in stdlib or any(name == a or name.startswith(a + ".") for a in allowed)
                assert ok and not name.startswith("pplvi.core") and "._" not in name, (path.name, name)


# ---------------------------------------------------------------------------------------------------------------
# The Koopman operator
# ---------------------------------------------------------------------------------------------------------------
def _known_system(seed=0):
    """A 6x6 real matrix with eigenvalues 0.97 e^{+-0.3i}, 0.8 e^{+-1.2i}, 0.6, -0.4 in a random basis."""
    def rotation(r, theta):
        return r * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])

    block = np.zeros((6, 6))
    block[:2, :2], block[2:4, 2:4] = rotation(0.97, 0.3), rotation(0.8, 1.2)
    block[4, 4], block[5, 5] = 0.6, -0.4
    basis = np.random.default_rng(seed).normal(size=(6, 6))
    A = np.linalg.solve(basis, block @ basis)
    expected = np.array([0.97 * np.exp(0.3j), 0.97 * np.exp(-0.3j), 0.8 * np.exp(1.2j), 0.8 * np.exp(-1.2j),
                         0.6, -0.4])
    return A, expected


def _match(found, expected):
    """Max distance between two sets of eigenvalues (each expected value matched to its nearest found one)."""
    return max(np.min(np.abs(np.asarray(found) - e)) for e in expected)


def test_least_squares_recovers_the_eigenvalues_of_a_known_linear_system():
    A, expected = _known_system()
    z = K.linear_system_latents(jax.random.key(0), jnp.asarray(A, jnp.float32), n=16, length=24)
    fitted = K.koopman_operator(z)
    assert _match(K.eigenvalues(fitted), expected) < 1e-3
    np.testing.assert_allclose(np.asarray(fitted), A, atol=2e-3)
    assert float(K.prediction_error(z, fitted, steps=3)) < 1e-5  # the fit predicts several steps exactly
    # with process noise the estimate is consistent: error shrinks as the data grows (here 512 trajectories)
    noisy = K.linear_system_latents(jax.random.key(1), jnp.asarray(A, jnp.float32), n=512, length=24, noise=0.05)
    assert _match(K.eigenvalues(K.koopman_operator(noisy)), expected) < 0.02
    # a wrong system is not "recovered": the check can fail
    other, _ = _known_system(seed=1)
    assert _match(K.eigenvalues(jnp.asarray(other * 0.5, jnp.float32)), expected) > 0.1


def test_koopman_terms_are_differentiable_and_penalize_the_right_things():
    A, _ = _known_system()
    z = K.linear_system_latents(jax.random.key(2), jnp.asarray(A, jnp.float32), n=8, length=12)
    bent = z + 0.3 * jnp.sin(3.0 * z)  # a nonlinear image: no linear map fits it exactly
    err = jax.jit(lambda x: K.prediction_error(x, K.koopman_operator(x), steps=2))
    assert float(err(bent)) > 100 * float(err(z))
    grad = jax.grad(err)(bent)
    assert grad.shape == bent.shape and bool(jnp.all(jnp.isfinite(grad))) and float(jnp.abs(grad).max()) > 0
    # the spectral penalty is zero for modes on the circle and pulls others toward it
    on_circle = jnp.asarray(np.diag([1.0, -1.0, 0.3]), jnp.float32)
    assert float(K.spectral_penalty(on_circle, 2)) < 1e-10
    inside = jnp.asarray(np.diag([0.9, 0.5, 0.3]), jnp.float32)
    assert float(K.spectral_penalty(inside, 2)) == pytest.approx(0.1**2 + 0.5**2, rel=1e-4)
    g = jax.grad(lambda a: K.spectral_penalty(a, 2))(inside)
    assert float(g[0, 0]) < 0 and float(g[1, 1]) < 0 and abs(float(g[2, 2])) < 1e-6  # descent grows the two modes
    with pytest.raises(ValueError, match="steps"):
        K.prediction_error(z, K.koopman_operator(z), steps=12)


# ---------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------
@needs_timegan
@pytest.mark.parametrize("name,features", [("stocks", 6), ("energy", 28)])
def test_timegan_windows(name, features):
    x = K.load_sequences(name)
    rows = {"stocks": 3685, "energy": 19735}[name]
    assert x.shape == (rows - 24, 24, features) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0
    np.testing.assert_allclose(x.reshape(-1, features).min(0), 0.0, atol=0.01)  # min-max scaled per column
    np.testing.assert_allclose(x.reshape(-1, features).max(0), 1.0, atol=0.01)
    assert np.array_equal(x[:5], K.load_sequences(name, n=5))  # the shuffle is seeded
    assert not np.array_equal(x[:5], K.load_sequences(name, n=5, seed=1))


def test_sines_and_irregular_masks():
    x = K.load_sequences("sines", n=64, seed=3)
    assert x.shape == (64, 24, 5) and x.min() >= 0 and x.max() <= 1
    mask = K.drop_time_points(64, 24, 0.3, seed=0)
    assert mask.shape == (64, 24) and np.all(mask.sum(1) == 24 - round(0.3 * 24))
    assert len({tuple(row) for row in mask}) > 50  # chosen per sequence
    missing = K.with_missing(x, mask)
    assert np.all(np.isnan(missing[mask == 0])) and np.array_equal(missing[mask == 1], x[mask == 1])
    with pytest.raises(ValueError, match="rate"):
        K.drop_time_points(4, 24, 1.0)


# ---------------------------------------------------------------------------------------------------------------
# The model and a few optimization steps
# ---------------------------------------------------------------------------------------------------------------
def test_model_guide_shapes_and_masked_likelihood():
    kvae = K.KoopmanVAE.init(jax.random.key(0), 3, latent=4, hidden=8)
    x = jnp.asarray(K.load_sequences("sines", n=1)[0, :, :3])
    mask = jnp.ones(24).at[5].set(0.0)
    q = K.guide.simulate(jax.random.key(1), kvae, x, mask)
    assert q.choices["z/t"].shape == (24, 4)
    nan_x = x.at[5].set(jnp.nan)  # a missing value is never read
    lp = K.model.assess({"z/t": q.choices["z/t"]}, kvae, nan_x, mask)
    lp_full = K.model.assess({"z/t": q.choices["z/t"]}, kvae, x, jnp.ones(24))
    assert jnp.isfinite(lp) and float(lp) != pytest.approx(float(lp_full))


@pytest.mark.parametrize("encoder,missing", [("gru", 0.0), ("odernn", 0.5)])
def test_a_few_steps_raise_the_objective(encoder, missing):
    x = K.load_sequences("sines", n=256, seed=1)
    mask = K.drop_time_points(len(x), 24, missing, seed=2) if missing else None
    data = K.with_missing(x, mask) if missing else x
    kvae = K.KoopmanVAE.init(jax.random.key(0), 5, latent=4, hidden=12, encoder=encoder)
    spectral = {"w_spectral": 0.1, "spectral_modes": 2} if encoder == "gru" else {}
    result = K.train(kvae, data, mask, steps=30, key=1, batch_size=32, learning_rate=5e-3, progress=False,
                     w_pred=1.0, **spectral)
    h = np.asarray(result.history["objective"])
    assert result.skipped == 0 and np.all(np.isfinite(h))
    assert h[-5:].mean() > h[:5].mean() + 50  # starts near -1500 nats per sequence
    generated = np.asarray(K.generate(result.params, jax.random.key(4), 8, 24))
    assert generated.shape == (8, 24, 5) and np.all(np.isfinite(generated))


# ---------------------------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------------------------
def test_scores_separate_obviously_different_data():
    real = K.load_sequences("sines", n=800, seed=0)
    noise = np.random.default_rng(1).random(real.shape).astype(np.float32)
    assert K.discriminative_score(real, noise, steps=300) > 0.3  # noise is easy to tell from sines
    on_real = K.predictive_score(real[:400], real[:400], steps=300)
    on_noise = K.predictive_score(noise[:400], real[:400], steps=300)
    assert math.isfinite(on_real) and math.isfinite(on_noise) and 0 < on_real < on_noise


# ---------------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------------
def test_malformed_data_raises_a_data_error_naming_what_and_where():
    x = K.load_sequences("sines", n=4)
    bad = x.copy()
    bad[2, 7, 1] = np.nan
    with pytest.raises(pplvi.DataError, match=r"x\[2, 7, 1\] is nan"):
        K.check_sequences(bad)
    mask = np.ones((4, 24), np.float32)
    mask[2, 7] = 0
    assert K.check_sequences(bad, mask)[0].shape == (4, 24, 5)  # missing where masked: fine
    with pytest.raises(pplvi.DataError, match=r"shape \(N, T, D\)"):
        K.check_sequences(x[0])
    with pytest.raises(pplvi.DataError, match="mask must have shape"):
        K.check_sequences(x, mask[:, :10])
    kvae = K.KoopmanVAE.init(jax.random.key(0), 5, latent=2, hidden=4)
    with pytest.raises(pplvi.DataError, match=r"x\[2, 7, 1\]"):
        K.train(kvae, bad, steps=1, key=0, progress=False)
    with pytest.raises(ValueError, match="w_pred"):
        K.kvae_objective(w_pred=-1.0)
    with pytest.raises(pplvi.DataError, match="same T and D"):
        K.discriminative_score(x, x[:, :10], steps=1)
    with pytest.raises(pplvi.DataError, match=r"generated\[2, 7, 1\] is nan"):
        K.discriminative_score(x, bad, steps=1)


def test_missing_data_file_raises_a_data_error_naming_the_path(tmp_path, monkeypatch):
    monkeypatch.setenv("PPLVI_DATA", str(tmp_path))
    with pytest.raises(pplvi.DataError, match="timegan/stock_data.csv") as info:
        K.load_sequences("stocks")
    assert str(tmp_path) in str(info.value)


# ---------------------------------------------------------------------------------------------------------------
# The results contract and the docs page
# ---------------------------------------------------------------------------------------------------------------
def test_results_file_has_the_contract_keys():
    path = ROOT / "benchmarks" / "results" / "kvae.json"
    assert path.is_file(), "the committed results file is missing: rerun `make reproduce-kvae`"
    results = json.loads(path.read_text())
    assert {"jax_version", "cpu", "date"} <= set(results)
    page = (ROOT / "docs" / "models" / "kvae.md").read_text()
    for name in ("sines", "stocks", "energy", "sines_missing30", "sines_missing50", "sines_missing70"):
        row = results[name]
        assert {"discriminative", "predictive", "real_predictive", "paper_discriminative",
                "paper_predictive"} <= set(row), name
        assert 0 <= row["discriminative"] <= 0.5 and row["predictive"] > 0 and row["real_predictive"] > 0, name
        assert f"{row['discriminative']:.3f}" in page and f"{row['predictive']:.3f}" in page, name
