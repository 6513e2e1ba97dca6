"""User-facing errors and the exit codes of the process protocol."""

from __future__ import annotations

from pathlib import Path

EXIT_USAGE = 2
EXIT_DATA = 3
EXIT_OOM = 4
EXIT_CANCELLED = 130

# What a training run whose loss is no longer finite tells its user to change (pretrain and finetune).
NON_FINITE_LOSS_ADVICE = "lower --lr, or train in fp32 with --no-amp"


class VoCoError(Exception):
    """An error a user can fix; printed as one line, never as a traceback.

    Args:
        message: what is wrong and what to do about it.
        file: the file (or config field) the error is about, if any.
    """

    exit_code = EXIT_DATA

    def __init__(self, message: str, file: str | Path | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.file = str(file) if file is not None else None

    def __str__(self) -> str:
        return f"{self.file}: {self.message}" if self.file else self.message


class UsageError(VoCoError):
    """Bad flags or configuration values (exit 2)."""

    exit_code = EXIT_USAGE


class DataError(VoCoError):
    """Unreadable or inconsistent input data (exit 3)."""

    exit_code = EXIT_DATA


class OutOfMemory(VoCoError):
    """The device ran out of memory (exit 4); the message carries the advice that fixes it."""

    exit_code = EXIT_OOM


class Cancelled(Exception):
    """Raised at a step boundary after SIGTERM/SIGINT (exit 130)."""


def find_cause(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The exception of ``kind`` behind ``exc``, if any (MONAI wraps transform errors in a RuntimeError)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def find_user_error(exc: BaseException) -> VoCoError | None:
    """The :class:`VoCoError` behind ``exc``, if any."""
    found = find_cause(exc, VoCoError)
    return found if isinstance(found, VoCoError) else None
