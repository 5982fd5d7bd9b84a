r"""Sequence data for PV-RNN, generated in code (Ahmadi & Tani, Neural Computation 2019, Sec. 3).

* A **probabilistic finite-state machine** (:class:`FSM`): every state emits a fixed prototype segment of ``S``
  steps; the next state is drawn from a Markov transition matrix. The default machine has a common segment ``C``
  followed by a branch ``a`` (probability 0.3) or ``b`` (0.7), then ``C`` again, so a sequence reads
  ``C a C b C b C a ...``. Observations are the concatenated prototypes plus i.i.d. Gaussian noise.
* A **linear-Gaussian state-space model** (:func:`linear_gaussian_sequences`) with its exact Kalman smoother
  (:func:`kalman_smoother`), the reference that error regression is checked against.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

import pplvi


class FSM(NamedTuple):
    """A probabilistic finite-state machine over prototype segments: ``prototypes`` ``(K, S, D)``,
    ``transitions`` ``(K, K)`` (row ``i``: the distribution of the state after state ``i``), ``start`` (the first
    state)."""

    prototypes: np.ndarray
    transitions: np.ndarray
    start: int = 0

    @property
    def segment(self) -> int:
        return self.prototypes.shape[1]


def branching_fsm(p: float = 0.3, segment: int = 10) -> FSM:
    """The default machine: states ``C`` (0), ``a`` (1), ``b`` (2); ``C -> a`` with probability ``p``, ``C -> b``
    with ``1 - p``, ``a -> C`` and ``b -> C`` surely. Segments are closed 2-D loops of ``segment`` steps that start
    and end at the origin, so the concatenation is continuous."""
    if not 0.0 <= p <= 1.0:
        raise pplvi.DataError(f"branching probability p={p} must lie in [0, 1]")
    if segment < 2:
        raise pplvi.DataError(f"segment={segment} must be at least 2 steps")
    s = np.arange(segment) / segment
    c = np.stack([0.8 * np.sin(2 * np.pi * s), 0.4 * (1 - np.cos(2 * np.pi * s))], -1)
    a = np.stack([-0.8 * np.sin(2 * np.pi * s), -0.4 * (1 - np.cos(2 * np.pi * s))], -1)
    b = np.stack([0.4 * np.sin(4 * np.pi * s), -0.7 * np.sin(np.pi * s)], -1)
    transitions = np.array([[0.0, p, 1 - p], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    return FSM(np.stack([c, a, b]).astype(np.float32), transitions, 0)


def check_fsm(fsm: FSM) -> FSM:
    """Validate a machine; raises :class:`pplvi.DataError` naming the first problem."""
    protos, trans = np.asarray(fsm.prototypes), np.asarray(fsm.transitions, np.float64)
    if protos.ndim != 3:
        raise pplvi.DataError(f"FSM prototypes must have shape (K, S, D), got {protos.shape}")
    k = protos.shape[0]
    if trans.shape != (k, k):
        raise pplvi.DataError(f"FSM transitions must have shape ({k}, {k}) for {k} prototypes, got {trans.shape}")
    if np.any(trans < 0) or not np.allclose(trans.sum(1), 1.0, atol=1e-6):
        row = int(np.flatnonzero((trans < 0).any(1) | ~np.isclose(trans.sum(1), 1.0, atol=1e-6))[0])
        raise pplvi.DataError(f"FSM transitions row {row} must be a probability vector, got {trans[row].tolist()}")
    if not 0 <= fsm.start < k:
        raise pplvi.DataError(f"FSM start state {fsm.start} is not one of 0..{k - 1}")
    return fsm


def fsm_sequences(seed: int, n: int, length: int, fsm: FSM | None = None, *, noise: float = 0.05):
    """``n`` sequences of ``length`` steps from ``fsm`` (default :func:`branching_fsm`) plus Gaussian noise of
    standard deviation ``noise``. Returns ``(x, states)``: ``x`` ``(n, length, D)`` float32 and the emitted states
    ``(n, ceil(length / S))``."""
    fsm = check_fsm(fsm or branching_fsm())
    if n < 1 or length < 1:
        raise pplvi.DataError(f"need n >= 1 and length >= 1 sequences/steps, got n={n}, length={length}")
    if noise < 0:
        raise pplvi.DataError(f"noise={noise} must be >= 0")
    rng = np.random.default_rng(seed)
    segments = -(-length // fsm.segment)
    states = np.empty((n, segments), np.int64)
    states[:, 0] = fsm.start
    cumulative = np.cumsum(fsm.transitions, 1)
    for j in range(1, segments):
        u = rng.random(n)
        states[:, j] = np.minimum((u[:, None] > cumulative[states[:, j - 1]]).sum(1), len(cumulative) - 1)
    x = np.asarray(fsm.prototypes)[states].reshape(n, segments * fsm.segment, -1)[:, :length]
    x = x + noise * rng.normal(size=x.shape)
    return x.astype(np.float32), states


def classify_segments(x, fsm: FSM) -> np.ndarray:
    """The nearest prototype (squared distance) of every whole segment of ``x`` ``(n, T, D)``: ``(n, T // S)``."""
    fsm = check_fsm(fsm)
    x = np.asarray(x, np.float64)
    segments = x.shape[1] // fsm.segment
    cut = x[:, :segments * fsm.segment].reshape(x.shape[0], segments, fsm.segment, -1)
    dist = ((cut[:, :, None] - np.asarray(fsm.prototypes)[None, None]) ** 2).sum((-1, -2))
    return dist.argmin(-1)


def transition_frequencies(states, k: int) -> np.ndarray:
    """Empirical transition matrix ``(k, k)`` of state sequences ``(n, J)`` (rows never left: NaN)."""
    states = np.asarray(states)
    counts = np.zeros((k, k))
    np.add.at(counts, (states[:, :-1].ravel(), states[:, 1:].ravel()), 1)
    with np.errstate(invalid="ignore"):
        return counts / counts.sum(1, keepdims=True)


def linear_gaussian_sequences(seed: int, n: int, length: int, *, a: float = 0.95, q: float = 0.3, r: float = 0.3,
                              m0: float = 0.0, p0: float = 1.0):
    r"""``n`` sequences of the scalar state-space model :math:`s_1 \sim \mathcal N(m_0, p_0)`,
    :math:`s_t = a s_{t-1} + \mathcal N(0, q^2)`, :math:`x_t = s_t + \mathcal N(0, r^2)`.
    Returns ``(x, s)``, each ``(n, length, 1)`` float32."""
    if not (q > 0 and r > 0 and p0 > 0):
        raise pplvi.DataError(f"need q, r, p0 > 0, got q={q}, r={r}, p0={p0}")
    rng = np.random.default_rng(seed)
    s = np.empty((n, length))
    s[:, 0] = m0 + np.sqrt(p0) * rng.normal(size=n)
    for t in range(1, length):
        s[:, t] = a * s[:, t - 1] + q * rng.normal(size=n)
    x = s + r * rng.normal(size=s.shape)
    return x[..., None].astype(np.float32), s[..., None].astype(np.float32)


def kalman_smoother(x, *, a: float = 0.95, q: float = 0.3, r: float = 0.3, m0: float = 0.0, p0: float = 1.0):
    """The Rauch-Tung-Striebel smoother of :func:`linear_gaussian_sequences`' model: posterior means
    :math:`E[s_t \\mid x_{1:T}]` ``(n, T, 1)`` for observations ``x`` ``(n, T, 1)``."""
    x = np.asarray(x, np.float64)[..., 0]
    n, length = x.shape
    mf, pf = np.empty((n, length)), np.empty(length)
    m, p = np.full(n, m0), p0
    for t in range(length):
        if t:
            m, p = a * m, a * a * p + q * q
        gain = p / (p + r * r)
        m, p = m + gain * (x[:, t] - m), (1 - gain) * p
        mf[:, t], pf[t] = m, p
    ms = mf.copy()
    for t in range(length - 2, -1, -1):
        g = pf[t] * a / (a * a * pf[t] + q * q)
        ms[:, t] = mf[:, t] + g * (ms[:, t + 1] - a * mf[:, t])
    return ms[..., None].astype(np.float32)


def check_sequences(x, *, name: str = "x") -> np.ndarray:
    """Validate sequences ``(N, T, D)``, finite, ``T >= 2``; returns float32, or raises :class:`pplvi.DataError`
    naming the argument and the first offending index."""
    x = np.asarray(x, np.float32)
    if x.ndim != 3 or min(x.shape) < 1:
        raise pplvi.DataError(f"{name} must be sequences of shape (N, T, D), got shape {x.shape}")
    if x.shape[1] < 2:
        raise pplvi.DataError(f"{name} has sequences of {x.shape[1]} step; PV-RNN needs T >= 2")
    bad = np.argwhere(~np.isfinite(x))
    if bad.size:
        i = tuple(int(v) for v in bad[0])
        raise pplvi.DataError(f"{name}[{i[0]}, {i[1]}, {i[2]}] is {x[i]}; sequences must be finite")
    return x


# --- Omniglot pen strokes ---------------------------------------------------------------------------------------------

def resample_stroke(points, spacing: float) -> np.ndarray:
    r"""Resample one pen stroke ``points`` ``(P, 2)`` at equal arc length: the polyline's length :math:`L` is cut
    into :math:`m = \max(1, \mathrm{round}(L / \text{spacing}))` equal pieces and the :math:`m + 1` points at arc
    lengths :math:`kL/m` are returned (linear interpolation; first and last point kept). A stroke of zero length (a
    dot) gives its single point ``(1, 2)``."""
    points = np.asarray(points, np.float64)
    if points.ndim != 2 or points.shape[1] != 2 or len(points) < 1:
        raise pplvi.DataError(f"a stroke must be points of shape (P, 2) with P >= 1, got shape {points.shape}")
    if not spacing > 0:
        raise pplvi.DataError(f"spacing={spacing} must be > 0")
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))])
    if arc[-1] == 0.0:
        return points[:1]
    pieces = max(1, int(round(arc[-1] / spacing)))
    targets = np.linspace(0.0, arc[-1], pieces + 1)
    keep = np.concatenate([[True], np.diff(arc) > 0])  # np.interp needs increasing abscissae
    return np.stack([np.interp(targets, arc[keep], points[keep, j]) for j in range(2)], -1)


def drawing_offsets(xy, stroke, *, spacing: float) -> np.ndarray:
    r"""One drawing as pen moves ``(K, 3)``: rows :math:`(\Delta x, \Delta y, u)` between consecutive points of the
    arc-length-resampled strokes (:func:`resample_stroke`), strokes in order of appearance; :math:`u = 1` when the
    move lifts the pen (from the end of one stroke to the start of the next), else 0. ``xy`` ``(P, 2)``, ``stroke``
    ``(P,)`` the stroke index of every point (points of a stroke contiguous)."""
    xy, stroke = np.asarray(xy, np.float64), np.asarray(stroke)
    if xy.ndim != 2 or xy.shape[1] != 2 or stroke.shape != (len(xy),) or len(xy) < 1:
        raise pplvi.DataError(f"a drawing needs xy (P, 2) and stroke (P,) with P >= 1, got {xy.shape} and "
                              f"{stroke.shape}")
    if not np.isfinite(xy).all():
        raise pplvi.DataError(f"drawing point {int(np.argwhere(~np.isfinite(xy))[0, 0])} is not finite")
    starts = np.flatnonzero(np.concatenate([[True], stroke[1:] != stroke[:-1]]))
    pieces = [resample_stroke(p, spacing) for p in np.split(xy, starts[1:])]
    points = np.concatenate(pieces)
    pen_up = np.zeros(len(points))
    pen_up[np.cumsum([len(p) for p in pieces])[:-1]] = 1.0  # the first point of every later stroke
    return np.concatenate([np.diff(points, axis=0), pen_up[1:, None]], -1)


def stroke_sequences(strokes: dict, *, length: int = 40, spacing: float = 5.0, drawings=None) -> dict:
    r"""Omniglot pen trajectories (``strokes`` from :func:`pplvi.data.load_omniglot_strokes`) as PV-RNN sequences:
    each drawing's pen moves (:func:`drawing_offsets`, strokes resampled every ``spacing`` canvas pixels) with
    :math:`(\Delta x, \Delta y)` divided by ``spacing`` (so an in-stroke move has length about 1), truncated to
    their first ``length`` moves. Drawings with fewer than ``length`` moves are left out. ``drawings``: indices to
    consider (default all). Returns ``{"x": (N, length, 3) float32, "index": (N,) drawing indices, "label",
    "drawer": (N,)}``."""
    for key in ("xy", "stroke", "offsets", "label", "drawer"):
        if key not in strokes:
            raise pplvi.DataError(f"strokes has no {key!r}; expected the dict of pplvi.data.load_omniglot_strokes()")
    if length < 2:
        raise pplvi.DataError(f"length={length} must be at least 2 moves")
    offsets = np.asarray(strokes["offsets"])
    total = len(offsets) - 1
    drawings = np.arange(total) if drawings is None else np.asarray(drawings, np.int64)
    if drawings.size and (drawings.min() < 0 or drawings.max() >= total):
        raise pplvi.DataError(f"drawing indices must lie in 0..{total - 1}, got {drawings.min()}..{drawings.max()}")
    rows, kept = [], []
    for i in drawings:
        a, b = offsets[i], offsets[i + 1]
        moves = drawing_offsets(strokes["xy"][a:b], strokes["stroke"][a:b], spacing=spacing)
        if len(moves) >= length:
            moves = moves[:length].copy()
            moves[:, :2] /= spacing
            rows.append(moves)
            kept.append(i)
    kept = np.asarray(kept, np.int64)
    x = np.stack(rows).astype(np.float32) if rows else np.zeros((0, length, 3), np.float32)
    return {"x": x, "index": kept, "label": np.asarray(strokes["label"])[kept],
            "drawer": np.asarray(strokes["drawer"])[kept]}


def character_split(labels, *, held_out: float = 0.2, seed: int = 0) -> np.ndarray:
    """A train / held-out split **by character**: a seeded random ``held_out`` fraction of the distinct ``labels``
    is held out, with every drawing of those characters. Returns a boolean mask, True = held out."""
    labels = np.asarray(labels)
    if not 0.0 < held_out < 1.0:
        raise pplvi.DataError(f"held_out={held_out} must lie strictly between 0 and 1")
    distinct = np.unique(labels)
    if len(distinct) < 2:
        raise pplvi.DataError(f"need at least 2 distinct characters to split, got {len(distinct)}")
    count = min(len(distinct) - 1, max(1, int(round(held_out * len(distinct)))))
    chosen = np.random.default_rng(seed).choice(distinct, count, replace=False)
    return np.isin(labels, chosen)
