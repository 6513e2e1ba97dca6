"""Cooperative cancellation: SIGTERM/SIGINT ask the run to stop at the next step boundary."""

from __future__ import annotations

import signal
import threading
from types import FrameType

from voco_backend.errors import Cancelled


class CancelToken:
    """Set by a signal (or by a caller); long loops call :meth:`check` between steps.

    A second signal while a cancel is pending raises :class:`Cancelled` immediately, so a user who insists is
    never stuck behind a long step.
    """

    def __init__(self) -> None:
        self._event = threading.Event()

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

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._event.is_set():
            raise Cancelled()
        self._event.set()

    def install(self) -> None:
        """Route SIGTERM and SIGINT to this token (main thread only)."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
