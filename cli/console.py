"""The stderr console and the progress display: a bar, plain lines, or nothing.

Everything here writes to stderr (stdout carries only results). Which progress
display a run gets depends on where stderr goes:

- a terminal: a tqdm bar, redrawn in place;
- anything else (CI logs, cron mail, Ray's prefixed worker logs): one plain line
  every `interval_s`, because a bar's carriage returns turn a log file into one
  enormous line;
- `--quiet`: nothing.

Rates are averages since the first `update()`, not since the display was made, so
minutes of engine start-up before the first row do not drag them down: call
`update(0, 0, total)` once the engine is up to start the clock there.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Protocol, TextIO

from rich.console import Console
from tqdm import tqdm

from batching.report_output import format_duration

__all__ = [
    "BarProgress",
    "LineProgress",
    "Progress",
    "SilentProgress",
    "make_progress",
    "print_error",
    "stderr_console",
]

Clock = Callable[[], float]

# A bar redrawn more often than this is only CPU spent on the terminal; `update()`
# is called once per finished batch, which can be thousands of times a second.
_BAR_REFRESH_S = 0.25


def stderr_console() -> Console:
    """The console for messages and the final report.

    >>> stderr_console().print("[red]error:[/red] input.jsonl:3: no 'prompt' field")
    """
    return Console(stderr=True)


class Progress(Protocol):
    """What the pipeline calls; `update` must be cheap, it runs on the hot path."""

    def update(self, rows_done: int, output_tokens: int, total_rows: int | None) -> None:
        """Rows and output tokens so far; `total_rows` may change or be None."""

    def close(self) -> None:
        """The run is over (or failed): draw the final state. Safe to call twice."""


class _Rates:
    """Rows/s and output tok/s since the first sample."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._t0: float | None = None
        self._rows0 = 0
        self._tokens0 = 0

    def start_if_first(self, now: float, rows: int, tokens: int) -> bool:
        if self._t0 is not None:
            return False
        self._t0, self._rows0, self._tokens0 = now, rows, tokens
        return True

    def elapsed(self, now: float) -> float:
        return 0.0 if self._t0 is None else now - self._t0

    def per_second(self, now: float, rows: int, tokens: int) -> tuple[float, float] | None:
        elapsed = self.elapsed(now)
        if elapsed <= 0.0:
            return None
        return (rows - self._rows0) / elapsed, (tokens - self._tokens0) / elapsed


def _number(rate: float) -> str:
    # Slow models on CPU do well under 10 rows/s; "0 rows/s" would be a lie.
    return f"{rate:.0f}" if rate >= 10 else f"{rate:.1f}"


class SilentProgress:
    """`--quiet`: shows nothing.

    >>> SilentProgress().update(10, 200, 100)
    """

    def update(self, rows_done: int, output_tokens: int, total_rows: int | None) -> None:
        pass

    def close(self) -> None:
        pass


class LineProgress:
    """One plain line every `interval_s`.

    >>> import io
    >>> clock = iter([0.0, 10.0, 10.0]).__next__
    >>> p = LineProgress(io.StringIO(), interval_s=10.0, clock=clock)
    >>> p.update(0, 0, 100); p.update(50, 400, 100)  # the second one prints a line
    """

    def __init__(self, stream: TextIO, *, interval_s: float = 10.0, clock: Clock) -> None:
        self._stream = stream
        self._interval_s = interval_s
        self._clock = clock
        self._rates = _Rates(clock)
        self._last_line_at = 0.0
        self._rows = 0
        self._tokens = 0
        self._total: int | None = None

    def update(self, rows_done: int, output_tokens: int, total_rows: int | None) -> None:
        self._rows, self._tokens, self._total = rows_done, output_tokens, total_rows
        now = self._clock()
        if self._rates.start_if_first(now, rows_done, output_tokens):
            self._last_line_at = now
        elif now - self._last_line_at >= self._interval_s:
            self._last_line_at = now
            self._write(self._progress_line(now))

    def close(self) -> None:
        # No closing "done" line: the run's summary follows with figures over the
        # whole run, and an interrupted run or a closed pipe is not "done".
        pass

    def _progress_line(self, now: float) -> str:
        total = self._total
        if total is not None and total > 0:
            # An estimate that turned out low: show the rows as a count, not "110%".
            total = max(total, self._rows)
            parts = [f"{self._rows}/{total} rows ({self._rows * 100 // total}%)"]
        else:
            parts = [f"{self._rows} rows"]
        rates = self._rates.per_second(now, self._rows, self._tokens)
        if rates is not None:
            rows_s, tokens_s = rates
            parts += [f"{_number(rows_s)} rows/s", f"{_number(tokens_s)} out tok/s"]
            if total is not None and rows_s > 0 and total > self._rows:
                parts.append(f"ETA {format_duration((total - self._rows) / rows_s)}")
        return "bizra-batch: " + ", ".join(parts)

    def _write(self, line: str) -> None:
        self._stream.write(line + "\n")
        # Logs are block-buffered when redirected; a line that sits in a buffer for an
        # hour is no progress report.
        self._stream.flush()


class BarProgress:
    """A tqdm bar for a terminal: rows done / total, rows/s and ETA, out tok/s.

    The bar is made at the first `update()`, so nothing is drawn while the engine
    starts (vLLM logs to the same terminal then).

    >>> import sys, time
    >>> p = BarProgress(sys.stderr, clock=time.monotonic)
    >>> p.update(5, 80, 10); p.close()
    """

    def __init__(self, stream: TextIO, *, clock: Clock) -> None:
        self._stream = stream
        self._clock = clock
        self._rates = _Rates(clock)
        self._bar: tqdm[None] | None = None
        self._last_draw_at = 0.0
        self._rows = 0
        self._tokens = 0
        self._total: int | None = None

    def update(self, rows_done: int, output_tokens: int, total_rows: int | None) -> None:
        self._rows, self._tokens, self._total = rows_done, output_tokens, total_rows
        now = self._clock()
        if self._bar is None:
            self._rates.start_if_first(now, rows_done, output_tokens)
            self._bar = tqdm(
                file=self._stream,
                total=total_rows,
                initial=rows_done,
                desc="bizra-batch",
                unit=" rows",
                dynamic_ncols=True,
                # smoothing=0: tqdm's rate and ETA are the average since the bar
                # started, the same basis as our out tok/s.
                smoothing=0,
                # We throttle ourselves; tqdm's own check would run on every update.
                mininterval=0,
            )
            self._last_draw_at = now
        elif now - self._last_draw_at >= _BAR_REFRESH_S:
            self._last_draw_at = now
            self._draw(now)

    def close(self) -> None:
        if self._bar is None:
            return
        self._draw(self._clock(), refresh=False)  # close() draws the last frame itself
        self._bar.close()
        self._bar = None

    def _draw(self, now: float, *, refresh: bool = True) -> None:
        bar = self._bar
        assert bar is not None
        bar.total = None if self._total is None else max(self._total, self._rows)
        bar.n = self._rows
        rates = self._rates.per_second(now, self._rows, self._tokens)
        if rates is not None:
            bar.set_postfix_str(f"{_number(rates[1])} out tok/s", refresh=False)
        if refresh:
            bar.refresh()


def make_progress(
    *,
    quiet: bool,
    stream: TextIO | None = None,
    interval_s: float = 10.0,
    clock: Clock = time.monotonic,
) -> Progress:
    """The progress display for this run: silent, a bar on a terminal, else plain lines.

    `stream` defaults to `sys.stderr` as it is at call time (not import time), so
    tools that swap stderr (pytest, Typer's CliRunner) see the output.

    >>> progress = make_progress(quiet=False)
    >>> progress.update(rows_done=100, output_tokens=3_000, total_rows=1_000)
    >>> progress.close()
    """
    if quiet:
        return SilentProgress()
    out = sys.stderr if stream is None else stream
    try:
        interactive = out.isatty()
    except ValueError:  # a closed stream
        interactive = False
    if interactive:
        return BarProgress(out, clock=clock)
    return LineProgress(out, interval_s=interval_s, clock=clock)


def print_error(message: str) -> None:
    """One plain line on stderr: never wrapped or styled, so it greps and logs cleanly."""
    sys.stderr.write(f"bizra-batch: error: {message}\n")
    sys.stderr.flush()
