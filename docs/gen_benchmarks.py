"""The site's benchmarks page, generated from ``benchmarks/results/*.json`` whatever suites are there.

As an mkdocs hook (``hooks: [docs/gen_benchmarks.py]`` in ``mkdocs.yml``) it adds ``benchmarks.md`` to the site at
build time; nothing is written to ``docs/``, and ``mkdocs serve`` rebuilds when a result changes. The results folder
is ``benchmarks/results`` unless ``$PPLVI_BENCHMARK_RESULTS`` names another one. As a script it prints the page, or
writes it with ``-o``::

    .venv/bin/python docs/gen_benchmarks.py [-o benchmarks.md] [--results benchmarks/results]

Each ``<suite>.json`` becomes one section: the suite's description (the docstring of ``benchmarks/<suite>.py`` when
that script exists), its top-level scalar fields (device, versions, date...), and one table per list of records
(``"rows"``). Records with different fields go to separate tables; nested records (``{"grad_check": {...}}``) get a
table of their own, keyed by the row's leading identifying columns. A file that cannot be read is reported on the
page instead of failing the build.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
ENV_VAR = "PPLVI_BENCHMARK_RESULTS"
PAGE = "benchmarks.md"

INTRO = """# Benchmarks

This page is generated from `benchmarks/results/*.json` each time the documentation is built
(`docs/gen_benchmarks.py`); every benchmark suite writes its own `<suite>.json`. Rerun all suites with
`make bench`, or one with `pplvi bench <suite>` / `python benchmarks/<suite>.py`, then `make docs`.
Numbers come from the machine named in each section: compare timings only within one suite run.
"""


def _rst():
    """``docs/griffe_rst.py`` (the reST-to-Markdown rewriting of docstrings), loaded by path."""
    name = "pplvi_docs_griffe_rst"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("griffe_rst.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


# ---------------------------------------------------------------------------------------------------------------
# Cells


def escape(text: str) -> str:
    """Plain text for a Markdown table cell or list item (no emphasis, math, HTML or column breaks)."""
    for char in "\\`*_[]":
        text = text.replace(char, "\\" + char)
    for char, entity in {"<": "&lt;", ">": "&gt;", "$": "&#36;", "|": "&#124;"}.items():
        text = text.replace(char, entity)
    return text.replace("\n", " ")


def number(x: float | int) -> str:
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    if math.isnan(x) or math.isinf(x):
        return str(x)
    if x == int(x) and abs(x) < 1e15:
        return str(int(x))
    if abs(x) >= 1e4:
        return f"{x:,.0f}"
    if abs(x) >= 1e-3:
        return f"{x:.4g}"
    return f"{x:.3g}"


def is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def is_scalar(x: Any) -> bool:
    return x is None or isinstance(x, str | int | float | bool)


def cell(x: Any) -> str:
    if x is None:
        return "—"
    if isinstance(x, str):
        return escape(x)
    if isinstance(x, int | float):
        return number(x)
    if isinstance(x, list) and all(is_scalar(v) for v in x):
        return "[" + ", ".join(cell(v) for v in x) + "]"
    return escape(json.dumps(x, sort_keys=True))


def table(header: list[str], rows: list[list[str]], numeric: list[bool]) -> str:
    align = ["---:" if n else "---" for n in numeric]
    lines = ["| " + " | ".join(escape(h) for h in header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# Records


def columns(records: list[dict], keep) -> list[str]:
    """Keys of ``records`` (first-seen order) whose values satisfy ``keep``."""
    seen: dict[str, None] = {}
    for record in records:
        for key, value in record.items():
            if key not in seen and keep(value):
                seen[key] = None
    return list(seen)


def group(records: list[dict]) -> list[list[dict]]:
    """Split records into groups that share fields (a summary record among data rows gets its own group)."""
    groups: list[tuple[set, list[dict]]] = []
    for record in records:
        for keys, members in groups:
            if keys & set(record):
                keys |= set(record)
                members.append(record)
                break
        else:
            groups.append((set(record), [record]))
    return [members for _, members in groups]


def identifying(records: list[dict], cols: list[str]) -> list[str]:
    """The shortest run of leading string / integer columns that tells the rows apart (all of them when none
    does)."""
    ids = []
    for col in cols:
        values = [r.get(col) for r in records]
        if not all(isinstance(v, str | int) and not isinstance(v, bool) for v in values):
            break
        ids.append(col)
        if len({tuple(r.get(c) for c in ids) for r in records}) == len(records):
            break
    return ids


def is_record(x: Any) -> bool:
    return isinstance(x, dict) and bool(x)


def record_tables(records: list[dict], level: int, summary: bool = False) -> str:
    """One table for a group of records, plus one per nested record field; a ``summary`` record (one among other
    tables) as a list of its fields."""
    scalar_cols = columns(records, lambda v: is_scalar(v) or (isinstance(v, list) and all(map(is_scalar, v))))
    nested_cols = [c for c in columns(records, is_record) if c not in scalar_cols]
    other_cols = [c for c in columns(records, lambda v: True) if c not in scalar_cols and c not in nested_cols]
    if summary and len(records) == 1 and not nested_cols:
        return key_values(records[0])
    ids = identifying(records, scalar_cols)
    cols = scalar_cols + other_cols
    numeric = [all(is_number(r.get(c)) or r.get(c) is None for r in records) for c in cols]
    parts = [table(cols, [[cell(r.get(c)) for c in cols] for r in records], numeric)]
    for col in nested_cols:
        sub = [r.get(col) if is_record(r.get(col)) else {} for r in records]
        sub_cols = columns(sub, lambda v: True)
        key_cols = ids or ["#"]
        rows = [
            [str(i) if key_cols == ["#"] else cell(r.get(k)) for k in key_cols] + [cell(s.get(c)) for c in sub_cols]
            for i, (r, s) in enumerate(zip(records, sub))
        ]
        numeric = [key_cols != ["#"] and is_number(records[0].get(k)) for k in key_cols]
        numeric += [all(is_number(s.get(c)) or s.get(c) is None for s in sub) for c in sub_cols]
        parts.append(f"{'#' * level} {escape(col)}\n\n" + table(key_cols + sub_cols, rows, numeric))
    return "\n\n".join(parts)


def key_values(record: dict) -> str:
    return "\n".join(f"* **{escape(k)}**: {cell(v)}" for k, v in record.items())


def render_value(name: str, value: Any, level: int) -> str:
    """A non-scalar top-level field of a suite's result."""
    heading = f"{'#' * level} {escape(name)}\n\n" if name != "rows" else ""
    if isinstance(value, list) and value and all(is_record(v) for v in value):
        groups = sorted(group(value), key=lambda g: len(g) > 1)  # summaries (single records) before the tables
        body = "\n\n".join(record_tables(g, level + (name != "rows"), len(groups) > 1) for g in groups)
    elif is_record(value) and all(is_scalar(v) for v in value.values()):
        body = key_values(value)
    elif is_record(value) and all(is_record(v) for v in value.values()):
        records = [{"name": k, **v} for k, v in value.items()]
        groups = group(records)
        body = "\n\n".join(record_tables(g, level + 1, len(groups) > 1) for g in groups)
    else:
        body = "```json\n" + json.dumps(value, indent=2, sort_keys=True) + "\n```"
    return heading + body


# ---------------------------------------------------------------------------------------------------------------
# Suites and the page


def description(suite: str, benchmarks: Path) -> str:
    """The docstring of ``benchmarks/<suite>.py`` as Markdown: its first paragraph, the rest in a folded note."""
    script = benchmarks / f"{suite}.py"
    if not script.is_file():  # suites comparing against a library are named vs_<library>.py
        script = benchmarks / f"vs_{suite}.py"
    try:
        doc = ast.get_docstring(ast.parse(script.read_text()))
    except (OSError, SyntaxError, ValueError):
        return ""
    if not doc:
        return ""
    text = _rst().convert(doc)
    first, _, rest = text.partition("\n\n")
    source = f"Written by `benchmarks/{script.name}`."
    rest = rest.strip("\n")
    if not rest:
        return f"{first}\n\n{source}"
    title, _, body = rest.partition("\n")
    if title.startswith("**") and title.endswith("**") and body.strip():  # the docstring's own section title
        title, rest = title.strip("*"), body.strip("\n")
    else:
        title = "Details"
    folded = "\n".join("    " + line if line.strip() else "" for line in rest.splitlines())
    return f'{first}\n\n{source}\n\n??? note "{title}"\n\n{folded}'


def render_suite(suite: str, path: Path, benchmarks: Path) -> str:
    parts = [f"## {escape(suite)}"]
    if desc := description(suite, benchmarks):
        parts.append(desc)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        parts.append(f'!!! warning "Not readable"\n\n    `{path.name}`: {escape(str(err))}')
        return "\n\n".join(parts)
    if isinstance(data, list):
        data = {"rows": data}
    if not isinstance(data, dict):
        parts.append(f"Result: {cell(data)}")
        return "\n\n".join(parts)
    scalars = {k: v for k, v in data.items() if is_scalar(v)}
    if scalars:
        parts.append(f"Results: `{path.name}`.\n\n" + key_values(scalars))
    else:
        parts.append(f"Results: `{path.name}`.")
    order = sorted((k for k in data if not is_scalar(data[k])), key=lambda k: k != "rows")
    parts += [render_value(k, data[k], 3) for k in order]
    return "\n\n".join(p for p in parts if p)


def render(results: Path = RESULTS) -> str:
    """The whole page."""
    files = sorted(results.glob("*.json")) if results.is_dir() else []
    benchmarks = results.parent
    if not files:
        return INTRO + f"\nNo results yet: `{results.name}/` has no `*.json` file. Run `make bench`.\n"
    index = "\n".join(f"* [{escape(f.stem)}](#{anchor(f.stem)})" for f in files)
    sections = [render_suite(f.stem, f, benchmarks) for f in files]
    return INTRO + "\nSuites:\n\n" + index + "\n\n" + "\n\n".join(sections) + "\n"


def anchor(title: str) -> str:
    """The id Python-Markdown's toc extension gives the heading ``## title``."""
    from markdown.extensions.toc import slugify

    return slugify(title, "-")


# ---------------------------------------------------------------------------------------------------------------
# mkdocs hook


def results_dir() -> Path:
    return Path(os.environ[ENV_VAR]) if os.environ.get(ENV_VAR) else RESULTS


def on_files(files, config):
    """Add the generated page (replacing a ``docs/benchmarks.md`` if one exists)."""
    from mkdocs.structure.files import File

    if existing := files.get_file_from_path(PAGE):
        files.remove(existing)
    files.append(File.generated(config, PAGE, content=render(results_dir())))
    return files


def on_serve(server, config, builder):
    if results_dir().is_dir():
        server.watch(str(results_dir()))
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", type=Path, help="write the page here (default: print it)")
    parser.add_argument("--results", type=Path, default=None, help="folder of <suite>.json files")
    args = parser.parse_args(argv)
    page = render(args.results or results_dir())
    if args.output:
        args.output.write_text(page)
    else:
        sys.stdout.write(page)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
