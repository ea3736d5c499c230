"""Chaos run: kill -9 `bizra-batch run` at random moments, resume, compare with a clean run.

    python benchmarks/chaos.py                         # 20 kill cycles, 5000 rows, seed 0
    python benchmarks/chaos.py --cycles 5 --rows 2000 --seed 3 --format parquet

It writes a prompt file, runs it once uninterrupted on real vLLM and the tiny model
(greedy, `--max-tokens 8`) as the reference, then runs it again and kills the whole
process group with SIGKILL after a random delay, `--resume`s, kills again, and so
on, until a run finishes by itself; if the cycles run out first, one last run
without a kill finishes it. The delays are drawn from `--seed`: some land right at
the start (before Python has even imported the CLI), some in engine start-up, and
the rest while rows are written, spread (from the timing of the runs so far and
the rows still to do) so that kills hit early, middle and late rows and the end.
The final output is then compared with the reference, row by row and byte for byte.

Prints one line per cycle, then `rows lost`, `rows duplicated`, `rows differing`,
the cycles done and the total time. Exit status 1 if any row was lost, duplicated
or differs, if a run failed by itself, or if a killed run left anything but a
prefix of the reference on disk; else 0.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from samples.build_tiny_model import ensure_tiny_model

__all__ = ["main"]

REPO_ROOT = Path(__file__).resolve().parent.parent
CHUNK_SIZE = 64
# A kill this soon after Popen lands before the CLI has imported anything.
AT_START_S = 1.0
# Shares of the kills aimed right at the start and into engine start-up (at least
# one each); the rest are aimed at the time rows are being written.
AT_START_SHARE = 0.15
START_UP_SHARE = 0.25
POLL_S = 0.05
MIN_RATE_WINDOW_S = 3.0

SUBJECTS = (
    "the moon", "sourdough bread", "a B-tree index", "tides", "a sonnet", "jazz",
    "an endgame with rooks", "monsoon rain", "a compost heap", "the Silk Road",
)  # fmt: skip
TASKS = ("Explain {s}.", "Write a line about {s}.", "Why does {s} matter?", "Describe {s}.")


@dataclass
class Timing:
    """Seconds from start to a run's first new row on disk, and rows per second after.

    Measured on the reference run, then updated from every run that writes rows:
    on a shared machine the speed drifts, and kills aimed with stale figures would
    bunch up early or late.
    """

    first_row_s: float
    rows_per_s: float

    def expected_s(self, rows_left: int) -> float:
        return self.first_row_s + rows_left / self.rows_per_s

    def observe(self, first_row_s: float, rows: int, ended_s: float) -> None:
        self.first_row_s = (self.first_row_s + first_row_s) / 2
        writing_s = ended_s - first_row_s
        # Rows arrive in bursts (a batch of sequences at a time): short windows lie.
        if writing_s >= MIN_RATE_WINDOW_S and rows > 0:
            self.rows_per_s = (self.rows_per_s + rows / writing_s) / 2


@dataclass(frozen=True)
class Comparison:
    lost: int
    duplicated: int
    differing: int
    unreadable: int
    identical: bool

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.differing or self.unreadable)


def _write_prompts(path: Path, rows: int, seed: int) -> None:
    rng = random.Random(seed)
    with path.open("wb") as file:
        for index in range(rows):
            prompt = rng.choice(TASKS).format(s=rng.choice(SUBJECTS))
            file.write(orjson.dumps({"id": f"c{index}", "prompt": f"{prompt} ({index})"}) + b"\n")


def _command(source: Path, out: Path, model: Path, resume: bool) -> list[str]:
    return [
        sys.executable, "-m", "cli", "run", str(source), "-m", str(model), "-o", str(out),
        "--temperature", "0", "--max-tokens", "8", "--chunk-size", str(CHUNK_SIZE),
        # float32 and eager mode: the tiny model's fastest start and steps on a CPU.
        "--dtype", "float32", "--engine-arg", "enforce_eager=true", "-q",
        *(["--resume"] if resume else []),
    ]  # fmt: skip


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # The tiny model needs little KV cache, and a small one is allocated faster.
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    return env


def _start(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as stderr:
        # Its own process group: SIGKILL must take any engine helper process too.
        return subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _tail(log: Path, lines: int = 15) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


# -- reading an output back ------------------------------------------------------------


def _rows(out: Path, fmt: str) -> tuple[list[bytes], int]:
    """The complete rows on disk, each as canonical JSON bytes, and the torn bytes."""
    if fmt == "jsonl":
        if not out.exists():
            return [], 0
        data = out.read_bytes()
        end = data.rfind(b"\n") + 1
        return data[:end].splitlines(), len(data) - end
    import pyarrow.parquet as pq

    if out.exists():
        tables = [pq.read_table(out)]
    else:
        parts = out.with_name(out.name + ".parts")
        tables = [pq.read_table(p) for p in sorted(parts.glob("part-*.parquet"))]
    return [orjson.dumps(row) for table in tables for row in table.to_pylist()], 0


def _compare(rows: Sequence[bytes], reference: Sequence[bytes]) -> Comparison:
    """Rows lost, duplicated (or foreign) and differing (content or position) by id."""
    expected: dict[Any, tuple[int, bytes]] = {}
    for position, line in enumerate(reference):
        expected[orjson.loads(line)["id"]] = (position, line)
    seen: Counter[Any] = Counter()
    differing = unreadable = foreign = 0
    for position, line in enumerate(rows):
        try:
            row_id = orjson.loads(line)["id"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            unreadable += 1
            continue
        seen[row_id] += 1
        if row_id not in expected:
            foreign += 1
        elif seen[row_id] == 1 and expected[row_id] != (position, line):
            differing += 1
    lost = sum(1 for row_id in expected if row_id not in seen)
    duplicated = sum(count - 1 for count in seen.values()) + foreign
    return Comparison(lost, duplicated, differing, unreadable, list(rows) == list(reference))


# -- the runs ----------------------------------------------------------------------------


def _disk_marker(out: Path, fmt: str) -> int:
    """A number that grows whenever rows reach the disk: JSONL bytes, sealed parts."""
    if fmt == "jsonl":
        return out.stat().st_size if out.exists() else 0
    parts = out.with_name(out.name + ".parts")
    return len(list(parts.glob("part-*.parquet"))) if parts.is_dir() else 0


def _watch(
    process: subprocess.Popen[bytes], out: Path, fmt: str, kill_after_s: float | None
) -> float | None:
    """Wait for the run to end, or SIGKILL it after `kill_after_s`.

    Returns the seconds to the first new rows on disk, or None if it wrote none.
    """
    started = time.monotonic()
    marker = _disk_marker(out, fmt)
    first_row_s: float | None = None
    while process.poll() is None:
        now = time.monotonic() - started
        if kill_after_s is not None and now >= kill_after_s:
            _kill_group(process)
            break
        if first_row_s is None and _disk_marker(out, fmt) > marker:
            first_row_s = now
        wait_s = POLL_S if kill_after_s is None else min(POLL_S, kill_after_s - now)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=max(wait_s, 0.0))
    return first_row_s


def _reference(source: Path, out: Path, model: Path, fmt: str, log: Path) -> Timing:
    """The uninterrupted run, watched for the moment its first row reaches the disk."""
    started = time.monotonic()
    process = _start(_command(source, out, model, resume=False), log)
    first_row_s = _watch(process, out, fmt, None)
    total_s = time.monotonic() - started
    if process.returncode != 0:
        sys.exit(f"chaos: the reference run failed ({process.returncode}):\n{_tail(log)}")
    first_row_s = first_row_s or total_s / 2
    rows = len(_rows(out, fmt)[0])
    return Timing(first_row_s, rows / max(total_s - first_row_s, 1e-3))


def _kill_plan(rng: random.Random, cycles: int) -> list[str]:
    """Where each cycle's kill is aimed: every phase at least once, whenever the run ends.

    The first kill lands right at the start (before the output exists) and the
    second in engine start-up, so both happen even if the rows are all written in
    a few cycles; the rest are shuffled.
    """
    if cycles < 3:
        return ["writing"] * cycles
    at_start = max(1, round(cycles * AT_START_SHARE))
    start_up = max(1, round(cycles * START_UP_SHARE))
    rest = ["at start"] * (at_start - 1) + ["start-up"] * (start_up - 1)
    rest += ["writing"] * (cycles - 2 - len(rest))
    rng.shuffle(rest)
    return ["at start", "start-up", *rest]


def _draw_delay(
    rng: random.Random, aim: str, timing: Timing, rows_left: int, writing_kills_left: int
) -> float:
    """A moment to kill a run at, for a kill aimed at `aim`.

    Kills aimed at writing are spread so the rows left take about the writing kills
    left to get through: they hit early, middle and late rows alike, and the very
    end once few rows are left.
    """
    if aim == "at start":
        return rng.uniform(0.0, AT_START_S)
    if aim == "start-up":
        return rng.uniform(AT_START_S, max(AT_START_S, timing.first_row_s))
    slice_s = rows_left / timing.rows_per_s / max(1, writing_kills_left)
    return timing.first_row_s + rng.uniform(0.0, 2.0 * slice_s)


def _phase(delay: float, before: int, after: int, rows: int) -> str:
    if after == rows:
        return "after the last row"
    if after > before:
        return "writing"
    return "at start" if delay < AT_START_S else "start-up"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=20, help="kill cycles at most")
    parser.add_argument("--rows", type=int, default=5000, help="rows in the prompt file")
    parser.add_argument("--seed", type=int, default=0, help="seeds prompts and kill delays")
    parser.add_argument("--format", choices=("jsonl", "parquet"), default="jsonl")
    parser.add_argument("--work-dir", help="keep files here (default: a temporary dir)")
    args = parser.parse_args(argv)

    started = time.monotonic()
    model = ensure_tiny_model()
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bizra-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    source, log = work / "prompts.jsonl", work / "stderr.log"
    reference_out, out = work / f"reference.{args.format}", work / f"chaos.{args.format}"
    for stale in (reference_out, out):
        stale.unlink(missing_ok=True)
        shutil.rmtree(stale.with_name(stale.name + ".parts"), ignore_errors=True)
    _write_prompts(source, args.rows, args.seed)
    print(
        f"chaos: {args.rows} rows, {args.format}, seed {args.seed}, "
        f"up to {args.cycles} kill cycles, files in {work}",
        flush=True,
    )

    timing = _reference(source, reference_out, model, args.format, log)
    reference = _rows(reference_out, args.format)[0]
    print(
        f"reference: {len(reference)} rows in {time.monotonic() - started:.1f}s "
        f"(first row on disk after {timing.first_row_s:.1f}s, {timing.rows_per_s:.0f} rows/s)",
        flush=True,
    )

    rng = random.Random(args.seed)
    cycles = kills = 0
    phases: Counter[str] = Counter()
    plan = _kill_plan(rng, args.cycles)
    failed = False
    finished = False
    while not finished:
        final = cycles >= args.cycles
        before = len(_rows(out, args.format)[0])
        delay = None
        if not final:
            aim = plan[cycles]
            writing_left = plan[cycles:].count("writing")
            delay = _draw_delay(rng, aim, timing, args.rows - before, writing_left)
        process = _start(_command(source, out, model, resume=cycles > 0), log)
        run_started = time.monotonic()
        first_row_s = _watch(process, out, args.format, delay)
        ran_s = time.monotonic() - run_started
        saved, torn = _rows(out, args.format)
        if first_row_s is not None:
            timing.observe(first_row_s, len(saved) - before, ran_s)
        cycles += 1
        label = "final run" if final else f"cycle {cycles:2d}"
        if process.returncode == -signal.SIGKILL:
            kills += 1
            assert delay is not None
            phase = _phase(delay, before, len(saved), args.rows)
            phases[phase] += 1
            status = f"killed after {delay:6.2f}s ({phase})"
        else:
            finished = True
            status = f"exit {process.returncode} after {ran_s:6.2f}s"
            if process.returncode != 0:
                failed = True
                print(f"chaos: the run failed by itself:\n{_tail(log)}", flush=True)
        check = _compare(saved, reference[: len(saved)])
        note = ""
        if not check.ok:
            failed = True
            note = "  <- NOT a prefix of the reference"
        torn_note = f", torn tail {torn} B" if torn else ""
        print(
            f"{label}: {status:42} rows on disk {before:5d} -> {len(saved):5d}{torn_note}{note}",
            flush=True,
        )

    result = _compare(_rows(out, args.format)[0], reference)
    if args.format == "parquet":
        import pyarrow.parquet as pq

        identical = pq.read_table(out).equals(pq.read_table(reference_out))
    else:
        identical = out.read_bytes() == reference_out.read_bytes()
    print(f"rows lost: {result.lost}")
    print(f"rows duplicated: {result.duplicated}")
    print(f"rows differing: {result.differing}")
    if result.unreadable:
        print(f"rows unreadable: {result.unreadable}")
    print(f"identical to the reference: {'yes' if identical else 'NO'}")
    where = ", ".join(f"{count} {phase}" for phase, count in phases.most_common())
    print(f"cycles done: {cycles} ({kills} killed: {where or 'none'})")
    print(f"total time: {time.monotonic() - started:.1f}s")
    return 1 if failed or not result.ok or not identical else 0


if __name__ == "__main__":
    sys.exit(main())
