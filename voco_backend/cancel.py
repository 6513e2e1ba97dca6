"""Cooperative cancellation: SIGTERM/SIGINT ask the run to stop at the next step boundary."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType

from voco_backend.errors import Cancelled

# The file whose appearance cancels the run (set by the Slicer module on Windows).
CANCEL_FILE_VARIABLE = "VOCO_CANCEL_FILE"


class CancelToken:
    """Set by a signal (or by a caller); long loops call :meth:`check` between steps.

    A second signal while a cancel is pending raises :class:`Cancelled` immediately, so a user who insists is
    never stuck behind a long step.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self._interruptible = 0

    @property
    def cancelled(self) -> bool:
        """Whether a cancel was asked for."""
        return self._event.is_set()

    def cancel(self) -> None:
        """Ask the run to stop."""
        self._event.set()

    def check(self) -> None:
        """Raise :class:`Cancelled` if a cancel was asked for."""
        if self._event.is_set():
            raise Cancelled()

    @contextlib.contextmanager
    def interrupting(self) -> Iterator[None]:
        """Inside the block the first signal raises :class:`Cancelled` at once (a read that may block for long,
        such as a network read); a cancel asked for earlier raises on entry."""
        self.check()
        self._interruptible += 1
        try:
            yield
        finally:
            self._interruptible -= 1

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._event.is_set():
            raise Cancelled()
        self._event.set()
        if self._interruptible:
            raise Cancelled()

    def watch_file(self, path: str, interval: float = 0.5) -> None:
        """Cancel once ``path`` exists (Windows has no SIGTERM for a windowless child: its parent writes the file)."""

        def watch() -> None:
            while not self._event.wait(interval):
                if os.path.exists(path):
                    self._event.set()

        threading.Thread(target=watch, daemon=True).start()

    @contextlib.contextmanager
    def installed(self) -> Iterator[CancelToken]:
        """Route SIGTERM and SIGINT to this token while the block runs (main thread only), then restore."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        if os.environ.get(CANCEL_FILE_VARIABLE):
            self.watch_file(os.environ[CANCEL_FILE_VARIABLE])
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
