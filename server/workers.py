"""Worker threads for blocking work (encoding, searching, writing), awaited from the event loop, whose jobs are
given up when their request is: a timed-out search frees its worker instead of keeping it busy.

A job run with :meth:`WorkerPool.run` gets a :class:`Cancellation` as its first argument and calls
``cancellation.check()`` between its steps. When the awaiting request is cancelled (its timeout ran out), the
job is abandoned: one that has not started never runs; a running one stops at its next check; and in a pool
that replaces abandoned workers, a new thread takes the running job's place at once, so the next request is
served even while the abandoned job is still inside a step it cannot leave (a kernel call, a database query).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

log = logging.getLogger("lsr.server")
T = TypeVar("T")


class Abandoned(Exception):
    """Raised by :meth:`Cancellation.check` in a job whose request gave up on it."""


class Cancellation:
    """Set when the request a job works for is cancelled; the job checks it between steps."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        """Raise :class:`Abandoned` if the job's request was cancelled."""
        if self._event.is_set():
            raise Abandoned


class WorkerPool(Executor):
    """``size`` daemon threads taking jobs in order. ``replace_abandoned``: a thread whose running job is abandoned
    retires after it and a new thread takes its place (at most ``size`` retiring threads at a time, so a flood of
    hopeless requests cannot grow the threads without bound); without it the thread goes on once the job stops.
    """

    def __init__(self, size: int, name: str, *, replace_abandoned: bool = False,
                 initializer: Callable[..., Any] | None = None, initargs: tuple = ()) -> None:
        if size < 1:
            raise ValueError(f"a worker pool needs at least one thread, got {size}")
        self.size = size
        self.name = name
        self.replace_abandoned = replace_abandoned
        self._initializer, self._initargs = initializer, initargs
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._running: dict[Future, threading.Thread] = {}
        self._retiring: set[threading.Thread] = set()
        self._numbers = itertools.count()
        self._closed = False
        self.abandoned = 0  # jobs given up on while running
        for _ in range(size):
            self._spawn()

    def _spawn(self) -> None:
        threading.Thread(target=self._work, name=f"{self.name}-{next(self._numbers)}", daemon=True).start()

    def _work(self) -> None:
        if self._initializer is not None:
            self._initializer(*self._initargs)
        me = threading.current_thread()
        while True:
            job = self._jobs.get()
            if job is None:
                return
            future, fn, args, kwargs = job
            if not future.set_running_or_notify_cancel():
                continue
            with self._lock:
                self._running[future] = me
            try:
                result = fn(*args, **kwargs)
            except BaseException as err:  # noqa: BLE001 - handed to whoever awaits the future
                future.set_exception(err)
            else:
                future.set_result(result)
            finally:
                with self._lock:
                    del self._running[future]
                    retire = me in self._retiring
                    self._retiring.discard(me)
            if retire:
                return

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future:
        """Queue ``fn(*args, **kwargs)`` (the :class:`concurrent.futures.Executor` interface)."""
        if self._closed:
            raise RuntimeError(f"worker pool {self.name} is shut down")
        future: Future = Future()
        self._jobs.put((future, fn, args, kwargs))
        return future

    async def run(self, job: Callable[..., T], *args: Any) -> T:
        """``await job(cancellation, *args)`` on a worker; abandoned if this coroutine is cancelled."""
        cancellation = Cancellation()
        future = self.submit(job, cancellation, *args)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            cancellation.cancel()
            self._abandon(future)
            raise

    def _abandon(self, future: Future) -> None:
        if future.cancel():  # not started: it never runs
            return
        with self._lock:
            thread = self._running.get(future)
            if thread is None:  # finished meanwhile
                return
            self.abandoned += 1
            if not self.replace_abandoned or thread in self._retiring or len(self._retiring) >= self.size:
                return
            self._retiring.add(thread)
        log.warning("%s: a timed-out job still runs on %s; a new worker takes its place", self.name, thread.name)
        self._spawn()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop the workers after their current jobs (``cancel_futures``: drop the queued ones)."""
        self._closed = True
        if cancel_futures:
            while True:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is not None:
                    job[0].cancel()
        with self._lock:
            threads = len(self._running) + self.size
        for _ in range(threads):
            self._jobs.put(None)

    def stats(self) -> dict:
        with self._lock:
            return {"threads": self.size, "busy": len(self._running), "abandoned": self.abandoned,
                    "retiring": len(self._retiring)}
