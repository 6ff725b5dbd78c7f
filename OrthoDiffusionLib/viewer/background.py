"""Long work off the UI thread: one background task at a time, with progress and cancel.

The viewer's UI (trame, asyncio) and the MRML scene live on the main thread; loading an exam and running the
Predictor happen in a worker thread. A :class:`BackgroundTask` runs ``work(progress, cancel)`` in a single-thread
executor and hands every progress report and the outcome back to the main thread through ``post`` (for trame:
``loop.call_soon_threadsafe``), so the callbacks may touch UI state and the scene freely.
"""
from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Optional

from ..errors import CancelledError, OrthoDiffusionError
from ..progress import ProgressFn

Work = Callable[[ProgressFn, threading.Event], Any]
Post = Callable[..., Any]


@dataclass
class TaskOutcome:
    """How a task ended: exactly one of ``value`` (done), ``error`` (a library error: message for a banner),
    ``cancelled`` or ``crash`` (an unexpected exception, kept for the log) describes it."""

    name: str
    value: Any = None
    error: Optional[str] = None
    cancelled: bool = False
    crash: Optional[BaseException] = None

    @property
    def ok(self) -> bool:
        return self.error is None and not self.cancelled and self.crash is None


class BackgroundTask:
    """Runs one piece of work at a time in a worker thread.

    Args:
        post: schedules ``fn(*args)`` on the UI thread (``loop.call_soon_threadsafe`` under asyncio; a plain call
            in tests).
        on_progress: called on the UI thread with (task name, stage, fraction 0..1).
        on_done: called on the UI thread with the :class:`TaskOutcome`.
    """

    def __init__(self, post: Post, on_progress: Callable[[str, str, float], None],
                 on_done: Callable[[TaskOutcome], None]):
        self._post = post
        self._on_progress = on_progress
        self._on_done = on_done
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="orthodiffusion-viewer")
        self._cancel = threading.Event()
        self._future: Optional[Future] = None
        self._name = ""

    @property
    def busy(self) -> bool:
        return self._future is not None and not self._future.done()

    @property
    def name(self) -> str:
        """Name of the running (or last) task."""
        return self._name

    def start(self, name: str, work: Work) -> bool:
        """Start ``work(progress, cancel)`` in the worker; returns False (and starts nothing) while one is running."""
        if self.busy:
            return False
        self._name = name
        self._cancel = threading.Event()
        cancel = self._cancel

        def progress(stage: str, fraction: float) -> None:
            if cancel.is_set():
                raise CancelledError(f"{name} cancelled")
            self._post(self._on_progress, name, str(stage), max(0.0, min(1.0, float(fraction))))

        def run() -> None:
            try:
                outcome = TaskOutcome(name, value=work(progress, cancel))
                if cancel.is_set():
                    outcome = TaskOutcome(name, cancelled=True)
            except CancelledError:
                outcome = TaskOutcome(name, cancelled=True)
            except OrthoDiffusionError as e:
                outcome = TaskOutcome(name, cancelled=cancel.is_set(), error=None if cancel.is_set() else str(e))
            except Exception as e:  # noqa: BLE001 - an unexpected failure must reach the UI, not kill the worker
                outcome = TaskOutcome(name, crash=e, error=f"{name} failed: {type(e).__name__}: {e}")
            self._post(self._on_done, outcome)

        self._future = self._executor.submit(run)
        return True

    def cancel(self) -> bool:
        """Ask the running task to stop (it stops at its next progress report or cancel check)."""
        if not self.busy:
            return False
        self._cancel.set()
        return True

    def wait(self, timeout: Optional[float] = None) -> None:
        """Block until the current task has finished (tests and shutdown)."""
        if self._future is not None:
            self._future.result(timeout=timeout)

    def shutdown(self) -> None:
        self._cancel.set()
        self._executor.shutdown(wait=False, cancel_futures=True)
