"""Figures of ``python -m pplvi.models.pvrnn reproduce``: the meta-prior sweep (generated branching frequency and
determinism per seed against :math:`w`) and Omniglot pen strokes (held-out drawings continued by error regression
and the baselines; drawings generated from the learned prior)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_sweep(path: Path, results: dict, *, true_probability: float = 0.3) -> Path:
    """Every run's generated ``P(C -> a)`` and determinism against the meta-prior ``w`` (log axis), with the true
    probability and the ``± sweep_tolerance`` band."""
    plt = _pyplot()
    runs = results["sweep_runs"]
    tol = results.get("sweep_tolerance", 0.05)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    w = np.array([r["w"] for r in runs])
    p = np.array([r["generated_branch_frequencies"][1] for r in runs])
    se = np.array([r.get("monte_carlo_se", 0.0) for r in runs])
    ax1.axhspan(true_probability - tol, true_probability + tol, color="0.9", label=f"true 0.3 ± {tol}")
    ax1.axhline(true_probability, color="k", lw=1)
    ax1.errorbar(w, p, yerr=2 * se, fmt="o", ms=4, alpha=0.8, label="each seed (± 2 MC se)")
    ax1.set(xscale="log", xlabel="meta-prior w", ylabel="generated P(C → a)", title="branching frequency")
    ax1.legend(fontsize=8)
    ax2.plot(w, [r["determinism"] for r in runs], "o", ms=4)
    ax2.set(xscale="log", xlabel="meta-prior w", ylabel="determinism", title="determinism (1 = identical)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _draw(ax, moves, start=(0.0, 0.0), **style):
    """Plot pen moves ``(K, 3)`` as a path from ``start``; pen-up moves are not drawn. Returns the end point."""
    points = np.concatenate([[start], start + np.cumsum(moves[:, :2], 0)])
    label = style.pop("label", None)
    for k in range(len(moves)):
        if moves[k, 2] < 0.5:
            ax.plot(points[k:k + 2, 0], points[k:k + 2, 1], label=label, **style)
            label = None
    return points[-1]


def plot_strokes(path: Path, test, past, future, predictions: dict, generated, *, times, window: int, horizon: int,
                 columns: int = 5) -> Path:
    """Top row: held-out drawings up to a window's end (black), the true next moves (green), PV-RNN after error
    regression (red) and the VRNN (blue). Bottom row: drawings generated from the learned prior."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, columns, figsize=(2.2 * columns, 4.6))
    last = len(times) - 1  # the latest window of each drawing: most context
    spread = max(1, len(test) // columns)  # drawings are ordered by character: take different characters
    for c in range(columns):
        ax = axes[0, c]
        row = c * spread * len(times) + last
        seq = test[c * spread]
        t = times[last]
        end = _draw(ax, seq[:t], color="k", lw=1.2)
        _draw(ax, future[row], end, color="tab:green", lw=2, label="true")
        _draw(ax, predictions["pvrnn"][row], end, color="tab:red", lw=1.5, ls="--", label="PV-RNN")
        _draw(ax, predictions["vrnn"][row], end, color="tab:blue", lw=1.5, ls=":", label="VRNN")
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        _draw(axes[1, c], generated[c], color="tab:purple", lw=1.2)
        axes[1, c].set_aspect("equal")
        axes[1, c].set_xticks([])
        axes[1, c].set_yticks([])
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="upper right", fontsize=8, ncol=3)
    axes[0, 0].set_title(f"held-out characters: next {horizon} moves", fontsize=9, loc="left")
    axes[1, 0].set_title("generated from the prior", fontsize=9, loc="left")
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
