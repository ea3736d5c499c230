"""Refuse a repeated id, whichever input format the rows came from.

A row's id is its explicit id, or else (no id, or null) its 0-based row index: its
default id. Both kinds end up in the output, so a default id may not repeat an
explicit one either, in whichever order the two rows come.
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_right
from typing import Any

from batching.records import InvalidRow, Row
from batching.schema import describe, invalid_row

__all__ = ["DefaultIdRuns", "IdRegistry"]

_FIX = "give every row an id, or none"


class DefaultIdRuns:
    """Which rows had no explicit id (so their id is their index), and their lines.

    Default ids are not stored one by one: that would cost ~100 MB per million rows
    for files without ids. Rows without an id come in gaps between rows with one; a
    gap is opened by its first row and kept as runs of indices when the next row
    with an id closes it. Files have ids on every row or on none, so there is at
    most one run; ids on every other row, the worst case, cost 24 bytes a run.

    Subclasses inline these on the hot path (an attribute test a row, measured at
    ~15 ns against ~50 for comparing each row's index with the expected one):

        if self._gap_start is None:  # a row without an id
            self._gap_start = row.index
        if self._gap_start is not None:  # a row with an id
            self._close_gap(row.index, row.line)
    """

    def __init__(self) -> None:
        # The index of the first row of the open gap; None while no gap is open.
        self._gap_start: int | None = None
        # Runs of rows without an id, ascending: rows [start, end), the first at `line`
        # and the rest on the lines after it. array('q'): 24 bytes a run, not ~150.
        self._run_starts = array("q")
        self._run_ends = array("q")
        self._run_lines = array("q")
        # The end of the last run: no id at or past it can be a default id. 0 while
        # there are no runs, so testing it settles a row of the usual files.
        self._runs_end = 0
        # Indices of rows that follow a blank line inside the open gap (JSONL only):
        # where line numbers jump, so each run's rows sit on consecutive lines.
        self._jumps: list[int] = []

    def no_id(self, index: int) -> None:
        """Row `index` has its index as its id: one the reader could not decode.

        >>> runs = DefaultIdRuns()
        >>> runs.no_id(0)
        """
        if self._gap_start is None:
            self._gap_start = index

    def skipped_line(self, index: int) -> None:
        """A blank line was skipped before row `index`: rows from it on shift a line.

        >>> runs = DefaultIdRuns()
        >>> runs.skipped_line(0)  # no row without an id before it: nothing to shift
        """
        if self._gap_start is not None:
            self._jumps.append(index)

    def _close_gap(self, index: int, line: int) -> None:
        """Keep the open gap, rows up to `index` (not included), as runs of rows on
        consecutive lines; `line` is that of row `index`, the one closing the gap."""
        assert self._gap_start is not None
        start, end = self._gap_start, index
        self._gap_start = None
        jumps, self._jumps = self._jumps, []
        runs: list[tuple[int, int, int]] = []
        # Backwards from the row closing the gap: a run ends at each jump.
        while True:
            while jumps and jumps[-1] >= end:
                jumps.pop()
                line -= 1  # the blank line above row `end`
            run_start = jumps[-1] if jumps else start
            line -= end - run_start
            runs.append((run_start, end, line))
            if run_start == start:
                break
            end = run_start
        for run_start, run_end, run_line in reversed(runs):
            self._run_starts.append(run_start)
            self._run_ends.append(run_end)
            self._run_lines.append(run_line)
        self._runs_end = index

    def _default_line(self, row_id: int) -> int | None:
        """The line of the earlier row without an id whose default id is `row_id`."""
        at = bisect_right(self._run_starts, row_id) - 1
        if at < 0 or row_id >= self._run_ends[at]:
            return None
        return self._run_lines[at] + row_id - self._run_starts[at]


class IdRegistry(DefaultIdRuns):
    """Remembers each explicit id and where it was first seen, to refuse repeats.

    This is the one structure that grows with the input: measured at 122 MB per
    million short string ids and 106 MB per million integer ids (a dict slot, the
    key and the line number), so ~1.2 GB for 10M rows with ids. Keeping only a
    64-bit hash of each id would cut that by about half but could call a good row a
    duplicate, and an on-disk index is far more code. Default ids are checked
    without being stored (see `DefaultIdRuns`).
    """

    def __init__(self, id_field: str, unit: str) -> None:
        super().__init__()
        self._id_field = id_field
        self._unit = unit
        self._first_seen: dict[object, int] = {}

    def check(self, obj: Any, row: Row, where: str) -> Row:
        """`row`, or an `InvalidRow` if its id repeats one; `obj` is the decoded row.

        >>> from batching.records import Request
        >>> ids = IdRegistry("id", "line")
        >>> ids.check({"prompt": "a"}, Request(index=0, id=0, line=1, prompt="a"), "p:1").id
        0
        >>> row = Request(index=1, id=0, line=2, prompt="b")
        >>> ids.check({"id": 0, "prompt": "b"}, row, "p:2").error.message[:60]
        "p:2: field 'id': duplicate id, integer 0 was first seen at l"
        """
        if type(obj) is not dict:
            self.no_id(row.index)  # an error row under its index
            return row
        raw = obj.get(self._id_field)
        if raw is None:
            if self._gap_start is None:
                self._gap_start = row.index
            # Files without ids: the dict stays empty, and an empty dict is falsy.
            if self._first_seen:
                return self._check_default(row, where)
            return row
        key = raw if type(raw) is str or type(raw) is int else _id_key(raw)
        if key is None:
            self.no_id(row.index)  # not an id at all: an error row under its index
            return row
        line = row.line
        if self._gap_start is not None:
            self._close_gap(row.index, line)
        first = self._first_seen.setdefault(key, line)
        if first == line:
            # Only an integer can equal a default id (the row index), not 1.0 or true.
            if self._runs_end and type(raw) is int and raw < self._runs_end:
                return self._check_explicit(raw, row, where)
            return row
        if isinstance(row, InvalidRow):
            return row
        return self._duplicate(row, where, raw, first, "; ids must be unique")

    def _check_explicit(self, raw: int, row: Row, where: str) -> Row:
        """Refuse an integer id that an earlier row without an id has as its default."""
        line = self._default_line(raw)
        if line is None:
            return row
        self._first_seen[raw] = line  # a later repeat is told of the earliest row
        if isinstance(row, InvalidRow):
            return row
        return self._duplicate(
            row,
            where,
            raw,
            line,
            f" as that row's default id (it has no {self._id_field!r}, so its id is its "
            f"0-based row number); {_FIX}",
        )

    def _check_default(self, row: Row, where: str) -> Row:
        """Refuse a row without an id whose default id an earlier row gave explicitly."""
        first = self._first_seen.get(row.index)
        if first is None or isinstance(row, InvalidRow):
            return row
        return self._duplicate(
            row,
            where,
            row.index,
            first,
            f"; this row has no {self._id_field!r}, so its id is its 0-based row number, "
            f"{row.index}; {_FIX}",
        )

    def _duplicate(self, row: Row, where: str, value: object, first: int, rest: str) -> Row:
        """`row` refused for repeating `value`, first seen at line (or row) `first`;
        `rest` ends the message: how the two came to share it, and what to do."""
        message = (
            f"{where}: field {self._id_field!r}: duplicate id, {describe(value)} was first "
            f"seen at {self._unit} {first}{rest}"
        )
        return invalid_row(row.index, row.line, message, row_id=row.id, kept=row.kept)


def _id_key(raw: object) -> object:
    """A dict key under which equal ids, and only those, collide.

    Python holds True == 1 == 1.0, but they are three different ids in the output.
    None for what is no id (NaN, infinity): the row is refused and keeps its index.
    """
    if isinstance(raw, str):
        return raw
    if isinstance(raw, bool):
        return ("bool", raw)
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float) and math.isfinite(raw):
        return ("float", raw)
    return None
