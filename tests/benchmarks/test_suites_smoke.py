"""Every benchmark suite runs end to end in ``--smoke`` mode (tiny sizes, two timing samples, first calls timed in
this process) and writes ``<suite>.json`` with the contract keys and ``<suite>.md``; ``report.py`` turns the JSON
into the README's tables."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
HEADER = {"jax_version", "device", "date", "quick", "rows"}
ROW_KEYS = {
    "numpyro": {"case", "pplvi_ms", "numpyro_ms", "ratio", "pplvi_first_s", "numpyro_first_s"},
    "genjax": {"case", "pplvi_ms", "genjax_ms", "ratio"},
    "scaling": {"axis", "value", "ms"},
    "discrete": {"model", "estimator", "grad_variance", "tracegraph_variance"},
    "air": {"system", "estimator", "sec_per_1000_images", "count_accuracy"},
}


def load(name: str):
    """Import ``benchmarks/<name>.py`` under a name that cannot shadow the package it is named after."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.append(str(BENCHMARKS))  # the suites import their shared _harness module
    path = BENCHMARKS / f"{name}.py"
    if not path.is_file():
        path = BENCHMARKS / f"vs_{name}.py"
    spec = importlib.util.spec_from_file_location(f"pplvi_benchmarks_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("suite", sorted(ROW_KEYS))
def test_suite_smoke_run_writes_the_contract_keys(suite, tmp_path):
    load(suite).main(["--smoke", "--out", str(tmp_path)])
    result = json.loads((tmp_path / f"{suite}.json").read_text())
    assert HEADER <= set(result)
    assert result["quick"] is True and result["rows"]
    for row in result["rows"]:
        assert ROW_KEYS[suite] <= set(row), (suite, sorted(ROW_KEYS[suite] - set(row)))
        if row.get("value") != "slope":
            assert all(row[k] > 0 for k in ROW_KEYS[suite] if k.endswith(("_ms", "_s")) or k == "ms")
    if suite == "discrete":  # enumeration and MVD: far below TraceGraph_ELBO's variance even at smoke sizes
        enum_rows = [r for r in result["rows"] if r["estimator"] == "enum"]
        assert enum_rows and all(r["ratio"] > 10 for r in enum_rows), enum_rows
    if suite == "air":
        assert {r["system"] for r in result["rows"]} == {"pplvi", "numpyro"}
        assert all(r["sec_per_1000_images"] > 0 and 0 <= r["count_accuracy"] <= 1 for r in result["rows"])
    if suite == "scaling":
        slopes = {r["axis"] for r in result["rows"] if r["value"] == "slope"}
        assert slopes == {r["axis"] for r in result["rows"]}
    table = (tmp_path / f"{suite}.md").read_text()
    assert table.count("\n| ") == len(result["rows"]) + 1  # header + one line per row


def test_report_regenerates_tables_between_the_readme_markers(tmp_path):
    report = load("report")
    rows = [{"case": "a", "pplvi_ms": 1.0, "genjax_ms": 2.0, "ratio": 0.5, "pplvi_correct": True}]
    result = {"jax_version": "0", "device": "cpu", "date": "today", "quick": True, "rows": rows}
    (tmp_path / "genjax.json").write_text(json.dumps(result))
    readme = tmp_path / "README.md"
    readme.write_text(f"# Benchmarks\n\nintro\n\n{report.BEGIN}\nstale\n{report.END}\n\nafter\n")
    report.main(["--results", str(tmp_path), "--readme", str(readme)])
    text = readme.read_text()
    assert "stale" not in text and text.startswith("# Benchmarks\n\nintro") and text.endswith("after\n")
    assert "| a | 1.0000 | 2.0000 | 0.50 |" in text
    assert "| a | 1.0000 | 2.0000 | 0.50 |" in (tmp_path / "genjax.md").read_text()
