"""The documentation site builds in strict mode, as ``make docs`` does, and its generated parts look right.

Skipped only when mkdocs is not installed (``make test`` installs the ``docs`` extra).
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS_PACKAGES = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python", "pymdownx")


def _missing_docs_packages() -> list[str]:
    missing = []
    for name in DOCS_PACKAGES:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            missing.append(name)
    return missing


def build(site: pathlib.Path, **env: str) -> subprocess.CompletedProcess:
    if missing := _missing_docs_packages():
        pytest.skip(f"the docs toolchain is not installed ({', '.join(missing)}): pip install -e '.[docs]'")
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(site)]
    environment = {**os.environ, "NO_MKDOCS_2_WARNING": "1", **env}
    proc = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def text(path: pathlib.Path) -> str:
    """The visible text of a built page's article."""
    html = path.read_text()
    article = html[html.index("<article"): html.index("</article>")]
    return re.sub(r"<[^>]+>", " ", article)


def load_generator():
    spec = importlib.util.spec_from_file_location("gen_benchmarks", ROOT / "docs" / "gen_benchmarks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_site_builds_strict_with_every_page(tmp_path):
    site = tmp_path / "site"
    build(site)
    pages = ["", "getting-started", "concepts", "estimators", "objectives", "data", "interop", "benchmarks", "api"]
    pages += [f"api/{p}" for p in ("language", "estimators", "objectives", "inference", "interop", "data",
                                   "diagnostics")]
    for page in pages:
        assert (site / page / "index.html").is_file(), page

    # The API pages come from the docstrings, rewritten from reST to Markdown by docs/griffe_rst.py.
    api = {p.parent.name: p.read_text() for p in (site / "api").glob("*/index.html")}
    for name, html in api.items():
        for raw in (":func:`", ":class:`", ":math:`", ".. math::", ".. code-block::", "<autoref", "&lt;autoref"):
            assert raw not in html, (name, raw)
    assert 'id="pplvi.objectives.elbo"' in api["objectives"]
    assert 'id="pplvi.gen"' in api["language"] and 'id="pplvi.add_cost"' in api["language"]
    assert 'class="arithmatex"' in api["objectives"]  # formulas, typeset by MathJax in the browser
    assert 'href="../language/#pplvi.Objective"' in api["objectives"]  # cross-references between pages

    # The benchmarks page: one section per results file.
    benchmarks = (site / "benchmarks" / "index.html").read_text()
    for result in sorted((ROOT / "benchmarks" / "results").glob("*.json")):
        assert f'id="{load_generator().anchor(result.stem)}"' in benchmarks, result.name


def test_benchmarks_page_builds_whatever_results_are_present(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "plain list.json").write_text(json.dumps([{"case": "a", "ms": 1.5}, {"case": "b", "ms": 2.25}]))
    (results / "nested.json").write_text(json.dumps({
        "device": "cpu | gpu $5 <b>",
        "rows": [
            {"case": "x", "batch": 1, "t": 0.1, "check": {"z": 1.0, "ok": True}, "vec": [1.0, 2.0]},
            {"case": "x", "batch": 2, "t": 1e-9, "check": {"z": 2.0, "ok": False}, "vec": [3.0]},
            {"summary_ratio": 197.0},
        ],
        "by_name": {"first": {"ms": 1.0}, "second": {"ms": 2.0}},
        "odd": [[1, 2], {"a": None}],
    }))
    (results / "broken.json").write_text("{not json")
    site = tmp_path / "site"
    build(site, PPLVI_BENCHMARK_RESULTS=str(results))
    page = text(site / "benchmarks" / "index.html")
    assert "Not readable" in page and "summary_ratio" in page and "cpu &#124; gpu &#36;5 &lt;b&gt;" in page
    for name in ("plain list", "nested", "broken"):
        assert name in page

    (results / "plain list.json").unlink()
    (results / "nested.json").unlink()
    (results / "broken.json").unlink()
    assert "No results yet" in load_generator().render(results)
    assert "No results yet" in load_generator().render(tmp_path / "missing")


def test_benchmarks_cells():
    gen = load_generator()
    assert [gen.number(x) for x in (3, 1.0, 0.98731, 13492.85, 2.856e-9, True)] == [
        "3", "1", "0.9873", "13,493", "2.86e-09", "yes"]
    assert gen.identifying([{"case": "a", "batch": 1, "n": 5, "t": 0.1}, {"case": "a", "batch": 2, "n": 5,
                                                                         "t": 0.2}],
                           ["case", "batch", "n", "t"]) == ["case", "batch"]
    assert [len(g) for g in gen.group([{"a": 1}, {"a": 2, "b": 1}, {"c": 3}])] == [2, 1]
