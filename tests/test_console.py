"""Tests for cli.console: which display a stream gets, and what each one writes.

A fake clock drives the time, so the interval logic is tested without sleeping."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from cli.console import (
    BarProgress,
    LineProgress,
    SilentProgress,
    make_progress,
    stderr_console,
)
from tests.clocks import FakeClock


class TerminalStream(io.StringIO):
    """A StringIO that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def started_lines(
    *, interval_s: float, total: int | None, at: float = 0.0
) -> tuple[LineProgress, FakeClock, io.StringIO]:
    """Plain-lines progress on a fake clock, after its first update (no rows yet) at `at`."""
    clock = FakeClock(at)
    stream = io.StringIO()
    progress = LineProgress(stream, interval_s=interval_s, clock=clock)
    progress.update(0, 0, total)
    return progress, clock, stream


def test_stderr_console_writes_to_stderr() -> None:
    console = stderr_console()
    assert isinstance(console, Console)
    assert console.stderr


def test_make_progress_picks_the_display_for_the_stream() -> None:
    assert isinstance(make_progress(quiet=False, stream=io.StringIO()), LineProgress)
    assert isinstance(make_progress(quiet=False, stream=TerminalStream()), BarProgress)
    assert isinstance(make_progress(quiet=True, stream=TerminalStream()), SilentProgress)
    closed = io.StringIO()
    closed.close()
    assert isinstance(make_progress(quiet=False, stream=closed), LineProgress)


def test_plain_lines_come_once_per_interval() -> None:
    clock = FakeClock()
    stream = io.StringIO()
    progress = make_progress(quiet=False, stream=stream, interval_s=10.0, clock=clock)
    progress.update(0, 0, 50_000)  # starts the clock; nothing to say yet
    for t in range(1, 10):
        clock.now = float(t)
        progress.update(t * 1_000, t * 4_000, 50_000)
    assert stream.getvalue() == ""
    clock.now = 10.0
    progress.update(12_000, 48_000, 50_000)
    assert lines(stream) == [
        "bizra-batch: 12000/50000 rows (24%), 1200 rows/s, 4800 out tok/s, ETA 32s"
    ]
    clock.now = 15.0
    progress.update(18_000, 72_000, 50_000)
    assert len(lines(stream)) == 1
    clock.now = 20.0
    progress.update(24_000, 96_000, 50_000)
    assert len(lines(stream)) == 2
    assert "\r" not in stream.getvalue()


def test_plain_lines_rates_exclude_time_before_the_first_update() -> None:
    # Five minutes of engine start-up before the first row.
    progress, clock, stream = started_lines(interval_s=10.0, total=None, at=300.0)
    clock.now = 310.0
    progress.update(500, 2_000, None)
    assert lines(stream) == ["bizra-batch: 500 rows, 50 rows/s, 200 out tok/s"]


def test_plain_lines_with_a_low_estimate_never_pass_100_percent() -> None:
    progress, clock, stream = started_lines(interval_s=1.0, total=100)
    clock.now = 2.0
    progress.update(150, 15, 100)
    assert lines(stream) == ["bizra-batch: 150/150 rows (100%), 75 rows/s, 7.5 out tok/s"]


def test_plain_lines_close_claims_nothing() -> None:
    # An interrupted run or a closed pipe also closes the progress: it must not
    # say "done"; the run's summary, which follows, has the figures.
    progress, clock, stream = started_lines(interval_s=10.0, total=1_000)
    clock.now = 4.0
    progress.update(500, 8_000, 1_000)
    progress.close()
    assert lines(stream) == []


def test_plain_lines_close_without_updates_says_nothing() -> None:
    stream = io.StringIO()
    LineProgress(stream, clock=FakeClock()).close()
    assert stream.getvalue() == ""


def test_quiet_prints_nothing() -> None:
    clock = FakeClock()
    stream = TerminalStream()
    progress = make_progress(quiet=True, stream=stream, interval_s=1.0, clock=clock)
    for t in range(100):
        clock.now = float(t)
        progress.update(t, t, 100)
    progress.close()
    assert stream.getvalue() == ""


def test_bar_on_a_terminal_shows_rows_and_token_rate() -> None:
    clock = FakeClock()
    stream = TerminalStream()
    progress = make_progress(quiet=False, stream=stream, clock=clock)
    assert stream.getvalue() == ""  # nothing drawn before the first row
    progress.update(0, 0, None)
    clock.now = 2.0
    progress.update(40, 1_000, 100)
    progress.close()
    out = stream.getvalue()
    assert "bizra-batch" in out
    assert "40/100" in out
    assert "500 out tok/s" in out


def test_bar_redraws_are_throttled() -> None:
    clock = FakeClock()
    stream = TerminalStream()
    progress = BarProgress(stream, clock=clock)
    progress.update(0, 0, 10_000)
    drawn = len(stream.getvalue())
    for i in range(1, 1_000):
        progress.update(i, i, 10_000)  # the clock does not move: no redraws
    assert len(stream.getvalue()) == drawn
    progress.close()


def test_default_stream_is_stderr_at_call_time(capsys: pytest.CaptureFixture[str]) -> None:
    clock = FakeClock()
    progress = make_progress(quiet=False, interval_s=1.0, clock=clock)
    progress.update(0, 0, 10)
    clock.now = 1.0
    progress.update(5, 50, 10)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "bizra-batch: 5/10 rows (50%), 5.0 rows/s, 50 out tok/s, ETA 1.0s\n"
