"""Run the backend as a child process without blocking the caller, following ``docs/PROTOCOL.md``.

The process starts through an injectable launcher (``subprocess.Popen`` by default, argv list, never a shell)
in its own process group, so that cancelling terminates the whole process tree. Two reader threads drain
stdout (JSON events) and stderr (kept for the error message of a crash) into a queue; the caller polls the
queue from its own thread (a QTimer in Slicer, a loop in tests and scripts) and receives its callbacks there,
where it may safely change the MRML scene.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import IO, Any, Protocol

EXIT_BAD_DATA = 3
EXIT_OUT_OF_MEMORY = 4
EXIT_CANCELLED = 130
CANCEL_FILE_VARIABLE = "VOCO_CANCEL_FILE"  # docs/PROTOCOL.md: the backend cancels once this file exists
EXIT_MESSAGES = {
    1: "internal error in the backend",
    2: "bad usage or configuration",
    EXIT_BAD_DATA: "bad input data",
    EXIT_OUT_OF_MEMORY: "out of memory",
    EXIT_CANCELLED: "cancelled",
}
STDERR_TAIL_LINES = 20


class Launcher(Protocol):
    """Starts a process; ``subprocess.Popen`` has this signature."""

    def __call__(self, args: Sequence[str], **kwargs: Any) -> subprocess.Popen: ...


@dataclasses.dataclass
class RunOutcome:
    """How a run ended.

    Attributes:
        exitCode: the process's exit code (negative: killed by that signal).
        message: "" when it succeeded, else one line for the user.
        result: the fields of the backend's ``result`` event (empty if none came).
        output: what the caller made of the run (a segmentation node, a model folder), set by the logic.
    """

    exitCode: int
    message: str = ""
    result: dict[str, Any] = dataclasses.field(default_factory=dict)
    output: Any = None

    @property
    def ok(self) -> bool:
        """Whether the run succeeded."""
        return self.exitCode == 0 and not self.message


class BackendError(RuntimeError):
    """A failed run; ``str()`` is the one-line message, ``outcome`` the details."""

    def __init__(self, outcome: RunOutcome) -> None:
        super().__init__(outcome.message)
        self.outcome = outcome


def parseEventLine(line: str) -> dict[str, Any] | None:
    """The protocol event of one stdout line, or None for anything that is not a JSON event object."""
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) and isinstance(event.get("event"), str) else None


def _firstLine(text: str) -> str:
    return next((line.strip() for line in str(text).splitlines() if line.strip()), "")


def exitMessage(
    exitCode: int, errorEvent: dict[str, Any] | None = None, stderrTail: Sequence[str] = (), cancelled: bool = False
) -> str:
    """One line for the user that says why a run ended; "" for success.

    The backend's ``error`` event (message and file) is preferred; a crash without one falls back to the last
    line it wrote to stderr.
    """
    if exitCode == 0:
        return ""
    if cancelled or exitCode == EXIT_CANCELLED:
        return "cancelled"
    detail = ""
    if errorEvent is not None:
        detail = _firstLine(errorEvent.get("message", ""))
        if errorEvent.get("file") and errorEvent["file"] not in detail:
            detail = f"{errorEvent['file']}: {detail}"
    elif stderrTail:
        detail = _firstLine(stderrTail[-1])
    if exitCode < 0:
        what = f"the backend was stopped by signal {-exitCode}"
    else:
        what = EXIT_MESSAGES.get(exitCode, f"the backend failed with exit code {exitCode}")
    if exitCode == EXIT_OUT_OF_MEMORY and detail.startswith("out of memory"):
        return detail
    return f"{what}: {detail}" if detail else f"{what} (see the log)"


def describeProgress(event: dict[str, Any]) -> str:
    """One status line for a ``progress`` event, e.g. ``finetune 40/400 · loss 0.41 · 5 min left``."""
    text = f"{event.get('stage', '')} {event.get('step', '?')}/{event.get('total', '?')}"
    figures = [f"{name} {event[name]:.3g}" for name in ("loss", "dice") if isinstance(event.get(name), (int, float))]
    eta = event.get("eta_s")
    if isinstance(eta, (int, float)):
        figures.append(f"{eta / 60:.0f} min left" if eta >= 90 else f"{eta:.0f} s left")
    return " · ".join([text, *figures])


def _sessionOptions() -> dict[str, Any]:
    """Popen options that put the child in its own process group (POSIX session / Windows group)."""
    if sys.platform == "win32":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW}
    return {"start_new_session": True}


def terminateTree(process: subprocess.Popen, force: bool = False) -> None:
    """Ask (``force``: make) the process and all its descendants stop.

    POSIX: SIGTERM (SIGKILL) to the process group. Windows: a windowless child gets no console signal, so the
    graceful request is the cancel file (:class:`BackendRun`); ``force`` is ``taskkill /F /T`` on the tree.
    """
    try:
        if sys.platform == "win32":
            if force and process.poll() is None:
                subprocess.run(
                    ["taskkill", "/PID", str(process.pid), "/T", "/F"],
                    capture_output=True,
                    check=False,
                    creationflags=subprocess.CREATE_NO_WINDOW,
                )
        else:
            os.killpg(process.pid, signal.SIGKILL if force else signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass


ProgressCallback = Callable[[dict[str, Any]], None]
LogCallback = Callable[[str], None]
FinishedCallback = Callable[[RunOutcome], None]


class EventRun:
    """What a local and a remote run share: the protocol's JSON lines turned into callbacks, and ``wait``.

    A subclass sets ``onProgress``, ``onLog``, ``outcome``, ``result``, ``_errorEvent`` and gives ``poll``.
    """

    onProgress: ProgressCallback | None
    onLog: LogCallback | None
    outcome: RunOutcome | None
    result: dict[str, Any]
    _errorEvent: dict[str, Any] | None
    poll: Callable[[], bool]

    def wait(self, idle: Callable[[], None] | None = None, interval: float = 0.05) -> RunOutcome:
        """Poll until the run has ended; ``idle`` is called between polls (e.g. to keep a GUI alive)."""
        while self.poll():
            if idle is not None:
                idle()
            time.sleep(interval)
        assert self.outcome is not None
        return self.outcome

    def _resultOf(self, event: dict[str, Any]) -> dict[str, Any]:
        """The result the caller sees for the backend's result ``event`` (the remote run maps its paths)."""
        return {k: v for k, v in event.items() if k != "event"}

    def _onStdout(self, line: str) -> None:
        event = parseEventLine(line)
        if event is None:
            return
        kind = event["event"]
        if kind == "progress" and self.onProgress:
            self.onProgress(event)
        elif kind == "log" and self.onLog:
            self.onLog(f"[{event.get('level', 'info')}] {event.get('message', '')}")
        elif kind == "result":
            self.result = self._resultOf(event)
        elif kind == "error":
            self._errorEvent = event


class BackendRun(EventRun):
    """One running backend process; poll it from the thread that owns the callbacks.

    Args:
        process: the started process, stdout and stderr piped as text.
        onProgress: called with each ``progress`` event.
        onLog: called with each line for the log (``log`` events and stderr lines).
        onFinished: called once with the :class:`RunOutcome` when the process has ended and its output is read.
        cancelGraceSeconds: after :meth:`cancel`, how long the backend may take to stop before it is killed.
        cancelFile: the backend's ``VOCO_CANCEL_FILE``: :meth:`cancel` creates it (the graceful cancel on Windows).
    """

    def __init__(
        self,
        process: subprocess.Popen,
        onProgress: ProgressCallback | None = None,
        onLog: LogCallback | None = None,
        onFinished: FinishedCallback | None = None,
        cancelGraceSeconds: float = 30.0,
        cancelFile: str | None = None,
    ) -> None:
        self.process = process
        self.cancelFile = cancelFile
        self.onProgress = onProgress
        self.onLog = onLog
        self.onFinished = onFinished
        self.cancelGraceSeconds = cancelGraceSeconds
        self.outcome: RunOutcome | None = None
        self.result: dict[str, Any] = {}
        self._errorEvent: dict[str, Any] | None = None
        self._stderrTail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._cancelled = False
        self._openStreams = 2
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue()
        for stream, kind in ((process.stdout, "stdout"), (process.stderr, "stderr")):
            threading.Thread(target=self._read, args=(stream, kind), daemon=True).start()

    @property
    def pid(self) -> int:
        """The backend's process id."""
        return self.process.pid

    @property
    def running(self) -> bool:
        """True until the outcome has been delivered."""
        return self.outcome is None

    def _read(self, stream: IO[str], kind: str) -> None:
        for line in stream:
            self._queue.put((kind, line.rstrip("\r\n")))
        self._queue.put(("eof", kind))

    def cancel(self) -> None:
        """Stop the run: SIGTERM to the process tree now, SIGKILL after the grace period if it still runs."""
        if self.outcome is not None or self._cancelled:
            return
        self._cancelled = True
        if self.cancelFile:
            with contextlib.suppress(OSError):
                open(self.cancelFile, "w").close()
        terminateTree(self.process)
        threading.Thread(target=self._killAfterGrace, daemon=True).start()

    def _killAfterGrace(self) -> None:
        try:
            self.process.wait(self.cancelGraceSeconds)
        except subprocess.TimeoutExpired:
            terminateTree(self.process, force=True)

    def poll(self) -> bool:
        """Deliver the queued events to the callbacks; returns whether the run is still going."""
        while self.outcome is None:
            try:
                kind, payload = self._queue.get_nowait()
            except queue.Empty:
                break
            if kind == "stdout":
                self._onStdout(payload)
            elif kind == "stderr":
                self._stderrTail.append(payload)
                if self.onLog and payload.strip():
                    self.onLog(payload)
            else:
                self._openStreams -= 1
        if self.outcome is None and self._openStreams == 0 and self.process.poll() is not None:
            self._finish(self.process.returncode)
        return self.outcome is None

    def _finish(self, exitCode: int) -> None:
        if self.cancelFile:
            with contextlib.suppress(OSError):
                os.remove(self.cancelFile)
        message = exitMessage(exitCode, self._errorEvent, list(self._stderrTail), self._cancelled)
        self.outcome = RunOutcome(exitCode=exitCode, message=message, result=self.result)
        if self.onFinished:
            self.onFinished(self.outcome)


class Runner:
    """What the local and the remote runner share: ``run``, which waits for the run each one's ``start`` gives."""

    start: Callable[..., Any]

    def run(
        self,
        argv: Sequence[str],
        onProgress: ProgressCallback | None = None,
        onLog: LogCallback | None = None,
        idle: Callable[[], None] | None = None,
    ) -> RunOutcome:
        """Start and wait; raises :class:`BackendError` with the one-line message if the run fails."""
        outcome = self.start(argv, onProgress, onLog).wait(idle)
        if not outcome.ok:
            raise BackendError(outcome)
        return outcome


class BackendRunner(Runner):
    """Starts backend commands.

    Args:
        command: the argv prefix that runs the backend, e.g. ``[python, "-m", "voco_backend"]``.
        environment: the backend's whole environment (None: inherit this process's).
        launcher: starts the process (``subprocess.Popen`` or a drop-in for tests).
        cancelGraceSeconds: see :class:`BackendRun`.
    """

    def __init__(
        self,
        command: Sequence[str],
        environment: dict[str, str] | None = None,
        launcher: Launcher = subprocess.Popen,
        cancelGraceSeconds: float = 30.0,
    ) -> None:
        self.command = list(command)
        self.environment = environment
        self.launcher = launcher
        self.cancelGraceSeconds = cancelGraceSeconds

    def start(
        self,
        argv: Sequence[str],
        onProgress: ProgressCallback | None = None,
        onLog: LogCallback | None = None,
        onFinished: FinishedCallback | None = None,
    ) -> BackendRun:
        """Start ``command + argv``; raises :class:`BackendError` if the process cannot start at all."""
        env = dict(os.environ if self.environment is None else self.environment)
        cancelFile = os.path.join(tempfile.gettempdir(), f"VoCoSlicer-cancel-{uuid.uuid4().hex}")
        env[CANCEL_FILE_VARIABLE] = cancelFile
        args = [*self.command, *argv]
        try:
            process = self.launcher(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                encoding="utf-8",
                errors="replace",
                bufsize=1,
                env=env,
                **_sessionOptions(),
            )
        except OSError as exc:
            raise BackendError(
                RunOutcome(
                    exitCode=-1,
                    message=f"cannot start the backend '{args[0]}': "
                    f"{exc.strerror or exc}; check the Python path in Settings",
                )
            ) from exc
        return BackendRun(process, onProgress, onLog, onFinished, self.cancelGraceSeconds, cancelFile)
