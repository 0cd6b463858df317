"""Dynamic batching: concurrent requests share one backbone call and one beam search.

A request's study waits in a queue; the worker takes the first waiting study, then up to
`max_batch - 1` more that arrive within `max_wait_s`, and runs them together on one inference
thread (TensorFlow releases the GIL, so the event loop keeps accepting requests meanwhile).
A batch waits only while another request is on its way (being uploaded or decoded): with none,
it runs at once, as waiting could only add latency. The queue is bounded: with `queue_size`
studies queued or running, `submit` refuses at once (the server's 503) instead of letting
latency grow without bound. A study whose request has timed out or gone away is dropped from
its batch before the batch runs.

Every `heap_trim_s` seconds (at most), after a batch, the inference thread gives the heap's free
pages back to the OS (`heap.release_free_heap`): insurance against allocator fragmentation
raising a long-lived server's RSS (the README's leak check found it flat with and without).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .heap import release_free_heap

log = logging.getLogger(__name__)

# Runs one batch: (studies' images, explain flags, exam titles) -> one result per study, in
# order (`Predictor.run`).
RunBatch = Callable[[Sequence[list], Sequence[bool], Sequence[str]], list[Any]]


class QueueFullError(Exception):
    """The bounded queue holds `queue_size` studies already."""


@dataclass
class _Job:
    images: list
    explain: bool
    future: asyncio.Future = field(repr=False)
    exam_title: str = ""


@dataclass
class BatchStats:
    batches: int = 0
    studies: int = 0
    dropped: int = 0  # timed out or abandoned before their batch ran
    largest: int = 0
    heap_trims: int = 0  # times the free heap went back to the OS


class Batcher:
    def __init__(self, run: RunBatch, max_batch: int, max_wait_s: float,
                 queue_size: int, heap_trim_s: float = 0.0) -> None:
        self.run = run
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.queue_size = queue_size
        self.heap_trim_s = heap_trim_s  # 0: never
        self._last_trim = time.monotonic()
        self.stats = BatchStats()
        self._pending = 0  # queued or running
        self._arriving = 0  # requests being read or decoded, not yet queued
        self._queue: asyncio.Queue[_Job] | None = None
        self._worker: asyncio.Task | None = None
        # One inference thread: batches run one after another, each using every core.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")

    @property
    def pending(self) -> int:
        return self._pending

    @property
    def on_the_way(self) -> int:
        return self._arriving

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._work(), name="batcher")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        self._executor.shutdown(wait=True, cancel_futures=True)

    @contextlib.contextmanager
    def arriving(self) -> Iterator[None]:
        """Around a request's upload and decoding: while any is on its way, a batch waits up
        to `max_wait_s` for it; with none, a batch runs at once."""
        self._arriving += 1
        try:
            yield
        finally:
            self._arriving -= 1

    def submit(self, images: list, explain: bool, exam_title: str = "") -> asyncio.Future:
        """Queue one study; the future resolves to its result. Raises `QueueFullError`."""
        if self._queue is None:
            raise RuntimeError("Batcher.start() was not awaited")
        if self._pending >= self.queue_size:
            raise QueueFullError(f"{self._pending} studies queued or running "
                                 f"(serve.queue_size {self.queue_size})")
        future = asyncio.get_running_loop().create_future()
        self._pending += 1
        self._queue.put_nowait(_Job(images, explain, future, exam_title))
        return future

    async def _collect(self) -> list[_Job]:
        assert self._queue is not None
        batch = [await self._queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        while len(batch) < self.max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            if not self._arriving:  # no other study can join: don't wait for one
                break
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            live = [job for job in batch if not job.future.done()]
            self.stats.dropped += len(batch) - len(live)
            try:
                if not live:
                    continue
                results = await loop.run_in_executor(
                    self._executor, self.run, [j.images for j in live],
                    [j.explain for j in live], [j.exam_title for j in live])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # every request of the batch gets the error, once each
                log.exception("batch of %d failed", len(live))
                for job in live:
                    if not job.future.done():
                        job.future.set_exception(exc)
            else:
                self.stats.batches += 1
                self.stats.studies += len(live)
                self.stats.largest = max(self.stats.largest, len(live))
                for job, result in zip(live, results, strict=True):
                    if not job.future.done():  # its request may have timed out meanwhile
                        job.future.set_result(result)
            finally:
                self._pending -= len(batch)
            if self._trim_due():  # after the results went out, so no response waits for it
                if await loop.run_in_executor(self._executor, release_free_heap):
                    self.stats.heap_trims += 1
                self._last_trim = time.monotonic()

    def _trim_due(self) -> bool:
        return bool(self.heap_trim_s) and time.monotonic() - self._last_trim >= self.heap_trim_s

