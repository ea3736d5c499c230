"""`--config FILE` and `BIZRA_BATCH_<OPTION>`: every option settable three ways.

Click's own machinery does the work, so an option added to a command is settable
from the environment and from the file without any edit here: each command's
context gets `auto_envvar_prefix="BIZRA_BATCH"` (env var `BIZRA_BATCH_MAX_TOKENS`
for `--max-tokens`), and the eager `--config` callback loads the TOML file into the
context's `default_map`, which Click consults after the command line and the
environment. Precedence is therefore flags > env > config file > defaults.

A config file holds option names (`max-tokens` or `max_tokens`) at the top level,
shared by every command, and optionally in a table per command (`[run]`,
`[validate]`, `[bench]`) that wins over the top level for that command:

    model = "Qwen/Qwen2.5-0.5B-Instruct"
    [run]
    max-tokens = 128
    engine-arg = { enforce_eager = true }

Paths in the file are relative to the working directory, as on the command line.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from batching.records import SAMPLING_FIELDS
from batching.sampling_rules import setting_problem
from cli.options import CONFIGURATION

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - requires-python is 3.10; tomllib arrived in 3.11
    import tomli as tomllib

__all__ = ["CONTEXT_SETTINGS", "ENV_PREFIX", "ConfigOption", "load_config"]

ENV_PREFIX = "BIZRA_BATCH"

# Set on each command, not the group: a group's prefix would reach a subcommand as
# BIZRA_BATCH_RUN_MAX_TOKENS, and one name per option is easier to remember.
CONTEXT_SETTINGS: dict[str, Any] = {"auto_envvar_prefix": ENV_PREFIX}

# Options that make no sense in a file: the file itself.
_NOT_IN_FILE = frozenset({"config_file"})
# Options whose value is a sampling setting, held to a row's rules (`--json-schema`
# names a file, not a schema).
_SAMPLING_OPTIONS = frozenset(SAMPLING_FIELDS) - {"json_schema"}


# Commands and parameters are typed Any: they are Typer's vendored Click classes
# (typer._click), which Typer does not export.


def _option_names(command: Any) -> dict[str, str]:
    """Every spelling a config key may use for an option -> the parameter name."""
    names: dict[str, str] = {}
    for param in command.params:
        if param.param_type_name != "option" or param.name is None:
            continue
        if param.name in _NOT_IN_FILE:
            continue
        spellings = {param.name}
        spellings.update(o.lstrip("-") for o in param.opts if o.startswith("--"))
        for spelling in spellings:
            names[spelling] = param.name
            names[spelling.replace("-", "_")] = param.name
            names[spelling.replace("_", "-")] = param.name
    return names


def _as_param_value(param: Any, value: Any) -> Any:
    if param is None or not param.multiple:
        return value
    if isinstance(value, Mapping):
        # `engine-arg = { enforce_eager = true }`: KEY=VALUE pairs, values as JSON.
        return [f"{k}={orjson.dumps(v).decode()}" for k, v in value.items()]
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def load_config(
    path: str, command: Any, siblings: Mapping[str, Any], ctx: Any = None
) -> dict[str, Any]:
    """The `default_map` for `command` from the TOML file at `path`.

    Top-level keys that belong to another command (`siblings`) are skipped; a key
    no command knows is a usage error naming the file and the key; with `ctx`, so
    is a value the option would refuse.

    >>> import click
    >>> run_command = click.Command("run", params=[click.Option(["--max-tokens"], type=int)])
    >>> with open("bizra.toml", "w") as config:
    ...     _ = config.write('max-tokens = 128\\n[run]\\nmax_tokens = 64\\n')
    >>> load_config("bizra.toml", run_command, {"run": run_command})
    {'max_tokens': 64}
    """
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise _config_error(f"{path}: no such file") from None
    except OSError as exc:
        raise _config_error(f"{path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise _config_error(f"{path}: not valid TOML: {exc}") from None

    own = _option_names(command)
    # Each other command's option spellings, worked out once for every key.
    others = {name: _option_names(c) for name, c in siblings.items() if c is not command}
    known_elsewhere = {spelling for names in others.values() for spelling in names}
    params = {p.name: p for p in command.params}

    defaults: dict[str, Any] = {}
    tables = set(siblings) | ({command.name} if command.name else set())
    for key, value in data.items():
        if key in tables and isinstance(value, dict):
            # Another command's table is checked too: a typo there is still a typo.
            names = others.get(key)
            if names is not None:
                for sub_key in value:
                    if sub_key not in names:
                        raise _unknown_key(path, f"{key}.{sub_key}", siblings[key])
            continue
        if key in own:
            # A top-level value another command may take and this one refuses
            # (engine = "openai": run only) belongs in that command's table.
            elsewhere = [name for name, names in others.items() if key in names]
            defaults[own[key]] = _checked(ctx, path, key, params.get(own[key]), value, elsewhere)
        elif key not in known_elsewhere:
            raise _unknown_key(path, key, command)
    section = data.get(command.name or "")
    if isinstance(section, dict):
        for key, value in section.items():
            if key not in own:
                raise _unknown_key(path, f"{command.name}.{key}", command)
            label = f"{command.name}.{key}"
            defaults[own[key]] = _checked(ctx, path, label, params.get(own[key]), value)
    return defaults


def _checked(
    ctx: Any, path: str, key: str, param: Any, value: Any, elsewhere: Sequence[str] = ()
) -> Any:
    """The option's value for `key`, refused here if the option would refuse it:
    Click's own message names a flag the command line does not have. `elsewhere`:
    the other commands that take `key`, named in the message as where it may go."""
    value = _as_param_value(param, value)
    if ctx is not None and param is not None and param.callback is None:
        try:
            param.process_value(ctx, value)
        except typer.BadParameter as exc:
            message = exc.message
            if elsewhere:
                names = sorted(elsewhere)
                message = (
                    f"{message.rstrip('.')}; if it is for {' or '.join(names)} only, put it "
                    f"in a [{names[0]}] table"
                )
            raise _config_error(f"{path}: key {key!r}: {message}") from None
    problem = (
        setting_problem(param.name, value) if param and param.name in _SAMPLING_OPTIONS else None
    )
    if problem is not None:
        raise _config_error(f"{path}: key {key!r}: {problem}")
    return value


def _config_error(message: str) -> typer.BadParameter:
    # A BadParameter is Click's usage error: one line on stderr and exit code 2.
    return typer.BadParameter(message, param_hint="'--config'")


def _unknown_key(path: str, key: str, command: Any) -> typer.BadParameter:
    return _config_error(
        f"{path}: unknown key {key!r}: not an option of `{command.name}`; "
        f"keys are option names as in `bizra-batch {command.name} --help` (max-tokens = 128)"
    )


def _config_callback(ctx: typer.Context, param: typer.CallbackParam, value: Path | None) -> None:
    if value is None:
        return
    group = ctx.parent.command if ctx.parent is not None else None
    siblings: Mapping[str, Any] = getattr(group, "commands", {})
    loaded = load_config(str(value), ctx.command, siblings, ctx)
    ctx.default_map = {**(ctx.default_map or {}), **loaded}


ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        envvar=f"{ENV_PREFIX}_CONFIG",
        help="TOML file of option values (max-tokens = 128; a [run] table for run "
        "only). Flags win over BIZRA_BATCH_* env vars, which win over the file.",
        callback=_config_callback,
        is_eager=True,
        dir_okay=False,
        rich_help_panel=CONFIGURATION,
    ),
]
"""Add `config_file: ConfigOption = None` to a command to give it `--config`."""
