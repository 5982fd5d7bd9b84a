"""pplvi.diffusion.evaluation: the committed evaluators classify held-out images, and the distribution metrics behave
as metrics (small between two halves of the same data, large against a different distribution)."""

from __future__ import annotations

import numpy as np
import pytest

import pplvi
import pplvi.data
from pplvi import DataError, PPLVIError
from pplvi.diffusion import evaluation as E


@pytest.fixture(scope="module")
def mnist():
    x, y = pplvi.data.load_mnist("test")
    return E.load_evaluator("mnist"), x[:2000], y[:2000]


def test_mnist_evaluator_is_accurate_on_held_out_digits(mnist):
    ev, x, y = mnist
    # 2,000 test digits: the standard error of an accuracy near 0.98 is 0.003.
    assert ev.accuracy(x, y) > 0.97
    assert ev.predict(x[:5]).shape == (5, 10)
    assert ev.features(x[:5]).shape == (5, 64)
    assert ev.description["command"] == "python -m pplvi.diffusion.evaluation train mnist"


def test_fashion_evaluator_is_accurate_and_distinct():
    ev = E.load_evaluator("fashion_mnist")
    x, y = pplvi.data.load_fashion_mnist("test")
    assert ev.accuracy(x[:2000], y[:2000]) > 0.83  # committed test accuracy 0.864 on all 10,000


def test_frechet_separates_same_from_different_distributions(mnist):
    ev, x, y = mnist
    same = ev.frechet(x[:1000], x[1000:])
    ones_only = ev.frechet(x[:1000], x[1000:][y[1000:] == 1])
    noise = ev.frechet(x[:1000], np.random.default_rng(0).uniform(size=(1000, 28, 28)))
    assert 0.0 <= same < 0.1 * ones_only and ones_only < noise
    # exact on known Gaussians: W2^2 between N(0, I) and N(m, 4I) is |m|^2 + d (2 - 1)^2
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(200_000, 3)), 1.0 + 2.0 * rng.normal(size=(200_000, 3))
    assert E.frechet_distance(a, b) == pytest.approx(3.0 + 3.0, abs=0.05)


def test_precision_recall(mnist):
    ev, x, y = mnist
    p, r = ev.precision_recall(x[:1000], x[1000:], k=3)
    assert p > 0.8 and r > 0.8  # measured 0.88, 0.90: k = 3 balls around 1,000 points leave gaps
    # only ones: precise (they are real digits) but they cover few of the real digits
    p1, r1 = ev.precision_recall(x[:1000], x[1000:][y[1000:] == 1], k=3)
    assert p1 > 0.9 and r1 < 0.4


def test_saturation_counts_pixels_at_the_range_ends():
    img = np.full((2, 28, 28), 0.5)
    img[0, :14] = 0.0
    img[1, :7] = 1.0 - 1e-4
    assert E.saturation(img) == pytest.approx((14 + 7) / 56)
    assert E.saturation(np.full((1, 28, 28), 1.5)) == 1.0  # clipped first


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(PPLVIError, match="unknown dataset"):
        E.load_evaluator("cifar")
    with pytest.raises(DataError, match="python -m pplvi.diffusion.evaluation train mnist"):
        E.load_evaluator("mnist", tmp_path / "none.npz")
    ev = E.load_evaluator("mnist")
    with pytest.raises(DataError, match=r"\(N, 28, 28\)"):
        ev.predict(np.zeros((3, 8, 8)))
    with pytest.raises(DataError, match="more than k=3"):
        E.precision_recall_features(np.zeros((3, 2)), np.zeros((10, 2)))
