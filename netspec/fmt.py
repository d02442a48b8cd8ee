"""Canonical layout of a cfg file, changing nothing that Darknet or netspec reads from it.

* ``key=value`` with no spaces around ``=`` and no indentation; the value is kept exactly as written.
* Section headers as ``[name]``; one blank line before each section (and before the comment lines directly
  above it), blank-line runs inside a section collapsed to one, no blank lines at the start or end.
* Comment lines stay where they are.  An inline comment (``filters=64  # stem``, which netspec ignores but
  Darknet would read as part of the value) moves to its own line above its option, so that Darknet and
  netspec read the formatted file the same way.
* Nothing is reordered.  ``normalize=True`` also replaces Darknet's aliases by the canonical spelling:
  section names (``[conv]`` -> ``[convolutional]``) and aliased values (``weights_type=per_layer`` ->
  ``per_feature``).

The file must parse (syntax only: a file in progress with unknown keys or wrong shapes can be formatted).
"""

from __future__ import annotations

import re

from .document import Block, Document, Option
from .parser import parse_text

_COMMENT_START = re.compile(r"[#;]")
_WS = " \t\f\v\r"


def format_document(document: Document, normalize: bool = False) -> str:
    """The canonical text of a parsed cfg (``document.text`` gives the comments and blank lines)."""
    headers: dict[int, Block] = {}
    options: dict[int, tuple[Block, Option]] = {}
    for block in document.blocks:
        headers[block.line] = block
        for opt in block.options:
            options[opt.line] = (block, opt)
    section_names, value_aliases = _aliases() if normalize else ({}, {})

    # (kind, text) per output line; kind is "blank", "comment", "header" or "option"
    lines: list[tuple[str, str]] = []
    for number, line in enumerate(document.text.split("\n"), 1):
        stripped = line.strip(_WS)
        if not stripped:
            lines.append(("blank", ""))
            continue
        if stripped[0] in "#;":
            lines.append(("comment", stripped))
            continue
        # Keys, values and section names never contain '#' or ';': the first one starts an inline comment.
        m = _COMMENT_START.search(stripped)
        if m is not None:
            lines.append(("comment", stripped[m.start():].rstrip(_WS)))
        if number in headers:
            name = headers[number].section
            lines.append(("header", f"[{section_names.get(name, name)}]"))
        elif number in options:
            block, opt = options[number]
            value = opt.raw
            section = section_names.get(block.section, block.section)
            value = value_aliases.get((section, opt.key), {}).get(value, value)
            lines.append(("option", f"{opt.key}={value}"))
        else:  # pragma: no cover - every non-comment, non-blank line of a parsed file is a header or an option
            raise AssertionError(f"line {number} is neither a header nor an option: {line!r}")
    return _layout(lines)


def _layout(lines: list[tuple[str, str]]) -> str:
    out: list[str] = []
    blank = False  # a blank line is due before the next group
    i = 0
    while i < len(lines):
        kind, text = lines[i]
        if kind == "blank":
            blank = True
            i += 1
            continue
        j = i + 1
        if kind == "comment":
            while j < len(lines) and lines[j][0] == "comment":
                j += 1
        group = [t for _, t in lines[i:j]]
        if kind == "comment" and j < len(lines) and lines[j][0] == "header":
            group.append(lines[j][1])  # the comment lines directly above a header belong to its section
            j += 1
            kind = "header"
        if kind == "header":
            blank = True  # exactly one blank line before every section
        if out and blank:
            out.append("")
        out.extend(group)
        blank = False
        i = j
    return "\n".join(out) + "\n" if out else ""


def _aliases() -> tuple[dict[str, str], dict[tuple[str, str], dict[str, str]]]:
    """Section alias -> name, and (section, key) -> {aliased value -> canonical value}."""
    from .keys import Choice
    from .sections.base import registry

    sections = registry()
    names = {alias: section.name for alias, section in sections.items() if alias != section.name}
    values: dict[tuple[str, str], dict[str, str]] = {}
    for name, section in sections.items():
        if name != section.name:
            continue
        for key, spec in section.all_keys().items():
            if isinstance(spec, Choice) and spec.aliases:
                values[(name, key)] = dict(spec.aliases)
    return names, values


def format_text(text: str, normalize: bool = False, path: str | None = None) -> str:
    """Format cfg text.  Raises :class:`~netspec.errors.CfgError` when it does not parse."""
    return format_document(parse_text(text, path), normalize)


__all__ = ["format_document", "format_text"]
