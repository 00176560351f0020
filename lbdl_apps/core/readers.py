"""Dataset readers in a registry (DESIGN.md): each format an app reads is one entry — a
name, how to recognise it, the function that reads it — so a new format is one entry and
one test, and `--format NAME` (or recognition) picks it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from lbdl_apps.core.errors import LbdlError

R = TypeVar("R", bound=Callable)


@dataclass(frozen=True)
class Reader(Generic[R]):
    """One data format: `matches(path)` recognises it, `read` reads it."""

    name: str
    description: str  # for messages: "a folder of class folders"
    matches: Callable[[Path], bool]
    read: R


class Readers(Generic[R]):
    """An app's readers, tried in the order they were registered."""

    def __init__(self, what: str) -> None:
        self.what = what  # for messages: "classification data"
        self.entries: list[Reader[R]] = []

    def register(
        self, name: str, description: str, matches: Callable[[Path], bool]
    ) -> Callable[[R], R]:
        """Decorator: `@READERS.register("csv", "a .csv of path,label", is_csv)`."""

        def add(read: R) -> R:
            self.entries.append(Reader(name, description, matches, read))
            return read

        return add

    @property
    def names(self) -> list[str]:
        return [entry.name for entry in self.entries]

    def expected(self) -> str:
        """The formats, for an error message."""
        return "; ".join(f"{e.name}: {e.description}" for e in self.entries)

    def find(self, path: Path, name: str | None = None) -> Reader[R]:
        """The reader named `name`, else the first that recognises `path`; an LbdlError
        listing the formats when none does."""
        if name is not None:
            for entry in self.entries:
                if entry.name == name:
                    return entry
            raise LbdlError(f"--format {name}: choose one of {', '.join(self.names)}")
        for entry in self.entries:
            if entry.matches(path):
                return entry
        raise LbdlError(f"{path}: not {self.what} lbdl can read (expected {self.expected()})")
