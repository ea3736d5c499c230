"""The run report out of the process: a rich table on stderr, a JSON file.

Kept apart from `batching.report`, which counts during the run and needs neither
rich nor the filesystem.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sys
from typing import Any, Protocol

from rich.console import Console
from rich.table import Table

from batching.location import Location
from batching.report import Report
from batching.uri import open_remote_output

__all__ = ["format_duration", "render_report", "write_report"]


class _AsJson(Protocol):
    """A report: `Report`, or one that holds it (the queue worker's)."""

    def to_dict(self) -> dict[str, Any]: ...


def format_duration(seconds: float) -> str:
    """A short human duration: tenths under 10 s, then s, m s, h m.

    >>> [format_duration(s) for s in (3.21, 45.4, 725, 7380)]
    ['3.2s', '45s', '12m 05s', '2h 03m']
    """
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    return f"{whole // 3600}h {whole % 3600 // 60:02d}m"


def _rate(value: float | None, unit: str) -> str:
    if value is None:
        return f"n/a {unit}"
    return f"{value:,.0f} {unit}" if value >= 10 else f"{value:.1f} {unit}"


def _ms(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.0f} ms" if value < 1000 else f"{value / 1000:.2f} s"


def render_report(report: Report, console: Console) -> None:
    """Print the end-of-run summary as a compact two-column table.

    >>> render_report(Report(rows=3, rows_ok=3, wall_seconds=1.5), Console(stderr=True))
    """
    table = Table(title="bizra-batch run", show_header=False, box=None, title_justify="left")
    table.add_column(style="bold")
    table.add_column()

    if report.interrupted is not None:
        # First: every figure below covers only the part of the input that ran.
        table.add_row("interrupted", f"[yellow]{report.interrupted}: a partial run[/yellow]")
    failed = f"[red]{report.rows_failed:,} failed[/red]" if report.rows_failed else "0 failed"
    rows = f"{report.rows_ok:,} ok, {failed}"
    if report.rows_resumed:
        rows += f" · {report.rows_resumed:,} kept from the earlier run"
    table.add_row("rows", rows)
    wall = format_duration(report.wall_seconds)
    engine_times = []
    if report.engine_startup_seconds is not None:
        engine_times.append(f"engine start-up {format_duration(report.engine_startup_seconds)}")
    if report.engine_shutdown_seconds is not None:
        engine_times.append(f"shut-down {format_duration(report.engine_shutdown_seconds)}")
    if engine_times:
        wall += f" ({', '.join(engine_times)})"
    table.add_row("wall time", wall)
    table.add_row(
        "throughput",
        " · ".join(
            (
                _rate(report.requests_per_second, "req/s"),
                _rate(report.input_tokens_per_second, "in tok/s"),
                _rate(report.output_tokens_per_second, "out tok/s"),
            )
        ),
    )
    if report.batches:
        table.add_row(
            "batches",
            f"{report.batches:,}, avg {report.avg_batch_size or 0:.1f} requests, "
            f"{_ms(report.avg_batch_duration_ms)} each",
        )
    table.add_row("latency", f"p50 {_ms(report.latency_p50_ms)} · p95 {_ms(report.latency_p95_ms)}")
    table.add_row("padding avoided", f"{report.padding_tokens_avoided:,} tokens")
    if report.engine_wait_share is not None and report.batches:
        waited = (
            f"{report.engine_wait_share:.1%} of wall time "
            f"({format_duration(report.engine_wait_seconds)}) reading and tokenizing"
        )
        if report.between_steps_share is not None:
            waited += f"; {report.between_steps_share:.1%} of processing time outside engine steps"
        table.add_row("engine waited on us", waited)
    if report.engine_occupancy is not None:
        table.add_row(
            "engine occupancy",
            f"{report.engine_occupancy:.1%} of {report.engine_capacity or 0:,} sequence slots",
        )
    if report.reading_paused_seconds > 0:
        table.add_row(
            "reading paused",
            f"{format_duration(report.reading_paused_seconds)}: rows waiting for an earlier one "
            f"held {report.reorder_peak_bytes / 2**20:,.0f} MiB ({report.reorder_peak_rows:,} "
            "rows); raise --reorder-buffer-mb",
        )
    if report.chunks_by_order:
        orders = ", ".join(f"{order} {n:,}" for order, n in report.chunks_by_order.items())
        table.add_row("chunk order", orders)
    if report.gpu is not None:
        gpu = report.gpu
        table.add_row(
            "GPU",
            f"utilisation avg {gpu.utilization_avg_pct:.0f}% (max {gpu.utilization_max_pct:.0f}%)"
            f" · memory peak {gpu.memory_peak_mib / 1024:.1f} of "
            f"{gpu.memory_total_mib / 1024:.1f} GiB ({gpu.devices} device"
            f"{'s' if gpu.devices != 1 else ''})",
        )
    for label, count in (
        ("retries", report.retries),
        ("engine restarts", report.engine_restarts),
        ("OOM back-offs", report.oom_backoffs),
    ):
        if count:
            table.add_row(label, f"[yellow]{count:,}[/yellow]")
    for number, replica in enumerate(report.replicas, 1):
        table.add_row(
            f"replica {number}",
            f"{replica.rows:,} rows · {_rate(replica.requests_per_second, 'req/s')} · "
            f"{_rate(replica.output_tokens_per_second, 'out tok/s')} ({replica.name})",
        )
    if report.errors_by_type:
        errors = ", ".join(f"{kind} {n:,}" for kind, n in report.errors_by_type.items())
        table.add_row("errors", f"[red]{errors}[/red]")
    if console.is_terminal:
        console.print(table)
        return
    # In a log file the table's padding is only trailing spaces, up to 80 columns.
    with console.capture() as captured:
        console.print(table)
    console.file.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))


def write_report(report: _AsJson, path: Location | str | os.PathLike[str]) -> None:
    """Write the report as JSON; readers see the old file or the new one, never half.

    >>> write_report(Report(rows=1, rows_ok=1), "report.json")
    >>> with open("report.json") as written:
    ...     json.load(written)["rows_ok"]
    1
    """
    location = Location.of(path if isinstance(path, Location) else os.fspath(path))
    data = (json.dumps(report.to_dict(), indent=2) + "\n").encode()
    if location.is_stdio:  # stdout, when the results go to a file
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    target = location.path
    if location.is_remote:
        # An object store writes the object whole when the stream closes.
        with open_remote_output(target, overwrite=True) as stream:
            stream.write(data)
        return
    directory = os.path.dirname(target) or "."
    # Same directory so os.replace is a rename on one filesystem, hence atomic.
    tmp = os.path.join(directory, f".{os.path.basename(target)}.{secrets.token_hex(4)}.tmp")
    # os.open with 0o666 (not tempfile's 0o600) so the report gets the usual umask mode.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
