"""List, fetch and register models: the released VoCo weights of the catalogue and your fine-tuned folders.

Examples::

    python -m voco_backend models list                  # a table, then the JSON result event
    python -m voco_backend models list --json           # the JSON result event only
    python -m voco_backend models fetch VoCo_B_SSL_head # download, verify the published checksum, cache
    python -m voco_backend models register MODEL_DIR    # a folder written by finetune (model.json + model.pt)
    python -m voco_backend models import VoCo_B_SSL_head ~/Downloads/VoCo_B_SSL_head.pt  # offline: verify, cache

Downloads are cached in $VOCO_CACHE_DIR/models (default ~/.cache/voco_backend/models) and resume after an
interruption. Environment: VOCO_CACHE_DIR (the cache folder), VOCO_MODEL_BASE_URL (a mirror: each file is
fetched from <base>/<file> instead of Hugging Face), VOCO_CATALOGUE (a catalogue JSON used instead of the
packaged one; it must follow the packaged models.schema.json).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any

from voco_backend.cancel import CancelToken
from voco_backend.catalogue import cache_dir, get_entry, load_catalogue, user_models
from voco_backend.config import check_choice, field
from voco_backend.download import CHUNK_BYTES, download
from voco_backend.errors import DataError, UsageError
from voco_backend.protocol import Reporter

ACTIONS = ["list", "fetch", "register", "import"]


@dataclasses.dataclass
class ModelsConfig:
    """Configuration of ``models``."""

    action: str = field(
        help="list | fetch NAME | register MODEL_DIR | import NAME FILE", positional=True, choices=ACTIONS
    )
    name: str | None = field(
        None,
        help="the catalogue NAME to fetch, or the MODEL_DIR to register",
        positional=True,
        nargs="?",
        metavar="NAME",
    )
    file: str | None = field(
        None, help="import: the weights file got by other means (verified, then cached)", positional=True, nargs="?"
    )
    json: bool = field(False, help="list: print only the JSON result event, no table")

    def __post_init__(self) -> None:
        check_choice("action", self.action, ACTIONS)
        if self.action == "list" and self.name:
            raise UsageError(f"models list takes no NAME, got '{self.name}'")
        if self.action != "list" and not self.name:
            raise UsageError(f"models {self.action} needs a {'MODEL_DIR' if self.action == 'register' else 'NAME'}")
        if (self.action == "import") != bool(self.file):
            raise UsageError(
                "models import needs NAME FILE" if self.action == "import" else f"models {self.action} takes no FILE"
            )


CONFIG = ModelsConfig


def _rows() -> list[dict[str, Any]]:
    """Catalogue entries with their cached state, then the user's registered models."""
    rows: list[dict[str, Any]] = []
    for entry in load_catalogue():
        cached = entry.cached_path.is_file()
        rows.append(
            {
                "name": entry.name,
                "source": "catalogue",
                "kind": entry.kind,
                "feature_size": entry.feature_size,
                "out_channels": entry.out_channels,
                "parameters": entry.parameters,
                "bytes": entry.bytes,
                "checksum_published": entry.checksum is not None,
                "license": entry.license,
                "merge_order": entry.merge_order,
                "recipe": entry.recipe,
                "classes": [dict(c) for c in entry.classes] or None,
                "available": cached,
                "path": str(entry.cached_path) if cached else None,
                "description": entry.description,
            }
        )
    for model in user_models():
        rows.append(
            {
                "name": model.name,
                "source": "user",
                "kind": "segmentation",
                "classes": model.classes,
                "available": model.available,
                "path": str(model.path),
            }
        )
    return rows


def _table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of :func:`_rows` for a person at a terminal."""
    lines = [("NAME", "KIND", "SOURCE", "STATUS", "DETAILS")]
    for row in rows:
        if row["source"] == "catalogue":
            status = "downloaded" if row["available"] else "not downloaded"
            details = f"fs {row['feature_size']}, {row['parameters'] or '?'} params"
            if row["out_channels"]:
                details += f", {row['out_channels']} channels"
            if not row["checksum_published"]:
                details += ", no published checksum"
        else:
            status = "registered" if row["available"] else "folder missing"
            details = row["path"]
        lines.append((row["name"], row["kind"], row["source"], status, details))
    widths = [max(len(line[i]) for line in lines) for i in range(4)]
    return "\n".join(
        "  ".join([*(c.ljust(w) for c, w in zip(line[:4], widths, strict=True)), line[4]]) for line in lines
    )


def _import(name: str, source: Path, reporter: Reporter, cancel: CancelToken) -> None:
    """Copy ``source`` into the cache as catalogue model ``name``, hashing as it streams; a mismatch keeps nothing."""
    entry = get_entry(name)
    if not source.is_file():
        raise DataError(f"no such weights file for {entry.name}: give the downloaded {entry.file}", file=source)
    target = entry.cached_path
    target.parent.mkdir(parents=True, exist_ok=True)
    algorithm, expected = entry.checksum or ("sha256", None)
    digest = hashlib.new(algorithm)
    temporary = target.with_name(f".{target.name}.import-{os.getpid()}")
    try:
        with source.open("rb") as reader, temporary.open("wb") as writer:
            for chunk in iter(lambda: reader.read(CHUNK_BYTES), b""):
                cancel.check()
                digest.update(chunk)
                writer.write(chunk)
        if expected is not None and digest.hexdigest() != expected.lower():
            raise DataError(
                f"{algorithm} {digest.hexdigest()} is not the catalogue's {expected} for {entry.name}: "
                f"not the published {entry.file} (nothing was kept)",
                file=source,
            )
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    if expected is None:
        reporter.log(f"{entry.name} has no published checksum: imported without verification", level="warning")
    reporter.log(f"imported {entry.name} into {target}")
    reporter.result(name=entry.name, path=str(target), verified=expected is not None, algorithm=algorithm)


def run(config: ModelsConfig, reporter: Reporter, cancel: CancelToken) -> None:
    """Carry out ``config.action`` and emit its result event."""
    if config.action == "list":
        rows = _rows()
        if not config.json:
            reporter.stdout.write(_table(rows) + "\n")
        reporter.result(models=rows, cache_dir=str(cache_dir()))
    elif config.action == "fetch":
        entry = get_entry(str(config.name))
        verified = entry.checksum is not None
        if entry.cached_path.is_file():
            reporter.log(f"{entry.name} is already downloaded")
            reporter.result(name=entry.name, path=str(entry.cached_path), downloaded=False, verified=verified)
            return
        url = entry.download_url
        reporter.log(f"fetching {entry.name} from {url}")
        path = download(url, entry.cached_path, entry.checksum, reporter, cancel)
        reporter.result(name=entry.name, path=str(path), downloaded=True, verified=verified)
    elif config.action == "import":
        _import(str(config.name), Path(str(config.file)), reporter, cancel)
    else:
        from voco_backend.segmentation.model_folder import register_model_folder  # torch + MONAI: not for list

        model = register_model_folder(str(config.name))
        reporter.result(name=model.name, path=str(model.path), classes=model.classes)
