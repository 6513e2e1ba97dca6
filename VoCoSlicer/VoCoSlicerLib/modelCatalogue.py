"""The models the backend knows: catalogue weights (``models list --json`` / ``models fetch NAME``) and the
user's own fine-tuned folders (registered with ``models register MODEL_DIR``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from VoCoSlicerLib.backendRunner import BackendRunner


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """One row of ``models list --json``.

    Attributes:
        name: the catalogue name or the registered name of a user model.
        kind: ``encoder`` (an initialisation for fine-tuning) or ``segmentation`` (segments a CT).
        source: ``catalogue`` or ``user``.
        available: downloaded (catalogue) or the folder still exists (user).
        path: the downloaded file or the model folder, when available.
        description: one sentence for the user (catalogue models).
    """

    name: str
    kind: str
    source: str
    available: bool
    path: str | None = None
    description: str = ""

    @classmethod
    def fromRow(cls, row: dict[str, Any]) -> ModelEntry:
        """An entry from one ``models`` row of the backend's result event."""
        return cls(
            name=str(row["name"]),
            kind=str(row.get("kind", "segmentation")),
            source=str(row["source"]),
            available=bool(row.get("available")),
            path=row.get("path"),
            description=str(row.get("description") or ""),
        )


class ModelCatalogue:
    """Lists and registers models through the backend (downloads: :meth:`VoCoSlicerLogic.fetch`).

    Args:
        runner: runs the backend's ``models`` command.
    """

    def __init__(self, runner: BackendRunner) -> None:
        self.runner = runner

    def list(self) -> list[ModelEntry]:
        """All catalogue models and registered user models (blocking; the command does not load torch)."""
        outcome = self.runner.run(["models", "list", "--json"])
        return [ModelEntry.fromRow(row) for row in outcome.result.get("models", [])]

    def register(self, modelDir: str | Path) -> ModelEntry:
        """Register a fine-tuned model folder so that it is listed by name."""
        result = self.runner.run(["models", "register", str(modelDir)]).result
        return ModelEntry(
            name=str(result["name"]), kind="segmentation", source="user", available=True, path=str(result["path"])
        )
