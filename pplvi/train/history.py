"""Training history as CSV or JSON (chosen by the file suffix), written atomically."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np

from pplvi.core.errors import PPLVIError
from pplvi.train.checkpoint import atomic_write

SUFFIXES = (".csv", ".json")


def check_path(path) -> Path:
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise PPLVIError(f"history file {path}: use a name ending in .csv or .json (the format follows the suffix)")
    return path


def _num(x):
    x = x.item() if isinstance(x, np.generic) else x
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def to_json(history: dict, evaluations: dict, summary: dict) -> str:
    return json.dumps(
        {
            **summary,
            "history": {k: [_num(v) for v in np.asarray(a).tolist()] for k, a in history.items()},
            "evaluations": {k: [_num(v) for v in np.asarray(a).tolist()] for k, a in evaluations.items()},
        },
        indent=1,
    )


def to_csv(history: dict, evaluations: dict) -> str:
    """One row per step (``step, objective, skipped``) plus one column per evaluation, filled on the rows of the
    steps where it ran (an evaluation after the last update gets a row of its own); empty cells elsewhere."""
    names = [k for k in evaluations if k != "step"]
    rows: dict[int, dict] = {}
    for i, s in enumerate(np.asarray(history["step"]).tolist()):
        rows[s] = {"objective": repr(float(history["objective"][i])), "skipped": int(history["skipped"][i])}
    for i, s in enumerate(np.asarray(evaluations.get("step", [])).tolist()):
        row = rows.setdefault(s, {})
        for k in names:
            row[k] = repr(float(evaluations[k][i]))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["step", "objective", "skipped", *names])
    for s in sorted(rows):
        r = rows[s]
        w.writerow([s, r.get("objective", ""), r.get("skipped", ""), *(r.get(k, "") for k in names)])
    return buf.getvalue()


def write(path: Path, history: dict, evaluations: dict, summary: dict) -> Path:
    text = to_csv(history, evaluations) if path.suffix.lower() == ".csv" else to_json(history, evaluations, summary)
    return atomic_write(path, lambda f: f.write(text.encode()), "history file")
