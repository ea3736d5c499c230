"""Shared pieces of the whole-process benchmarks: prompt files, measured children, tables.

A measurement is a child process timed from `Popen` to its exit, with its peak RSS
from the `rusage` that `os.wait4` returns (Linux fills `ru_maxrss` with the larger of
the child's own peak and that of any descendant it waited for, so an engine-core
subprocess would count too). The parent holds nothing big, so it does not skew them.
"""

from __future__ import annotations

import os
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import orjson

__all__ = [
    "REPO_ROOT",
    "TINY_MODEL",
    "Measurement",
    "bizra_command",
    "checkout_description",
    "format_table",
    "iter_output_rows",
    "make_prompt",
    "measure",
    "print_provenance",
    "summarize",
    "work_folder",
    "write_prompt_file",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
TINY_MODEL = "samples/tiny-model"
PROMPT_SEED = 20250101

_WORDS = (
    "system", "garden", "river", "signal", "engine", "theory", "village", "market",
    "recipe", "window", "library", "harbour", "pattern", "measure", "journey", "machine",
    "season", "letter", "bridge", "forest", "number", "voice", "map", "quiet", "careful",
    "ancient", "bright", "simple", "curious", "steady", "narrow", "warm", "hidden",
    "broad", "gentle", "rapid", "modest", "strange", "clear", "changes", "follows",
    "measures", "explains", "supports", "connects", "reveals", "shapes", "carries",
    "balances", "divides", "records", "predicts", "repairs", "slowly", "often", "rarely",
    "always", "quickly", "together", "the", "a", "of", "and", "to", "in", "on", "with",
    "under", "over", "near", "café", "naïve", "über", "façade", "ñandú", "smörgåsbord",
    "日本", "question", "answer", "story", "summary",
)  # fmt: skip
_TASKS = (
    "Summarize", "Translate", "Explain", "Rewrite", "Continue", "Critique", "Classify",
    "Answer", "Describe", "List the claims in",
)  # fmt: skip


def make_prompt(index: int, rng: random.Random) -> str:
    """One prompt of a length drawn from a short-heavy mix (4 to 250 words).

    It opens with the row number, so no two prompts share a first KV block and
    prefix caching cannot make one engine look faster than the other.

    >>> make_prompt(7, random.Random(1))[:9]
    'Request 7'
    """
    bucket = rng.random()
    if bucket < 0.7:
        words = rng.randint(4, 20)
    elif bucket < 0.95:
        words = rng.randint(21, 80)
    else:
        words = rng.randint(81, 250)
    body = " ".join(rng.choice(_WORDS) for _ in range(words))
    return f"Request {index}. {rng.choice(_TASKS)} this: {body}"


def write_prompt_file(path: Path, rows: int, seed: int = PROMPT_SEED) -> None:
    """Write `rows` JSONL rows `{"id": i, "prompt": ...}`; the same arguments give the same bytes.

    >>> write_prompt_file(Path("/tmp/p.jsonl"), 3)
    """
    rng = random.Random(seed)
    with path.open("wb") as out:
        for start in range(0, rows, 10_000):
            out.write(
                b"".join(
                    orjson.dumps({"id": i, "prompt": make_prompt(i, rng)}) + b"\n"
                    for i in range(start, min(rows, start + 10_000))
                )
            )


def checkout_description() -> str:
    """The commit the benchmark ran, and whether the tree had changes on top of it.

    >>> checkout_description()
    '2a79b52 (with uncommitted changes)'
    """
    try:
        commit = _git("rev-parse", "--short", "HEAD")
        changes = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"{commit} (with uncommitted changes)" if changes else commit


def print_provenance() -> None:
    """Print the command line and the checkout, so a pasted result says what made it."""
    print("command:", shlex.join([sys.executable, *sys.argv]))
    print("checkout:", checkout_description())


@contextmanager
def work_folder(keep: Path | None, prefix: str) -> Iterator[Path]:
    """The folder a benchmark writes into: `keep` (made if missing, left behind), else a
    temporary one removed afterwards.

    >>> with work_folder(None, "bizra-doc-") as work:
    ...     work.is_dir()
    True
    """
    with tempfile.TemporaryDirectory(prefix=prefix) as scratch:
        work = keep or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        yield work


def _git(*args: str) -> str:
    """What a git command in this checkout printed, stripped; it raises if git failed."""
    return subprocess.run(
        ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()


def iter_output_rows(path: Path) -> Iterator[dict[str, object]]:
    """The rows of a JSONL results file, one dict at a time."""
    with path.open("rb") as lines:
        for line in lines:
            yield orjson.loads(line)


def bizra_command(input_path: Path, output_path: Path, model: str, max_tokens: int) -> list[str]:
    """The end-to-end command: the real CLI, quiet, greedy."""
    return [
        sys.executable, "-m", "cli", "run", str(input_path),
        "-m", model, "-o", str(output_path),
        "--max-tokens", str(max_tokens), "--temperature", "0", "-q",
    ]  # fmt: skip


@dataclass(frozen=True, slots=True)
class Measurement:
    """One child process: wall and CPU (user + system) seconds, and its peak RSS.

    CPU seconds are there because this box is shared: another job slows the wall
    clock far more than it changes the CPU time a run needs.
    """

    label: str
    wall_s: float
    cpu_s: float
    peak_rss_bytes: int
    rows: int
    load_before: float

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.wall_s if self.wall_s > 0 else 0.0


def measure(
    label: str, command: Sequence[str], rows: int, log_path: Path, cwd: Path = REPO_ROOT
) -> Measurement:
    """Run `command` from `cwd` (the repository root); stdout and stderr go to `log_path`.

    Exits the benchmark (with the log's tail) if the child fails: a number from a
    failed run would be a lie.

    >>> measure("bizra", ["true"], rows=0, log_path=Path("/tmp/log")).wall_s < 1
    True
    """
    print(f"  {label}: {shlex.join(command)}", file=sys.stderr, flush=True)
    with log_path.open("wb") as log:
        load_before = os.getloadavg()[0]
        started = time.perf_counter()
        child = subprocess.Popen(command, cwd=cwd, stdout=log, stderr=log)
        # wait4 instead of Popen.wait: the rusage of exactly this child, not the
        # running maximum that getrusage(RUSAGE_CHILDREN) keeps over all of them.
        _, status, usage = os.wait4(child.pid, 0)
        wall_s = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise SystemExit(f"{label} exited {child.returncode}: {shlex.join(command)}\n{tail}")
    # ru_maxrss is in KiB on Linux.
    cpu_s = usage.ru_utime + usage.ru_stime
    return Measurement(label, wall_s, cpu_s, usage.ru_maxrss * 1024, rows, load_before)


def summarize(runs: Sequence[Measurement]) -> dict[str, float]:
    """Best and median wall time, CPU time, rows/s and peak RSS over repeats of one command."""
    walls = [r.wall_s for r in runs]
    rates = [r.rows_per_s for r in runs]
    rss = [r.peak_rss_bytes for r in runs]
    cpu = [r.cpu_s for r in runs]
    return {
        "best_cpu_s": min(cpu),
        "median_cpu_s": statistics.median(cpu),
        "best_wall_s": min(walls),
        "median_wall_s": statistics.median(walls),
        "best_rows_per_s": max(rates),
        "median_rows_per_s": statistics.median(rates),
        "max_rss_mib": max(rss) / 2**20,
        "median_rss_mib": statistics.median(rss) / 2**20,
    }


def runs_table(runs: Mapping[str, Sequence[Measurement]]) -> str:
    """Every run of every side, in the order they alternated (`label #repeat`).

    >>> run = Measurement("a", wall_s=2.0, cpu_s=1.0, peak_rss_bytes=2**20, rows=4,
    ...                   load_before=0.5)
    >>> print(runs_table({"a": [run]}))
    run   wall s  rows/s  CPU s  peak RSS MiB  load before
    ----  ------  ------  -----  ------------  -----------
    a #1    2.00    2.00   1.00          1.00         0.50
    """
    rows: list[list[object]] = []
    for repeat in range(max(len(measured) for measured in runs.values())):
        for measured in runs.values():
            if repeat < len(measured):
                r = measured[repeat]
                mib = r.peak_rss_bytes / 2**20
                rows.append([f"{r.label} #{repeat + 1}", r.wall_s, r.rows_per_s, r.cpu_s, mib,
                             r.load_before])  # fmt: skip
    return format_table(["run", "wall s", "rows/s", "CPU s", "peak RSS MiB", "load before"], rows)


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain, aligned text table (numbers right-aligned)."""
    cells = [[str(h) for h in header]] + [
        [f"{v:.2f}" if isinstance(v, float) else str(v) for v in row] for row in rows
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for n, row in enumerate(cells):
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
