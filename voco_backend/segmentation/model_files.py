"""The files of a model folder and their one-line errors: ``model.json`` (metadata) and ``model.pt`` (weights).

This is the import-cheap half of the model-folder format (no torch, no MONAI), so the catalogue's registry of
the user's folders and ``models list`` stay fast; :mod:`voco_backend.segmentation.model_folder` parses the
document into a ``ModelInfo`` on top of it. Nothing else knows these file names or their errors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from voco_backend.errors import DataError

MODEL_JSON = "model.json"
MODEL_PT = "model.pt"


def is_complete(folder: Path) -> bool:
    """Whether ``folder`` holds both files of a model folder."""
    return all((folder / name).is_file() for name in (MODEL_JSON, MODEL_PT))


def read_model_json(folder: str | Path) -> dict[str, Any]:
    """Check that ``folder`` is a complete model folder and read its ``model.json`` object.

    Raises:
        DataError: the folder or one of its files is missing, or ``model.json`` is not a readable JSON object.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError("model folder not found", file=folder)
    for name in (MODEL_JSON, MODEL_PT):
        if not (folder / name).is_file():
            raise DataError(
                f"not a model folder: {name} is missing (finetune writes model.json and model.pt)", file=folder
            )
    path = folder / MODEL_JSON
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read the model description ({exc})", file=path) from exc
    except RecursionError as exc:
        raise DataError("cannot read the model description (nested too deeply)", file=path) from exc
    if not isinstance(data, dict):
        raise DataError("must hold a JSON object", file=path)
    return data
