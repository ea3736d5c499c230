"""Images in chat rows without a model: where they may come from, decoding, the
records of bad ones, and the CLI on the fake engine."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import orjson
import pytest
from PIL import Image
from typer.testing import CliRunner

from batching.config import InputConfig
from batching.errors import UsageError
from batching.media import IMAGE_PART, MediaError, MediaPolicy, load_image
from batching.openai_batch import parse_openai_row
from batching.records import InvalidRow, Request
from batching.schema import parse_row
from cli.app import app
from cli.exit_codes import FAILED, OK, USAGE

runner = CliRunner()


def png_bytes(size: tuple[int, int] = (8, 6), color: tuple[int, int, int] = (200, 30, 90)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def truncated_png() -> bytes:
    image = Image.new("RGB", (64, 64))
    image.putdata([(x * 4 % 256, x * 7 % 256, x % 256) for x in range(64 * 64)])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def chat(*urls: str, text: str = "What is it?") -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": u}} for u in urls]
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


def parse(messages: Any, policy: MediaPolicy | None = None) -> Request | InvalidRow:
    cfg = InputConfig(path="p.jsonl", media=policy or MediaPolicy())
    return parse_row({"messages": messages}, index=0, line=1, fields=cfg, where="p.jsonl:1")


def image_of(row: Request | InvalidRow) -> Any:
    assert isinstance(row, Request), row
    assert row.messages is not None
    part = row.messages[0]["content"][0]
    assert part["type"] == IMAGE_PART
    return part[IMAGE_PART]


# -- where images may come from -----------------------------------------------------------


def test_a_data_url_image_is_decoded_in_rgb() -> None:
    image = image_of(parse(chat(data_url(png_bytes((8, 6))))))
    assert (image.size, image.mode, image.getpixel((0, 0))) == ((8, 6), "RGB", (200, 30, 90))


def test_the_text_parts_stay_as_they_are() -> None:
    row = parse(chat(data_url(png_bytes()), text="Describe"))
    assert isinstance(row, Request) and row.messages is not None
    assert row.messages[0]["content"][1] == {"type": "text", "text": "Describe"}


def test_a_local_file_is_read_under_the_allowed_directory(tmp_path: Path) -> None:
    (tmp_path / "cat.png").write_bytes(png_bytes((5, 5)))
    image = image_of(parse(chat((tmp_path / "cat.png").as_uri()), MediaPolicy(str(tmp_path))))
    assert image.size == (5, 5)


def test_a_local_file_without_an_allowed_directory_is_the_rows_record(tmp_path: Path) -> None:
    (tmp_path / "cat.png").write_bytes(png_bytes())
    row = parse(chat((tmp_path / "cat.png").as_uri()))
    assert isinstance(row, InvalidRow)
    assert row.error.type == "invalid_input"
    assert row.error.message == (
        "p.jsonl:1: field 'messages[0].content[0].image_url.url': local files are read only "
        "under --allowed-media-path DIR; the run allows none"
    )


def test_a_path_that_leaves_the_allowed_directory_is_refused(tmp_path: Path) -> None:
    allowed = tmp_path / "images"
    allowed.mkdir()
    (tmp_path / "secret.png").write_bytes(png_bytes())
    (allowed / "link.png").symlink_to(tmp_path / "secret.png")
    policy = MediaPolicy(str(allowed))
    for url in (f"file://{allowed}/../secret.png", (allowed / "link.png").as_uri()):
        with pytest.raises(MediaError) as caught:
            load_image(url, policy)
        assert str(caught.value) == (
            f"{tmp_path / 'secret.png'} is outside --allowed-media-path {allowed}"
        )


def test_a_remote_url_needs_allow_remote_media() -> None:
    row = parse(chat("https://example.com/cat.png"))
    assert isinstance(row, InvalidRow)
    assert row.error.message == (
        "p.jsonl:1: field 'messages[0].content[0].image_url.url': remote images are fetched "
        "only with --allow-remote-media"
    )


def test_an_allowed_directory_that_is_not_there_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as caught:
        MediaPolicy(str(tmp_path / "none"))
    assert str(caught.value) == f"--allowed-media-path {tmp_path / 'none'}: not a directory"


# -- broken images ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        (data_url(b"not an image"), "not a readable image (cannot identify image file)"),
        (data_url(truncated_png()), "not a readable image (image file is truncated)"),
        ("data:image/png;base64,@@@", "the data URL is not valid base64"),
        ("data:text/plain;base64,aGk=",
         "expected a data URL of an image (data:image/...;base64,...)"),
        ("ftp://host/cat.png",
         "expected a data:, file:// or http(s):// URL, found 'ftp://host/cat.png'"),
    ],
)  # fmt: skip
def test_a_broken_image_is_the_rows_record_naming_why(url: str, reason: str) -> None:
    row = parse(chat(url))
    assert isinstance(row, InvalidRow)
    assert row.error.message == (
        f"p.jsonl:1: field 'messages[0].content[0].image_url.url': {reason}"
    )


def test_an_openai_line_with_an_image_is_decoded() -> None:
    line = {
        "custom_id": "q",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"messages": chat(data_url(png_bytes((3, 4))))},
    }
    row = parse_openai_row(line, index=0, line=1, fields=InputConfig("b.jsonl"), where="b:1")
    assert image_of(row).size == (3, 4)


# -- the CLI on the fake engine -----------------------------------------------------------------


def run_fake(tmp_path: Path, rows: list[dict[str, Any]], *args: str) -> tuple[Any, list[Any]]:
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    out = tmp_path / "out.jsonl"
    result = runner.invoke(app, ["run", str(source), "-o", str(out), "--engine", "fake", *args])
    lines = out.read_bytes().splitlines() if out.exists() else []
    return result, [orjson.loads(line) for line in lines]


def test_cli_image_rows_run_and_count_the_image_tokens(tmp_path: Path) -> None:
    rows = [
        {"id": "one", "messages": chat(data_url(png_bytes()), text="ab")},
        {"id": "two", "messages": chat(data_url(png_bytes()), data_url(png_bytes()), text="ab")},
    ]
    result, out = run_fake(tmp_path, rows)
    assert result.exit_code == OK, result.output
    # The fake engine renders "user: " + "<image>" per image + the text, a token a
    # character: each image adds its 7 tokens.
    assert [r["prompt_tokens"] for r in out] == [6 + 7 + 2, 6 + 14 + 2]
    assert out[0]["output"] == "ba>egami< :resu"


def test_cli_bad_images_are_their_rows_records_naming_the_option(tmp_path: Path) -> None:
    (tmp_path / "cat.png").write_bytes(png_bytes())
    rows = [
        {"id": "ok", "messages": chat(data_url(png_bytes()))},
        {"id": "broken", "messages": chat(data_url(b"GIF89a broken"))},
        {"id": "local", "messages": chat((tmp_path / "cat.png").as_uri())},
        {"id": "remote", "messages": chat("http://127.0.0.1:9/cat.png")},
    ]
    result, out = run_fake(tmp_path, rows)
    assert result.exit_code == FAILED, result.output
    where = f"{tmp_path / 'in.jsonl'}"
    field = "field 'messages[0].content[0].image_url.url'"
    assert [r["error"] for r in out] == [
        None,
        {"type": "invalid_input", "message": f"{where}:2: {field}: not a readable image "
         "(cannot identify image file)"},
        {"type": "invalid_input", "message": f"{where}:3: {field}: local files are read only "
         "under --allowed-media-path DIR; the run allows none"},
        {"type": "invalid_input", "message": f"{where}:4: {field}: remote images are fetched "
         "only with --allow-remote-media"},
    ]  # fmt: skip


def test_cli_allowed_media_path_lets_local_images_in(tmp_path: Path) -> None:
    (tmp_path / "cat.png").write_bytes(png_bytes())
    rows = [{"id": "local", "messages": chat((tmp_path / "cat.png").as_uri())}]
    result, out = run_fake(tmp_path, rows, "--allowed-media-path", str(tmp_path))
    assert result.exit_code == OK, result.output
    assert out[0]["error"] is None


def test_cli_allowed_media_path_that_is_no_directory_is_a_usage_error(tmp_path: Path) -> None:
    result, out = run_fake(tmp_path, [{"prompt": "a"}], "--allowed-media-path", "/no/such")
    assert result.exit_code == USAGE
    assert result.stderr.strip() == (
        "bizra-batch: error: --allowed-media-path /no/such: not a directory"
    )
    assert out == []


def test_an_openai_server_gets_the_decoded_image_back_as_a_data_url() -> None:
    from batching.engine import EngineRequest
    from batching.engines.openai_wire import request_body
    from batching.records import Sampling

    row = parse(chat(data_url(png_bytes((3, 2), (1, 2, 3)))))
    assert isinstance(row, Request) and row.messages is not None
    _, body = request_body("m", EngineRequest(0, [1], Sampling(), prompt=row.messages))
    url = body["messages"][0]["content"][0]["image_url"]["url"]
    image = load_image(url, MediaPolicy())
    assert (image.size, image.getpixel((2, 1))) == ((3, 2), (1, 2, 3))
    orjson.dumps(body)  # all of it goes over the wire


def test_validate_counts_an_image_rows_text_and_names_a_broken_image(
    tmp_path: Path, tiny_model: Path
) -> None:
    from batching.validate import validate

    text_only = [{"role": "user", "content": [{"type": "text", "text": "What is it?"}]}]
    source = tmp_path / "in.jsonl"
    rows = [{"messages": chat(data_url(png_bytes()))}, {"messages": chat(data_url(b"x"))}]
    source.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    report = validate(
        InputConfig(str(source)),
        tokenizer_dir=str(tiny_model),
        max_model_len=None,
        default_max_tokens=8,
        max_line_bytes=1 << 20,
    )
    assert (report.valid, report.invalid) == (1, 1)
    assert [problem.message for problem in report.first_errors] == [
        f"{source}:2: field 'messages[0].content[0].image_url.url': not a readable image "
        "(cannot identify image file)"
    ]
    (tmp_path / "text.jsonl").write_bytes(orjson.dumps({"messages": text_only}) + b"\n")
    text_report = validate(
        InputConfig(str(tmp_path / "text.jsonl")),
        tokenizer_dir=str(tiny_model),
        max_model_len=None,
        default_max_tokens=8,
        max_line_bytes=1 << 20,
    )
    # Without the model's processor the image's tokens cannot be known: the text counts.
    assert report.token_stats is not None and text_report.token_stats is not None
    assert report.token_stats.max == text_report.token_stats.max
