"""Refuse a repeated explicit id, whichever input format the rows came from."""

from __future__ import annotations

from typing import Any

from batching.records import InvalidRow, Row
from batching.schema import describe, invalid_row

__all__ = ["IdRegistry"]


class IdRegistry:
    """Remembers each explicit id and where it was first seen, to refuse repeats.

    This is the one structure that grows with the input: measured at 122 MB per
    million short string ids and 106 MB per million integer ids (a dict slot, the
    key and the line number), so ~1.2 GB for 10M rows with ids. Keeping only a
    64-bit hash of each id would cut that by about half but could call a good row a
    duplicate, and an on-disk index is far more code; ids the reader makes up from
    the row number are unique by construction and are not stored at all.
    """

    def __init__(self, id_field: str, unit: str) -> None:
        self._id_field = id_field
        self._unit = unit
        self._first_seen: dict[object, int] = {}

    def check(self, obj: Any, row: Row, where: str) -> Row:
        if type(obj) is not dict:
            return row
        raw = obj.get(self._id_field)
        if raw is None:
            return row
        key = raw if type(raw) is str or type(raw) is int else _id_key(raw)
        if key is None:
            return row
        first = self._first_seen.setdefault(key, row.line)
        if first == row.line or isinstance(row, InvalidRow):
            return row
        message = (
            f"{where}: field {self._id_field!r}: duplicate id, {describe(raw)} was first "
            f"seen at {self._unit} {first}; ids must be unique"
        )
        return invalid_row(row.index, row.line, message, row_id=row.id, kept=row.kept)


def _id_key(raw: object) -> object:
    """A dict key under which equal ids, and only those, collide.

    Python holds True == 1 == 1.0, but they are three different ids in the output.
    """
    if isinstance(raw, str):
        return raw
    if isinstance(raw, bool):
        return ("bool", raw)
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float) and raw == raw:
        return ("float", raw)
    return None
