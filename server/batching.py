"""Micro-batching: concurrent requests' queries are encoded together in one forward pass.

Each encoder has a :class:`MicroBatcher`. A request submits its text and awaits the result; a single
worker task takes *everything* waiting (up to ``max_batch``), encodes it in one call on the encoder thread,
and resolves the futures. While a batch is being encoded, newly arriving queries queue up and form the next
batch, so batches grow with load and a lone query is never delayed. All encoder calls run on one dedicated
thread (the model is CPU-bound and already multi-threaded inside), which also serialises access to it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any


class MicroBatcher:
    """Coalesce concurrent ``submit(item)`` calls into batched ``fn(items) -> results`` calls."""

    def __init__(self, fn: Callable[[list[Any]], Sequence[Any]], executor: Executor, max_batch: int = 32,
                 name: str = "encoder") -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.fn = fn
        self.executor = executor
        self.max_batch = max_batch
        self.name = name
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.batches = 0
        self.items = 0
        self.largest = 0
        self.busy_s = 0.0

    def _ensure_worker(self) -> asyncio.Queue:
        loop = asyncio.get_running_loop()
        if self._queue is None or self._worker is None or self._worker.done() or self._loop is not loop:
            self._loop = loop  # a new event loop (e.g. a restarted server) gets its own queue and worker
            self._queue = asyncio.Queue()
            self._worker = loop.create_task(self._run(self._queue))
        return self._queue

    async def submit(self, item: Any) -> Any:
        """Encode one item as part of the next batch."""
        future = asyncio.get_running_loop().create_future()
        await self._ensure_worker().put((item, future))
        return await future

    async def _run(self, queue: asyncio.Queue) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await queue.get()]
            while len(batch) < self.max_batch and not queue.empty():
                batch.append(queue.get_nowait())
            batch = [(item, fut) for item, fut in batch if not fut.cancelled()]
            if not batch:
                continue
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(self.executor, self.fn, [item for item, _ in batch])
            except Exception as err:  # noqa: BLE001 - handed to every waiting request
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(err)
                continue
            finally:
                self.busy_s += time.perf_counter() - started
            self.batches += 1
            self.items += len(batch)
            self.largest = max(self.largest, len(batch))
            for (_, fut), result in zip(batch, results):
                if not fut.done():
                    fut.set_result(result)

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
            self._worker = None

    def stats(self) -> dict:
        return {"batches": self.batches, "queries": self.items, "max_batch": self.max_batch,
                "largest_batch": self.largest,
                "mean_batch": round(self.items / self.batches, 2) if self.batches else None,
                "busy_s": round(self.busy_s, 3)}
