"""Griffe extension: pplvi's reStructuredText-flavoured docstrings, rewritten as Markdown for mkdocstrings.

pplvi's docstrings are written for humans reading the source: Sphinx roles (``:func:`gen```,
``:class:`~pplvi.core.dual.Dual```), ``:math:`...``` and ``.. math::`` for formulas, ``.. code-block::`` and
``>>>`` examples. mkdocstrings renders docstrings as Markdown, so once the package is loaded this extension rewrites
them (the Python files are not touched):

* a cross-reference role becomes inline code, linked to the object's API entry when the name resolves inside the
  loaded package (an *optional* autoref: no link, and no warning, when that object is not rendered anywhere);
* ``:math:`x``` becomes ``$x$`` and a ``.. math::`` directive a ``$$`` block (``pymdownx.arithmatex``);
* ``.. code-block:: lang`` / ``.. code::`` and ``::`` literal blocks become fenced code, ``>>>`` runs ``pycon``
  fences, and an underlined section title a bold line (not a heading of the page).

Used from ``mkdocs.yml``: ``plugins.mkdocstrings.handlers.python.options.extensions: [docs/griffe_rst.py]``.
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

ROLE_RE = re.compile(r":(?:py:)?(?P<role>func|class|meth|attr|data|mod|exc|obj|const|math):`(?P<text>[^`]+)`")
DIRECTIVE_RE = re.compile(r"^(?P<indent>\s*)\.\. (?P<name>math|code-block|code|sourcecode)::\s*(?P<arg>.*)$")
LITERAL_RE = re.compile(r"^(?P<head>.*\S)?\s*::\s*$")
UNDERLINE_RE = re.compile(r"^\s*([-=~^\"'`#*+])\1{2,}\s*$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _block(lines: list[str], start: int, base: int) -> tuple[list[str], int]:
    """The lines from ``start`` on that belong to a block indented deeper than ``base`` (blank lines included,
    trailing blank lines excluded), and the index of the first line after it."""
    end = start
    last = start
    while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) > base):
        end += 1
        if lines[end - 1].strip():
            last = end
    return lines[start:last], last


def _dedent(lines: list[str]) -> list[str]:
    depth = min((_indent(line) for line in lines if line.strip()), default=0)
    return [line[depth:] for line in lines]


def _fence(out: list[str], pad: str, opening: str, body: list[str], closing: str) -> None:
    if out and out[-1].strip():
        out.append("")
    out.extend([pad + opening, *(pad + line if line.strip() else "" for line in body), pad + closing, ""])


def convert_blocks(text: str) -> str:
    """Directives, literal blocks and doctest runs as Markdown blocks."""
    lines = text.splitlines()
    out: list[str] = []
    fence = ""  # the opening of the Markdown fence we are in, if any: its content is left alone
    i = 0
    while i < len(lines):
        line = lines[i]
        if fence or line.lstrip().startswith(("```", "~~~")):
            stripped = line.lstrip()
            if not fence:
                fence = stripped[:3]
            elif stripped.startswith(fence) and not stripped[3:].strip():
                fence = ""
            out.append(line)
            i += 1
            continue
        if m := DIRECTIVE_RE.match(line):
            pad, base = m["indent"], len(m["indent"])
            body, i = _block(lines, i + 1, base)
            if m["name"] == "math":
                math = [m["arg"].strip()] if m["arg"].strip() else []
                math += [row.strip() for row in body if row.strip()]
                _fence(out, pad, "$$", math, "$$")
            else:
                body = _dedent(body)
                while body and not body[0].strip():
                    body.pop(0)
                _fence(out, pad, "```" + (m["arg"].strip() or "text"), body, "```")
            continue
        if line.lstrip().startswith(">>>"):
            pad = line[: _indent(line)]
            end = i
            while end < len(lines) and lines[end].strip() and _indent(lines[end]) >= len(pad):
                end += 1
            _fence(out, pad, "```pycon", [row[len(pad):] for row in lines[i:end]], "```")
            i = end
            continue
        if (out and out[-1].strip() and UNDERLINE_RE.match(line) and len(line.strip()) >= len(out[-1].strip())
                and (len(out) == 1 or not out[-2].strip())):
            out[-1] = f"{out[-1][: _indent(out[-1])]}**{out[-1].strip()}**"  # a reST section title
            out.append("")
            i += 1
            continue
        m = LITERAL_RE.match(line)
        if m and not line.lstrip().startswith(".."):
            body, end = _block(lines, i + 1, _indent(line))
            if any(row.strip() for row in body):
                head = m["head"]
                if head:  # "text::" -> "text:"; "text ::" and a bare "::" -> nothing
                    out.append(head + (":" if not line.rstrip().endswith(" ::") else ""))
                body = _dedent(body)
                while body and not body[0].strip():
                    body.pop(0)
                _fence(out, line[: _indent(line)], "```text", body, "```")
                i = end
                continue
        out.append(line)
        i += 1
    return "\n".join(out).rstrip("\n")


def _lookup(collection: Any, path: str) -> Any:
    try:
        return collection.get_member(path)
    except (KeyError, ValueError, AttributeError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None


def resolve(obj: griffe.Object, name: str) -> str | None:
    """The canonical path of ``name`` as seen from ``obj`` (its scope, its parents' scopes and imports, then an
    absolute path), or None when it does not name an object of a loaded package."""
    collection = obj.modules_collection
    first, _, rest = name.partition(".")
    candidates = []
    scope: griffe.Object | None = obj if (obj.is_module or obj.is_class) else obj.parent
    while scope is not None:
        if first in scope.members:
            candidates.append(f"{scope.path}.{name}")
            break
        scope = scope.parent
    try:
        candidates.append(obj.resolve(first) + ("." + rest if rest else ""))
    except (griffe.NameResolutionError, KeyError, ValueError, AttributeError):
        pass
    candidates.append(name)
    for path in candidates:
        found = _lookup(collection, path)
        if found is None:
            continue
        try:
            return found.canonical_path if found.is_alias else found.path
        except (griffe.AliasResolutionError, griffe.CyclicAliasError):
            continue
    return None


def convert_roles(text: str, obj: griffe.Object | None = None) -> str:
    """Roles as Markdown: math as ``$...$``, references as inline code, linked when ``obj`` is given and the name
    resolves from it."""

    def repl(m: re.Match) -> str:
        role, content = m["role"], m["text"]
        if role == "math":
            return "$" + content.strip() + "$"
        if explicit := re.fullmatch(r"(?P<title>.+?)\s*<(?P<target>[^>]+)>", content, flags=re.S):
            title, target = explicit["title"], explicit["target"]
        else:
            target = content.lstrip("~!")
            title = target.rsplit(".", 1)[-1] if content.startswith("~") else target
        code = f"<code>{html.escape(title)}</code>"
        path = None if obj is None else resolve(obj, target.strip())
        if path is None:
            return code
        return f'<autoref identifier="{html.escape(path)}" optional>{code}</autoref>'

    return ROLE_RE.sub(repl, text)


def convert(text: str, obj: griffe.Object | None = None) -> str:
    """A docstring in pplvi's reST dialect as Markdown."""
    return convert_roles(convert_blocks(text), obj)


class RstDocstrings(griffe.Extension):
    """Rewrite every docstring of a loaded package (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self._done: set[int] = set()

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:  # griffe >= 2
        self._walk(pkg)

    def on_package_loaded(self, *, pkg: griffe.Module, **kwargs: Any) -> None:  # griffe 1.x
        self._walk(pkg)

    def _walk(self, obj: griffe.Object) -> None:
        if obj.docstring is not None and id(obj.docstring) not in self._done:
            obj.docstring.value = convert(obj.docstring.value, obj)
            self._done.add(id(obj.docstring))
        for member in obj.members.values():
            if not member.is_alias:
                self._walk(member)
