"""The parsed form of a cfg file: a document of blocks of options, each with its position."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

# __slots__ where dataclasses support them (3.10+): a large cfg has millions of Items and Options, and
# slots make each about half the size.
_SLOTS = {"slots": True} if sys.version_info >= (3, 10) else {}


@dataclass(frozen=True)
class Call:
    """A call-form value such as ``normal(std=0.01)``."""

    name: str
    args: tuple[str, ...] = ()
    kwargs: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        parts = list(self.args) + [f"{k}={v}" for k, v in self.kwargs]
        return f"{self.name}({', '.join(parts)})"


@dataclass(frozen=True, **_SLOTS)
class Item:
    """One comma-separated element of a value; ``text`` is verbatim ('' for an empty item)."""

    text: str
    line: int
    col: int
    call: Call | None = None


@dataclass(frozen=True, **_SLOTS)
class Option:
    """``key = value`` with the position of the key and of the value."""

    key: str
    items: tuple[Item, ...]
    line: int
    col: int
    value_col: int
    raw: str  # the value text as written (without an inline comment)

    @property
    def value(self) -> str:
        return self.raw


@dataclass
class Block:
    """A ``[section]`` with its options in file order (duplicates kept, so they can be reported)."""

    section: str
    line: int
    col: int
    options: list[Option] = field(default_factory=list)

    def get(self, key: str) -> Option | None:
        """The first option named ``key`` (Darknet's first-wins rule), or None."""
        for opt in self.options:
            if opt.key == key:
                return opt
        return None


@dataclass
class Document:
    """A parsed cfg: its blocks, where it came from, and its text."""

    blocks: list[Block]
    path: str | None = None
    text: str = ""

    def __iter__(self):
        return iter(self.blocks)

    def __len__(self) -> int:
        return len(self.blocks)
