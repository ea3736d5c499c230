"""The vLLM engine: the only module in the project that imports vllm.

`create_vllm_engine` starts a `vllm.LLM` and wraps it in `VllmEngine`, which drives
`llm.llm_engine` with `add_request` / `step` the way `LLM.generate` does in vLLM 0.32
(`entrypoints/common/offline.py`: `_add_request`, then `_run_engine`). Requests go
in as token ids, so the engine never tokenizes on the hot path; `encode` reproduces
the tokenization `LLM.generate` and `LLM.chat` would do, batched.

vllm (and with it torch) is imported inside functions, so importing this module costs
nothing and `--help`, `validate` and the fake-engine tests never load torch. The
set-up that must happen before vllm is imported (environment, logging, stdout) lives
in `batching.engines.vllm_setup`; its public names are re-exported here.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from batching.config import EngineConfig
from batching.engine import (
    EncodedPrompt,
    Engine,
    EngineDeadError,
    EngineOutOfMemoryError,
    EngineOutput,
    EngineRequest,
    PermanentRequestError,
)
from batching.engines.vllm_setup import (
    DEBUG_ENV,
    QuietVllmFilter,
    apply_vllm_env_defaults,
    quiet_vllm_start,
)
from batching.errors import EngineStartError
from batching.lora import LoraAdapters
from batching.media import has_images
from batching.records import (
    ERROR_INVALID_INPUT,
    ERROR_INVALID_REQUEST,
    ERROR_PROMPT_TOO_LONG,
    RowError,
    Sample,
    Sampling,
    TokenLogprob,
)
from batching.tasks import (
    POOLING_TASKS,
    VLLM_POOLING_TASK,
    Pooled,
    Pooling,
    Rerank,
    SegmentedIds,
    TextPair,
)

__all__ = [
    "DEBUG_ENV",
    "QuietVllmFilter",
    "VllmEngine",
    "apply_vllm_env_defaults",
    "check_model_task",
    "create_vllm_engine",
    "generate_all",
]

# Distinct sampling settings are few (most rows use the run's defaults), so a small
# cache of built SamplingParams covers a run; the bound only guards odd inputs.
_SAMPLING_CACHE_SIZE = 256


def _token_type_ids(engine_prompt: Any, tokenizer: Any, tok_params: Any) -> list[int] | None:
    """A scored pair's token type ids, cut and padded as its ids were (vLLM's own
    step in the cross-encoder's render); None where the tokenizer makes none."""
    token_type_ids = engine_prompt.pop("token_type_ids", None)
    if not token_type_ids:
        return None
    from vllm.entrypoints.pooling.scoring.io_processor import (
        _apply_post_tokenization_to_token_type_ids,
    )

    return list(_apply_post_tokenization_to_token_type_ids(tokenizer, tok_params, token_type_ids))


def _with_token_types(params: Any, token_type_ids: list[int] | None) -> Any:
    """`params` carrying a pair's token type ids, as LLM.score passes them to the model."""
    if token_type_ids is None:
        return params
    from vllm.entrypoints.pooling.scoring.utils import compress_token_type_ids

    compressed = compress_token_type_ids(token_type_ids)
    params.extra_kwargs = {**(params.extra_kwargs or {}), "compressed_token_type_ids": compressed}
    return params


def _is_oom(error: BaseException) -> bool:
    if isinstance(error, MemoryError):
        return True
    torch = sys.modules.get("torch")
    oom_type = getattr(torch, "OutOfMemoryError", None)
    if isinstance(oom_type, type) and isinstance(error, oom_type):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def _thread_safe(renderer: Any) -> bool:
    """Whether vLLM made the renderer's tokenizer safe to call from several threads."""
    from vllm.tokenizers.hf import ThreadSafeHFTokenizerMixin

    return isinstance(getattr(renderer, "tokenizer", None), ThreadSafeHFTokenizerMixin)


def _vllm_dead_error() -> type[BaseException]:
    from vllm.v1.engine.exceptions import EngineDeadError as VllmEngineDeadError

    return VllmEngineDeadError


def _request_error_types() -> tuple[type[BaseException], ...]:
    """What vLLM raises for a request it rejects (VLLMValidationError is no ValueError)."""
    from vllm.exceptions import VLLMClientError

    return (VLLMClientError, ValueError, TypeError)


def _error_type(error: BaseException) -> str:
    # vLLM's length checks tag their errors with the offending parameter.
    if getattr(error, "parameter", None) in ("input_tokens", "input_text"):
        return ERROR_PROMPT_TOO_LONG
    return ERROR_INVALID_REQUEST


def _token_logprobs(completion: Any, top: int | None) -> tuple[TokenLogprob, ...] | None:
    """A completion's logprobs (vLLM: one {token id: Logprob} per position) as ours.

    Each position holds the `top` best-ranked tokens, plus the sampled one when it
    ranks below them.
    """
    positions = completion.logprobs
    if positions is None or top is None:
        return None
    tokens: list[TokenLogprob] = []
    for token_id, position in zip(completion.token_ids, positions, strict=False):
        chosen = position.get(token_id) if position else None
        if chosen is None:
            continue
        best = sorted(
            (lp for lp in position.values() if lp.rank is not None and lp.rank <= top),
            key=lambda lp: lp.rank,
        )
        alternatives = tuple((lp.decoded_token or "", _finite(lp.logprob)) for lp in best)
        tokens.append(
            TokenLogprob(chosen.decoded_token or "", _finite(chosen.logprob), alternatives)
        )
    return tuple(tokens)


# Tokens structured output masks out have logprob -inf, which JSON cannot hold (it
# would be written as null); vLLM's server clamps to this value, and so do we.
_MIN_LOGPROB = -9999.0


def _finite(logprob: float) -> float:
    return max(float(logprob), _MIN_LOGPROB)


class VllmEngine:
    """`Engine` over a started `vllm.LLM`, driving its engine as `LLM.generate` does.

    The examples in this class need vLLM and a model, so they are not run as tests
    (tests/test_engines_vllm.py runs the same calls on the tiny model).

    >>> engine = VllmEngine(vllm.LLM(model="samples/tiny-model"))  # doctest: +SKIP
    >>> [ids] = engine.encode(["Hello"])  # doctest: +SKIP
    >>> engine.add(EngineRequest(  # doctest: +SKIP
    ...     key=0, prompt_token_ids=ids, sampling=Sampling(max_tokens=8)))
    >>> while engine.has_unfinished():  # doctest: +SKIP
    ...     outputs = engine.step()
    """

    def __init__(self, llm: Any, loras: LoraAdapters | None = None) -> None:
        from vllm.sampling_params import RequestOutputKind

        self._llm: Any = llm
        self._engine: Any = llm.llm_engine
        self._renderer: Any = llm.llm_engine.renderer
        # `encode` runs in the pipeline's encoder thread beside `step`. vLLM's HF
        # renderer routes every tokenizer call through a pool of deep copies
        # (vllm/tokenizers/hf.py, maybe_make_thread_pool) for its own concurrent
        # renderer threads; any other tokenizer is shared, so encode and the
        # engine's own calls then take turns.
        self._tokenizer_turns: contextlib.AbstractContextManager[Any] = (
            contextlib.nullcontext() if _thread_safe(self._renderer) else threading.Lock()
        )
        self._max_model_len = int(llm.model_config.max_model_len)
        self._max_num_seqs = int(llm.llm_engine.vllm_config.scheduler_config.max_num_seqs)
        # LLM.generate without params uses the model's generation_config on top of
        # vLLM's defaults; unset Sampling fields fall back to exactly that.
        self._default_sampling: dict[str, Any] = dict(llm.model_config.get_diff_sampling_param())
        self._final_only = RequestOutputKind.FINAL_ONLY
        self._sampling_cache: dict[Sampling, Any] = {}
        self._request_errors = _request_error_types()
        self._vllm_dead = _vllm_dead_error()
        self._chat_params: Any = None
        self._dead: str | None = None
        # Top logprobs asked for, by request key: vLLM's output does not say.
        self._top_logprobs: dict[int, int] = {}
        self._scheduler: Any = _in_process_scheduler(llm)
        self._last_step_sequences: int | None = None
        self._init_pooling(llm)
        self._lora_requests: dict[str, Any] = _lora_requests(loras or LoraAdapters())

    @property
    def last_step_sequences(self) -> int | None:
        """Sequences the last step ran, from the scheduler where it runs in this process
        (the CPU build; vLLM's default on a GPU runs it in a subprocess: None there)."""
        return self._last_step_sequences

    @property
    def llm(self) -> Any:
        """The wrapped `vllm.LLM` (for comparisons in tests and benchmarks)."""
        return self._llm

    @property
    def max_model_len(self) -> int:
        """Longest prompt plus completion the engine accepts, in tokens."""
        return self._max_model_len

    @property
    def max_num_seqs(self) -> int:
        """Most requests the scheduler runs in one step."""
        return self._max_num_seqs

    # -- encoding ---------------------------------------------------------------------

    def encode(
        self, prompts: Sequence[str | Sequence[Mapping[str, Any]]]
    ) -> list[list[int] | PermanentRequestError]:
        """Token ids of each prompt, as `LLM.generate` / `LLM.chat` would make them.

        Plain prompts get the model's special tokens (BOS); chats are rendered with
        the chat template and `add_generation_prompt=True`, then tokenized without
        special tokens, since the template writes them. A prompt longer than
        `max_model_len` gets a "prompt_too_long" error in place. Safe to call from
        another thread while `step` runs.

        >>> engine.encode(["Hello", [{"role": "user", "content": 5}]])  # doctest: +SKIP
        [[0, 44, 73, 80, 985], PermanentRequestError("cannot apply the chat template: ...")]
        """
        with self._tokenizer_turns:
            return self._encode(prompts)

    def _encode(
        self, prompts: Sequence[str | Sequence[Mapping[str, Any]]]
    ) -> list[list[int] | PermanentRequestError]:
        renderer = self._renderer
        results: list[list[int] | PermanentRequestError | None] = [None] * len(prompts)
        plain: list[tuple[int, str]] = []
        chat: list[tuple[int, str]] = []
        for index, prompt in enumerate(prompts):
            if isinstance(prompt, str):
                plain.append((index, prompt))
                continue
            if isinstance(prompt, (TextPair, Rerank)):
                results[index] = self._encode_pairs(prompt)
                continue
            if has_images(prompt):
                results[index] = self._encode_multimodal(prompt)
                continue
            try:
                rendered = self._render_chat(prompt)
            except Exception as error:
                results[index] = PermanentRequestError(
                    f"cannot apply the chat template: {error}", ERROR_INVALID_REQUEST
                )
                continue
            if isinstance(rendered, str):
                chat.append((index, rendered))
            else:
                results[index] = self._check_tokens(rendered, renderer.default_chat_tok_params)
        self._tokenize(plain, renderer.default_cmpl_tok_params, results)
        self._tokenize(chat, renderer.default_chat_tok_params, results)
        return [r if r is not None else PermanentRequestError("not encoded") for r in results]

    def _render_chat(self, messages: Sequence[Mapping[str, Any]]) -> str | list[int]:
        """The chat as text (or as ids, for renderers that tokenize themselves)."""
        _, prompt = self._renderer.render_messages(
            [dict(m) for m in messages], self._chat_parameters()
        )
        if prompt.get("multi_modal_data"):
            raise ValueError("multimodal content is not supported")
        if "prompt_token_ids" in prompt:
            return list(prompt["prompt_token_ids"])
        text = prompt.get("prompt")
        if not isinstance(text, str):
            raise ValueError("the chat template did not produce a text prompt")
        return text

    def _chat_parameters(self) -> Any:
        renderer = self._renderer
        if self._chat_params is None:
            from vllm.renderers import ChatParams
            from vllm.renderers.params import merge_kwargs
            from vllm.utils.mistral import is_mistral_tokenizer

            # The parameters LLM.chat passes (offline.py, _preprocess_chat) for its
            # defaults: add_generation_prompt=True, no tools, no continuation.
            self._chat_params = ChatParams(
                chat_template=self._llm.chat_template,
                chat_template_content_format="auto",
                chat_template_kwargs=merge_kwargs(
                    None,
                    {
                        "add_generation_prompt": True,
                        "continue_final_message": False,
                        "tools": None,
                        "tokenize": is_mistral_tokenizer(renderer.tokenizer)
                        or self._llm.model_config.enable_prompt_embeds,
                    },
                ),
            )
        return self._chat_params

    # -- images -----------------------------------------------------------------------

    def _encode_multimodal(
        self, messages: Sequence[Mapping[str, Any]]
    ) -> EncodedPrompt | PermanentRequestError:
        """A chat with images (decoded `image_pil` parts), processed as `LLM.chat` does.

        vLLM's processor expands each image placeholder into the image's tokens, so
        the ids count them; the processed input (pixel values included) rides along
        to `add`. Its multimodal cache is skipped: the pipeline reorders and may
        resubmit requests to a restarted engine, while that cache assumes the engine
        core receives inputs in the order they were processed, once.
        """
        renderer = self._renderer
        # As LLM.chat (offline.py, _preprocess_chat): the template writes BOS.
        tok_params = renderer.default_chat_tok_params.with_kwargs(add_special_tokens=False)
        try:
            _, [engine_input] = renderer.render_chat(
                [[dict(m) for m in messages]],
                self._chat_parameters(),
                tok_params,
                skip_mm_cache=True,
            )
        except self._request_errors as error:
            return PermanentRequestError(
                f"cannot process the chat's images: {error}", _error_type(error)
            )
        except Exception as error:
            return PermanentRequestError(
                f"cannot process the chat's images: {type(error).__name__}: {error}",
                ERROR_INVALID_REQUEST,
            )
        return EncodedPrompt(engine_input["prompt_token_ids"], multimodal=engine_input)

    def _tokenize(
        self,
        items: list[tuple[int, str]],
        tok_params: Any,
        results: list[list[int] | PermanentRequestError | None],
    ) -> None:
        """Tokenize `items` in one batched call with the settings vLLM's renderer uses."""
        if not items:
            return
        tokenizer = self._renderer.get_tokenizer()
        valid: list[tuple[int, str]] = []
        for index, text in items:
            try:
                # Lower-casing for models that ask for it, and vLLM's cheap length
                # bound on characters, which spares tokenizing megabyte prompts.
                checked = tok_params.apply_pre_tokenization(tokenizer, {"prompt": text})
                valid.append((index, checked["prompt"]))
            except self._request_errors as error:
                results[index] = PermanentRequestError(str(error), _error_type(error))
        if not valid:
            return
        # One call for the batch: the fast tokenizer spreads it over threads, while
        # LLM.generate tokenizes prompt by prompt. The ids are the same; the encode
        # kwargs (special tokens, truncation at max_model_len + 1) are vLLM's own.
        encoded = tokenizer([text for _, text in valid], **tok_params.get_encode_kwargs())
        for (index, _), ids in zip(valid, encoded["input_ids"], strict=True):
            results[index] = self._check_tokens(ids, tok_params)

    def _check_tokens(
        self, ids: Sequence[int], tok_params: Any
    ) -> list[int] | PermanentRequestError:
        tokenizer = self._renderer.get_tokenizer()
        try:
            checked = tok_params.apply_post_tokenization(tokenizer, {"prompt_token_ids": list(ids)})
        except self._request_errors as error:
            return PermanentRequestError(str(error), _error_type(error))
        return list(checked["prompt_token_ids"])

    # -- requests ---------------------------------------------------------------------

    def _sampling_params(self, sampling: Sampling) -> Any:
        params = self._sampling_cache.get(sampling)
        if params is not None:
            return params
        from vllm import SamplingParams

        overrides: dict[str, Any] = {
            "max_tokens": sampling.max_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "top_k": sampling.top_k,
            "seed": sampling.seed,
            "stop": None if sampling.stop is None else list(sampling.stop),
            "n": sampling.n,
            "logprobs": sampling.logprobs,
        }
        kwargs = {**self._default_sampling}
        kwargs.update({k: v for k, v in overrides.items() if v is not None})
        if sampling.json_schema is not None:
            from vllm.sampling_params import StructuredOutputsParams

            # vLLM 0.32's name for guided decoding. (Its per-request
            # disable_any_whitespace is ignored; the engine-wide
            # structured_outputs_config one is what the backends read.)
            kwargs["structured_outputs"] = StructuredOutputsParams(json=sampling.json_schema)
        try:
            # As LLM.get_default_sampling_params builds them, so unset fields match.
            params = SamplingParams.from_optional(**kwargs) if kwargs else SamplingParams()
        except self._request_errors as error:
            raise PermanentRequestError(str(error), ERROR_INVALID_REQUEST) from error
        # As LLM._add_request: one output per request, when it finishes.
        params.output_kind = self._final_only
        if len(self._sampling_cache) >= _SAMPLING_CACHE_SIZE:
            self._sampling_cache.clear()
        self._sampling_cache[sampling] = params
        return params

    def add(self, request: EngineRequest) -> None:
        """Queue a request; raises PermanentRequestError if vLLM rejects it.

        >>> engine.add(EngineRequest(  # doctest: +SKIP
        ...     key=7, prompt_token_ids=[0, 44], sampling=Sampling()))
        """
        self._check_alive()
        if request.pooling is not None or self._pooling_task is not None:
            self._add_pooling(request)
            return
        prompt_len = len(request.prompt_token_ids)
        if prompt_len >= self._max_model_len:
            # vLLM rejects this too, but says so only in prose; the check is ours so
            # the error type does not depend on vLLM's wording.
            raise PermanentRequestError(
                f"the prompt has {prompt_len} tokens; with at least one output token that "
                f"exceeds max_model_len={self._max_model_len}",
                ERROR_PROMPT_TOO_LONG,
            )
        params = self._sampling_params(request.sampling)
        lora_request = self._lora_request(request.adapter)
        from vllm.inputs.engine import tokens_input

        # Rendered input (type "token"), as LLM.generate passes it: a raw
        # TokensPrompt dict would be re-rendered, with a deprecation warning. A chat
        # with images comes processed from `encode`.
        engine_input = request.multimodal
        if engine_input is None:
            engine_input = tokens_input(list(request.prompt_token_ids))
        try:
            with self._tokenizer_turns:
                self._engine.add_request(
                    str(request.key), engine_input, params, lora_request=lora_request
                )
        except self._request_errors as error:
            raise PermanentRequestError(str(error), _error_type(error)) from error
        except Exception as error:
            raise self._engine_failure(error) from error
        if request.sampling.logprobs is not None:
            self._top_logprobs[request.key] = request.sampling.logprobs

    # -- LoRA adapters ----------------------------------------------------------------

    def _lora_request(self, adapter: str | None) -> Any:
        """The LoRARequest of a row's adapter; None for the base model."""
        if adapter is None:
            return None
        lora_request = self._lora_requests.get(adapter)
        if lora_request is None:
            # The schema refuses such rows; a caller that builds requests itself
            # gets the same kind of record.
            known = ", ".join(self._lora_requests) or "none"
            raise PermanentRequestError(
                f"unknown adapter {adapter!r}; the engine loads {known}", ERROR_INVALID_INPUT
            )
        return lora_request

    def step(self) -> list[EngineOutput]:
        """Run one engine step; return the requests that finished in it.

        >>> while engine.has_unfinished():  # doctest: +SKIP
        ...     for out in engine.step():
        ...         print(out.key, out.finish_reason, out.completion_tokens)
        7 length 16
        """
        self._check_alive()
        try:
            with self._tokenizer_turns:  # detokenizing
                request_outputs = self._engine.step()
        except Exception as error:
            raise self._engine_failure(error) from error
        scheduler = self._scheduler
        if scheduler is not None:
            # What still runs, and what finished in this step: `finished_req_ids` is
            # cleared when the next step schedules (v1/core/sched/scheduler.py).
            self._last_step_sequences = len(scheduler.running) + len(scheduler.finished_req_ids)
        finished: list[EngineOutput] = []
        if self._pooling_task is not None:
            if scheduler is not None:
                # A pooling request finishes in the step that runs it, and vLLM has
                # already forgotten it there (finished_req_ids is empty): what it
                # returned is what the step ran, beside what still runs.
                self._last_step_sequences = len(scheduler.running) + len(request_outputs)
            return self._finished_pooling(request_outputs)
        for output in request_outputs:
            if not output.finished:
                continue
            key = int(output.request_id)
            top = self._top_logprobs.pop(key, None)
            samples = [
                Sample(
                    text=completion.text,
                    finish_reason=completion.finish_reason,
                    tokens=len(completion.token_ids),
                    logprobs=_token_logprobs(completion, top),
                )
                # With n > 1 vLLM may finish the samples in any order.
                for completion in sorted(output.outputs, key=lambda c: c.index)
            ]
            prompt_tokens = len(output.prompt_token_ids or ())
            finished.append(EngineOutput.of_samples(key, samples, prompt_tokens))
        return finished

    def abort(self, keys: Iterable[int]) -> None:
        """Drop queued or running requests; unknown keys are ignored.

        >>> engine.abort([7])  # doctest: +SKIP
        """
        request_ids = []
        for key in keys:
            request_ids.extend(self._pooling_request_ids(key))
            self._top_logprobs.pop(key, None)
        if request_ids and self._dead is None:
            self._engine.abort_request(request_ids, internal=False)

    def has_unfinished(self) -> bool:
        """Whether any added request has not finished (or been aborted) yet."""
        if self._dead is not None:
            return False
        return bool(self._engine.has_unfinished_requests())

    def close(self) -> None:
        """Shut the engine down and free its memory, so another can start in-process.

        >>> engine.close()  # doctest: +SKIP
        """
        if self._llm is None:
            return
        engine_core = getattr(self._engine, "engine_core", None)
        self._dead = self._dead or "closed"
        # Drop our references first: the model and KV cache are freed only once
        # nothing points at the LLM any more.
        self._llm = None
        self._engine = None
        self._sampling_cache.clear()
        if engine_core is not None:
            # Tears down the executor and vLLM's process group (EngineCore.shutdown),
            # which a second in-process engine would otherwise trip over.
            with contextlib.suppress(Exception):
                engine_core.shutdown()
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()

    # -- pooling (embed, classify, score) ------------------------------------------------
    # A pooling engine runs each row as vLLM's LLM.embed / classify / score would:
    # PoolingParams with the task always set (vLLM's default pooling task returns a
    # vector per token), one request per text or pair, through the same add/step loop.

    def _init_pooling(self, llm: Any) -> None:
        self._pooling_task: str | None = None
        self._pooling_params_cache: dict[Pooling, Any] = {}
        self._labels: tuple[str, ...] | None = None
        # A rerank row runs as one vLLM request per document ("<key>.<n>"); its
        # scores wait here until the last one finishes, then leave as one output.
        self._fanout: dict[int, list[float | None]] = {}
        self._fanout_tokens: dict[int, int] = {}
        self._score_processor: Any = None
        if getattr(llm, "runner_type", None) != "pooling":
            return
        self._pooling_task = str(llm.pooling_task)
        hf_config = llm.model_config.hf_config
        id2label = getattr(hf_config, "id2label", None) or {}
        labels = int(getattr(hf_config, "num_labels", 0) or 0)
        if labels and all(i in id2label for i in range(labels)):
            self._labels = tuple(str(id2label[i]) for i in range(labels))
        self._score_processor = getattr(llm, "pooling_io_processors", {}).get("cross-encoder")

    def _encode_pairs(self, prompt: TextPair | Rerank) -> list[int] | PermanentRequestError:
        """A pair's ids as LLM.score makes them (the cross-encoder's own prompt: the two
        texts tokenized together); a rerank row's pairs as `SegmentedIds`."""
        processor = self._score_processor
        if processor is None:
            return PermanentRequestError(
                "this model cannot score pairs (vLLM runs it with no cross-encoder); "
                "--task score needs a model with a one-label classification head",
                ERROR_INVALID_REQUEST,
            )
        pairs = prompt.pairs() if isinstance(prompt, Rerank) else [prompt]
        tok_params = self._renderer.default_cmpl_tok_params
        tokenizer = self._renderer.get_tokenizer()
        parts: list[list[int]] = []
        types: list[list[int] | None] = []
        for pair in pairs:
            try:
                _, engine_prompt = processor.get_score_prompt(
                    data_1=pair.query,
                    data_2=pair.document,
                    encode_kwargs=tok_params.get_encode_kwargs(),
                )
                tok_params.apply_post_tokenization(tokenizer, engine_prompt)
            except self._request_errors as error:
                return PermanentRequestError(str(error), _error_type(error))
            parts.append(list(engine_prompt["prompt_token_ids"]))
            types.append(_token_type_ids(engine_prompt, tokenizer, tok_params))
        if isinstance(prompt, Rerank) or types[0] is not None:
            # A BERT-style pair carries its token type ids along, as one segment.
            return SegmentedIds(parts, types)
        return parts[0]

    def _pooling_params(self, pooling: Pooling) -> Any:
        params = self._pooling_params_cache.get(pooling)
        if params is None:
            from vllm import PoolingParams

            task: Any = VLLM_POOLING_TASK[pooling.task]
            params = PoolingParams(
                task=task,
                use_activation=pooling.normalize,
                dimensions=pooling.dimensions,
            )
            self._pooling_params_cache[pooling] = params
        # The cached template: `_add_pooling` gives each vLLM request its own clone
        # (vLLM fills the model's defaults in on the params it is given). Cloning here
        # as well made two deep copies a row, ~25 µs of the pooling path's own time.
        return params

    def _add_pooling(self, request: EngineRequest) -> None:
        pooling = request.pooling
        if pooling is None or self._pooling_task is None:
            wanted = "text generation" if pooling is None else f"--task {pooling.task}"
            started = "generation" if self._pooling_task is None else "pooling"
            raise PermanentRequestError(
                f"{wanted} asked of an engine started for {started}; start it with "
                "the run's task (EngineConfig.task)",
                ERROR_INVALID_REQUEST,
            )
        ids = request.prompt_token_ids
        parts = ids.segments() if isinstance(ids, SegmentedIds) else [list(ids)]
        for part in parts:
            if len(part) > self._max_model_len:
                raise PermanentRequestError(
                    f"the prompt has {len(part)} tokens; the model takes at most "
                    f"max_model_len={self._max_model_len}",
                    ERROR_PROMPT_TOO_LONG,
                )
        params = self._pooling_params(pooling)
        lora_request = self._lora_request(request.adapter)
        from vllm.inputs.engine import tokens_input

        names = [str(request.key)]
        types: tuple[list[int] | None, ...] = (None,)
        if isinstance(ids, SegmentedIds):
            names = [f"{request.key}.{n}" for n in range(len(parts))]
            types = ids.token_type_ids
            self._fanout[request.key] = [None] * len(parts)
            self._fanout_tokens[request.key] = len(ids)
        added: list[str] = []
        try:
            with self._tokenizer_turns:
                for name, part, part_types in zip(names, parts, types, strict=True):
                    self._engine.add_request(
                        name,
                        tokens_input(part),
                        _with_token_types(params.clone(), part_types),
                        lora_request=lora_request,
                    )
                    added.append(name)
        except self._request_errors as error:
            self._drop_fanout(request.key, added)
            raise PermanentRequestError(str(error), _error_type(error)) from error
        except Exception as error:
            raise self._engine_failure(error) from error

    def _drop_fanout(self, key: int, added: Sequence[str]) -> None:
        self._fanout.pop(key, None)
        self._fanout_tokens.pop(key, None)
        if added:
            self._engine.abort_request(list(added), internal=False)

    def _finished_pooling(self, request_outputs: Sequence[Any]) -> list[EngineOutput]:
        finished: list[EngineOutput] = []
        for output in request_outputs:
            if not output.finished:
                continue
            name, dot, part = str(output.request_id).partition(".")
            key = int(name)
            failure = getattr(output, "error", None)
            if failure is not None:
                # vLLM's request-level error (a row it could not pool): that row's record.
                others = [i for i in self._pooling_request_ids(key) if i != output.request_id]
                if others:  # the rest of a rerank row's pairs: its record is made
                    self._engine.abort_request(others, internal=False)
                message = str(getattr(failure, "message", None) or failure)
                error = RowError(ERROR_INVALID_REQUEST, message)
                finished.append(EngineOutput(key, "", None, 0, 0, error=error))
                continue
            values: list[float] = output.outputs.data.reshape(-1).tolist()  # floats
            if not dot:
                prompt_tokens = len(output.prompt_token_ids or ())
                finished.append(
                    EngineOutput(key, "", None, prompt_tokens, 0, pooled=self._pooled(values))
                )
                continue
            scores = self._fanout.get(key)
            if scores is None:  # aborted for a retry meanwhile, or one of its pairs failed
                continue
            scores[int(part)] = values[0]
            if all(score is not None for score in scores):
                del self._fanout[key]
                tokens = self._fanout_tokens.pop(key)
                pooled = Pooled([float(score or 0.0) for score in scores])
                finished.append(EngineOutput(key, "", None, tokens, 0, pooled=pooled))
        return finished

    def _pooled(self, values: list[float]) -> Pooled:
        return Pooled(values, self._labels)

    def _pooling_request_ids(self, key: int) -> list[str]:
        """vLLM's ids for row `key`: one, or a rerank row's one per document."""
        scores = self._fanout.pop(key, None)
        self._fanout_tokens.pop(key, None)
        if scores is None:
            return [str(key)]
        return [f"{key}.{n}" for n in range(len(scores))]

    # -- failures ---------------------------------------------------------------------

    def _check_alive(self) -> None:
        if self._dead is not None:
            raise EngineDeadError(f"the vLLM engine is not running ({self._dead})")

    def _engine_failure(self, error: Exception) -> Exception:
        """Our error for an exception out of the engine's add or step."""
        if _is_oom(error):
            return EngineOutOfMemoryError(f"vLLM ran out of memory: {error}")
        # In-process, any other exception leaves the scheduler mid-step with requests
        # in unknown states; in a subprocess engine vLLM already reports it as dead.
        # Either way only a new engine can be trusted.
        self._dead = type(error).__name__
        if isinstance(error, self._vllm_dead):
            return EngineDeadError(f"the vLLM engine died: {error}")
        return EngineDeadError(f"the vLLM engine failed: {type(error).__name__}: {error}")


def _lora_requests(loras: LoraAdapters) -> dict[str, Any]:
    """One LoRARequest per adapter, made once: vLLM caches adapters by their id."""
    if not loras:
        return {}
    from vllm.lora.request import LoRARequest

    return {
        name: LoRARequest(lora_name=name, lora_int_id=number, lora_path=path)
        for name, (number, path) in loras.ids().items()
    }


def _in_process_scheduler(llm: Any) -> Any:
    """vLLM's scheduler where its engine core runs in this process, else None."""
    core = getattr(getattr(llm.llm_engine, "engine_core", None), "engine_core", None)
    scheduler = getattr(core, "scheduler", None)
    if hasattr(scheduler, "running") and hasattr(scheduler, "finished_req_ids"):
        return scheduler
    return None


def create_vllm_engine(config: EngineConfig, *, verbose: bool = False) -> Engine:
    """Start vLLM for `config` and return it as an `Engine`.

    `verbose` (or the BIZRA_BATCH_DEBUG variable) keeps vLLM's INFO logs and warnings.
    The example starts vLLM (seconds to minutes), so it is not run as a test.

    >>> engine = create_vllm_engine(EngineConfig(model="samples/tiny-model"))  # doctest: +SKIP
    >>> engine.max_model_len  # doctest: +SKIP
    2048
    """
    verbose = verbose or bool(os.environ.get(DEBUG_ENV))
    # On CPU, VLLM_CPU_KVCACHE_SPACE overrides these engine arguments; a user who
    # gives them must get what they asked for.
    sized_by_args = config.gpu_memory_utilization is not None or any(
        key in config.extra for key in ("kv_cache_memory_bytes", "gpu_memory_utilization")
    )
    apply_vllm_env_defaults(verbose=verbose, kv_cache=not sized_by_args)
    kwargs = config.llm_kwargs()
    # The checkpoint-loading bar helps on a terminal (big models load for minutes)
    # and is clutter in a log file.
    kwargs.setdefault("use_tqdm_on_load", sys.stderr.isatty())
    with quiet_vllm_start(verbose):
        import vllm

        try:
            llm = vllm.LLM(**kwargs)
        except Exception as error:
            if _is_oom(error):
                raise EngineOutOfMemoryError(
                    f"vLLM ran out of memory at start-up: {error}"
                ) from error
            # A wrong model path or engine argument fails deep in vLLM or
            # transformers; the user needs one line, not 90 of traceback.
            detail = " ".join(str(error).split())[:400]
            raise EngineStartError(
                f"cannot start vLLM with model {config.model!r}: {type(error).__name__}: "
                f"{detail}; check --model (a local directory or a Hugging Face id) and "
                "the engine options (--debug shows vLLM's traceback)"
            ) from error
        check_model_task(llm, config)
        return VllmEngine(llm, loras=config.loras)


def check_model_task(llm: Any, config: EngineConfig) -> None:
    """Refuse, before any row runs, a model that cannot do the run's task.

    Above all a classification task on a model without a classification head:
    vLLM's `convert="classify"` gives a causal LM a head of uninitialised memory,
    whose scores would look like any others.
    """
    task = config.task
    if task not in POOLING_TASKS:
        return
    model_config = llm.model_config
    supported = tuple(getattr(llm, "supported_tasks", ()))
    needed = VLLM_POOLING_TASK[task]
    architectures = list(getattr(model_config.hf_config, "architectures", None) or ())
    converted = getattr(model_config, "convert_type", "none")
    generative = any(a.endswith(("ForCausalLM", "ForConditionalGeneration")) for a in architectures)
    if needed == "classify" and converted == "classify" and generative:
        raise EngineStartError(
            f"--task {task}: model {config.model!r} ({', '.join(architectures)}) has no "
            "classification head, and convert=classify would give it one of uninitialised "
            "weights; use a *ForSequenceClassification model"
        )
    if needed not in supported:
        runs_as = " or ".join(t for t in supported if t in ("embed", "classify")) or "neither"
        head = "an embedding model" if needed == "embed" else "a classification head"
        raise EngineStartError(
            f"--task {task} needs {head}; model {config.model!r} "
            f"({', '.join(architectures) or 'unknown architecture'}) can only {runs_as} "
            f"in vLLM; pick a model made for {task}"
        )
    labels = int(getattr(model_config.hf_config, "num_labels", 0) or 0)
    if task == "score" and labels != 1:
        raise EngineStartError(
            f"--task score needs a cross-encoder, a classification head with one label; "
            f"model {config.model!r} has {labels} labels (--task classify gives their "
            "probabilities)"
        )


def generate_all(
    engine: VllmEngine,
    prompts: Sequence[str | Sequence[Mapping[str, Any]]],
    samplings: Sequence[Sampling],
) -> list[EngineOutput]:
    """Every prompt through one `LLM.generate` call on the engine's own `vllm.LLM`.

    The baseline `bench --vs-generate` compares `run` with: the same loaded model and
    engine settings, and each prompt's SamplingParams built exactly as `add` builds
    them (the model's generation config under the row's settings). Plain prompts go
    in as text, tokenized inside the call as a user's own script would have them;
    chats are rendered by `encode` (what `LLM.chat` does), inside the call's time,
    so one call covers a file that mixes both. Outputs are in prompt order.

    >>> [out] = generate_all(engine, ["Hi"], [Sampling(max_tokens=4)])  # doctest: +SKIP
    >>> out.completion_tokens  # doctest: +SKIP
    4
    """
    if len(prompts) != len(samplings):
        raise ValueError(f"{len(prompts)} prompts but {len(samplings)} sampling settings")
    engine._check_alive()
    params = [engine._sampling_params(sampling) for sampling in samplings]
    inputs: list[Any] = list(prompts)
    chats = [i for i, prompt in enumerate(prompts) if not isinstance(prompt, str)]
    for index, ids in zip(chats, engine.encode([prompts[i] for i in chats]), strict=True):
        if isinstance(ids, PermanentRequestError):
            raise PermanentRequestError(f"prompt {index + 1}: {ids}", ids.error_type)
        inputs[index] = {"prompt_token_ids": ids}
    outputs = engine.llm.generate(inputs, params, use_tqdm=False)
    return [
        EngineOutput.of_samples(
            key,
            [
                Sample(completion.text, completion.finish_reason, len(completion.token_ids))
                for completion in sorted(output.outputs, key=lambda c: c.index)
            ],
            len(output.prompt_token_ids or ()),
        )
        for key, output in enumerate(outputs)
    ]
