"""The offline dataset loaders: shapes, dtypes and facts stated in shared/data/README.md, and their errors."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

import pplvi
from pplvi import data
from pplvi.data import _store


def _available() -> bool:
    try:
        return (data.data_dir() / "mnist").is_dir()
    except pplvi.DataError:
        return False


needs_data = pytest.mark.skipif(not _available(), reason="shared/data not found (set PPLVI_DATA)")


@pytest.fixture(scope="module")
def mnist_train():
    return data.load_mnist("train")


@needs_data
def test_mnist_train_facts(mnist_train):
    x, y = mnist_train
    assert x.shape == (60000, 28, 28) and x.dtype == np.float32
    assert y.shape == (60000,) and y.dtype == np.int32
    assert list(y[:10]) == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert list(np.bincount(y)) == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert x.min() == 0.0 and x.max() == 1.0
    assert abs(x.mean() - 0.1307) < 1e-3 and abs(x.std() - 0.3081) < 1e-3


@needs_data
def test_mnist_test_static_binarization():
    x, y = data.load_mnist("test", binarize="static")
    assert x.shape == (10000, 28, 28) and x.dtype == np.float32
    assert list(y[:10]) == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert set(np.unique(x)) == {0.0, 1.0}
    gray, _ = data.load_mnist("test")
    np.testing.assert_array_equal(x, (gray > 0.5).astype(np.float32))


@needs_data
def test_fashion_mnist_subset():
    x, y = data.load_fashion_mnist("train")
    assert x.shape == (10000, 28, 28) and y.shape == (10000,) and y.dtype == np.int32
    xt, yt = data.load_fashion_mnist("test")
    assert xt.shape == (10000, 28, 28) and yt.shape == (10000,)
    assert 0.0 <= xt.min() and xt.max() <= 1.0
    assert set(np.unique(yt)) == set(range(10))


@needs_data
def test_digits():
    x, y = data.load_digits()
    assert x.shape == (1797, 8, 8) and x.dtype == np.float32 and y.dtype == np.int32
    assert x.min() == 0.0 and x.max() == 1.0
    assert list(y[:10]) == list(range(10))


@needs_data
@pytest.mark.parametrize("name, shape", [("stock", (3661, 24, 6)), ("energy", (19711, 24, 28))])
def test_timegan_windows(name, shape):
    w = data.load_timegan(name)
    assert w.shape == shape and w.dtype == np.float32
    assert w.min() >= 0.0 and w.max() <= 1.0
    assert w.min() < 1e-6 and w.max() > 1 - 1e-6


@needs_data
def test_timegan_preprocessing_matches_timegan():
    raw = data.load_timegan_raw("stock")
    assert raw.shape == (3685, 6)
    assert abs(raw[0, 0] - 49.68) < 0.01  # the 2004 IPO open, oldest row first
    w = data.load_timegan("stock", seq_len=24, shuffle=False)
    flipped = raw[::-1]
    scaled = (flipped - flipped.min(0)) / (flipped.max(0) - flipped.min(0) + 1e-7)
    np.testing.assert_allclose(w[0], scaled[:24], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(w[-1], scaled[-25:-1], rtol=1e-6, atol=1e-7)
    shuffled = data.load_timegan("stock", seed=1)
    assert sorted(map(bytes, shuffled)) == sorted(map(bytes, w))


def test_sines():
    s = data.sines(7, seq_len=24, dim=5, seed=3)
    assert s.shape == (7, 24, 5) and s.dtype == np.float32
    assert s.min() >= 0.0 and s.max() <= 1.0
    np.testing.assert_array_equal(s, data.sines(7, seq_len=24, dim=5, seed=3))
    import jax

    k = data.sines(4, seq_len=10, dim=2, key=jax.random.key(0))
    assert k.shape == (4, 10, 2) and 0.0 <= k.min() and k.max() <= 1.0


@needs_data
def test_omniglot():
    x, y = data.load_omniglot("small1")
    assert x.shape == (2720, 105, 105) and x.dtype == np.float32 and y.dtype == np.int32
    assert y.min() == 0 and y.max() == 135
    assert set(np.unique(x)) == {0.0, 1.0} and x.mean() < 0.2  # ink = 1 is the minority
    small, y2 = data.load_omniglot("small2", size=28)
    assert small.shape == (3120, 28, 28) and y2.max() == 155
    runs = data.load_omniglot_oneshot()
    assert runs["train_images"].shape == (20, 20, 105, 105) and runs["test_labels"].shape == (20, 20)


def test_missing_directory_raises_data_error(tmp_path, monkeypatch):
    missing = tmp_path / "no-such-data"
    monkeypatch.setenv("PPLVI_DATA", str(missing))
    with pytest.raises(pplvi.DataError) as info:
        data.load_mnist("test")
    message = str(info.value)
    assert str(missing) in message and "PPLVI_DATA" in message and "mnist/" in message
    assert isinstance(info.value, FileNotFoundError)


def test_corrupt_file_raises_data_error(tmp_path, monkeypatch):
    (tmp_path / "sklearn-digits").mkdir()
    with gzip.open(tmp_path / "sklearn-digits" / "digits.csv.gz", "wt") as f:
        f.write("0," * 64 + "0\n")
    monkeypatch.setenv("PPLVI_DATA", str(tmp_path))
    with pytest.raises(pplvi.DataError, match="sha256"):
        data.load_digits()


@needs_data
def test_checksum_is_verified_once(monkeypatch):
    data.load_digits()
    calls = []
    monkeypatch.setattr(_store.hashlib, "sha256", lambda *a: calls.append(a))
    data.load_digits()  # already verified in this process: no hashing
    assert calls == []


def test_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        data.load_mnist("validation")
    with pytest.raises(ValueError, match="binarize"):
        data.load_mnist("test", binarize="dynamic")
    with pytest.raises(ValueError, match="name"):
        data.load_timegan("sines")


def test_data_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("PPLVI_DATA", str(tmp_path))
    assert data.data_dir() == tmp_path.resolve()
    monkeypatch.delenv("PPLVI_DATA")
    monkeypatch.chdir(tmp_path)  # nothing above tmp_path: found from the package's location, if anywhere
    try:
        found = data.data_dir()
    except pplvi.DataError as e:
        assert "PPLVI_DATA" in str(e)
    else:
        assert found.parts[-2:] == ("shared", "data")
