"""Error and warning types: every problem carries the file, line and column it is about."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One problem found in a cfg: where it is and what to do about it."""

    message: str
    path: str | None = None
    line: int | None = None
    col: int | None = None
    severity: str = "error"  # "error" or "warning"

    def __str__(self) -> str:
        where = self.path or "<cfg>"
        if self.line is not None:
            where += f":{self.line}"
            if self.col is not None:
                where += f":{self.col}"
        prefix = "warning: " if self.severity == "warning" else ""
        return f"{where}: {prefix}{self.message}"


class NetspecError(Exception):
    """Base class of every error netspec raises on purpose."""


class CfgError(NetspecError, ValueError):
    """A cfg is invalid.  ``problems`` lists everything found; the first one gives ``path/line/col``."""

    def __init__(self, problems: list[Problem] | Problem | str, *, path: str | None = None,
                 line: int | None = None, col: int | None = None) -> None:
        if isinstance(problems, str):
            problems = [Problem(problems, path, line, col)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems: list[Problem] = list(problems)
        first = self.problems[0] if self.problems else Problem("invalid cfg", path, line, col)
        self.path = first.path
        self.line = first.line
        self.col = first.col
        super().__init__("\n".join(str(p) for p in self.problems))


class WeightsError(NetspecError, ValueError):
    """A Darknet ``.weights`` file does not fit the network or is damaged."""


class CheckpointError(NetspecError, ValueError):
    """A netspec checkpoint cannot be loaded (corrupt, unsafe, or for another network) or saved as asked."""


class LimitError(CfgError):
    """The network a cfg describes is larger than the configured resource limits."""


class DataError(NetspecError, ValueError):
    """A data file (``obj.data``, an image list, a label file, a names file, COCO json) is invalid.

    The message starts with ``path:line:`` (or ``path:`` when no line applies)."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None) -> None:
        self.path = path
        self.line = line
        where = "" if path is None else (f"{path}:{line}: " if line is not None else f"{path}: ")
        super().__init__(where + message)


class DataWarning(UserWarning):
    """Something in a data set Darknet tolerates but a user should know about (e.g. missing label files)."""


class SectionError(NetspecError, ValueError):
    """A section definition cannot be registered (a name already taken, a key that is not a Key, ...)."""
