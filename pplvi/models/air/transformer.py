r"""The spatial transformer of AIR (Jaderberg et al. 2015; Eslami et al. 2016): an attention window of ``20 x 20``
pixels placed on the ``50 x 50`` canvas by a scale and a shift.

Coordinates are normalized to :math:`[-1, 1]` across the canvas and across the window (pixel centres at
:math:`(2i + 1)/n - 1`). A window point :math:`w` lands on the canvas at :math:`u = s\,w + t`, so the window covers
:math:`s \cdot 50` canvas pixels (an MNIST digit, 28 pixels, is :math:`s \approx 0.56`). The latent ``where`` is in
standard-normal units (the model's prior is :math:`\mathcal N(0, I)`) and :func:`geometry` maps it to the scale and
shift: :math:`s = 0.56\, e^{0.25\, z_0}`, :math:`t = 0.5\,(z_1, z_2)` (horizontal, vertical), which keeps
:math:`s > 0` for every value.

:func:`crop` reads a window out of a canvas (the inference network's attention) and :func:`place` writes one onto
the canvas (the decoder's inverse transform); both interpolate bilinearly with zeros outside and are differentiable
in the pixels and in ``where``. The transform has no rotation, so bilinear interpolation separates into two small
matrix products, :math:`R_y\, I\, R_x^\top` with :math:`R[i, k] = \max(0, 1 - |r_i - k|)` for the fractional source
index :math:`r_i` of output pixel :math:`i` — no gathers, so it compiles and runs fast.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

CANVAS = 50
WINDOW = 20
SCALE0, SCALE_SPREAD, SHIFT_SPREAD = 0.56, 0.25, 0.5


def geometry(where):
    """``(s, tx, ty)`` of the window for a ``where`` latent ``(3,)`` in standard-normal units."""
    return SCALE0 * jnp.exp(SCALE_SPREAD * where[0]), SHIFT_SPREAD * where[1], SHIFT_SPREAD * where[2]


def _centres(n: int):
    return (2.0 * jnp.arange(n) + 1.0) / n - 1.0


def _index(u, n: int):
    """Normalized coordinate -> fractional pixel index of an ``n``-pixel axis."""
    return ((u + 1.0) * n - 1.0) / 2.0


def _weights(index, n: int):
    """Bilinear interpolation weights ``(len(index), n)`` of fractional source indices on an ``n``-pixel axis."""
    return jax.nn.relu(1.0 - jnp.abs(index[:, None] - jnp.arange(n)[None, :]))


def crop(canvas, where, size: int = WINDOW):
    """The ``size x size`` window of ``canvas`` (``(H, W)``) that ``where`` points at."""
    s, tx, ty = geometry(where)
    w = _centres(size)
    rows = _weights(_index(s * w + ty, canvas.shape[0]), canvas.shape[0])
    cols = _weights(_index(s * w + tx, canvas.shape[1]), canvas.shape[1])
    return rows @ canvas @ cols.T


def place(window, where, size: int = CANVAS):
    """A ``size x size`` canvas holding ``window`` (``(n, n)``) where ``where`` puts it (zero elsewhere)."""
    s, tx, ty = geometry(where)
    u = _centres(size)
    n = window.shape[0]
    rows = _weights(_index((u - ty) / s, n), n)
    cols = _weights(_index((u - tx) / s, n), n)
    return rows @ window @ cols.T
