"""Typed keys: how one ``key=value`` option is checked and converted.

A section definition declares its keys as instances of these classes; the spec builder looks up
each option's key, converts the value, and reports a problem at the option's exact position when
the value is malformed or out of range.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Callable, Optional

from .document import Call, Item, Option

# Reports a lenient-mode warning about the value at a column: warn(message, col)
Warn = Callable[[str, Optional[int]], None]

_INT = re.compile(r"[+-]?\d+")
C_INT_MIN, C_INT_MAX = -(2**31), 2**31 - 1


class KeyValueError(ValueError):
    """A value does not fit its key.  ``col`` points at the offending item."""

    def __init__(self, message: str, line: int | None = None, col: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.col = col


def clip(text: str, limit: int = 60) -> str:
    """``text`` shortened for an error message (a value can be megabytes long)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _darknet_strip(text: str) -> str:
    """Darknet deletes every space and tab in a line before reading it."""
    return text.replace(" ", "").replace("\t", "")


def _atoi(text: str) -> int:
    """C ``atoi``: optional sign and leading digits; anything else stops the number (0 if none)."""
    m = re.match(r"\s*([+-]?\d+)", text)
    return int(m.group(1)) if m else 0


def _atof(text: str) -> float:
    m = re.match(r"\s*([+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|[+-]?inf(inity)?|[+-]?nan)", text, re.I)
    return float(m.group(1)) if m else 0.0


@dataclass
class Key:
    """Base key: a default and a one-line description.  ``training`` marks keys only training reads."""

    default: Any = None
    doc: str = ""
    training: bool = False

    kind = "value"

    def convert(self, option: Option, lenient: bool, warn: Warn) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _single(self, option: Option) -> Item:
        if not option.items or (len(option.items) == 1 and option.items[0].text == ""):
            raise KeyValueError(f"'{option.key}' has an empty value", option.line, option.value_col)
        if len(option.items) > 1:
            raise KeyValueError(f"'{option.key}' takes one {self.kind}, got a list of {len(option.items)}",
                                option.line, option.items[1].col)
        item = option.items[0]
        if item.call is not None:
            raise KeyValueError(f"'{option.key}' takes {self.kind_article()}, not a call", item.line, item.col)
        return item

    def kind_article(self) -> str:
        return ("an " if self.kind[0] in "aeiou" else "a ") + self.kind


@dataclass
class Int(Key):
    min: int | None = None
    max: int | None = None
    kind = "integer"
    zero = 0

    def parse_item(self, key: str, item: Item, lenient: bool, warn: Warn) -> int:
        text = item.text
        if _INT.fullmatch(text):
            value = int(text)
        elif lenient and text:
            value = _atoi(_darknet_strip(text))
            warn(f"'{key}={clip(text)}' is not an integer; read as {value} like Darknet's atoi", item.col)
        else:
            raise KeyValueError(f"'{key}' must be an integer, got {clip(text)!r}", item.line, item.col)
        self.check_range(key, value, item)
        return value

    def check_range(self, key: str, value: float, item: Item) -> None:
        if not C_INT_MIN <= value <= C_INT_MAX:
            # Darknet reads a C int (atoi): larger values overflow there, and torch cannot take them either
            raise KeyValueError(f"'{key}={clip(item.text)}' is out of range (Darknet reads a 32-bit integer: "
                                f"{C_INT_MIN}..{C_INT_MAX})", item.line, item.col)
        if self.min is not None and value < self.min:
            raise KeyValueError(f"'{key}={clip(item.text)}' is out of range (must be >= {self.min})", item.line,
                                item.col)
        if self.max is not None and value > self.max:
            raise KeyValueError(f"'{key}={clip(item.text)}' is out of range (must be <= {self.max})", item.line,
                                item.col)

    def convert(self, option: Option, lenient: bool, warn: Warn) -> int:
        return self.parse_item(option.key, self._single(option), lenient, warn)


@dataclass
class Flag(Int):
    """A Darknet boolean: an integer, 0 or 1."""

    min: int | None = 0
    max: int | None = 1


@dataclass
class Float(Key):
    min: float | None = None
    max: float | None = None
    min_open: bool = False  # True: value must be > min
    kind = "number"
    zero = 0.0

    def parse_item(self, key: str, item: Item, lenient: bool, warn: Warn) -> float:
        text = item.text
        try:
            value = float(text)
            if math.isnan(value):
                raise ValueError
        except ValueError:
            if lenient and text:
                value = _atof(_darknet_strip(text))
                warn(f"'{key}={clip(text)}' is not a number; read as {value} like Darknet's atof", item.col)
            else:
                raise KeyValueError(f"'{key}' must be a number, got {clip(text)!r}", item.line, item.col) from None
        if not math.isfinite(value):  # 'inf' (or 'nan' read leniently) would poison every computation
            raise KeyValueError(f"'{key}' must be a finite number, got {clip(text)!r}", item.line, item.col)
        if self.min is not None and (value < self.min or (self.min_open and value == self.min)):
            op = ">" if self.min_open else ">="
            raise KeyValueError(f"'{key}={clip(text)}' is out of range (must be {op} {self.min:g})", item.line,
                                item.col)
        if self.max is not None and value > self.max:
            raise KeyValueError(f"'{key}={clip(text)}' is out of range (must be <= {self.max:g})", item.line, item.col)
        return value

    def convert(self, option: Option, lenient: bool, warn: Warn) -> float:
        return self.parse_item(option.key, self._single(option), lenient, warn)


@dataclass
class Text(Key):
    """Free text: a path or a name Darknet reads but netspec does not interpret."""

    kind = "text value"

    def convert(self, option: Option, lenient: bool, warn: Warn) -> str:
        if not option.raw:
            raise KeyValueError(f"'{option.key}' has an empty value", option.line, option.value_col)
        return option.raw


@dataclass
class Choice(Key):
    """One of a fixed set of names.  ``aliases`` map other accepted spellings to a choice."""

    choices: tuple[str, ...] = ()
    aliases: dict | None = None
    lenient_fallback: str | None = None  # what Darknet uses for an unknown name (lenient mode only)
    kind = "name"

    def convert(self, option: Option, lenient: bool, warn: Warn) -> str:
        item = self._single(option)
        text = item.text
        if text in self.choices:
            return text
        if self.aliases and text in self.aliases:
            return self.aliases[text]
        if lenient and self.lenient_fallback is not None:
            warn(f"unknown {option.key} '{clip(text)}'{did_you_mean(text, self.choices)}; using "
                 f"{self.lenient_fallback} as Darknet does", item.col)
            return self.lenient_fallback
        raise KeyValueError(f"'{option.key}={clip(text)}' is not one of {', '.join(self.choices)}"
                            f"{did_you_mean(text, self.choices)}", item.line, item.col)


class _ListKey(Key):
    """A comma-separated list whose elements are read by ``element()``; an empty element is Darknet's 0."""

    min_len: int = 1
    kind = "list"

    def element(self) -> Int | Float:  # pragma: no cover - abstract
        raise NotImplementedError

    def convert(self, option: Option, lenient: bool, warn: Warn) -> tuple:
        if not option.items or option.raw == "":
            raise KeyValueError(f"'{option.key}' has an empty value", option.line, option.value_col)
        element = self.element()
        values = []
        for item in option.items:
            if item.call is not None:
                raise KeyValueError(f"'{option.key}' takes a {self.kind}, not a call", item.line, item.col)
            if item.text == "":
                if not lenient:
                    raise KeyValueError(f"empty element in '{option.key}' (a stray comma? Darknet would read it "
                                        "as 0)", item.line, item.col)
                warn(f"empty element in '{option.key}' read as 0, as Darknet does", item.col)
                values.append(type(element).zero)
                continue
            values.append(element.parse_item(option.key, item, lenient, warn))
        if len(values) < self.min_len:
            raise KeyValueError(f"'{option.key}' needs at least {self.min_len} values", option.line, option.value_col)
        return tuple(values)


@dataclass
class IntList(_ListKey):
    min_len: int = 1
    min: int | None = None
    max: int | None = None
    kind = "list of integers"

    def element(self) -> Int:
        return Int(min=self.min, max=self.max)


@dataclass
class FloatList(_ListKey):
    min_len: int = 1
    kind = "list of numbers"

    def element(self) -> Float:
        return Float()


@dataclass
class InitKey(Key):
    """An initialization scheme: a name (``zeros``) or a call (``normal(std=0.01)``)."""

    kind = "initializer"

    def convert(self, option: Option, lenient: bool, warn: Warn) -> Call:
        if len(option.items) != 1 or option.items[0].text == "":
            raise KeyValueError(f"'{option.key}' takes one initializer such as normal(std=0.01)",
                                option.line, option.value_col)
        item = option.items[0]
        call = item.call if item.call is not None else Call(item.text)
        problem = check_init_call(call)
        if problem:
            raise KeyValueError(f"'{option.key}={clip(item.text)}': {problem}", item.line, item.col)
        return call


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    import difflib

    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    if not close:
        lowered = {c.lower(): c for c in candidates}
        if word.lower() in lowered:
            close = [lowered[word.lower()]]
    return f" (did you mean '{close[0]}'?)" if close else ""


# Initialization schemes the ``init=``/``bias_init=`` keys accept: name -> argument names, in the
# order positional arguments bind to them.  ``netspec.init`` implements each one.
INIT_SCHEMES: dict[str, tuple[str, ...]] = {
    "darknet": (),
    "kaiming_normal": ("a", "mode"),
    "kaiming_uniform": ("a", "mode"),
    "xavier_normal": ("gain",),
    "xavier_uniform": ("gain",),
    "normal": ("std", "mean"),
    "trunc_normal": ("std", "mean", "a", "b"),
    "uniform": ("a", "b"),
    "orthogonal": ("gain",),
    "constant": ("value",),
    "zeros": (),
    "ones": (),
}
_TEXT_ARGS = {"mode"}


def init_arguments(call: Call) -> dict[str, float | str]:
    """The arguments of an init call by name (positional ones bound in declaration order)."""
    names = INIT_SCHEMES[call.name]
    out: dict[str, float | str] = {}
    for name, value in zip(names, call.args):
        out[name] = value if name in _TEXT_ARGS else float(value)
    for name, value in call.kwargs:
        out[name] = value if name in _TEXT_ARGS else float(value)
    return out


def check_init_call(call: Call) -> str | None:
    """Why ``call`` is not a valid initializer, or None."""
    if call.name not in INIT_SCHEMES:
        return f"unknown initializer '{call.name}'{did_you_mean(call.name, INIT_SCHEMES)}; known: " + \
            ", ".join(INIT_SCHEMES)
    names = INIT_SCHEMES[call.name]
    if len(call.args) > len(names):
        return f"{call.name}() takes at most {len(names)} argument(s)"
    given = set(names[: len(call.args)])
    for name, _ in call.kwargs:
        if name not in names:
            return f"{call.name}() has no argument '{name}'{did_you_mean(name, names)}"
        if name in given:
            return f"{call.name}() got '{name}' twice"
        given.add(name)
    try:
        args = init_arguments(call)
    except ValueError:
        return f"{call.name}() arguments must be numbers"
    if call.name == "constant" and "value" not in args:
        return "constant() needs a value, e.g. constant(0.5)"
    if "mode" in args and args["mode"] not in ("fan_in", "fan_out"):
        return "mode must be fan_in or fan_out"
    for key in ("std", "gain"):
        if key in args and not float(args[key]) > 0:
            return f"{key} must be > 0"
    return None
