"""`ClosedOnExit`: the one way an input source and an output writer end a `with`.

A module of its own so `row_source` and `result_writer` (both there to break import
cycles) can share it without importing each other.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import TracebackType
from typing import TypeVar

__all__ = ["ClosedOnExit"]

_Self = TypeVar("_Self", bound="ClosedOnExit")


class ClosedOnExit(ABC):
    """Something a `with` block closes on the way out, whether or not it raised.

    >>> class Door(ClosedOnExit):
    ...     is_open = True
    ...     def close(self) -> None:
    ...         self.is_open = False
    >>> with Door() as door:
    ...     pass
    >>> door.is_open
    False
    """

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
