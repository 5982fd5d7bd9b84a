"""What every model library's ``reproduce`` command shares: the machine a result was measured on, and writing the
results file atomically (a temporary file renamed into place, so an interrupted run never leaves half a file)."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import jax


def cpu_name() -> str:
    """The CPU model (``/proc/cpuinfo``), or what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name() -> str:
    """``"cpu: <processor>, <n> cores"``, or the accelerator's platform and kind."""
    d = jax.devices()[0]
    if d.platform == "cpu":
        return f"{d.platform}: {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    return f"{d.platform}: {d.device_kind}"


def write_json(out, results: dict, indent: int = 2) -> Path:
    """Write ``results`` to ``out`` as JSON, atomically; creates the folder."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(results, indent=indent) + "\n")
    os.replace(tmp, out)
    return out
