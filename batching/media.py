"""Images in chat rows: where they may come from, and decoding them before the engine.

A chat message's content may hold OpenAI-style parts `{"type": "image_url",
"image_url": {"url": ...}}`. The URL is one of:

- a data URL (`data:image/png;base64,...`): always allowed;
- a `file://` URL: read only under the directory `--allowed-media-path` names (the
  path resolved, so `..` and symlinks cannot leave it), never wherever a row says;
- an `http(s)://` URL: fetched only with `--allow-remote-media`, since a batch
  machine may not be meant to reach the network.

`decode_images` turns every image part of a row into `{"type": "image_pil",
"image_pil": <PIL image>}` (the form vLLM's offline chat takes), decoded and checked
while the row is read: a broken, disallowed or unreachable image is that row's
`invalid_input` record and the run goes on. Decoded images stay in memory until
their row is submitted: at most about two chunks of rows (`--chunk-size`).

>>> part = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
>>> _, problem = decode_images([{"role": "user", "content": [part]}], MediaPolicy(), "p:1", "m")
>>> print(problem)
p:1: field 'm[0].content[0].image_url.url': remote images are fetched only with --allow-remote-media
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from batching.errors import UsageError

__all__ = [
    "IMAGE_PART",
    "MAX_IMAGE_BYTES",
    "MediaPolicy",
    "check_image_part",
    "decode_images",
    "has_images",
    "load_image",
    "with_image_urls",
]

IMAGE_PART = "image_pil"
"""The part type a decoded image has in a row's messages (vLLM's own)."""

# Bounds what one row can make the reader hold or fetch; a photo is a few MB.
MAX_IMAGE_BYTES = 32 * 1024 * 1024
_REMOTE_TIMEOUT_S = 30.0


class MediaError(Exception):
    """An image that cannot be used; the message says why (no place, no field)."""


@dataclass(frozen=True, slots=True)
class MediaPolicy:
    """Where images may come from besides data URLs.

    `allowed_path` is the directory local files may be read under (resolved once,
    here); `allow_remote` lets http(s) URLs be fetched.

    >>> MediaPolicy(allowed_path="/no/such/dir")
    Traceback (most recent call last):
    ...
    batching.errors.UsageError: --allowed-media-path /no/such/dir: not a directory
    """

    allowed_path: str | None = None
    allow_remote: bool = False

    def __post_init__(self) -> None:
        if self.allowed_path is not None:
            resolved = os.path.realpath(os.path.expanduser(self.allowed_path))
            if not os.path.isdir(resolved):
                raise UsageError(f"--allowed-media-path {self.allowed_path}: not a directory")
            object.__setattr__(self, "allowed_path", resolved)


def check_image_part(part: Mapping[str, Any]) -> tuple[str, str] | None:
    """(field under the part, what it should be) for a malformed image part, else None.

    >>> check_image_part({"type": "image_url", "image_url": "x.png"})
    ('image_url', 'an object with a "url" string')
    """
    image_url = part.get("image_url")
    if not isinstance(image_url, Mapping) or not isinstance(image_url.get("url"), str):
        return "image_url", 'an object with a "url" string'
    return None


def has_images(messages: Sequence[Mapping[str, Any]]) -> bool:
    """Whether any message holds an image part (as read, or decoded).

    >>> has_images([{"role": "user", "content": "Hi"}])
    False
    """
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            for part in content:
                if isinstance(part, Mapping) and part.get("type") in ("image_url", IMAGE_PART):
                    return True
    return False


def decode_images(
    messages: list[Any], policy: MediaPolicy, where: str, name: str
) -> tuple[list[Any], str | None]:
    """`messages` with every image part decoded, or the message naming a bad one.

    Messages without images come back as they are (the same objects).
    """
    if not has_images(messages):
        return messages, None
    decoded: list[Any] = []
    for position, message in enumerate(messages):
        content = message.get("content")
        if not isinstance(content, list):
            decoded.append(message)
            continue
        parts: list[Any] = []
        for part_position, part in enumerate(content):
            if part.get("type") != "image_url":
                parts.append(part)
                continue
            url = part["image_url"]["url"]
            try:
                image = load_image(url, policy)
            except MediaError as exc:
                at = f"{name}[{position}].content[{part_position}].image_url.url"
                return messages, f"{where}: field {at!r}: {exc}"
            parts.append({"type": IMAGE_PART, IMAGE_PART: image})
        decoded.append({**message, "content": parts})
    return decoded, None


def load_image(url: str, policy: MediaPolicy) -> Any:
    """The image at `url`, decoded in full and in RGB; `MediaError` says what is wrong.

    >>> load_image("data:image/png;base64,AAAA", MediaPolicy())
    Traceback (most recent call last):
    ...
    batching.media.MediaError: not a readable image (cannot identify image file)
    """
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        data = _data_url_bytes(url)
    elif scheme == "file":
        data = _local_bytes(url, policy)
    elif scheme in ("http", "https"):
        data = _remote_bytes(url, policy)
    else:
        shown = url if len(url) <= 60 else url[:57] + "..."
        raise MediaError(f"expected a data:, file:// or http(s):// URL, found {shown!r}")
    return _decode(data)


def _data_url_bytes(url: str) -> bytes:
    header, sep, payload = url.partition(",")
    if not sep or not header.lower().startswith("data:image/"):
        raise MediaError("expected a data URL of an image (data:image/...;base64,...)")
    if not header.lower().endswith(";base64"):
        raise MediaError("expected a base64 data URL (data:image/...;base64,...)")
    if len(payload) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise MediaError(f"the image is over {MAX_IMAGE_BYTES // (1024 * 1024)} MB")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise MediaError("the data URL is not valid base64") from None


def _local_bytes(url: str, policy: MediaPolicy) -> bytes:
    if policy.allowed_path is None:
        raise MediaError(
            "local files are read only under --allowed-media-path DIR; the run allows none"
        )
    parsed = urllib.parse.urlparse(url)
    if parsed.netloc not in ("", "localhost"):
        raise MediaError(f"a file:// URL names no host, found {parsed.netloc!r}")
    path = os.path.realpath(urllib.parse.unquote(parsed.path))
    if os.path.commonpath([path, policy.allowed_path]) != policy.allowed_path:
        raise MediaError(f"{path} is outside --allowed-media-path {policy.allowed_path}")
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_IMAGE_BYTES + 1)
    except OSError as exc:
        raise MediaError(f"cannot read {path} ({exc.strerror or exc})") from None
    if len(data) > MAX_IMAGE_BYTES:
        raise MediaError(f"the image is over {MAX_IMAGE_BYTES // (1024 * 1024)} MB")
    return data


def _remote_bytes(url: str, policy: MediaPolicy) -> bytes:
    if not policy.allow_remote:
        raise MediaError("remote images are fetched only with --allow-remote-media")
    try:
        with urllib.request.urlopen(url, timeout=_REMOTE_TIMEOUT_S) as response:
            data = bytes(response.read(MAX_IMAGE_BYTES + 1))
    except (OSError, ValueError) as exc:
        raise MediaError(f"cannot fetch the image ({exc})") from None
    if len(data) > MAX_IMAGE_BYTES:
        raise MediaError(f"the image is over {MAX_IMAGE_BYTES // (1024 * 1024)} MB")
    return data


def _decode(data: bytes) -> Any:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a dependency
        raise MediaError("images need Pillow: pip install pillow") from None
    try:
        with Image.open(io.BytesIO(data)) as image:
            # load() reads every pixel, so a truncated file fails here, not in the engine;
            # a decompression bomb (over Pillow's pixel limit) fails in open().
            image.load()
            return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        reason = str(exc).split(" <")[0]  # Pillow names the BytesIO object; drop it
        raise MediaError(f"not a readable image ({reason})") from None


def with_image_urls(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """`messages` with decoded images as PNG data URLs again, for an engine that sends
    them over the wire (`--engine openai`).

    >>> from PIL import Image
    >>> part = {"type": IMAGE_PART, IMAGE_PART: Image.new("RGB", (1, 1))}
    >>> [message] = with_image_urls([{"role": "user", "content": [part]}])
    >>> message["content"][0]["image_url"]["url"][:22]
    'data:image/png;base64,'
    """
    out: list[dict[str, Any]] = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            content = [
                {"type": "image_url", "image_url": {"url": _png_data_url(part[IMAGE_PART])}}
                if isinstance(part, Mapping) and part.get("type") == IMAGE_PART
                else part
                for part in content
            ]
        out.append({**message, "content": content})
    return out


def _png_data_url(image: Any) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
