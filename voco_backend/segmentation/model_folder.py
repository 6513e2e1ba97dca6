"""The model folder ``finetune`` writes and ``segment`` reads: ``model.json`` (metadata) and ``model.pt`` (weights).

This module owns the format: what ``model.json`` means (:class:`ModelInfo`), writing and reading it, registering
a folder (validated first) and resolving what a user typed to a model and its weights. The file names and the
raw reading are in :mod:`~voco_backend.segmentation.model_files`, cheap to import for the catalogue's registry.

``model.json`` holds everything needed to apply the model: the classes (label values, names, colours), the
preprocessing recipe, the sliding-window roi, the post-processing chosen on validation, the architecture, where
the encoder's initial weights came from (with the load report) and the training figures. ``model.pt`` is a flat
state dict loadable with ``torch.load(weights_only=True)``. A catalogue segmentation network (``VoComni_*``) is
described by the same :class:`ModelInfo`, built from its catalogue entry.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from voco_backend import __version__
from voco_backend.atomic import write_text_atomic
from voco_backend.catalogue import CatalogueEntry, UserModel, entry_of_file, record_user_model, resolve_model
from voco_backend.data.recipe import Recipe
from voco_backend.errors import DataError, UsageError
from voco_backend.networks import FEATURE_SIZES, MERGE_MONAI13, MERGE_MONAI15, check_merge_order, feature_size_of
from voco_backend.segmentation.labels import SegmentClass
from voco_backend.segmentation.model_files import MODEL_JSON, MODEL_PT, read_model_json
from voco_backend.segmentation.postprocess import LARGEST_COMPONENT

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MODEL_JSON",
    "MODEL_PT",
    "ModelInfo",
    "catalogue_model_info",
    "read_model_info",
    "register_model_folder",
    "resolve_segmentation_model",
    "write_model_info",
]

FORMAT = "voco-segmentation-model"
FORMAT_VERSION = 1


@dataclasses.dataclass
class ModelInfo:
    """What a segmentation model is and how it must be applied.

    Attributes:
        name: the model's name (catalogue registration uses it).
        model_size: ``tiny``, ``B``, ``L`` or ``H``.
        classes: the foreground classes; output channel ``i`` is ``classes[i - 1]``, channel 0 background.
        recipe: the deterministic preprocessing.
        roi: the sliding-window size in voxels.
        init: ``source`` of the initial weights and the load ``summary``.
        training: training figures (steps, best Dice, history, cases, timings).
        merge_order: PatchMerging voxel order of the network (``monai1.3``, the official one; a ``model.json``
            without the record was made by an earlier version in MONAI 1.5's order, ``monai1.5``).
        largest_component: names of the classes that keep only their largest connected component after
            segmentation (``postprocess.largest_component`` in ``model.json``; chosen on validation by
            ``finetune``, see :mod:`voco_backend.segmentation.postprocess`).
        note: a remark for the log (why the order is not the official one), not written to ``model.json``.
    """

    name: str
    model_size: str
    classes: list[SegmentClass]
    recipe: Recipe
    roi: tuple[int, int, int]
    init: dict[str, Any] = dataclasses.field(default_factory=dict)
    training: dict[str, Any] = dataclasses.field(default_factory=dict)
    merge_order: str = MERGE_MONAI13
    largest_component: list[str] = dataclasses.field(default_factory=list)
    note: str = ""

    @property
    def out_channels(self) -> int:
        """Background plus one channel per class."""
        return len(self.classes) + 1

    @property
    def largest_component_values(self) -> list[int]:
        """The label values of the classes in :attr:`largest_component`."""
        return [c.value for c in self.classes if c.name in self.largest_component]

    def to_json(self) -> dict[str, Any]:
        """The ``model.json`` document."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "architecture": {
                "name": "SwinUNETR",
                "use_v2": True,
                "downsample": "merging",
                "merge_order": self.merge_order,
                "model_size": self.model_size,
                "feature_size": feature_size_of(self.model_size),
                "in_channels": 1,
                "out_channels": self.out_channels,
            },
            "classes": [c.to_dict() for c in self.classes],
            "recipe": self.recipe.to_dict(),
            "roi": list(self.roi),
            "postprocess": {LARGEST_COMPONENT: list(self.largest_component)},
            "init": self.init,
            "training": self.training,
            "voco_backend_version": __version__,
        }

    @classmethod
    def from_json(cls, data: Any, source: str | Path) -> ModelInfo:
        """Parse a ``model.json`` document; a missing or malformed field is a one-line error naming ``source``."""
        try:
            if data.get("format") != FORMAT:
                raise ValueError(f"format is {data.get('format')!r}, expected {FORMAT!r}")
            if int(data["format_version"]) > FORMAT_VERSION:
                raise ValueError(
                    f"format_version {data['format_version']} is newer than this program's "
                    f"{FORMAT_VERSION}: update voco-backend"
                )
            info = cls(
                name=str(data["name"]),
                model_size=str(data["architecture"]["model_size"]),
                classes=[SegmentClass.from_dict(c) for c in data["classes"]],
                recipe=Recipe.from_dict(data["recipe"]),
                roi=tuple(int(r) for r in data["roi"]),
                init=dict(data.get("init", {})),
                training=dict(data.get("training", {})),
                merge_order=check_merge_order(str(data["architecture"].get("merge_order", MERGE_MONAI15))),
                largest_component=[str(n) for n in data.get("postprocess", {}).get(LARGEST_COMPONENT, [])],
            )
            unknown = sorted(set(info.largest_component) - {c.name for c in info.classes})
            if unknown:
                raise ValueError(f"postprocess names classes it does not have: {', '.join(unknown)}")
            if "merge_order" not in data["architecture"]:
                info.note = (
                    f"{Path(source).name} records no merge order: made by an earlier version, so it runs in "
                    "MONAI 1.5's PatchMerging order it was trained in (not the official VoCo network)"
                )
            feature_size_of(info.model_size)
            if len(info.roi) != 3 or any(r < 32 or r % 32 or r > 1024 for r in info.roi):
                raise ValueError(f"roi {list(info.roi)} must be 3 multiples of 32 between 32 and 1024")
            if any(not 0 < c.value < 2**31 for c in info.classes):
                raise ValueError("class values must lie in 1 .. 2**31-1")
        except (AttributeError, KeyError, TypeError, ValueError, UsageError) as exc:
            raise DataError(
                f"not a valid model description ({type(exc).__name__}: {exc}); correct it or fine-tune the "
                "model again (finetune writes a valid one)",
                file=source,
            ) from exc
        return info


def write_model_info(folder: Path, info: ModelInfo) -> Path:
    """Write ``folder/model.json`` atomically."""
    path = folder / MODEL_JSON
    write_text_atomic(path, json.dumps(info.to_json(), indent=2) + "\n")
    return path


def read_model_info(folder: Path) -> ModelInfo:
    """Read and validate ``folder/model.json``; a missing ``model.pt`` is an error too (unusable without it)."""
    return ModelInfo.from_json(read_model_json(folder), folder / MODEL_JSON)


def register_model_folder(folder: str | Path) -> UserModel:
    """Validate a fine-tuned model folder and record it under its ``model.json`` name.

    Raises:
        DataError: ``folder`` is not a model folder or its ``model.json`` is not a valid description, so a
            broken folder is refused here rather than at segment time.
        UsageError: the name is taken by a catalogue model.
    """
    folder = Path(folder).expanduser().resolve()
    info = read_model_info(folder)
    return record_user_model(info.name, folder, [c.to_dict() for c in info.classes])


def catalogue_model_info(weights: Path, entry: CatalogueEntry | None = None) -> ModelInfo:
    """The :class:`ModelInfo` of a downloaded catalogue segmentation network (``VoComni_*``).

    Its classes (names, colours, standard codes) and inference recipe are the catalogue's, as the authors
    publish them.

    Raises:
        UsageError: the file is not a catalogue segmentation network (an encoder needs fine-tuning first).
    """
    entry = entry or entry_of_file(weights)
    if entry is None:
        raise UsageError(
            "a model file must be a catalogue segmentation network; a fine-tuned model is a folder "
            "(model.json + model.pt)",
            file=weights,
        )
    if entry.kind != "segmentation" or not entry.out_channels or not entry.classes:
        raise UsageError(
            f"'{entry.name}' is an encoder, not a segmentation network: fine-tune it first "
            f"(finetune --init {entry.name})",
            file=weights,
        )
    size = next(k for k, v in FEATURE_SIZES.items() if v == entry.feature_size)
    classes = [SegmentClass.from_dict(c) for c in entry.classes]
    recipe = Recipe(
        spacing=tuple(entry.recipe["spacing"]),
        window=tuple(entry.recipe["window"]),
        min_size=tuple(entry.recipe["roi"]),
    )
    return ModelInfo(
        name=entry.name,
        model_size=size,
        classes=classes,
        recipe=recipe,
        roi=tuple(entry.recipe["roi"]),
        init={"source": entry.name, "overlap": entry.recipe["overlap"], "blend": entry.recipe["blend"]},
        merge_order=entry.merge_order,
    )


def resolve_segmentation_model(name_or_path: str) -> tuple[ModelInfo, Path]:
    """A model folder, a registered model name or a catalogue segmentation network → (info, weights file)."""
    model = resolve_model(name_or_path)
    if model.kind == "folder":
        return read_model_info(model.path), model.weights
    return catalogue_model_info(model.path, model.entry), model.weights
