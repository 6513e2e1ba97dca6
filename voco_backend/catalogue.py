"""The model catalogue (the released VoCo weights, as data) and the user's own fine-tuned models.

The packaged ``resources/models.json`` is validated against ``resources/models.schema.json`` whenever it is read.
Downloads live in ``cache_dir()/models``; the user's models are registered by folder in
``cache_dir()/user_models.json`` (the folder's format is :mod:`voco_backend.segmentation.model_folder`'s, which
validates a folder before :func:`record_user_model` records it).

Environment:
    VOCO_CACHE_DIR: the cache folder (default ``~/.cache/voco_backend``).
    VOCO_CATALOGUE: a catalogue JSON used instead of the packaged one (a site's own list; tests).
    VOCO_MODEL_BASE_URL: a mirror: every catalogue file is fetched from ``<base>/<file>`` instead of its URL.
"""

from __future__ import annotations

import dataclasses
import json
import os
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Literal

import jsonschema

from voco_backend.atomic import write_text_atomic
from voco_backend.cache import cache_dir
from voco_backend.errors import DataError, UsageError
from voco_backend.segmentation.model_files import MODEL_JSON, MODEL_PT, is_complete, read_model_json

CATALOGUE_ENV = "VOCO_CATALOGUE"
BASE_URL_ENV = "VOCO_MODEL_BASE_URL"
REGISTRY_VERSION = 1


def registry_path() -> Path:
    """The JSON file that records the user's registered model folders."""
    return cache_dir() / "user_models.json"


@dataclasses.dataclass(frozen=True)
class CatalogueEntry:
    """One released model of the catalogue (see ``models.schema.json`` for the fields' meaning)."""

    name: str
    kind: str
    file: str
    url: str
    checksum: tuple[str, str] | None
    feature_size: int
    out_channels: int | None
    parameters: str | None
    bytes: int | None
    recipe: dict[str, Any] | None
    description: str
    license: str | None
    citation: str
    merge_order: str = "monai1.3"
    classes: tuple[dict[str, Any], ...] = ()
    note: str = ""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CatalogueEntry:
        """Build an entry from one validated ``models`` item."""
        checksum = data["checksum"]
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in fields}
        values["checksum"] = None if checksum is None else (checksum["algorithm"], checksum["value"])
        values.setdefault("recipe", None)
        values["classes"] = tuple(data.get("classes", ()))
        return cls(**values)

    @property
    def download_url(self) -> str:
        """The URL to fetch: ``$VOCO_MODEL_BASE_URL/<file>`` when a mirror is set, else :attr:`url`."""
        base = os.environ.get(BASE_URL_ENV)
        return f"{base.rstrip('/')}/{self.file}" if base else self.url

    @property
    def cached_path(self) -> Path:
        """Where the verified download lies (whether or not it was fetched yet)."""
        return cache_dir() / "models" / self.file


def entry_of_file(path: str | Path) -> CatalogueEntry | None:
    """The catalogue entry whose file ``path`` is (same file name), or None."""
    name = Path(path).name
    return next((e for e in load_catalogue() if e.file == name), None)


@dataclasses.dataclass(frozen=True)
class UserModel:
    """A fine-tuned model folder (``model.json`` + ``model.pt``) registered by the user."""

    name: str
    path: Path
    classes: Any = None
    available: bool = True


def _resource(name: str) -> Traversable:
    return resources.files("voco_backend").joinpath("resources", name)


def _read_json(source: Path | Traversable) -> Any:
    try:
        return json.loads(source.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DataError(f"cannot read the file ({exc.strerror})", file=str(source)) from exc
    except json.JSONDecodeError as exc:
        raise DataError(f"not valid JSON: {exc}", file=str(source)) from exc


def catalogue_source() -> Path | Traversable:
    """The catalogue file in use: ``$VOCO_CATALOGUE`` or the packaged ``models.json``."""
    override = os.environ.get(CATALOGUE_ENV)
    return Path(override).expanduser() if override else _resource("models.json")


def validate_catalogue(data: Any, source: str) -> None:
    """Check a catalogue document against the schema and for duplicate names.

    Raises:
        DataError: one line naming ``source``, the offending JSON path and what is wrong.
    """
    validator = jsonschema.Draft202012Validator(_read_json(_resource("models.schema.json")))
    error = jsonschema.exceptions.best_match(validator.iter_errors(data))
    if error is not None:
        raise DataError(f"invalid model catalogue at {error.json_path}: {error.message}", file=source)
    names = [m["name"] for m in data["models"]]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DataError(f"invalid model catalogue: duplicate name(s) {', '.join(duplicates)}", file=source)


def load_catalogue(source: Path | Traversable | None = None) -> list[CatalogueEntry]:
    """Read and validate the catalogue (default :func:`catalogue_source`)."""
    source = catalogue_source() if source is None else source
    data = _read_json(source)
    validate_catalogue(data, str(source))
    return [CatalogueEntry.from_json(m) for m in data["models"]]


def get_entry(name: str) -> CatalogueEntry:
    """The catalogue entry called ``name``.

    Raises:
        UsageError: no such entry; the message lists the catalogue's names.
    """
    entries = load_catalogue()
    for entry in entries:
        if entry.name == name:
            return entry
    raise UsageError(f"'{name}' is not in the model catalogue; known: {', '.join(e.name for e in entries)}")


def _read_registry() -> dict[str, str]:
    path = registry_path()
    if not path.is_file():
        return {}
    data = _read_json(path)
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, dict) or not all(isinstance(v, str) for v in models.values()):
        raise DataError("corrupt registry of user models; delete it and register the folders again", file=path)
    return models


def user_models() -> list[UserModel]:
    """The registered model folders; a folder that no longer holds a model is listed as unavailable."""
    found = []
    for name, folder in _read_registry().items():
        path = Path(folder)
        if is_complete(path):
            found.append(UserModel(name=name, path=path, classes=read_model_json(path).get("classes")))
        else:
            found.append(UserModel(name=name, path=path, available=False))
    return found


def record_user_model(name: str, folder: Path, classes: Any = None) -> UserModel:
    """Record a validated model folder under ``name`` (``model_folder.register_model_folder`` validates it).

    Raises:
        UsageError: the name is taken by a catalogue model.
    """
    if name in {e.name for e in load_catalogue()}:
        raise UsageError(
            f"the name '{name}' belongs to a catalogue model; change 'name' in model.json", file=folder / MODEL_JSON
        )
    registry = _read_registry()
    registry[name] = str(folder)
    write_text_atomic(registry_path(), json.dumps({"version": REGISTRY_VERSION, "models": registry}, indent=2))
    return UserModel(name=name, path=folder, classes=classes)


@dataclasses.dataclass(frozen=True)
class ResolvedModel:
    """What a model name or path stands for.

    Attributes:
        kind: ``folder`` (a fine-tuned model folder) or ``file`` (a weights file: a catalogue download or a
            checkpoint the user named).
        path: the folder or the file.
        entry: the catalogue entry of a catalogue file (by name, or by the file name of a path), else None.
    """

    kind: Literal["folder", "file"]
    path: Path
    entry: CatalogueEntry | None = None

    @property
    def weights(self) -> Path:
        """The weights file: the folder's ``model.pt`` or the file itself."""
        return self.path / MODEL_PT if self.kind == "folder" else self.path


def resolve_model(name_or_path: str | Path) -> ResolvedModel:
    """Turn what a user typed into a local model folder or weights file.

    An existing file or folder is taken as is; a catalogue name gives its cached download; a registered name
    gives its folder.

    Raises:
        UsageError: a catalogue model that is not downloaded yet (the message says how to fetch it), or an
            unknown name.
        DataError: a registered folder that no longer holds the model.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return ResolvedModel("folder", path)
    if path.exists():
        return ResolvedModel("file", path, entry_of_file(path))
    name = str(name_or_path)
    entries = load_catalogue()
    for entry in entries:
        if entry.name == name:
            if entry.cached_path.is_file():
                return ResolvedModel("file", entry.cached_path, entry)
            raise UsageError(f"model '{name}' is not downloaded yet: run `voco-backend models fetch {name}`")
    users = user_models()
    for model in users:
        if model.name == name:
            if not model.available:
                raise DataError(f"registered model '{name}' is gone (model.json/model.pt missing)", file=model.path)
            return ResolvedModel("folder", model.path)
    known = ", ".join([e.name for e in entries] + [m.name for m in users])
    raise UsageError(f"'{name}' is neither an existing file or folder nor a known model ({known})")
