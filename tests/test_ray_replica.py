"""`EngineReplica` on its own, without Ray: several batches at once on one engine.

Ray Data calls the replica's `__call__` with several batches at once; here the
tests do, on one event loop, so what each engine step ran is exact.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field

import pyarrow as pa
import pytest

from batching.config import InputConfig, OutputConfig, RunConfig
from batching.engine import Engine
from batching.pipeline import EngineFailedError
from batching.records import InvalidRow, Request, Row, RowError, Sampling
from batching.testing import FakeEngine, expected_output

pytest.importorskip("ray")

from batching.ray_replica import BatchStats, EngineReplica
from batching.ray_results import ResultDecoder
from batching.ray_source import encode_rows

CONFIG = RunConfig(
    input=InputConfig(path="in.jsonl", chunk_size=16),
    output=OutputConfig(path="out.jsonl"),
    sampling=Sampling(max_tokens=6),
)


@dataclass
class GatedFactory:
    """Makes one FakeEngine, once `gate` is open: the test queues batches first."""

    max_num_seqs: int = 3
    gate: threading.Event = field(default_factory=threading.Event)
    made: list[FakeEngine] = field(default_factory=list)

    def __call__(self) -> Engine:
        assert self.gate.wait(timeout=30), "the test never opened the gate"
        engine = FakeEngine(max_num_seqs=self.max_num_seqs)
        self.made.append(engine)
        return engine


def rows(start: int, count: int) -> list[Row]:
    return [
        Request(index=i, id=f"r{i}", line=i + 1, prompt=f"prompt {i}")
        for i in range(start, start + count)
    ]


def run_together(replica: EngineReplica, batches: list[list[Row]], gate: threading.Event) -> list:
    """Call the replica with every batch at once; open `gate` once all are queued."""

    async def main() -> list[pa.Table]:
        calls = [asyncio.ensure_future(replica(encode_rows(batch))) for batch in batches]
        # One turn of the loop: each call queues its rows before its first await.
        await asyncio.sleep(0)
        gate.set()
        return list(await asyncio.gather(*calls))

    return asyncio.run(main())


def test_two_batches_share_engine_steps_and_the_engine_never_runs_part_full() -> None:
    factory = GatedFactory(max_num_seqs=3)
    replica = EngineReplica(factory, CONFIG, encode_ahead=False)
    first, second = rows(0, 16), rows(16, 16)

    tables = run_together(replica, [first, second], factory.gate)

    (engine,) = factory.made
    # 32 rows, 3 a step: every step full but the last. Run one batch after the
    # other, the 6th step would hold the first batch's last row alone.
    assert [len(step) for step in engine.steps] == [3] * 10 + [2]
    # The replica numbers its rows 0..31 in the order the batches came.
    assert any(min(step) < 16 <= max(step) for step in engine.steps)
    decoder = ResultDecoder()
    for table, batch in zip(tables, [first, second], strict=True):
        results, extras = decoder.decode(table)
        assert [r.index for r in results] == [row.index for row in batch]
        assert [r.output for r in results] == [
            expected_output(f"prompt {r.index}", 6) for r in results
        ]
        (stats,) = extras
        assert isinstance(stats, BatchStats) and stats.rows_run == 16


def test_stats_of_overlapping_batches_add_up_to_the_replica_totals() -> None:
    factory = GatedFactory(max_num_seqs=4)
    replica = EngineReplica(factory, CONFIG)
    invalid = InvalidRow(index=40, id="bad", line=41, error=RowError("invalid_input", "no"))
    batches = [rows(0, 16), rows(16, 16), [*rows(32, 8), invalid]]

    tables = run_together(replica, batches, factory.gate)

    stats = [ResultDecoder().decode(table)[1][0] for table in tables]
    (engine,) = factory.made
    assert [s.rows_run for s in stats] == [16, 16, 8]  # the invalid row reaches no engine
    assert sum(s.report.batches for s in stats) == len(engine.steps)
    assert sum(s.output_tokens for s in stats) == 40 * 6
    assert sum(s.busy_seconds for s in stats) > 0
    assert sum(s.report.engine_startup_seconds or 0 for s in stats) > 0
    assert len({s.replica for s in stats}) == 1


def test_an_engine_that_fails_for_good_fails_every_batch_waiting_and_every_later_one() -> None:
    def broken() -> Engine:
        raise EngineFailedError("the engine did not start")

    replica = EngineReplica(broken, CONFIG)
    gate = threading.Event()

    with pytest.raises(EngineFailedError, match="did not start"):
        run_together(replica, [rows(0, 4), rows(4, 4)], gate)
    with pytest.raises(EngineFailedError, match="did not start"):
        run_together(replica, [rows(8, 4)], gate)


def test_an_empty_batch_returns_an_empty_table_without_an_engine() -> None:
    factory = GatedFactory()
    replica = EngineReplica(factory, CONFIG)

    (table,) = run_together(replica, [[]], factory.gate)

    assert table.num_rows == 0
    assert factory.made == []
