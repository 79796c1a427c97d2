"""Gathering concurrent replies into one batched model call.

Decoding 32 replies together costs little more than decoding one (the model's weights are read
once per step for the whole batch), so under load the server answers many sessions per model
call instead of queueing them one by one. A request waits at most ``window_s`` after its
arrival for others to join (less once ``max_batch_size`` are there); the batch then runs in a
worker thread, and the requests arriving meanwhile form the next batch, which starts as soon
as the model is free. Requests with different decoding options
cannot share a decoding loop, so a gathered batch is split into one call per set of options.
A batch never fails as a whole for one member: when a batched call raises, each of its
requests is run again alone, and only those that fail alone get the error. (A streaming
request may then see its reply start over: its next ``token`` event's ``text`` is not an
extension of the previous one.)

The event loop never runs the model: it only collects requests and hands results back.
``on_token`` callbacks are called in the worker thread; the app passes them on to the loop
with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from personachat.generation.completion import Completion
from personachat.generation.generate import DecodingOptions

log = logging.getLogger("personachat.serve")

Conversation = tuple[list[str], list[str]]  # (personality, history ending with the message)
# ConvAIModel.complete(conversations, options, on_token, stream) -> completions; only the
# streaming requests' replies are decoded to text at every step.
GenerateFn = Callable[
    [Sequence[Conversation], DecodingOptions, Callable[[int, str], None] | None, set[int]],
    list[Completion],
]


@dataclass
class Job:
    conversation: Conversation
    options: DecodingOptions
    future: asyncio.Future
    on_token: Callable[[str], None] | None = None  # called in the worker thread
    arrived: float = 0.0  # event-loop time


@dataclass
class BatchStats:
    """What the batcher did, for /health and the load benchmark."""

    batches: int = 0
    replies: int = 0
    largest: int = 0
    model_seconds: float = 0.0  # wall time of the model calls
    model_cpu_seconds: float = 0.0  # CPU time of the decoding thread in them
    sizes: dict[int, int] = field(default_factory=dict)  # batch size -> how many

    def record(self, size: int, seconds: float, cpu_seconds: float) -> None:
        self.batches += 1
        self.replies += size
        self.largest = max(self.largest, size)
        self.model_seconds += seconds
        self.model_cpu_seconds += cpu_seconds
        self.sizes[size] = self.sizes.get(size, 0) + 1

    def to_json(self) -> dict:
        return {
            "batches": self.batches,
            "replies": self.replies,
            "largest_batch": self.largest,
            "mean_batch": round(self.replies / self.batches, 2) if self.batches else 0.0,
            "model_seconds": round(self.model_seconds, 3),
            "model_cpu_seconds": round(self.model_cpu_seconds, 3),
            "batch_sizes": {str(k): v for k, v in sorted(self.sizes.items())},
        }


class Batcher:
    """``await batcher.reply(personality, history, options)``: one reply, decoded in a batch.

    Call ``start()`` inside the running event loop and ``stop()`` before it ends.
    """

    def __init__(
        self, generate: GenerateFn, max_batch_size: int = 32, window_s: float = 0.01
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self.generate, self.max_batch_size, self.window_s = generate, max_batch_size, window_s
        self.stats = BatchStats()
        self._pending: deque[Job] = deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        # One worker: a model runs one batch at a time (and already uses every core).
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="personachat-decode")

    def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="personachat-batcher")

    async def stop(self) -> None:
        """Stop taking batches; requests still waiting get an error (the app drains them
        first), the batch being decoded finishes."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        shut_down(self._pending)
        self._pending.clear()
        # Waits for a batch still decoding, without blocking the event loop.
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown)

    async def reply(
        self,
        personality: list[str],
        history: list[str],
        options: DecodingOptions,
        on_token: Callable[[str], None] | None = None,
    ) -> Completion:
        if self._task is None or self._task.done():
            raise RuntimeError("the batcher is not running (call start() in the event loop)")
        loop = asyncio.get_running_loop()
        job = Job((personality, history), options, loop.create_future(), on_token, loop.time())
        self._pending.append(job)
        self._wakeup.set()
        return await job.future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            # Collection window: the oldest request waits at most window_s since it arrived.
            # When the model was idle that gathers requests arriving together; under load the
            # requests queued during the previous batch have waited long enough already, so
            # the next batch starts at once and the model never idles while work is queued.
            deadline = self._pending[0].arrived + self.window_s
            while len(self._pending) < self.max_batch_size:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except TimeoutError:
                    break
            jobs = [
                self._pending.popleft() for _ in range(min(self.max_batch_size, len(self._pending)))
            ]
            groups: dict[DecodingOptions, list[Job]] = {}
            for job in jobs:
                if not job.future.done():  # a waiting request that was cancelled
                    groups.setdefault(job.options, []).append(job)
            for options, group in groups.items():
                await self._run_group(loop, options, group)

    async def _run_group(
        self, loop: asyncio.AbstractEventLoop, options: DecodingOptions, group: list[Job]
    ) -> None:
        """Decode the replies of ``group`` (requests with the same options) in one batch on
        the decode thread and answer each request."""
        try:
            replies, seconds, cpu_seconds = await loop.run_in_executor(
                self._executor, self._decode, options, group
            )
        except asyncio.CancelledError:  # stop() during a batch: nobody is left to wait
            shut_down(group)
            raise
        except Exception as err:
            await self._after_failure(loop, options, group, err)
            return
        self.stats.record(len(group), seconds, cpu_seconds)
        for job, reply in zip(group, replies, strict=True):
            if not job.future.done():
                job.future.set_result(reply)

    def _decode(
        self, options: DecodingOptions, group: list[Job]
    ) -> tuple[list[Completion], float, float]:
        """The replies of ``group``, and the wall and CPU seconds they took (run on the
        decode thread; a streaming request's text goes to its callback at every step)."""
        started, cpu = time.perf_counter(), time.thread_time()
        callbacks = [job.on_token for job in group]
        streaming = {i for i, callback in enumerate(callbacks) if callback is not None}

        def on_token(index: int, text: str) -> None:
            callback = callbacks[index]
            if callback is not None:
                callback(text)

        replies = self.generate(
            [job.conversation for job in group],
            options,
            on_token if streaming else None,
            streaming,
        )
        return replies, time.perf_counter() - started, time.thread_time() - cpu

    async def _after_failure(
        self,
        loop: asyncio.AbstractEventLoop,
        options: DecodingOptions,
        group: list[Job],
        err: Exception,
    ) -> None:
        """The model failed on ``group``: a request decoded alone learns why; from a larger
        batch, which one request may have broken, each is answered alone instead, so only a
        faulty one fails and the others still get their replies."""
        if len(group) == 1:
            if not group[0].future.done():
                group[0].future.set_exception(err)
            return
        log.warning("a batch of %d failed (%r); answering them one by one", len(group), err)
        for job in group:
            if not job.future.done():
                await self._run_group(loop, options, [job])


def shut_down(jobs: Iterable[Job]) -> None:
    """Answer each request of ``jobs`` not answered yet with the error that the server is
    shutting down."""
    for job in jobs:
        if not job.future.done():
            job.future.set_exception(RuntimeError("the server is shutting down"))
