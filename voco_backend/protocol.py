"""The progress side of the process protocol: JSON lines on stdout, human progress on stderr.

Every event is one JSON object on one stdout line (``{"event": "progress" | "log" | "result" | "error", ...}``),
flushed at once so that a parent process (the Slicer module) can follow a run live. Human-readable progress goes
to stderr: a tqdm bar when stderr is a terminal, plain lines otherwise.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import IO, Any

from tqdm import tqdm


def _jsonable(value: Any) -> Any:
    """Make numpy/torch scalars and non-finite floats JSON-safe."""
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


class Reporter:
    """Emits protocol events.

    Args:
        stdout: the stream for JSON lines.
        stderr: the stream for human-readable progress.
        enabled: False on non-zero DDP ranks, which must stay silent.
    """

    def __init__(self, stdout: IO[str] | None = None, stderr: IO[str] | None = None, enabled: bool = True):
        self.stdout = stdout if stdout is not None else sys.stdout
        self.stderr = stderr if stderr is not None else sys.stderr
        self.enabled = enabled
        self._bar: tqdm | None = None
        self._bar_stage: str | None = None
        self._started: dict[str, tuple[float, int]] = {}

    def emit(self, event: str, **fields: Any) -> None:
        """Write one JSON event line."""
        if not self.enabled:
            return
        line = json.dumps({"event": event, **_jsonable(fields)}, allow_nan=False)
        try:
            self.stdout.write(line + "\n")
            self.stdout.flush()
        except BrokenPipeError:
            # The reader went away (a closed pipe, a crashed parent): the run goes on, silently.
            self.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the reporter

    def progress(self, stage: str, step: int, total: int, **fields: Any) -> None:
        """Report ``step`` of ``total`` in ``stage``, with an ETA from the steps done since the stage began."""
        now = time.monotonic()
        start_time, start_step = self._started.setdefault(stage, (now, step))
        done = step - start_step
        eta = (now - start_time) / done * (total - step) if done > 0 else None
        self.emit(
            "progress", stage=stage, step=step, total=total, eta_s=None if eta is None else round(eta, 1), **fields
        )
        self._human_progress(stage, step, total, fields)

    def log(self, message: str, level: str = "info", **fields: Any) -> None:
        """A free-text message for the user's log."""
        self.emit("log", level=level, message=message, **fields)
        self._human(f"[{level}] {message}")

    def result(self, **fields: Any) -> None:
        """The command's outcome (output paths, figures)."""
        self.close_bar()
        self.emit("result", **fields)

    def error(self, message: str, file: str | None = None, exit_code: int | None = None) -> None:
        """A one-line error event; the process exits right after with ``exit_code``."""
        self.close_bar()
        self.emit("error", message=message, file=file, exit_code=exit_code)
        if self.enabled:
            self._write_stderr(f"error: {file + ': ' if file else ''}{message}\n")

    def close_bar(self) -> None:
        """Finish the human progress bar, if one is open."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            self._bar_stage = None

    def _human(self, text: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text, file=self.stderr)
        else:
            self._write_stderr(text + "\n")

    def _write_stderr(self, text: str) -> None:
        try:
            self.stderr.write(text)
            self.stderr.flush()
        except BrokenPipeError:
            self.stderr = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the reporter

    def _human_progress(self, stage: str, step: int, total: int, fields: dict[str, Any]) -> None:
        if not self.enabled:
            return
        shown = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in fields.items()}
        if not self.stderr.isatty():
            extra = " ".join(f"{k}={v}" for k, v in shown.items())
            self._write_stderr(f"{stage} {step}/{total} {extra}\n")
            return
        if self._bar is None or self._bar_stage != stage:
            self.close_bar()
            self._bar = tqdm(total=total, desc=stage, file=self.stderr, initial=step)
            self._bar_stage = stage
        self._bar.n = step
        self._bar.set_postfix(shown, refresh=True)
