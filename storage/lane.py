"""Threads that run blocking calls for the event loop, with a light hop each way.

``asyncio.wrap_future(ThreadPoolExecutor.submit(...))`` makes every call two futures (a
concurrent one with its own condition variable, and the asyncio one chained to it), a work item,
callbacks both ways and one wake-up of the loop per result. At a thousand chats at once the
database's hops alone were ~9% of the event loop's samples (issue 15). A ``Lane`` keeps the
asyncio future only: the call is queued with it, a thread runs it, and results are handed back
in batches, with one wake-up of the loop for all the results that finished while it was busy.

What stays as it was: calls run in the order they were queued (one thread: strictly; several:
started in order); a call whose future was cancelled before a thread took it never runs (once
running it finishes, and its result is dropped); ``shutdown`` runs what is queued, then stops.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any, TypeVar

T = TypeVar("T")

_STOP = object()
_Finished = tuple["asyncio.Future[Any]", bool, Any]
"""A call's future, whether it returned, and what it returned or raised."""


class Lane:
    """``threads`` threads named ``<name>_<n>``, started on the first call."""

    def __init__(self, threads: int, name: str) -> None:
        if threads < 1:
            raise ValueError("a lane needs at least one thread")
        self._size = threads
        self._name = name
        self._jobs: SimpleQueue[Any] = SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._start = threading.Lock()
        self._done: dict[asyncio.AbstractEventLoop, list[_Finished]] = {}
        """Finished calls by the loop that awaits them; a loop's entry exists while a hand-back
        of it is on its way to that loop."""
        self._done_lock = threading.Lock()
        self._closed = False

    def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> asyncio.Future[T]:
        """Run ``fn(*args, **kwargs)`` in one of the lane's threads; await the future for its
        result or its exception. Called on an event loop (the result comes back to it)."""
        if self._closed:
            raise RuntimeError(f"{self._name}: the lane is shut down")
        if len(self._threads) < self._size:
            self._grow()
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._jobs.put((future, fn, args, kwargs))
        return future

    def _grow(self) -> None:
        with self._start:
            if len(self._threads) < self._size:
                thread = threading.Thread(target=self._work, daemon=True,
                                          name=f"{self._name}_{len(self._threads)}")
                thread.start()
                self._threads.append(thread)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is _STOP:
                return
            future, fn, args, kwargs = job
            if future.cancelled():  # its caller gave up before it started: never run it
                continue
            try:
                result, ok = fn(*args, **kwargs), True
            except BaseException as exc:  # handed to the caller, as an executor would
                result, ok = exc, False
            self._hand_back(future, ok, result)
            del job, future, result  # nothing of the call is kept alive while idle

    def _hand_back(self, future: asyncio.Future[Any], ok: bool, result: Any) -> None:
        loop = future.get_loop()
        with self._done_lock:
            waiting = self._done.get(loop)
            if waiting is not None:  # a hand-back to that loop is on its way: join it
                waiting.append((future, ok, result))
                return
            self._done[loop] = [(future, ok, result)]
        try:
            loop.call_soon_threadsafe(self._settle, loop)
        except RuntimeError:  # the loop is closed: nobody is left to hear the result
            with self._done_lock:
                self._done.pop(loop, None)

    def _settle(self, loop: asyncio.AbstractEventLoop) -> None:
        """On ``loop``: give every call that finished for it its result."""
        with self._done_lock:
            done = self._done.pop(loop, [])
        for future, ok, result in done:
            if future.cancelled():
                continue
            if ok:
                future.set_result(result)
            else:
                future.set_exception(result)

    def shutdown(self) -> None:
        """Run what is queued, then stop the threads and wait for them (blocking: call it in a
        thread, or where blocking is fine)."""
        self._closed = True
        with self._start:
            threads = list(self._threads)
        for _ in threads:
            self._jobs.put(_STOP)
        for thread in threads:
            thread.join()
