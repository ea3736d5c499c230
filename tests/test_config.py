"""`--config FILE` and BIZRA_BATCH_* env vars: flags > env > config file > defaults."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest
import typer
from typer.testing import CliRunner

from cli.app import app
from tests.reached import Reached

runner = CliRunner()

# The fake engine reverses the prompt and cuts it to max_tokens characters, so the
# output shows which max_tokens won.
PROMPT = "abcdefghij"


def outputs(stdout: str) -> list[str]:
    return [orjson.loads(line)["output"] for line in stdout.splitlines() if line.strip()]


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_bytes(orjson.dumps({"prompt": PROMPT}) + b"\n")
    return path


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bizra.toml"
    path.write_text(text)
    return path


def run(*args: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return runner.invoke(app, ["run", *args, "-q"], env=env)


@pytest.mark.parametrize(
    ("flag", "env", "file", "expected"),
    [
        (None, None, None, PROMPT[::-1]),  # default 256: the whole reversed prompt
        (None, None, "2", "ji"),
        (None, "3", "2", "jih"),
        ("4", "3", "2", "jihg"),
        ("4", None, "2", "jihg"),
        ("4", "3", None, "jihg"),
    ],
)
def test_precedence_is_flag_then_env_then_file_then_default(
    tmp_path: Path,
    prompts: Path,
    flag: str | None,
    env: str | None,
    file: str | None,
    expected: str,
) -> None:
    config = write_config(
        tmp_path, 'engine = "fake"\nmodel = "m"\n' + (f"max-tokens = {file}\n" if file else "")
    )
    args = [str(prompts), "--config", str(config)]
    if flag:
        args += ["--max-tokens", flag]
    result = run(*args, env={"BIZRA_BATCH_MAX_TOKENS": env} if env else None)
    assert result.exit_code == 0, result.output
    assert outputs(result.stdout) == [expected]


def test_every_option_can_come_from_the_environment(prompts: Path, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    env = {
        "BIZRA_BATCH_ENGINE": "fake",
        "BIZRA_BATCH_MODEL": "m",  # the long-standing explicit env var still works
        "BIZRA_BATCH_MAX_TOKENS": "1",
        "BIZRA_BATCH_REPORT": str(report),
    }
    result = run(str(prompts), env=env)
    assert result.exit_code == 0, result.output
    assert outputs(result.stdout) == ["j"]
    assert orjson.loads(report.read_bytes())["rows_ok"] == 1


def test_the_config_file_can_come_from_the_environment(tmp_path: Path, prompts: Path) -> None:
    config = write_config(tmp_path, 'engine = "fake"\nmodel = "m"\nmax_tokens = 2\n')
    result = run(str(prompts), env={"BIZRA_BATCH_CONFIG": str(config)})
    assert result.exit_code == 0, result.output
    assert outputs(result.stdout) == ["ji"]


def test_a_command_table_wins_over_the_top_level(tmp_path: Path, prompts: Path) -> None:
    config = write_config(
        tmp_path,
        'model = "m"\nmax-tokens = 2\n[run]\nengine = "fake"\nmax-tokens = 5\n'
        "[validate]\njson = true\n",
    )
    result = run(str(prompts), "--config", str(config))
    assert result.exit_code == 0, result.output
    assert outputs(result.stdout) == ["jihgf"]


def test_validate_reads_its_own_table_and_skips_options_of_run(
    tmp_path: Path, prompts: Path
) -> None:
    # engine is an option of run only: shared at the top level, validate skips it.
    config = write_config(tmp_path, 'engine = "fake"\n[validate]\njson = true\n')
    result = runner.invoke(app, ["validate", str(prompts), "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert orjson.loads(result.stdout)["valid"] == 1


def test_list_and_table_values(
    tmp_path: Path, prompts: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(
        tmp_path, 'model = "m"\nstop = ["x", "y"]\nengine-arg = { swap_space = 4 }\n'
    )
    reached = Reached.spy(monkeypatch)
    result = run(str(prompts), "--config", str(config))
    assert result.exit_code == 0, result.output
    assert reached.run_config.sampling.stop == ("x", "y")
    assert reached.engine_config.extra == {"swap_space": 4}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("bogus = 1\n", "unknown key 'bogus'"),
        ("[run]\njson = true\n", "unknown key 'run.json'"),
        ("[validate]\nmaxtokens = 1\n", "unknown key 'validate.maxtokens'"),
        ("max-tokens = \n", "not valid TOML"),
        # A bad value: not only "Invalid value for '--max-tokens'", as the command
        # line has no such flag.
        ('max-tokens = "many"\n', "key 'max-tokens'"),
        ('[run]\norder = "sideways"\n', "key 'run.order'"),
    ],
)
def test_a_bad_config_file_is_a_usage_error_naming_file_and_key(
    tmp_path: Path, prompts: Path, text: str, message: str
) -> None:
    config = write_config(tmp_path, text)
    result = run(str(prompts), "--engine", "fake", "-m", "m", "--config", str(config))
    assert result.exit_code == 2
    assert str(config) in result.output
    assert message in result.output


def test_a_missing_config_file_is_a_usage_error(tmp_path: Path, prompts: Path) -> None:
    missing = tmp_path / "nope.toml"
    result = run(str(prompts), "--engine", "fake", "-m", "m", "--config", str(missing))
    assert result.exit_code == 2
    assert f"{missing}: no such file" in result.output


@pytest.mark.parametrize("command", ["run", "validate", "bench"])
def test_help_shows_each_options_env_var(command: str) -> None:
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    shown = set(re.findall(r"BIZRA_BATCH_[A-Z_]+", result.output))
    params = typer.main.get_command(app).commands[command].params  # type: ignore[attr-defined]
    options = {p.name: p for p in params if p.param_type_name == "option" and p.name != "help"}
    assert "max_tokens" in options
    expected = {p.envvar or f"BIZRA_BATCH_{name.upper()}" for name, p in options.items()}
    assert expected <= shown
    # Named after the option (--json, --input), or bench's own where run's differs.
    assert {
        "validate": {"BIZRA_BATCH_JSON"},
        "bench": {"BIZRA_BATCH_INPUT", "BIZRA_BATCH_BENCH_ENGINE", "BIZRA_BATCH_JSON_PATH"},
    }.get(command, set()) <= shown


def test_validate_json_and_bench_input_env_vars_are_named_after_the_options(
    tmp_path: Path, prompts: Path
) -> None:
    result = runner.invoke(app, ["validate", str(prompts)], env={"BIZRA_BATCH_JSON": "1"})
    assert result.exit_code == 0, result.output
    assert orjson.loads(result.stdout)["valid"] == 1
    out = tmp_path / "bench.json"
    bench = ["bench", "-m", "m", "--engine", "fake", "--prompts", "1", "--batch-sizes", "all",
             "--no-pipeline", "--json", str(out)]  # fmt: skip
    result = runner.invoke(app, bench, env={"BIZRA_BATCH_INPUT": str(prompts)})
    assert result.exit_code == 0, result.output
    assert orjson.loads(out.read_bytes())["settings"]["input"] == str(prompts)


def test_bench_ignores_the_engine_exported_for_run(tmp_path: Path) -> None:
    # `run --engine` takes openai, which bench cannot run: an env var exported for
    # run must not break bench, which has its own.
    out = tmp_path / "bench.json"
    bench = ["bench", "-m", "m", "--prompts", "1", "--batch-sizes", "all", "--no-pipeline",
             "--json", str(out)]  # fmt: skip
    env = {"BIZRA_BATCH_ENGINE": "openai", "BIZRA_BATCH_BENCH_ENGINE": "fake"}
    result = runner.invoke(app, bench, env=env)
    assert result.exit_code == 0, result.output
    assert orjson.loads(out.read_bytes())["settings"]["engine"] == "fake"


def test_bench_reads_the_config_file_with_its_own_table(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        'model = "shared-model"\n'
        '[bench]\nengine = "fake"\nprompts = 1\nbatch-sizes = "all"\npipeline = false\n'
        "[run]\ntemperature = 0.0\n",
    )
    out = tmp_path / "bench.json"
    result = runner.invoke(app, ["bench", "--config", str(config), "--json", str(out)])
    assert result.exit_code == 0, result.output
    settings = orjson.loads(out.read_bytes())["settings"]
    assert (settings["model"], settings["engine"]) == ("shared-model", "fake")


def test_a_top_level_value_only_run_takes_points_bench_to_a_run_table(tmp_path: Path) -> None:
    config = write_config(tmp_path, 'model = "m"\nengine = "openai"\n')
    result = runner.invoke(app, ["bench", "--config", str(config)])
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert "bizra.toml: key 'engine'" in message
    assert "put it in a [run] table" in message


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("temperature = inf\n", "temperature", "expected a finite number >= 0, found number inf"),
        ("[run]\nn = 0\n", "run.n", "expected an integer >= 1, found integer 0"),
        ("top-p = 1.5\n", "top-p", "expected a number in (0, 1], found number 1.5"),
    ],
)
def test_a_sampling_value_a_row_may_not_have_is_refused_in_the_config_file(
    tmp_path: Path, prompts: Path, text: str, key: str, problem: str
) -> None:
    # The row's own check, naming the file and key instead of a row.
    config = write_config(tmp_path, text)
    result = run(str(prompts), "--engine", "fake", "--config", str(config))
    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1] == (
        f"Error: Invalid value for '--config': {config}: key {key!r}: {problem}"
    )
    assert result.stdout == ""


def test_a_sampling_value_a_row_may_not_have_is_refused_from_the_environment(
    prompts: Path,
) -> None:
    result = run(str(prompts), "--engine", "fake", env={"BIZRA_BATCH_TEMPERATURE": "inf"})
    assert result.exit_code == 2
    assert result.stderr == (
        "bizra-batch: error: --temperature: expected a finite number >= 0, found number inf\n"
    )
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"max_in_flight": 0}, "max in flight must be at least 1, got 0"),
        ({"reorder_buffer_bytes": 0}, "the reorder buffer must hold at least 1 byte, got 0"),
    ],
)
def test_a_run_config_with_a_bad_window_or_reorder_limit_cannot_be_built(
    changes: dict[str, int], message: str
) -> None:
    from batching.config import InputConfig, RunConfig
    from batching.errors import UsageError

    with pytest.raises(UsageError) as caught:
        RunConfig(InputConfig("-"), **changes)  # type: ignore[arg-type]
    assert str(caught.value) == message
