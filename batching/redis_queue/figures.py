"""The worker's report: the run's `Report`, plus what it did with the queue.

>>> queue = QueueFigures(server="redis://q:6379/0", stream="prompts", entries_read=3)
>>> WorkerReport(Report(rows=3, rows_ok=3), queue).to_dict()["queue"]["entries_read"]
3
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from batching.figures import figure, figures_dict, list_figures_in_docstring
from batching.report import Report

__all__ = ["QueueFigures", "WorkerReport"]


@dataclass(frozen=True, slots=True)
class QueueFigures:
    """What the worker did with the queue, and the queue's backlog when it stopped."""

    server: str = figure("", "the Redis server, password masked")
    stream: str = figure("", "the stream read")
    entries_read: int = figure(0, "new entries taken from the stream")
    claimed: int = figure(
        0,
        "entries claimed from workers that held them over --claim-idle-ms without "
        "acknowledging them (dead, or stuck), and run here",
    )
    dead_lettered: int = figure(
        0,
        "entries delivered more than --max-deliveries times, moved to the dead-letter "
        "stream with their error and acknowledged",
    )
    results_written: int = figure(0, "results written to the results stream and acknowledged")
    duplicates_skipped: int = figure(
        0,
        "results not written because their entry was acknowledged already (answered by "
        "another worker that held it too, or dead-lettered meanwhile): a result is "
        "written once per entry",
    )
    redis_retries: int = figure(0, "Redis calls sent again after a lost connection")
    entries_waiting: int | None = figure(
        None, "entries no worker had taken yet, when the worker stopped (None: Redis < 7)"
    )
    entries_pending: int | None = figure(
        None, "entries taken by some worker but not acknowledged, when the worker stopped"
    )

    def to_dict(self) -> dict[str, Any]:
        return figures_dict(self)


list_figures_in_docstring(QueueFigures)


@dataclass(frozen=True, slots=True)
class WorkerReport:
    """A worker's report: `run`'s figures, and the queue's under `"queue"` in JSON."""

    run: Report
    queue: QueueFigures

    def to_dict(self) -> dict[str, Any]:
        return {**self.run.to_dict(), "queue": self.queue.to_dict()}

    def queue_line(self) -> str:
        """The queue's figures as one line under the run's summary.

        >>> queue = QueueFigures(entries_read=2, entries_pending=0)
        >>> print(WorkerReport(Report(), queue).queue_line())
        queue: 2 entries read, 0 claimed from dead workers, 0 dead-lettered,
        0 duplicate results skipped; now ? waiting, 0 pending
        """
        q = self.queue

        def known(value: int | None) -> str:
            return "?" if value is None else str(value)

        return (
            f"queue: {q.entries_read} entries read, {q.claimed} claimed from dead workers, "
            f"{q.dead_lettered} dead-lettered, {q.duplicates_skipped} duplicate results "
            f"skipped; now {known(q.entries_waiting)} waiting, {known(q.entries_pending)} pending"
        )
