"""The Parquet source: a row group at a time, decoding only the columns a row uses."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from batching.config import InputConfig
from batching.errors import InputError
from batching.field_spelling import FieldSpelling
from batching.id_registry import IdRegistry
from batching.lora import ADAPTER_FIELD
from batching.records import Row
from batching.row_source import RowSource, open_binary, size_if_regular
from batching.schema import ROW_SAMPLING_FIELDS, parse_row
from batching.tasks import row_fields
from batching.uri import open_remote_parquet

__all__ = ["ParquetSource"]


class ParquetSource(RowSource):
    def __init__(self, cfg: InputConfig) -> None:
        # Imported here: pyarrow costs ~0.2 s at start-up and JSONL runs never need it.
        import pyarrow as pa
        import pyarrow.parquet as pq

        location = cfg.location
        path = location.name
        source: Any
        if location.is_remote:
            source, total_bytes = open_remote_parquet(location.path)
        else:
            raw = open_binary(location)  # for the same clear messages as JSONL
            total_bytes = size_if_regular(raw)
            raw.close()
            source = location.path
        # A file we opened is ours to close; ParquetFile closes only what it opened.
        self._opened = None if isinstance(source, str) else source
        try:
            self._file = pq.ParquetFile(source)
        except (pa.ArrowException, OSError) as exc:
            self.close_opened()
            raise InputError(
                f"{path}: not a readable Parquet file ({exc}); if it is JSON Lines, pass "
                "--input-format jsonl"
            ) from None
        super().__init__(path, total_rows=self._file.metadata.num_rows, total_bytes=total_bytes)
        names = set(self._file.schema_arrow.names)
        template_fields = () if cfg.template is None else cfg.template.fields
        absent = [name for name in template_fields if name not in names]
        if absent:
            columns = ", ".join(sorted(names)) or "(none)"
            self.close()
            raise InputError(
                f"{path}: no {absent[0]!r} column for the template (columns: {columns}); "
                "rename it in the template"
            )
        pooling_fields = () if cfg.task == "generate" else row_fields(cfg.task, cfg.prompt_field)
        if cfg.template is None and pooling_fields and names.isdisjoint(pooling_fields):
            columns = ", ".join(sorted(names)) or "(none)"
            self.close()
            needed = " or ".join(repr(name) for name in pooling_fields[:-1])
            raise InputError(
                f"{path}: no {needed} column for --task {cfg.task} (columns: {columns}); "
                "set --prompt-field"
            )
        if (
            cfg.template is None
            and not pooling_fields
            and cfg.prompt_field not in names
            and cfg.messages_field not in names
        ):
            columns = ", ".join(sorted(names)) or "(none)"
            self.close()
            raise InputError(
                f"{path}: no {cfg.prompt_field!r} or {cfg.messages_field!r} column (columns: "
                f"{columns}); set --prompt-field or --messages-field"
            )
        # With a template, the prompt and messages columns are not read.
        prompt_fields = (cfg.prompt_field, cfg.messages_field) if cfg.template is None else ()
        wanted = (
            *prompt_fields,
            cfg.id_field,
            *ROW_SAMPLING_FIELDS,
            ADAPTER_FIELD,
            *pooling_fields,
            *cfg.keep_fields,
            *template_fields,
        )
        # Every row has every column: one check names a misspelt one for the file.
        FieldSpelling(cfg).check(self._file.schema_arrow.names, path)
        # Only the columns a row can use are decoded; a wide table of features next
        # to the prompts costs nothing.
        self._columns = [name for name in dict.fromkeys(wanted) if name in names]
        # A struct column holds, in every row, every key any row has: the keys a
        # row's schema lacks come back as null, and a JSON Schema with a null
        # keyword is refused by the grammar. Nulls are dropped from those.
        schema = self._file.schema_arrow
        self._structured = [
            name
            for name in _SCHEMA_FIELDS
            if name in names and pa.types.is_struct(schema.field(name).type)
        ]
        self._cfg = cfg
        self._arrow_error: type[Exception] = pa.ArrowException

    def close(self) -> None:
        self._file.close()
        self.close_opened()

    def close_opened(self) -> None:
        if self._opened is not None:
            self._opened.close()

    def _chunks(self) -> Iterator[list[Row]]:
        cfg = self._cfg
        ids = IdRegistry(cfg.id_field, "row")
        total_rows = self.total_rows or 0
        index = 0
        batches = self._file.iter_batches(batch_size=cfg.chunk_size, columns=self._columns)
        while True:
            try:
                batch = next(batches, None)
            except (self._arrow_error, OSError) as exc:
                raise InputError(
                    f"{self.name}: cannot read past row {index} ({exc}); the file may be damaged"
                ) from None
            if batch is None:
                break
            chunk: list[Row] = []
            for obj in batch.to_pylist():
                for name in self._structured:
                    obj[name] = _without_nulls(obj[name])
                line = index + 1
                where = f"{self.name} row {line}"
                row = parse_row(obj, index=index, line=line, fields=cfg, where=where)
                chunk.append(ids.check(obj, row, where))
                index += 1
            self.rows_read = index
            # Parquet decodes whole column chunks, so the byte position is an estimate
            # from the row count, which is exact.
            if self.total_bytes is not None and total_rows:
                self.bytes_read = self.total_bytes * index // total_rows
            yield chunk
        self._hash_file()

    def _hash_file(self) -> None:
        """Hash the whole file, front to back, once its rows are read.

        A second read, not a hash on the way through: pyarrow reads a Parquet file
        by ranges (the footer first, then only the column chunks of the columns a
        row uses), so what it read is not the file. The file is still in the page
        cache by now; a remote one is streamed once more.
        """
        block = bytearray(_HASH_BLOCK_BYTES)
        try:
            with open_binary(self._cfg.location) as raw:
                while n := raw.readinto(block):
                    self.digest.update(memoryview(block)[:n])
        except OSError as exc:
            raise InputError(f"{self.name}: cannot read it again to hash it ({exc})") from None
        self.digest.complete = True


_HASH_BLOCK_BYTES = 1024 * 1024


_SCHEMA_FIELDS = ("json_schema", "response_format")


def _without_nulls(value: object) -> object:
    """`value` with the null members of its objects dropped, at every depth.

    >>> _without_nulls({"type": "object", "required": None, "properties": {"a": None}})
    {'type': 'object', 'properties': {}}
    """
    if isinstance(value, dict):
        return {key: _without_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_without_nulls(item) for item in value]
    return value
