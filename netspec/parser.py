"""Text → Document: the Lark LALR grammar in ``grammar/cfg.lark`` applied to a cfg file.

One parser is built on first use and cached for the life of the process; a syntax error is
reported with its exact line and column, and parsing continues past a bad line so that every
syntax error in the file is reported at once.
"""

from __future__ import annotations

import functools
import os
import re
import stat
import sys
from pathlib import Path

from .document import Block, Call, Document, Item, Option
from .errors import CfgError, Problem

MAX_SYNTAX_ERRORS = 20


def grammar_path() -> Path:
    """Where ``cfg.lark`` is: inside the installed package, or at the top of a source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "grammar" / "cfg.lark", here.parent / "grammar" / "cfg.lark"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("netspec's grammar file cfg.lark is missing from the installation")


@functools.lru_cache(maxsize=1)
def _lark():
    from lark import Lark, Transformer, v_args

    @v_args(inline=True)
    class _ToTuples(Transformer):
        # Runs inside the LALR parser (no parse tree is kept): returns plain tuples that
        # _document() turns into Blocks and Options once the source text is at hand.
        def header(self, bracket, name=None):
            return ("header", bracket, name)

        def option(self, key, value):
            return ("option", key, value)

        def value(self, *children):
            # Keep empty items (`1,,2` or a trailing comma) so they can be reported: Darknet
            # reads each of them as 0.
            items = []
            expect_item = True
            for child in children:
                if isinstance(child, tuple):
                    items.append(child)
                    expect_item = False
                    continue
                if expect_item:
                    items.append(("item", child.start_pos, child.start_pos, child.line, child.column, None))
                expect_item = True
            if expect_item and children:
                last = children[-1]
                items.append(("item", last.end_pos, last.end_pos, last.line, last.column + 1, None))
            return tuple(items)

        def item(self, *atoms):
            return ("item", atoms[0].start_pos, atoms[-1].end_pos, atoms[0].line, atoms[0].column, None)

        def atom(self, token):
            return token

        def call(self, name, *args):
            rpar = args[-1]
            args = [a for a in args[:-1] if isinstance(a, tuple)]
            positional = tuple(str(a[1]) for a in args if a is not None and a[0] == "pos")
            keyword = tuple((str(a[1]), str(a[2])) for a in args if a is not None and a[0] == "kw")
            end = rpar.end_pos
            return ("item", name.start_pos, end, name.line, name.column, Call(str(name), positional, keyword))

        def kwarg(self, name, value):
            return ("kw", name, value, value.end_pos)

        def posarg(self, value):
            return ("pos", value, None, value.end_pos)

        def start(self, *lines):
            return lines

    return Lark(grammar_path().read_text(encoding="utf-8"), parser="lalr", lexer="contextual",
                transformer=_ToTuples(), maybe_placeholders=False)


def _describe_token(token) -> str:
    kind = getattr(token, "type", "")
    if kind in ("_NL", "$END"):
        return "end of line"
    return repr(str(token))


_EXPECTED_WORDS = {"_NL": "end of line", "KEY": "a key", "__ANON_0": "'='", "EQUAL": "'='",
                   "NUMBER": "a value", "WORD": "a value", "LSQB": "'['", "RSQB": "']'",
                   "SECTION": "a section name", "COMMA": "','", "RPAR": "')'", "_LPAR": "'('"}


def _syntax_problem(exc, path: str | None, lines: list[str]) -> Problem:
    from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedToken

    line = getattr(exc, "line", None)
    col = getattr(exc, "column", None)
    if isinstance(exc, UnexpectedCharacters):
        text = lines[line - 1] if line and 0 < line <= len(lines) else ""
        char = exc.char
        stripped = text.strip()
        if stripped.startswith("[") and "]" not in stripped:
            msg = "section header is missing its closing ']'"
        elif stripped.startswith("[") and stripped.find("]") < len(stripped) - 1:
            msg = f"unexpected {char!r} after the section header (Darknet would not recognise this section)"
        elif "=" not in stripped:
            msg = f"expected 'key=value', got {stripped[:40]!r}"
        else:
            msg = f"unexpected character {char!r}"
    elif isinstance(exc, UnexpectedToken):
        token = exc.token
        expected = sorted({_EXPECTED_WORDS.get(e, e.lower().strip("_")) for e in exc.expected})
        if getattr(token, "type", "") == "$END":
            line = len(lines)
            col = len(lines[-1]) + 1 if lines else 1
        if "'='" in expected and getattr(token, "type", "") in ("_NL", "$END"):
            msg = "expected '=' and a value after the key"
        else:
            msg = f"unexpected {_describe_token(token)}, expected {' or '.join(expected)}"
    elif isinstance(exc, UnexpectedEOF):
        msg = "unexpected end of file"
        line = len(lines)
        col = 1
    else:  # pragma: no cover - lark raises only the kinds above
        msg = str(exc)
    return Problem(msg, path, line, col)


def decode_cfg_bytes(data: bytes, path: str | None) -> str:
    """The text of a cfg file's bytes (a UTF-8 BOM dropped); :class:`CfgError` at the first non-UTF-8 byte."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]  # a UTF-8 byte-order mark is an encoding artefact, not content
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = data[: exc.start]
        line = before.count(b"\n") + 1
        # the column counts characters, not bytes, like every other position netspec reports
        col = len(before[before.rfind(b"\n") + 1:].decode("utf-8", errors="replace")) + 1
        raise CfgError(Problem(f"not UTF-8 text (byte 0x{data[exc.start]:02x})", path, line, col)) from None
    return text


def _check_text(text: str, path: str | None) -> None:
    nul = text.find("\x00")
    if nul >= 0:
        line = text.count("\n", 0, nul) + 1
        col = nul - (text.rfind("\n", 0, nul) + 1) + 1
        raise CfgError(Problem("NUL byte in the file (is this a binary file?)", path, line, col))


def parse_text(text: str, path: str | None = None) -> Document:
    """Parse cfg text.  Raises CfgError listing every syntax error (up to MAX_SYNTAX_ERRORS)."""
    from lark.exceptions import UnexpectedInput

    if text.startswith("\ufeff"):
        text = text[1:]
    # Lark counts lines at '\n' only: a lone '\r' (old Mac line end) becomes '\n' so that positions
    # stay right.  Same length, so offsets into ``text`` are unchanged.
    text = _LONE_CR.sub("\n", text)
    _check_text(text, path)
    parser = _lark()
    try:
        return _document(_fast_entries(text, parser), text, path)
    except _NotSimple:
        pass  # a line the fast path cannot take: the whole file goes through Lark, with error recovery
    problems: list[Problem] = []
    work = text
    lines = _split_lines(text)
    while True:
        try:
            result = parser.parse(work)
            break
        except UnexpectedInput as exc:
            problem = _syntax_problem(exc, path, lines)
            if problem in problems:  # blanking did not move past it: stop rather than repeat it
                break
            problems.append(problem)
            if len(problems) >= MAX_SYNTAX_ERRORS or problem.line is None:
                break
            blanked = _blank_line(work, problem.line)
            if blanked == work:
                break
            work = blanked
    if problems:
        raise CfgError(problems)
    return _document(result, text, path)


_LONE_CR = re.compile(r"\r(?!\n)")

# The fast path.  Lark's LALR parser in pure Python takes minutes and gigabytes for a 50 MB cfg.  Almost every
# line of a real cfg is one of these simple forms, which one regex recognises; they yield exactly the entries
# the grammar's transformer would (tests/test_fuzz_parser.py checks that on generated files).  Any other line
# is parsed alone by Lark, and a line Lark rejects sends the whole file through Lark for its error reports.
_ATOM = r"[^\s,=#;()\[\]]+"
_SIMPLE_LINE = re.compile(rf"""[ \t]*(?:
    (?P<key>[A-Za-z_][A-Za-z0-9_.]*)[ \t]*=[ \t]*(?P<value>{_ATOM}(?:[ \t]*,[ \t]*{_ATOM})*)
    | \[(?P<section>[A-Za-z_][A-Za-z0-9_]*)\]
    )?[ \t]*(?:[#;].*)?""", re.X)
_ATOM_RE = re.compile(_ATOM)


class _NotSimple(Exception):
    """The fast path cannot parse the file (Lark rejects one of its lines)."""


def _fast_entries(text: str, parser):
    """The transformer's entries for ``text`` (a generator; raises _NotSimple for a syntax error)."""
    from lark import Token
    from lark.exceptions import UnexpectedInput

    start = 0
    for line_no, line in enumerate(_iter_lines(text), 1):
        offset = start
        start += len(line) + 1
        if line.endswith("\r"):
            line = line[:-1]
        m = _SIMPLE_LINE.fullmatch(line)
        if m is None:
            try:
                entries = parser.parse(line)
            except UnexpectedInput:
                raise _NotSimple from None
            yield from (_moved(entry, offset, line_no) for entry in entries)
            continue
        section = m.group("section")
        if section is not None:
            col = m.start("section")
            yield ("header", Token("LSQB", "[", offset + col - 1, line_no, col),
                   Token("SECTION", section, offset + col, line_no, col + 1))
            continue
        key = m.group("key")
        if key is None:
            continue  # blank or comment line
        col = m.start("key")
        key_token = Token("KEY", key, offset + col, line_no, col + 1)
        base = m.start("value")
        items = tuple(("item", offset + base + a.start(), offset + base + a.end(), line_no, base + a.start() + 1, None)
                      for a in _ATOM_RE.finditer(m.group("value")))
        yield ("option", key_token, items)


def _iter_lines(text: str):
    """``text.split("\\n")`` one line at a time (the whole list of a 50 MB file's lines is 200 MB)."""
    start = 0
    while True:
        end = text.find("\n", start)
        if end < 0:
            yield text[start:]
            return
        yield text[start:end]
        start = end + 1


def _moved(entry, offset: int, line_no: int):
    """An entry of a line parsed on its own, moved to where the line is in the file."""
    from lark import Token

    def token(t):
        if t is None:
            return None
        return Token(t.type, str(t), t.start_pos + offset, line_no, t.column)

    if entry[0] == "header":
        return ("header", token(entry[1]), token(entry[2]))
    _, key, items = entry
    return ("option", token(key), tuple((kind, s + offset, e + offset, line_no, col, call)
                                        for kind, s, e, _, col, call in items))


def _split_lines(text: str) -> list[str]:
    """The lines as Lark numbers them (split at '\n' only, unlike str.splitlines), without line ends."""
    return [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]


def _blank_line(text: str, line_no: int) -> str:
    """``text`` with line ``line_no`` replaced by spaces (positions of other lines unchanged)."""
    lines = text.split("\n")
    if not 0 < line_no <= len(lines):
        return text
    line = lines[line_no - 1]
    body = line[:-1] if line.endswith("\r") else line
    lines[line_no - 1] = " " * len(body) + line[len(body):]
    return "\n".join(lines)


def _document(lines, text: str, path: str | None) -> Document:
    blocks: list[Block] = []
    problems: list[Problem] = []
    for entry in lines:
        if entry[0] == "header":
            _, bracket, token = entry
            if token is None or not str(token).strip():  # '[]' or '[ ]'
                problems.append(Problem("empty section name '[]'", path, bracket.line, bracket.column))
                continue
            name = str(token).strip()
            blocks.append(Block(name, bracket.line, bracket.column))
            continue
        _, key, raw_items = entry
        value_col = key.column + len(str(key)) + 1
        if raw_items:
            start = raw_items[0][1]
            end = raw_items[-1][2]
            raw = text[start:end]
            value_col = raw_items[0][4]
        else:
            raw = ""
        if len(raw_items) == 1 and raw_items[0][5] is None:
            # one plain item: its text is the raw value; sharing the string halves a large file's memory
            items = (Item(raw, raw_items[0][3], raw_items[0][4]),)
        else:
            items = tuple(_item(text, raw) for raw in raw_items)
        option = Option(sys.intern(str(key)), items, key.line, key.column, value_col, raw)
        if not blocks:
            problems.append(Problem(f"option '{key}' before the first section header; the file must start "
                                    "with [net]", path, key.line, key.column))
            continue
        blocks[-1].options.append(option)
    if problems:
        raise CfgError(problems)
    return Document(blocks, path, text)


def _item(text: str, raw) -> Item:
    _, start, end, line, col, call = raw
    return Item(text[start:end], line, col, call)


def read_source(source: str | os.PathLike | bytes) -> tuple[str, str | None]:
    """Return ``(text, path)`` for a path, cfg text, or bytes."""
    if isinstance(source, bytes):
        return decode_cfg_bytes(source, None), None
    if isinstance(source, os.PathLike) or (isinstance(source, str) and _looks_like_path(source)):
        path = os.fspath(source)
        try:
            with open(path, "rb") as fh:
                mode = os.fstat(fh.fileno()).st_mode
                # /dev/zero and the like never end: refuse rather than read until memory runs out
                data = None if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else fh.read()
        except ValueError:  # e.g. a NUL character in the name
            raise CfgError(Problem("is not a valid file name", repr(path))) from None
        except IsADirectoryError:
            raise CfgError(Problem("is a directory, not a cfg file", path)) from None
        except FileNotFoundError:
            raise CfgError(Problem("no such file", path)) from None
        except PermissionError:
            raise CfgError(Problem("permission denied", path)) from None
        except OSError as exc:
            raise CfgError(Problem(f"cannot read: {exc.strerror or exc}", path)) from None
        if data is None:
            raise CfgError(Problem("is a device, not a cfg file", path))
        return decode_cfg_bytes(data, path), path
    return source, None


def _looks_like_path(source: str) -> bool:
    # '' is empty cfg text (reported as "no sections"), not a file named ''
    if not source.strip():
        return False
    return "\n" not in source and "\r" not in source and "[" not in source and "=" not in source


def parse(source: str | os.PathLike | bytes, path: str | None = None) -> Document:
    """Parse a cfg given as a path, as text, or as bytes, into a Document of blocks.

    Every block and option keeps its line and column.  Raises :class:`CfgError` on syntax errors.
    """
    text, found_path = read_source(source)
    return parse_text(text, path or found_path)
