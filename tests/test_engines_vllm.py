"""VllmEngine against vLLM itself: the add/step loop must give what LLM.generate gives.

Everything marked `vllm` shares the session's engine on the tiny random model; the
tests in the first block need no vLLM at all.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from batching.config import EngineConfig
from batching.engine import (
    Engine,
    EngineDeadError,
    EngineOutOfMemoryError,
    EngineOutput,
    EngineRequest,
    PermanentRequestError,
)
from batching.engines.vllm import (
    QuietVllmFilter,
    VllmEngine,
    apply_vllm_env_defaults,
    create_vllm_engine,
)
from batching.records import ERROR_PROMPT_TOO_LONG, Sampling
from tests.engine_helpers import drain

PROMPTS = Path(__file__).resolve().parent.parent / "samples" / "prompts.jsonl"
GREEDY = Sampling(max_tokens=16, temperature=0.0)


def _rows() -> list[dict[str, Any]]:
    return [json.loads(line) for line in PROMPTS.read_text(encoding="utf-8").splitlines()]


def _plain_prompts(count: int) -> list[str]:
    return [row["prompt"] for row in _rows() if "prompt" in row][:count]


def _chats(count: int) -> list[list[dict[str, str]]]:
    return [row["messages"] for row in _rows() if "messages" in row][:count]


def _ids(encoded: Sequence[list[int] | PermanentRequestError]) -> list[list[int]]:
    assert all(isinstance(item, list) for item in encoded), encoded
    return [item for item in encoded if isinstance(item, list)]


def _run(engine: Engine, requests: Iterable[EngineRequest]) -> dict[int, EngineOutput]:
    """Add everything up front (as LLM.generate does), then step until drained."""
    for request in requests:
        engine.add(request)
    return drain(engine)


def _assert_same(ours: EngineOutput, theirs: Any) -> None:
    completion = theirs.outputs[0]
    assert ours.text == completion.text
    assert ours.completion_tokens == len(completion.token_ids)
    assert ours.prompt_tokens == len(theirs.prompt_token_ids)
    assert ours.finish_reason == completion.finish_reason


def _assert_greedy_outputs_equal(
    engine: VllmEngine, inputs: list[Any], theirs_of: Callable[..., list[Any]]
) -> None:
    """Our greedy outputs for `inputs` (prompts or chats) equal those of vLLM's own
    call, `LLM.generate` or `LLM.chat`: the same prompt token ids, the same output."""
    from vllm import SamplingParams

    ids = _ids(engine.encode(inputs))
    ours = _run(engine, (EngineRequest(k, p, GREEDY) for k, p in enumerate(ids)))

    params = SamplingParams(max_tokens=16, temperature=0.0)
    theirs = theirs_of(inputs, params, use_tqdm=False)

    assert sorted(ours) == list(range(len(inputs)))
    for key, output in enumerate(theirs):
        assert ids[key] == list(output.prompt_token_ids)
        _assert_same(ours[key], output)


# -- without vLLM ---------------------------------------------------------------------


@pytest.mark.slow
def test_importing_the_module_loads_neither_vllm_nor_torch() -> None:
    code = "import sys, batching.engines.vllm; print('vllm' in sys.modules, 'torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["False", "False"]


def test_env_defaults_keep_what_the_user_set() -> None:
    env = {"VLLM_LOGGING_LEVEL": "error", "VLLM_LOGGING_STREAM": "ext://sys.stdout"}
    apply_vllm_env_defaults(env)
    assert env["VLLM_LOGGING_STREAM"] == "ext://sys.stdout"
    assert env["VLLM_NO_USAGE_STATS"] == "1"
    config = json.loads(Path(env["VLLM_LOGGING_CONFIG_PATH"]).read_text())
    assert config["handlers"]["vllm"]["level"] == "ERROR"
    assert config["handlers"]["vllm"]["stream"] == "ext://sys.stderr"


def test_env_defaults_on_cpu_keep_the_tokenizer_off_the_engine_cores(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("batching.engines.vllm_setup._is_cpu_build", lambda: True)
    env: dict[str, str] = {}
    apply_vllm_env_defaults(env)
    assert env["TOKENIZERS_PARALLELISM"] == "false"
    assert env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    # vLLM 0.32's CPU AOT artifacts never load back, so each start recompiled.
    assert env["VLLM_USE_AOT_COMPILE"] == "0"
    mine = {"TOKENIZERS_PARALLELISM": "true", "VLLM_USE_AOT_COMPILE": "1"}
    apply_vllm_env_defaults(mine)
    assert mine["TOKENIZERS_PARALLELISM"] == "true"
    assert mine["VLLM_USE_AOT_COMPILE"] == "1"


def test_env_defaults_verbose_leaves_logging_to_vllm() -> None:
    env: dict[str, str] = {}
    apply_vllm_env_defaults(env, verbose=True)
    assert env["VLLM_LOGGING_STREAM"] == "ext://sys.stderr"
    assert "VLLM_LOGGING_LEVEL" not in env
    assert "VLLM_LOGGING_CONFIG_PATH" not in env


@pytest.mark.parametrize(
    ("msg", "args", "shown"),
    [
        ("%s is not found in LD_PRELOAD. For best performance...", ("libiomp",), False),
        ("Unknown vLLM environment variable detected: %s", ("VLLM_DIST_IDENT",), False),
        ("Unknown vLLM environment variable detected: %s", ("VLLM_TYPO",), True),
        ("Using max model len %d", (2048,), True),
        ("vLLM has deprecated support for supporting different tokenizers for ...", (), False),
    ],
)
def test_quiet_filter_drops_only_known_noise(msg: str, args: tuple[Any, ...], shown: bool) -> None:
    record = logging.LogRecord("vllm.x", logging.WARNING, __file__, 1, msg, args, None)
    assert QuietVllmFilter().filter(record) is shown


# -- on the real engine ---------------------------------------------------------------


@pytest.mark.vllm
def test_greedy_outputs_equal_llm_generate(vllm_engine: VllmEngine) -> None:
    _assert_greedy_outputs_equal(vllm_engine, _plain_prompts(40), vllm_engine.llm.generate)


@pytest.mark.vllm
def test_unset_sampling_fields_take_llm_generate_defaults(vllm_engine: VllmEngine) -> None:
    from vllm import SamplingParams

    # Seeded, so random sampling is reproducible; everything else (temperature 1,
    # max_tokens 16) comes from the defaults LLM.generate uses without params.
    prompts = _plain_prompts(8)
    ids = _ids(vllm_engine.encode(prompts))
    ours = _run(vllm_engine, (EngineRequest(k, p, Sampling(seed=k)) for k, p in enumerate(ids)))

    defaults = vllm_engine.llm.get_default_sampling_params()
    params = [SamplingParams(seed=k, max_tokens=defaults.max_tokens) for k in range(len(ids))]
    theirs = vllm_engine.llm.generate(prompts, params, use_tqdm=False)
    for key, output in enumerate(theirs):
        _assert_same(ours[key], output)


@pytest.mark.vllm
def test_chat_outputs_equal_llm_chat(vllm_engine: VllmEngine) -> None:
    _assert_greedy_outputs_equal(vllm_engine, _chats(20), vllm_engine.llm.chat)


@pytest.mark.vllm
def test_encode_mixes_plain_and_chat_and_keeps_errors_in_place(
    vllm_engine: VllmEngine,
) -> None:
    tokenizer = vllm_engine.llm.get_tokenizer()
    chat: list[Mapping[str, Any]] = [{"role": "user", "content": "Hi"}]
    broken_chat: list[Mapping[str, Any]] = [{"role": "user", "content": 5}]
    too_long = "word " * (vllm_engine.max_model_len + 10)

    plain, error, rendered, long_error = vllm_engine.encode(["Hello", broken_chat, chat, too_long])

    assert isinstance(plain, list)
    assert plain == tokenizer("Hello").input_ids
    assert plain[0] == tokenizer.bos_token_id
    assert isinstance(error, PermanentRequestError)
    assert error.error_type == "invalid_request"
    assert isinstance(rendered, list)
    assert tokenizer.decode(rendered).endswith("<|im_start|>assistant\n")
    assert isinstance(long_error, PermanentRequestError)
    assert long_error.error_type == ERROR_PROMPT_TOO_LONG
    assert vllm_engine.encode([]) == []


@pytest.mark.vllm
def test_encode_in_another_thread_beside_steps_changes_neither_ids_nor_outputs(
    vllm_engine: VllmEngine,
) -> None:
    # The pipeline encodes the next chunk in a thread while the engine steps.
    prompts: list[str | Sequence[Mapping[str, Any]]] = [*_plain_prompts(40), *_chats(20)]
    expected_ids = _ids(vllm_engine.encode(prompts))
    requests = [EngineRequest(k, p, GREEDY) for k, p in enumerate(expected_ids)]
    expected = _run(vllm_engine, requests)

    seen: list[list[list[int]]] = []
    errors: list[BaseException] = []
    drained = threading.Event()

    def encode_until_drained() -> None:
        try:
            while not drained.is_set():
                seen.append(_ids(vllm_engine.encode(prompts)))
        except BaseException as error:
            errors.append(error)

    encoder = threading.Thread(target=encode_until_drained)
    encoder.start()
    try:
        outputs = _run(vllm_engine, requests)
    finally:
        drained.set()
        encoder.join()
    assert not errors
    assert seen and all(ids == expected_ids for ids in seen)
    assert outputs == expected


@pytest.mark.vllm
def test_rejected_requests_fail_at_add_and_the_rest_still_run(vllm_engine: VllmEngine) -> None:
    [ids] = _ids(vllm_engine.encode(["Hello there"]))
    too_long = EngineRequest(1, [ids[-1]] * vllm_engine.max_model_len, GREEDY)
    bad_sampling = EngineRequest(2, ids, Sampling(max_tokens=4, top_p=1.5))

    with pytest.raises(PermanentRequestError) as too_long_error:
        vllm_engine.add(too_long)
    with pytest.raises(PermanentRequestError) as sampling_error:
        vllm_engine.add(bad_sampling)
    # The bad one is rejected again (its error is not swallowed by the cache).
    with pytest.raises(PermanentRequestError):
        vllm_engine.add(bad_sampling)
    outputs = _run(vllm_engine, [EngineRequest(0, ids, GREEDY), EngineRequest(3, ids, GREEDY)])

    assert too_long_error.value.error_type == ERROR_PROMPT_TOO_LONG
    assert sampling_error.value.error_type == "invalid_request"
    assert "top_p" in str(sampling_error.value)
    assert sorted(outputs) == [0, 3]
    assert outputs[0].text == outputs[3].text


@pytest.mark.vllm
def test_completion_is_cut_at_max_model_len(vllm_engine: VllmEngine) -> None:
    prompt = [5] * (vllm_engine.max_model_len - 3)
    outputs = _run(vllm_engine, [EngineRequest(0, prompt, Sampling(max_tokens=50, temperature=0))])
    assert outputs[0].finish_reason == "length"
    assert outputs[0].completion_tokens == 3


@pytest.mark.vllm
def test_abort_drops_requests_and_keeps_the_others(vllm_engine: VllmEngine) -> None:
    ids = _ids(vllm_engine.encode(_plain_prompts(3)))
    long_run = Sampling(max_tokens=48, temperature=0.0)
    for key, prompt in enumerate(ids):
        vllm_engine.add(EngineRequest(key, prompt, long_run))
    finished = vllm_engine.step()
    vllm_engine.abort([1, 99])
    while vllm_engine.has_unfinished():
        finished += vllm_engine.step()

    assert sorted(output.key for output in finished) == [0, 2]

    # An aborted key can be submitted again (as a retry does).
    again = _run(vllm_engine, [EngineRequest(1, ids[1], GREEDY)])
    assert again[1].completion_tokens > 0


@pytest.mark.vllm
def test_each_step_says_how_many_sequences_the_scheduler_ran(vllm_engine: VllmEngine) -> None:
    # Five requests of 1..5 new tokens, all admitted at once: each step runs every
    # request not finished before it, the prefill step included.
    ids = _ids(vllm_engine.encode(_plain_prompts(5)))
    for key, prompt in enumerate(ids):
        vllm_engine.add(EngineRequest(key, prompt, Sampling(max_tokens=key + 1, temperature=0)))
    counts = []
    while vllm_engine.has_unfinished():
        vllm_engine.step()
        counts.append(vllm_engine.last_step_sequences)
    assert counts == [5, 4, 3, 2, 1]


@pytest.mark.vllm
def test_step_failures_map_to_our_errors(
    vllm_engine: VllmEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vllm.v1.engine.exceptions import EngineDeadError as VllmEngineDeadError

    failures: list[BaseException] = []

    def failing_step() -> list[Any]:
        raise failures.pop()

    monkeypatch.setattr(vllm_engine.llm.llm_engine, "step", failing_step)
    # Wrappers of their own, so the session engine is not marked dead.
    failures.append(RuntimeError("CPU out of memory while allocating 2 GiB"))
    with pytest.raises(EngineOutOfMemoryError):
        VllmEngine(vllm_engine.llm).step()

    failures.append(VllmEngineDeadError())
    dead = VllmEngine(vllm_engine.llm)
    with pytest.raises(EngineDeadError):
        dead.step()
    with pytest.raises(EngineDeadError):
        dead.add(EngineRequest(0, [1, 2], GREEDY))
    assert not dead.has_unfinished()

    failures.append(KeyError("scheduler state"))
    with pytest.raises(EngineDeadError, match="KeyError"):
        VllmEngine(vllm_engine.llm).step()


@pytest.mark.vllm
@pytest.mark.closes_vllm
def test_close_then_a_new_engine_starts_and_nothing_reaches_stdout(
    vllm_engine: VllmEngine, tiny_engine_config: EngineConfig, capfd: pytest.CaptureFixture[str]
) -> None:
    [ids] = _ids(vllm_engine.encode(["Once upon a time"]))
    expected = _run(vllm_engine, [EngineRequest(0, ids, GREEDY)])[0]

    for _ in range(2):
        engine = create_vllm_engine(tiny_engine_config)
        assert engine.max_model_len == vllm_engine.max_model_len
        assert _run(engine, [EngineRequest(0, ids, GREEDY)]) == {0: expected}
        engine.close()
        engine.close()  # closing twice is harmless

    with pytest.raises(EngineDeadError):
        engine.add(EngineRequest(0, ids, GREEDY))
    assert capfd.readouterr().out == ""


@pytest.mark.vllm
def test_rows_vllm_refuses_in_a_run_name_their_file_and_line(
    vllm_engine: VllmEngine, tmp_path: Path
) -> None:
    from batching.adapters import KeptOpen
    from batching.config import InputConfig, OutputConfig, RunConfig
    from batching.job import run

    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    rows = [
        {"id": "ok", "prompt": "Hello"},
        # Refused while encoding: vLLM's own check, in its own words.
        {"id": "long", "prompt": "word " * (vllm_engine.max_model_len + 10)},
        {"id": "ok too", "prompt": "Hi"},
        # Refused at add by vLLM: more top logprobs than the engine serves.
        {"id": "logprobs", "prompt": "Hi", "logprobs": 10_000},
    ]
    source.write_text("\n".join(json.dumps(row) for row in rows) + "\n", encoding="utf-8")
    config = RunConfig(
        input=InputConfig(path=str(source)),
        output=OutputConfig(path=str(out)),
        sampling=Sampling(max_tokens=4, temperature=0.0),
    )

    report = run(config, lambda: KeptOpen(vllm_engine))

    errors = [json.loads(line)["error"] for line in out.read_text(encoding="utf-8").splitlines()]
    assert report.rows_failed == 2 and errors[0] is None and errors[2] is None
    assert errors[1]["type"] == ERROR_PROMPT_TOO_LONG
    assert errors[1]["message"].startswith(f"{source}:2: ")
    assert errors[3]["type"] == "invalid_request"
    assert errors[3]["message"].startswith(f"{source}:4: ")
    assert not vllm_engine.has_unfinished()
