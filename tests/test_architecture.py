"""One place per section type: code outside ``netspec/sections/`` never asks which section it holds.

Checked on the source: no module outside the package imports a section definition module (only the shared
interfaces: ``base``, and the head-loss types), and no comparison sets a value against a section's name or
alias (``spec.type == "yolo"``, ``kind in ("conv", "route")``).  Behaviour that depends on the section
comes from its hooks (see :class:`netspec.Section`)."""

from __future__ import annotations

import ast

from netspec.sections.base import registry

from .conftest import REPO

INTERFACES = {"base", "head_loss"}  # section-package modules that define shared types, not sections


def _outside_files():
    for path in sorted((REPO / "netspec").rglob("*.py")):
        if "sections" not in path.relative_to(REPO / "netspec").parts[:1]:
            yield path


def _strings(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [s for elt in node.elts for s in _strings(elt)]
    return []


def test_no_module_outside_sections_imports_a_section_definition():
    found = []
    for path in _outside_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                parts = node.module.split(".")
                if "sections" in parts:
                    rest = parts[parts.index("sections") + 1:]
                    if rest and rest[0] not in INTERFACES:
                        found.append(f"{path.relative_to(REPO)}:{node.lineno}: from {node.module} import ...")
                    if not rest:
                        found += [f"{path.relative_to(REPO)}:{node.lineno}: from {node.module} import {a.name}"
                                  for a in node.names if a.name not in INTERFACES]
    assert not found, "\n".join(found)


# What holds a section's identity: ``spec.type``, ``block.section``, ``section.name``, a ``kind`` variable.
IDENTITY = {"type", "section", "name", "kind", "port_kind"}


def _identity(node: ast.AST) -> str | None:
    if isinstance(node, ast.Attribute):
        return node.attr if node.attr in IDENTITY else None
    if isinstance(node, ast.Name):
        return node.id if node.id in IDENTITY else None
    return None


def test_no_comparison_of_a_section_identity_with_a_section_name_outside_sections():
    names = set(registry())
    found = []
    for path in _outside_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Compare):
                continue
            operands = [node.left, *node.comparators]
            hits = [s for op in operands for s in _strings(op) if s in names]
            if hits and any(_identity(op) for op in operands):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}: compares with section name(s) {hits}")
    assert not found, "\n".join(found)


def test_the_checks_find_what_they_look_for():
    tree = ast.parse("if spec.type == 'yolo' or kind in ('conv', 'route'): pass\nif layout == 'connected': pass")
    compares = [n for n in ast.walk(tree) if isinstance(n, ast.Compare)]
    flagged = [n for n in compares if any(_identity(op) for op in [n.left, *n.comparators])
               and any(s in registry() for op in [n.left, *n.comparators] for s in _strings(op))]
    assert len(flagged) == 2
