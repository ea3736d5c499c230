"""Warnings for row fields whose names look like misspellings of fields we read.

A row may carry any other field (an id of its own, metadata kept with
`--keep-fields`), so an unknown field is never an error. But `max_token` or
`temprature` is ignored just as silently, and the user finds out after the run,
from outputs made with the defaults. A field whose name is close to one
bizra-batch reads (difflib's ratio >= 0.8: about one letter dropped, added or
changed in a name of five or more) gets one warning per name on the `bizra_batch`
logger, as the readers' other warnings do, naming where it was first seen and the
field it is probably meant to be.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Collection

from batching.config import InputConfig
from batching.lora import ADAPTER_FIELD
from batching.schema import ROW_SAMPLING_FIELDS

__all__ = ["FieldSpelling"]

logger = logging.getLogger("bizra_batch")

_CUTOFF = 0.8
# In names shorter than this one letter makes another word ("uid", "idx" and "top"
# are names of their own, not typos of "id" and "stop").
_MIN_LENGTH = 4
# Bounds for input whose keys are data (new keys on every row): past them a new
# key set or name is still checked but not remembered, and past _MAX_NAMES a new
# name is taken for no misspelling without comparing it.
_MAX_KEY_SETS = 1024
_MAX_NAMES = 4096


class FieldSpelling:
    """Warns, once per name, about fields that look like misspellings of those read.

    Cost: `cleared` holds every name that needs no more checking (the fields read
    or kept, names like none of them, names warned about), so a row whose names are
    all in it (nearly every row after the first) costs one superset test, ~0.1 µs;
    the readers make that test inline. Other rows are remembered by key set.

    The warning goes to the `bizra_batch` logger (stderr), here: "p.jsonl:1: unknown
    field 'max_token' is ignored; did you mean 'max_tokens'?"

    >>> spelling = FieldSpelling(InputConfig(path="p.jsonl"))
    >>> spelling.check({"prompt": "Hi", "max_token": 5}, "p.jsonl:1")
    >>> "max_token" in spelling.cleared  # warned about once, never again
    True
    """

    def __init__(self, fields: InputConfig) -> None:
        self._read = (
            fields.prompt_field,
            fields.messages_field,
            fields.id_field,
            *ROW_SAMPLING_FIELDS,
            ADAPTER_FIELD,
        )
        # A kept field is the user's own on purpose, however it is spelt.
        self.cleared = {*self._read, *fields.keep_fields}
        if fields.template is not None:
            self.cleared.update(fields.template.fields)
        # The fields that give a row what `name` would: itself, or either of a pair
        # (a chat row's "prompt_id" is no misspelt prompt).
        self._given_by = {name: frozenset((name,)) for name in self._read}
        for pair in (
            (fields.prompt_field, fields.messages_field),
            ("json_schema", "response_format"),
        ):
            self._given_by.update(dict.fromkeys(pair, frozenset(pair)))
        # Key sets whose names were all checked, for the rows whose near miss is
        # excused by the row itself ("prompt_id" beside "messages"), so not cleared.
        self._key_sets_seen: set[tuple[str, ...]] = set()
        self._closest: dict[str, str | None] = {}

    def check(self, row: Collection[str], where: str) -> None:
        """Warn about the misspelt-looking fields of `row` (its keys, or a Parquet
        file's column names) not warned about yet."""
        if self.cleared.issuperset(row):
            return
        keys = tuple(row)
        if keys in self._key_sets_seen:
            return
        if len(self._key_sets_seen) < _MAX_KEY_SETS:
            self._key_sets_seen.add(keys)
        for name in keys:
            if name in self.cleared:
                continue
            meant = self._meant(name)
            if meant is None:
                if len(self.cleared) < _MAX_NAMES:
                    self.cleared.add(name)
                continue
            # What it would give the row is there already: not a misspelling here.
            if not self._given_by[meant].isdisjoint(row):
                continue
            self.cleared.add(name)  # warned once; bounded by the fields read
            logger.warning("%s: unknown field %r is ignored; did you mean %r?", where, name, meant)

    def _meant(self, name: str) -> str | None:
        if name in self._closest:
            return self._closest[name]
        if len(self._closest) >= _MAX_NAMES or len(name) < _MIN_LENGTH:
            return None
        matches = difflib.get_close_matches(name, self._read, n=1, cutoff=_CUTOFF)
        meant = matches[0] if matches else None
        self._closest[name] = meant
        return meant
