"""Tests for batching.adapters: the in-memory supply and sink, and the engine on loan."""

from __future__ import annotations

from batching.adapters import KeptOpen, ListSink, ListSupply
from batching.engine import Engine, EngineRequest
from batching.records import Request, Result, Row, Sampling
from batching.testing import FakeEngine


def rows(count: int) -> list[Row]:
    return [Request(index=i, id=i, line=i + 1, prompt=f"p{i}") for i in range(count)]


def test_the_supply_hands_over_chunks_in_order_and_counts_them() -> None:
    supply = ListSupply(rows(5), chunk_size=2)
    assert supply.estimated_total_rows() == 5
    chunks = list(supply.chunks())
    assert [[row.index for row in chunk] for chunk in chunks] == [[0, 1], [2, 3], [4]]
    assert supply.chunks_read == 3


def test_an_empty_supply_has_no_chunks() -> None:
    supply = ListSupply([])
    assert list(supply.chunks()) == []
    assert (supply.estimated_total_rows(), supply.chunks_read) == (0, 0)


def test_the_sink_keeps_results_in_order_and_counts_durable_flushes() -> None:
    sink = ListSink()
    sink.write([Result(index=0, id=0, output="a")])
    sink.write([Result(index=1, id=1, output="b"), Result(index=2, id=2, output="c")])
    sink.flush()
    sink.flush(durable=True)
    assert [r.output for r in sink.results] == ["a", "b", "c"]
    assert sink.durable_flushes == 1


def test_an_engine_on_loan_runs_but_is_not_closed() -> None:
    engine = FakeEngine(max_num_seqs=3, max_model_len=64)
    lent: Engine = KeptOpen(engine)
    assert (lent.max_num_seqs, lent.max_model_len) == (3, 64)
    [ids] = lent.encode(["ab"])
    assert isinstance(ids, list)
    lent.add(EngineRequest(key=7, prompt_token_ids=ids, sampling=Sampling(max_tokens=5)))
    assert lent.has_unfinished()
    assert [(out.key, out.text) for out in lent.step()] == [(7, "ba")]
    assert KeptOpen(engine).last_step_sequences == 1
    lent.abort([7])
    lent.close()
    assert not engine.closed


def test_an_engine_that_does_not_count_its_sequences_says_none() -> None:
    class Quiet:  # an engine without `last_step_sequences` (not `CountsSequences`)
        pass

    assert KeptOpen(Quiet()).last_step_sequences is None  # type: ignore[arg-type]
