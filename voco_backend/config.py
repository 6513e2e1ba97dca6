"""One configuration dataclass per command, filled from flags and/or a YAML/JSON ``--config`` file.

A field becomes a flag ``--field-name``; ``metadata`` may carry ``help``, ``flag`` (another flag name),
``positional`` and ``choices``. Precedence: defaults < config file < flags given on the command line. Each
dataclass validates itself in ``__post_init__`` and raises :class:`UsageError` naming the field. The parser's
help shows each field's dataclass default and groups the fields without one as required (they may come from
``--config`` too, so argparse itself does not require them).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from voco_backend.errors import UsageError

C = TypeVar("C")


MAX_CONFIG_BYTES = 1 << 20
MAX_LIST_ITEMS = 100_000
REQUIRED_TITLE = "required arguments (on the command line or in --config)"


class _NotGiven:
    """The parser's default of every flag: tells a flag left out from one given, so a config file can fill it."""

    def __repr__(self) -> str:
        return "NOT_GIVEN"


NOT_GIVEN: Any = _NotGiven()


def field(default: Any = dataclasses.MISSING, *, help: str, **metadata: Any) -> Any:
    """A dataclass field with CLI metadata; list defaults are copied per instance."""
    meta = {"help": help, **metadata}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _base_type(annotation: Any) -> tuple[type, bool, bool]:
    """Return (element type, is_list, is_optional) of a field annotation."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    optional = False
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        optional = len(non_none) < len(args)
        annotation = non_none[0]
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (list, Sequence, tuple):
        return args[0], True, optional
    return annotation, False, optional


def flag_name(f: dataclasses.Field) -> str:
    """The command-line flag of a field."""
    return f.metadata.get("flag", "--" + f.name.replace("_", "-"))


def _default_text(f: dataclasses.Field) -> str:
    """`` (default: ...)`` for a field's dataclass default, "" when the help already words it or there is none."""
    help_text = f.metadata.get("help", "")
    if "(default" in help_text:
        return ""
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return ""
    if isinstance(value, bool):
        shown = "on" if value else "off"
    elif value is None or value == []:
        shown = "none"
    elif isinstance(value, (list, tuple)):
        shown = " ".join(map(str, value))
    else:
        shown = str(value)
    return f" (default: {shown})".replace("%", "%%")


def is_required(f: dataclasses.Field) -> bool:
    """Whether a field has no dataclass default (a value must come from a flag or the config file)."""
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one argument per field of ``cls``, the fields without a default in a required-arguments group.

    Every flag's parser default is :data:`NOT_GIVEN`, so a config file can fill what the command line leaves
    out; the help shows the dataclass default instead.
    """
    hints = typing.get_type_hints(cls)
    required = parser.add_argument_group(REQUIRED_TITLE)
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli") is False:
            continue
        elem, is_list, _ = _base_type(hints[f.name])
        kwargs: dict[str, Any] = {"help": f.metadata.get("help", "") + _default_text(f), "default": NOT_GIVEN}
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        if elem is bool and not is_list:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = elem if elem in (int, float) else str
            if is_list:
                kwargs["nargs"] = "+"
            if "nargs" in f.metadata:
                kwargs["nargs"] = f.metadata["nargs"]
            kwargs["metavar"] = f.metadata.get("metavar", f.name.upper())
        if f.metadata.get("positional"):
            if kwargs.get("nargs") not in ("?", "*"):
                kwargs.pop("default")
            parser.add_argument(f.name, **kwargs)
        else:
            (required if is_required(f) else parser).add_argument(flag_name(f), dest=f.name, **kwargs)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON mapping of field names (``-`` or ``_`` spelling) to values."""
    path = Path(path)
    try:
        if path.is_file() and path.stat().st_size > MAX_CONFIG_BYTES:
            raise UsageError(
                f"the config file is larger than {MAX_CONFIG_BYTES} bytes; is it a config file?", file=path
            )
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError("the config file is not UTF-8 text (a binary file?)", file=path) from exc
    except OSError as exc:
        raise UsageError(f"cannot read the config file ({exc.strerror})", file=path) from exc
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise UsageError(
            f"not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'}: {str(exc).splitlines()[0]}", file=path
        ) from exc
    except RecursionError as exc:
        raise UsageError("the config file is nested too deeply", file=path) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError("the config file must hold a mapping of field names to values", file=path)
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def _coerce(name: str, value: Any, annotation: Any) -> Any:
    """Convert a config-file value to the field's type, naming the field on failure."""
    elem, is_list, optional = _base_type(annotation)
    if value is None:
        if optional:
            return None
        raise UsageError(f"field '{name}' must not be empty")
    if is_list:
        items = value if isinstance(value, (list, tuple)) else [value]
        if len(items) > MAX_LIST_ITEMS:
            raise UsageError(f"field '{name}' holds {len(items)} values, more than {MAX_LIST_ITEMS}")
        return [_coerce(name, v, elem) for v in items]
    if isinstance(value, (list, tuple, dict)):  # also keeps YAML alias bombs from being expanded by str()
        raise UsageError(f"field '{name}' must be one {getattr(elem, '__name__', elem)}, got a {type(value).__name__}")
    try:
        if elem is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "yes", "no", "1", "0"):
                    raise ValueError(value)
                return value.lower() in ("true", "yes", "1")
            return bool(value)
        if elem is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return elem(value) if elem in (int, float, str) else value
    except (TypeError, ValueError, OverflowError) as exc:
        raise UsageError(f"field '{name}' must be {getattr(elem, '__name__', elem)}, got {value!r}") from exc


def build_config(cls: type[C], cli_values: dict[str, Any], config_file: str | Path | None = None) -> C:
    """Construct ``cls`` from defaults, then the config file, then the flags given."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    if config_file:
        from_file = read_config_file(config_file)
        unknown = sorted(set(from_file) - names)
        if unknown:
            raise UsageError(
                f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(names))}", file=config_file
            )
        values.update({k: _coerce(k, v, hints[k]) for k, v in from_file.items()})
    values.update({k: v for k, v in cli_values.items() if k in names and v is not NOT_GIVEN})
    for key, value in values.items():
        numbers = value if isinstance(value, (list, tuple)) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
            raise UsageError(f"field '{key}' must be a finite number, got {value!r}")
    try:
        return cls(**values)
    except TypeError as exc:
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in values and is_required(f)]
        if missing:
            raise UsageError(f"missing required field(s): {', '.join(flag_name_of(cls, m) for m in missing)}") from exc
        raise


def flag_name_of(cls: type, name: str) -> str:
    """The flag that sets field ``name`` of ``cls``."""
    return flag_name(next(f for f in dataclasses.fields(cls) if f.name == name))


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON/YAML-safe dict of a config (paths as strings)."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def check_choice(name: str, value: Any, allowed: Sequence[Any]) -> None:
    """Raise a one-line :class:`UsageError` unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise UsageError(f"field '{name}' must be one of {', '.join(map(str, allowed))}, got {value!r}")


def check_range(name: str, value: float, low: float | None = None, high: float | None = None) -> None:
    """Raise a one-line :class:`UsageError` unless ``low <= value <= high``."""
    if isinstance(value, float) and not math.isfinite(value) and not (low is None and high is None):
        raise UsageError(f"field '{name}' must be a finite number, got {value!r}")
    if (low is not None and not value >= low) or (high is not None and not value <= high):
        bounds = (
            f"{'' if low is None else f'>= {low}'}{' and ' if low is not None and high is not None else ''}"
            f"{'' if high is None else f'<= {high}'}"
        )
        raise UsageError(f"field '{name}' must be {bounds}, got {value!r}")
