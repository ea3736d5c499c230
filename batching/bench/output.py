"""What `bench` shows: a rich table, a JSON file, and (with matplotlib) a plot."""

from __future__ import annotations

import json
import os
from typing import Any

from rich.console import Console
from rich.table import Table

from batching.bench.sweep import BenchResult, BenchRow
from batching.bench.vs_generate import VsGenerateResult
from batching.errors import UsageError

__all__ = [
    "check_plotting",
    "plot_bench",
    "render_bench",
    "render_vs_generate",
    "write_bench_json",
]

PLOT_HINT = "--plot needs matplotlib: pip install 'bizra-batch[plot]'"


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def render_bench(result: BenchResult, console: Console) -> None:
    """The results table: one line per batch size, then the pipeline.

    >>> import io
    >>> from batching.bench.sweep import run_bench
    >>> from batching.records import Sampling
    >>> from batching.testing import FakeEngine
    >>> result = run_bench(FakeEngine(), ["ab", "cd"], Sampling(max_tokens=2), batch_sizes=[1, 2])
    >>> console = Console(file=io.StringIO(), width=120)
    >>> render_bench(result, console)
    >>> "batch 2" in console.file.getvalue()
    True
    """
    workload = result.workload
    table = Table(
        title=(
            f"bizra-batch bench: {workload.prompts} prompts, "
            f"{workload.prompt_tokens_mean:.0f} prompt tokens on average, "
            f"max_tokens {workload.max_tokens}, engine max_num_seqs {workload.max_num_seqs}"
        ),
        title_justify="left",
    )
    for header in (
        "run",
        "requests/s",
        "output tok/s",
        "p50 latency ms",
        "p95 latency ms",
        "speed-up",
        "efficiency",
    ):
        table.add_column(header, justify="left" if header == "run" else "right")
    for row in result.rows:
        table.add_row(
            row.label,
            _num(row.requests_per_second, 2),
            _num(row.output_tokens_per_second),
            _num(row.latency_p50_ms),
            _num(row.latency_p95_ms),
            "-" if row.speedup is None else f"{row.speedup:.2f}x",
            "-" if row.efficiency is None else f"{row.efficiency:.0%}",
        )
    console.print(table)


def render_vs_generate(result: VsGenerateResult, console: Console) -> None:
    """What ran, both sides' throughput, then the pipeline's over `LLM.generate`'s.

    >>> render_vs_generate(result, Console())  # doctest: +SKIP
    """
    # Plain unwrapped lines around the table: a title or caption would wrap at its
    # narrow width, and a line that greps whole is worth more than one that fits.
    workload = result.workload
    console.print(
        f"bizra-batch bench --vs-generate: {workload.prompts} prompts, "
        f"{workload.prompt_tokens_mean:.0f} prompt tokens on average, max_tokens "
        f"{workload.max_tokens} where a row sets none, engine max_num_seqs {workload.max_num_seqs}",
        highlight=False,
        soft_wrap=True,
    )
    console.print(
        f"{result.engine}; each side warmed up on {result.warmup_prompts} prompts, untimed",
        highlight=False,
        soft_wrap=True,
    )
    table = Table()
    for header in ("run", "wall s", "rows/s", "output tokens", "output tok/s"):
        table.add_column(header, justify="left" if header == "run" else "right")
    for row in (result.generate, result.pipeline):
        table.add_row(
            row.label,
            _num(row.wall_seconds, 2),
            _num(row.requests_per_second),
            f"{row.output_tokens:,}",
            _num(row.output_tokens_per_second),
        )
    console.print(table)
    console.print(
        f"pipeline/generate: {result.rows_ratio:.3f}x rows/s, "
        f"{result.output_tokens_ratio:.3f}x output tok/s",
        highlight=False,
        soft_wrap=True,
    )


def write_bench_json(result: BenchResult | VsGenerateResult, path: str | os.PathLike[str]) -> None:
    with open(path, "w", encoding="utf-8") as out:
        json.dump(result.to_dict(), out, indent=2)
        out.write("\n")


def check_plotting() -> None:
    """Fail before the benchmark runs, not after, if --plot cannot be drawn."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError(PLOT_HINT) from None


def plot_bench(result: BenchResult, path: str | os.PathLike[str]) -> None:
    """Throughput and p50/p95 latency against batch size, the pipeline as a line.

    Not run as a test: it needs matplotlib (the `plot` extra), seconds to import.

    >>> plot_bench(result, "bench.png")  # doctest: +SKIP
    """
    check_plotting()
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server
    import matplotlib.pyplot as plt

    sweep: list[BenchRow] = [r for r in result.rows if r.batch_size is not None]
    pipeline = [r for r in result.rows if r.batch_size is None]
    sizes = [r.batch_size for r in sweep]
    figure: Any
    figure, (throughput, latency) = plt.subplots(1, 2, figsize=(11, 4.2))
    throughput.plot(
        sizes, [r.output_tokens_per_second for r in sweep], "o-", label="static batches"
    )
    latency.plot(sizes, [r.latency_p50_ms for r in sweep], "o-", label="p50")
    latency.plot(sizes, [r.latency_p95_ms for r in sweep], "s--", label="p95")
    for row in pipeline:
        throughput.axhline(row.output_tokens_per_second, color="C2", label=row.label)
        if row.latency_p50_ms is not None:
            latency.axhline(row.latency_p50_ms, color="C2", label=f"{row.label} p50")
    for axis, ylabel in ((throughput, "output tokens/s"), (latency, "request latency (ms)")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("batch size")
        axis.set_ylabel(ylabel)
        axis.grid(True, alpha=0.3)
        axis.legend()
    workload = result.workload
    figure.suptitle(
        f"{workload.prompts} prompts, ~{workload.prompt_tokens_mean:.0f} tokens, "
        f"max_tokens {workload.max_tokens}"
    )
    figure.tight_layout()
    figure.savefig(os.fspath(path), dpi=100)
    plt.close(figure)
