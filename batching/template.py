"""Prompt templates: a row's prompt made from its fields by a Jinja2 template.

The template may come from a shared config file, so it is rendered in Jinja2's
immutable sandbox (no attribute starting with `_`, no method that changes a value)
with no loader (no `{% include %}`, `{% import %}` or `{% extends %}`: no files),
and strictly: a field it uses that a row lacks, or holds null, is that row's error,
never an empty string in the prompt.

A template is compiled once, when the `InputConfig` holding it is built; a
template that does not parse is a `UsageError` naming its line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jinja2
import jinja2.meta
from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from batching.errors import UsageError

__all__ = ["PromptTemplate"]

_ENVIRONMENT = ImmutableSandboxedEnvironment(
    undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True
)
_FILE_TAGS = (nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends)


@dataclass(frozen=True, slots=True)
class PromptTemplate:
    """A compiled template; `origin` is `--template` or the file it was read from.

    >>> template = PromptTemplate("Classify: {{ review }}")
    >>> template.fields
    ('review',)
    >>> template.render({"review": "Great!"}, "in.jsonl:1")
    ('Classify: Great!', None)
    >>> template.render({"text": "Great!"}, "in.jsonl:2")
    (None, "in.jsonl:2: template: the row has no field 'review'")
    """

    source: str
    origin: str = "--template"
    fields: tuple[str, ...] = field(init=False, compare=False)
    _compiled: jinja2.Template = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.source.strip():
            raise UsageError(f"{self.origin}: the template is empty; give the prompt's text")
        try:
            parsed = _ENVIRONMENT.parse(self.source)
        except jinja2.TemplateSyntaxError as exc:
            raise UsageError(
                f"{self.origin}: line {exc.lineno}: the template does not parse "
                f"({exc.message}); see https://jinja.palletsprojects.com/templates/"
            ) from None
        for tag in parsed.find_all(_FILE_TAGS):
            raise UsageError(
                f"{self.origin}: line {tag.lineno}: a template may not include, import or "
                "extend other templates; put the text in this one"
            )
        fields = tuple(sorted(jinja2.meta.find_undeclared_variables(parsed)))
        object.__setattr__(self, "fields", fields)
        object.__setattr__(self, "_compiled", _ENVIRONMENT.from_string(parsed))

    @classmethod
    def from_file(cls, path: str) -> PromptTemplate:
        """The template in a UTF-8 file; a file that cannot be read is a `UsageError`."""
        try:
            with open(path, encoding="utf-8") as file:
                source = file.read()
        except OSError as exc:
            raise UsageError(
                f"--template-file {path}: cannot read ({exc.strerror or exc})"
            ) from None
        except UnicodeDecodeError:
            raise UsageError(f"--template-file {path}: not UTF-8 text") from None
        return cls(source, origin=path)

    def render(self, row: Mapping[str, Any], where: str) -> tuple[str | None, str | None]:
        """`(prompt, None)`, or `(None, message)` when the row cannot fill the template."""
        for name in self.fields:
            value = row.get(name)
            if value is None:
                state = "has no field" if name not in row else "holds null in field"
                return None, f"{where}: template: the row {state} {name!r}"
        try:
            text = self._compiled.render(row)
        except jinja2.TemplateError as exc:  # SecurityError, UndefinedError, a bad filter
            return None, f"{where}: template: {exc}"
        except Exception as exc:  # a row's values may break a filter: {{ n + 1 }} on a string
            return None, f"{where}: template: {type(exc).__name__}: {exc}"
        if not text:
            return None, f"{where}: template: the prompt it makes is empty"
        return text, None
