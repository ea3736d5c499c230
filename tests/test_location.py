"""Location: a path resolved once, and the one reading of a name's format."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from batching.config import InputConfig, OutputConfig, RunConfig
from batching.errors import UsageError
from batching.location import Location
from batching.output_format import output_format
from batching.readers import input_format


@pytest.mark.parametrize("given", [None, "-"])
def test_none_and_a_dash_are_stdio_and_json_lines(given: str | None) -> None:
    location = Location.of(given)
    assert (location.kind, location.path, location.format) == ("stdio", "-", "jsonl")
    assert location.is_stdio and not location.is_local and not location.is_remote


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        pytest.param(
            "file:///data/a%20b.jsonl.gz",
            Location(
                kind="local",
                path="/data/a b.jsonl.gz",
                name="file:///data/a%20b.jsonl.gz",
                format="jsonl",
                compressed="gzip",
                extension=".jsonl",
            ),
            id="a file URI is the local file, named as given",
        ),
        pytest.param(
            "s3://bucket/out.parquet?region=eu-west-1",
            Location(
                kind="remote",
                path="s3://bucket/out.parquet?region=eu-west-1",
                name="s3://bucket/out.parquet?region=eu-west-1",
                format="parquet",
                compressed=None,
                extension=".parquet",
            ),
            id="a remote URI keeps its query, but its format does not see it",
        ),
    ],
)
def test_a_uri_resolves_to_one_location(given: str, expected: Location) -> None:
    location = Location.of(given)
    assert location == expected
    assert (location.is_local, location.is_remote) == (
        expected.kind == "local",
        expected.kind == "remote",
    )


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("in.jsonl", "jsonl"),
        ("IN.NDJSON", "jsonl"),
        ("in.json.gz", "jsonl"),
        ("in.pq", "parquet"),
        ("s3://b/in.jsonl?versionId=3", "jsonl"),
        ("in.csv", None),
        ("queue", None),
    ],
)
def test_the_extension_names_the_format(given: str, expected: str | None) -> None:
    assert Location.of(given).format == expected


def test_reading_and_writing_tell_a_remote_uris_format_alike() -> None:
    # The output side used to keep the query and find no extension it knew.
    uri = "s3://bucket/data.parquet?region=eu-west-1"
    assert input_format(uri) == output_format(uri) == "parquet"


@pytest.mark.parametrize(
    ("resolve", "message"),
    [
        # Parquet compresses its columns itself.
        (
            lambda: output_format("out.parquet.gz"),
            "out.parquet.gz: Parquet compresses its columns itself and is never "
            "gzip-compressed; name the file .parquet, or .jsonl.gz for compressed JSON Lines",
        ),
        # A config cannot be built on a path it cannot resolve.
        (
            lambda: InputConfig("file://server/data/in.jsonl"),
            "file://server/data/in.jsonl: a file:// URI names a file on this machine; write "
            "file:///path (three slashes) or the plain path",
        ),
    ],
)
def test_a_path_that_names_nothing_usable_is_refused(
    resolve: Callable[[], object], message: str
) -> None:
    with pytest.raises(UsageError) as refused:
        resolve()
    assert str(refused.value) == message


def test_configs_resolve_every_path_when_built() -> None:
    config = RunConfig(
        input=InputConfig("file:///data/in.jsonl"),
        output=OutputConfig("s3://bucket/out.jsonl"),
        errors_path="errors.jsonl",
        report_path="-",
    )
    assert config.input.location.path == "/data/in.jsonl"
    assert config.output.location.is_remote
    assert config.errors_location == Location.of("errors.jsonl")
    assert config.report_location is not None and config.report_location.is_stdio
    assert RunConfig(input=InputConfig("in.jsonl")).errors_location is None
