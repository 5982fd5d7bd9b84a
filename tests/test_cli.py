"""The ``pplvi`` command line: help, one-line errors with exit status 2, bench dispatch, a tiny demo run."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from pplvi import data
from pplvi.cli import main


def _one_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("pplvi: error: ")
    return err[0]


def test_help(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "demo" in out and "bench" in out
    assert main(["demo", "--help"]) == 0
    assert "--objective" in capsys.readouterr().out
    assert main(["bench", "--help"]) == 0


def test_bad_subcommand_is_one_line_exit_2(capsys):
    assert main(["frobnicate"]) == 2
    assert "frobnicate" in _one_error_line(capsys)


def test_no_subcommand(capsys):
    assert main([]) == 2
    _one_error_line(capsys)


BAD_DEMO_ARGS = [["demo", "--steps", "0"], ["demo", "--objective", "vimco"], ["demo", "--nope"]]


@pytest.mark.parametrize("argv", BAD_DEMO_ARGS)
def test_bad_demo_options(capsys, argv):
    assert main(argv) == 2
    assert _one_error_line(capsys).startswith("pplvi: error: demo: ")


def test_console_entry_point_exit_status():
    argv = [sys.executable, "-m", "pplvi.cli", "nosuchcommand"]
    proc = subprocess.run(argv, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("pplvi: error: ") and len(proc.stderr.strip().splitlines()) == 1


def test_bench_runs_suite_with_passthrough_args(tmp_path, monkeypatch, capsys):
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "echo.py").write_text(
        "import sys, pathlib\npathlib.Path('argv.txt').write_text(' '.join(sys.argv[1:]))\nsys.exit(3)\n"
    )
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "echo", "--quick", "--n", "2"]) == 3  # the suite's own exit status
    assert (tmp_path / "argv.txt").read_text() == "--quick --n 2"


def test_bench_missing_suite(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "no_such_suite"]) == 2
    assert "no_such_suite" in _one_error_line(capsys)


def test_demo_without_data_is_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PPLVI_DATA", str(tmp_path / "empty"))
    assert main(["demo", "--steps", "1", "--out", str(tmp_path / "out")]) == 2
    line = _one_error_line(capsys)
    assert "PPLVI_DATA" in line and str(tmp_path / "empty") in line


def _mnist_available():
    try:
        return (data.data_dir() / "mnist" / "t10k-images-idx3-ubyte.gz").is_file()
    except Exception:
        return False


@pytest.mark.skipif(not _mnist_available(), reason="MNIST not found (set PPLVI_DATA)")
def test_tiny_demo_writes_metrics_and_figures(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "--steps", "20", "--out", str(out), "--test-images", "20", "--chunk", "10"]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("test_elbo", "test_iwae_k1000", "steps", "seconds", "objective", "dataset"):
        assert key in metrics
    assert metrics["steps"] == 20 and metrics["dataset"].startswith("mnist")
    assert math.isfinite(metrics["test_elbo"]) and math.isfinite(metrics["test_iwae_k1000"])
    assert metrics["test_elbo"] < 0 and metrics["test_iwae_k1000"] < 0
    assert metrics["test_iwae_k1000"] > metrics["test_elbo"]  # IWAE-1000 is the tighter bound
    for name in ("loss_curve.png", "samples.png", "reconstructions.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(out / "metrics.json") in capsys.readouterr().out


def test_demo_particles_draw_independently():
    """IWAE needs K independent z's per image: under jax.vmap over particles every lane must draw its own z,
    otherwise the bound silently collapses to the ELBO."""
    import jax
    import jax.numpy as jnp

    import pplvi
    from pplvi.cli import VAE, log_weight

    @pplvi.objective
    def spread(vae, x):
        log_w = jax.vmap(lambda _: log_weight(vae, x))(jnp.arange(8))
        return jnp.std(log_w)

    vae = VAE(jax.random.key(0))
    assert float(spread.estimate(jax.random.key(1), vae, jnp.zeros(784))) > 1e-3


def test_train_vae_tiny_run_writes_metrics(tmp_path):
    rc = main(["train", "vae", "--steps", "10", "--batch", "10", "--latent", "5", "--eval-k", "5",
               "--test-images", "10", "--out", str(tmp_path)])
    assert rc == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["steps"] == 10 and np.isfinite(metrics["test_ll_iwae_k5"])
    assert (tmp_path / "history.csv").is_file()


def test_train_kvae_tiny_run_writes_scores(tmp_path):
    rc = main(["train", "kvae", "--dataset", "sines", "--steps", "5", "--batch", "16", "--test-images", "64",
               "--metric-steps", "5", "--out", str(tmp_path)])
    assert rc == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["dataset"] == "sines" and metrics["steps"] == 5
    assert 0 <= metrics["discriminative"] <= 0.5 and np.isfinite(metrics["predictive"])


def test_train_unknown_dataset_is_one_line_error(capsys):
    assert main(["train", "kvae", "--dataset", "nosuchdata"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown dataset" in err[0]


def test_train_unknown_model_is_one_line_error(capsys):
    assert main(["train", "nosuchmodel"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown model" in err[0]
