"""Markdown tables of the benchmark results, generated from ``benchmarks/results/<suite>.json``.

::

    .venv/bin/python benchmarks/report.py        # writes results/<suite>.md and the tables in benchmarks/README.md

Each suite also calls :func:`suite_markdown` itself when it writes its JSON. The tables in ``benchmarks/README.md``
sit between the two ``GENERATED`` markers and are replaced wholesale by this script; never edit them by hand.
``overhead.md`` belongs to ``overhead.py`` (its format predates this script) and is not rewritten; its JSON still
feeds the README.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "benchmarks" / "README.md"
BEGIN = "<!-- BEGIN GENERATED RESULTS: benchmarks/report.py writes this section from results/*.json -->"
END = "<!-- END GENERATED RESULTS -->"
OWN_MARKDOWN = {"overhead"}  # suites whose .md their own script writes

TITLES = {
    "overhead": "pplvi vs hand-written JAX (reparameterized ELBO gradient)",
    "numpyro": "pplvi vs NumPyro SVI",
    "genjax": "pplvi vs genjax 1.0.14 ADEV",
    "scaling": "pplvi cost vs particles and batch size",
    "discrete": "Discrete latents: gradient variance and time to a target ELBO vs NumPyro TraceGraph_ELBO",
    "air": "Attend-Infer-Repeat on multi-MNIST: seconds per 1,000 images per estimator",
}
ORDER = ["overhead", "numpyro", "genjax", "discrete", "air", "scaling"]

# (key, header, format); a column is shown when at least one row has the key
COLUMNS = {
    "overhead": [
        ("case", "case", "s"), ("batch", "batch", "d"), ("pplvi_ms", "pplvi ms", ".4f"),
        ("hand_ms", "hand ms", ".4f"), ("ratio", "ratio", ".3f"), ("pplvi_flops", "pplvi flops", ".6g"),
        ("hand_flops", "hand flops", ".6g"), ("pplvi_first_s", "pplvi first s", ".2f"),
        ("hand_first_s", "hand first s", ".2f"),
    ],
    "numpyro": [
        ("case", "case", "s"), ("same_estimator", "same estimator", "b"), ("pplvi_ms", "pplvi ms", ".4f"),
        ("numpyro_ms", "numpyro ms", ".4f"),
        ("ratio", "ratio", ".2f"), ("pplvi_min_ms", "pplvi min/max ms", "minmax:pplvi"),
        ("numpyro_min_ms", "numpyro min/max ms", "minmax:numpyro"),
        ("pplvi_step_ms", "pplvi step ms", ".4f"),
        ("numpyro_step_ms", "numpyro step ms", ".4f"), ("step_ratio", "step ratio", ".2f"),
        ("pplvi_flops", "pplvi flops", ".4g"), ("numpyro_flops", "numpyro flops", ".4g"),
        ("pplvi_first_s", "pplvi first s", ".2f"), ("numpyro_first_s", "numpyro first s", ".2f"),
        ("first_ratio", "first ratio", ".2f"), ("numpyro_first_setup_s", "of which svi.init s", ".2f"),
        ("pplvi_first_compile_s", "pplvi XLA compile s", ".2f"),
        ("numpyro_first_compile_s", "numpyro XLA compile s", ".2f"), ("steps", "steps", "d"),
        ("pplvi_final", "pplvi final", ".3f"),
        ("numpyro_final", "numpyro final", ".3f"), ("log_evidence", "log p(x)", ".3f"),
        ("pplvi_grad_max_abs_z", "pplvi grad max abs z", ".1f"),
        ("numpyro_grad_max_abs_z", "numpyro grad max abs z", ".1f"),
        ("pplvi_grad_var", "pplvi grad var", ".3g"), ("numpyro_grad_var", "numpyro grad var", ".3g"),
        ("bar_step", "step <= numpyro", "b"), ("bar_first", "first <= 0.5x", "b"),
    ],
    "genjax": [
        ("case", "case", "s"), ("pplvi_ms", "pplvi ms", ".4f"), ("genjax_ms", "genjax ms", ".4f"),
        ("ratio", "ratio", ".2f"), ("pplvi_min_ms", "pplvi min/max ms", "minmax:pplvi"),
        ("genjax_min_ms", "genjax min/max ms", "minmax:genjax"),
        ("pplvi_flops", "pplvi flops", ".4g"), ("genjax_flops", "genjax flops", ".4g"),
        ("pplvi_first_s", "pplvi first s", ".2f"), ("genjax_first_s", "genjax first s", ".2f"),
        ("exact_grad", "exact grad", "vec"), ("pplvi_grad_mean", "pplvi mean grad", "vec"),
        ("genjax_grad_mean", "genjax mean grad", "vec"),
        ("pplvi_grad_max_abs_z", "pplvi max abs z", ".1f"), ("genjax_grad_max_abs_z", "genjax max abs z", ".1f"),
        ("genjax_key_dependent", "genjax grad varies with key", "b"),
        ("pplvi_correct", "pplvi correct", "b"), ("genjax_correct", "genjax correct", "b"),
        ("timing_comparable", "timing comparable", "b"),
    ],
    "discrete": [
        ("model", "model", "s"), ("estimator", "estimator", "s"), ("grad_variance", "guide grad variance", ".4g"),
        ("tracegraph_variance", "TraceGraph guide variance", ".4g"), ("ratio", "TraceGraph / estimator", ".3g"),
        ("bar_10x", ">= 10x lower", "b"), ("model_grad_variance", "model grad variance", ".4g"),
        ("grad_max_abs_z", "mean vs exact max abs z", ".1f"), ("final_elbo", "final ELBO", ".4f"),
        ("target_elbo", "target ELBO", ".4f"), ("time_to_target_s", "time to target s", ".2f"),
        ("train_s", "train s", ".1f"),
    ],
    "air": [
        ("system", "system", "s"), ("estimator", "estimator", "s"),
        ("sec_per_1000_images", "s per 1000 images", ".2f"), ("count_accuracy", "count accuracy", ".3f"),
        ("step_ms", "step ms (median)", ".1f"), ("min_step_ms", "min step ms", ".1f"),
        ("max_step_ms", "max step ms", ".1f"), ("compile_s", "compile s", ".1f"), ("images", "training images", "d"),
    ],
    "scaling": [
        ("axis", "axis", "s"), ("value", "value", "s"), ("ms", "pplvi ms", ".4f"),
        ("min_ms", "min/max ms", "minmax:"), ("hand_ms", "hand ms", ".4f"), ("ratio", "ratio", ".3f"),
        ("flops", "flops", ".4g"), ("compile_s", "first call s (in-process)", ".2f"), ("slope", "log-log slope", ".3f"),
        ("flops_slope", "flops slope", ".3f"), ("fit_range", "fit range", "s"),
    ],
}


# the README shows these columns only (results/<suite>.md has them all)
README_COLUMNS = {
    "numpyro": ["case", "same_estimator", "pplvi_ms", "numpyro_ms", "ratio", "step_ratio", "pplvi_first_s",
                "numpyro_first_s", "numpyro_first_setup_s", "pplvi_final", "numpyro_final", "log_evidence",
                "pplvi_grad_max_abs_z", "numpyro_grad_max_abs_z", "pplvi_grad_var", "numpyro_grad_var", "bar_step",
                "bar_first"],
    "genjax": ["case", "pplvi_ms", "genjax_ms", "ratio", "pplvi_flops", "genjax_flops", "pplvi_first_s",
               "genjax_first_s", "exact_grad", "pplvi_grad_mean", "genjax_grad_mean", "pplvi_correct",
               "genjax_correct", "timing_comparable"],
}


def _cell(row: dict, key: str, fmt: str) -> str:
    if fmt.startswith("minmax:"):
        prefix = fmt.split(":", 1)[1]
        stem = f"{prefix}_" if prefix else ""
        lo, hi = row.get(f"{stem}min_ms"), row.get(f"{stem}max_ms")
        return "–" if lo is None or hi is None else f"{lo:.3g} / {hi:.3g}"
    v = row.get(key)
    if v is None:
        return "–"
    if isinstance(v, bool) or (fmt == "b" and not isinstance(v, str)):
        return "yes" if v else "no"
    if fmt == "vec":
        vals = v if isinstance(v, list) else [v]
        return ", ".join(f"{x:.3f}" if isinstance(x, (int, float)) else str(x) for x in vals)
    if isinstance(v, str):
        return v.replace("|", "\\|")
    if isinstance(v, list):
        return ", ".join(str(x) for x in v)
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if fmt == "d":
        return f"{int(v)}"
    if fmt == "s":
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    return format(v, fmt)


def _columns(suite: str, rows: list[dict], compact: bool = False) -> list[tuple[str, str, str]]:
    spec = COLUMNS.get(suite)
    if compact and spec is not None and suite in README_COLUMNS:
        spec = [c for c in spec if c[0] in README_COLUMNS[suite]]
    if spec is None:  # a suite this script does not know: every scalar key
        keys: list[str] = []
        for r in rows:
            keys += [k for k, v in r.items() if k not in keys and not isinstance(v, dict)]
        spec = [(k, k, "s") for k in keys]
    return [c for c in spec if any(c[0] in r for r in rows)]


def table(suite: str, rows: list[dict], compact: bool = False) -> str:
    cols = _columns(suite, rows, compact)
    lines = ["| " + " | ".join(h for _, h, _ in cols) + " |",
             "|" + "|".join("---" if f in ("s", "b", "vec") else "---:" for _, _, f in cols) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r, k, f) for k, _, f in cols) + " |")
    return "\n".join(lines)


def describe(result: dict) -> str:
    mode = result.get("mode") or ("quick" if result.get("quick") else "full")
    samples = result.get("samples_per_timing")
    parts = [str(result.get("device", "device not recorded"))]
    if result.get("jax_version"):
        parts.append(f"jax {result['jax_version']}")
    if result.get("date"):
        parts.append(str(result["date"]))
    text = ", ".join(parts + [f"{mode} mode"])
    if result.get("command"):
        text += f"; `{result['command']}`"
    if samples:
        text += f", median of {samples} interleaved samples per timing"
    return text + "."


def suite_markdown(suite: str, result: dict, level: int = 1, compact: bool = False) -> str:
    """The suite's heading, machine and table; ``compact``: the README's subset of columns."""
    title = TITLES.get(suite, suite)
    parts = [f"{'#' * level} {title} (`{suite}`)", "", describe(result)]
    if compact and suite in README_COLUMNS:
        parts[-1] += f" Selected columns; every column in [`results/{suite}.md`](results/{suite}.md)."
    rows = result_rows(result)
    parts += ["", table(suite, rows, compact) if rows else scalar_table(result)]
    return "\n".join(parts) + "\n"


def result_rows(result: dict) -> list[dict]:
    """The suite's table rows: ``rows``, else ``methods``, else the first top-level list of objects."""
    for key in ("rows", "methods"):
        if isinstance(result.get(key), list) and result[key]:
            return result[key]
    for v in result.values():
        if isinstance(v, list) and v and all(isinstance(r, dict) for r in v):
            return v
    return []


def scalar_table(result: dict) -> str:
    """A suite without row lists: its numbers as a two-column table (one level of nesting as ``a.b``)."""
    skip = {"device", "jax_version", "date", "mode", "quick", "command"}
    lines = ["| quantity | value |", "|---|---:|"]
    for k, v in result.items():
        if k in skip:
            continue
        items = v.items() if isinstance(v, dict) else [(None, v)]
        for sub, val in items:
            if isinstance(val, bool) or isinstance(val, (int, float, str)):
                name = k if sub is None else f"{k}.{sub}"
                cell = _cell({"v": val}, "v", "s")
                lines.append(f"| {name} | {cell} |")
    return "\n".join(lines) if len(lines) > 2 else "(no scalar results)"


def load(results: Path) -> dict[str, dict]:
    found = {p.stem: json.loads(p.read_text()) for p in sorted(results.glob("*.json"))}
    ordered = [s for s in ORDER if s in found] + [s for s in found if s not in ORDER]
    return {s: found[s] for s in ordered}


def readme_section(all_results: dict[str, dict]) -> str:
    body = [suite_markdown(s, r, level=3, compact=True) for s, r in all_results.items()]
    return BEGIN + "\n\n" + "\n".join(body) + "\n" + END


def update_readme(readme: Path, all_results: dict[str, dict]) -> None:
    text = readme.read_text() if readme.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text = text.rstrip("\n") + f"\n\n## Results\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(head + readme_section(all_results) + tail)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Regenerate the benchmark tables from results/*.json.")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--readme", type=Path, default=README)
    args = parser.parse_args(argv)
    all_results = load(args.results)
    for suite, result in all_results.items():
        if suite not in OWN_MARKDOWN:
            (args.results / f"{suite}.md").write_text(suite_markdown(suite, result))
    update_readme(args.readme, all_results)
    print(f"{len(all_results)} suites: {', '.join(all_results)} -> {args.readme}")


if __name__ == "__main__":
    main()
