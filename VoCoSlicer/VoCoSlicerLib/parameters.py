"""One typed parameter object per panel (Segment, Fine-tune, Pretrain) that produces the backend's argv.

The flags are those of ``docs/PROTOCOL.md``; an option left at ``None`` is not passed, so the backend's own
default applies. Each object validates itself on construction and raises :class:`ParameterError` naming the
field, so a wrong value never reaches the backend. The bounds are the backend's (its config classes);
``Testing/contract`` pushes every object through the backend's own parser and validation to keep them so.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

DEVICES = ("auto", "cpu", "cuda")
MODEL_SIZES = ("tiny", "B", "L", "H")
LABEL_SUFFIXES = (".nii.gz", ".nii", ".seg.nrrd", ".nrrd", ".mha")
MAX_OVERLAP = 0.95
ROI_MINIMUM = 64
ROI_MULTIPLE = 32


class ParameterError(ValueError):
    """A parameter value the backend would refuse; the message names the field and what is allowed."""


def _checkChoice(field: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ParameterError(f"{field} must be one of {', '.join(allowed)}, got '{value}'")


def _checkPositive(field: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise ParameterError(f"{field} must be a positive integer, got {value}")


def _checkPaths(field: str, paths: Sequence[str]) -> None:
    if not paths or any(not str(p) for p in paths):
        raise ParameterError(f"{field} needs at least one file and no empty path")


def _checkBox(field: str, box: Sequence[float]) -> None:
    if len(box) != 6 or not all(math.isfinite(v) for v in box):
        raise ParameterError(f"{field} needs 6 finite numbers (x0, y0, z0, x1, y1, z1), got {tuple(box)}")
    if not all(low < high for low, high in zip(box[:3], box[3:], strict=True)):
        raise ParameterError(
            f"{field} {tuple(box)} is empty or inverted: each low corner value must be below its high one"
        )


def _optional(flag: str, value: object) -> list[str]:
    return [] if value is None else [flag, str(value)]


def _checkSegmentOptions(parameters: Any) -> None:
    """The checks a one-CT and a several-CT segment share: the model, the device, the overlap."""
    if not parameters.model:
        raise ParameterError("model must name a model folder or a catalogue model")
    _checkChoice("device", parameters.device, DEVICES)
    if parameters.overlap is not None and not 0.0 <= parameters.overlap <= MAX_OVERLAP:
        raise ParameterError(f"overlap must be in [0, {MAX_OVERLAP}], got {parameters.overlap}")


def _segmentOptionsArgv(parameters: Any) -> list[str]:
    """``--device``, ``--overlap`` and ``--tta`` of a segment run."""
    argv = ["--device", parameters.device, *_optional("--overlap", parameters.overlap)]
    return [*argv, "--tta"] if parameters.tta else argv


@dataclasses.dataclass(frozen=True)
class SegmentParameters:
    """``segment``: a model applied to one CT, writing a label map on the CT's grid."""

    model: str
    inputPath: str
    outputPath: str
    device: str = "auto"
    overlap: float | None = None
    tta: bool = False
    roiBox: tuple[float, float, float, float, float, float] | None = None
    """Segment only this RAS box (mm): low corner x, y, z then high corner x, y, z."""

    def __post_init__(self) -> None:
        _checkSegmentOptions(self)
        if self.roiBox is not None:
            _checkBox("roiBox", self.roiBox)
        if not self.inputPath:
            raise ParameterError("inputPath must not be empty")
        if not self.outputPath.lower().endswith(LABEL_SUFFIXES):
            raise ParameterError(
                f"outputPath must end with one of {', '.join(LABEL_SUFFIXES)}, got '{self.outputPath}'"
            )

    def toArgv(self) -> list[str]:
        """The backend arguments after ``python -m voco_backend``."""
        head = ["segment", "--model", self.model, "--input", self.inputPath, "--output", self.outputPath]
        box = [] if self.roiBox is None else ["--roi-box", *(repr(float(v)) for v in self.roiBox)]
        return [*head, *_segmentOptionsArgv(self), *box]


@dataclasses.dataclass(frozen=True)
class SegmentAllParameters:
    """``segment`` of several CTs with one model load: a label map per CT in ``outputDir`` (``<name>_seg.nrrd``)."""

    model: str
    inputPaths: tuple[str, ...]
    outputDir: str
    device: str = "auto"
    overlap: float | None = None
    tta: bool = False

    def __post_init__(self) -> None:
        _checkSegmentOptions(self)
        if not self.inputPaths or not all(self.inputPaths):
            raise ParameterError("inputPaths must name at least one CT, none empty")
        if not self.outputDir:
            raise ParameterError("outputDir must not be empty")

    def toArgv(self) -> list[str]:
        """The backend arguments after ``python -m voco_backend``."""
        head = ["segment", "--model", self.model, "--input", *self.inputPaths, "--output-dir", self.outputDir]
        return [*head, "--output-suffix", ".nrrd", *_segmentOptionsArgv(self)]


@dataclasses.dataclass(frozen=True)
class FinetuneParameters:
    """``finetune``: a segmentation model trained from image/label pairs.

    ``colorTable`` (a Slicer colour table file) or ``classes`` (name → label value) names the label values;
    exactly one of them must be given so that the model's classes are the user's, never renumbered.
    """

    images: tuple[str, ...]
    labels: tuple[str, ...]
    outputModelDir: str
    colorTable: str | None = None
    classes: Mapping[str, int] | None = None
    init: str | None = None
    steps: int | None = None
    modelSize: str | None = None
    roi: int | None = None
    spacing: tuple[float, float, float] | None = None
    spacingFromFov: bool = False
    maxMinutes: float | None = None
    device: str = "auto"
    seed: int | None = None
    resume: bool = False

    def __post_init__(self) -> None:
        _checkPaths("images", self.images)
        _checkPaths("labels", self.labels)
        if len(self.images) != len(self.labels):
            raise ParameterError(
                f"images and labels must pair up, got {len(self.images)} images and {len(self.labels)} labels"
            )
        if not self.outputModelDir:
            raise ParameterError("outputModelDir must not be empty")
        if (self.colorTable is None) == (self.classes is None):
            raise ParameterError("colorTable or classes: give exactly one of them")
        if self.classes is not None:
            badValues = [name for name, value in self.classes.items() if not 0 < value < 65536]
            if not self.classes or badValues:
                raise ParameterError(
                    f"classes must map names to label values 1..65535, check: {', '.join(badValues) or '(none given)'}"
                )
        _checkPositive("steps", self.steps)
        if self.roi is not None and (self.roi < ROI_MINIMUM or self.roi % ROI_MULTIPLE):
            raise ParameterError(f"roi must be a multiple of {ROI_MULTIPLE} and at least {ROI_MINIMUM}, got {self.roi}")
        if self.maxMinutes is not None and not self.maxMinutes >= 0:
            raise ParameterError(f"maxMinutes must be 0 (no limit) or a number of minutes, got {self.maxMinutes}")
        if self.spacing is not None and (len(self.spacing) != 3 or min(self.spacing) <= 0):
            raise ParameterError(f"spacing must be three positive numbers (mm), got {self.spacing}")
        if self.spacingFromFov and self.spacing is not None:
            raise ParameterError("spacing or spacingFromFov: give at most one of them")
        if self.modelSize is not None:
            _checkChoice("modelSize", self.modelSize, MODEL_SIZES)
        _checkChoice("device", self.device, DEVICES)

    def toArgv(self) -> list[str]:
        """The backend arguments after ``python -m voco_backend``."""
        argv = ["finetune", "--images", *self.images, "--labels", *self.labels, "--out", self.outputModelDir]
        if self.colorTable is not None:
            argv += ["--color-table", self.colorTable]
        else:
            argv += ["--classes", *(f"{name}={value}" for name, value in self.classes.items())]
        argv += [
            *_optional("--init", self.init),
            *_optional("--steps", self.steps),
            *_optional("--model-size", self.modelSize),
            *_optional("--roi", self.roi),
        ]
        if self.spacing is not None:
            argv += ["--spacing", *(str(s) for s in self.spacing)]
        if self.spacingFromFov:
            argv.append("--spacing-from-fov")
        if self.maxMinutes:  # 0 and None: no limit, the flag is left out
            argv += ["--max-minutes", f"{self.maxMinutes:g}"]
        argv += ["--device", self.device, *_optional("--seed", self.seed)]
        return [*argv, "--resume"] if self.resume else argv


@dataclasses.dataclass(frozen=True)
class PretrainParameters:
    """``pretrain``: VoCo self-supervised pretraining of an encoder on unlabelled CT."""

    data: tuple[str, ...]
    outputRunDir: str
    steps: int | None = None
    modelSize: str | None = None
    init: str | None = None
    device: str = "auto"
    seed: int | None = None
    resume: bool = False

    def __post_init__(self) -> None:
        _checkPaths("data", self.data)
        if not self.outputRunDir:
            raise ParameterError("outputRunDir must not be empty")
        _checkPositive("steps", self.steps)
        if self.modelSize is not None:
            _checkChoice("modelSize", self.modelSize, MODEL_SIZES)
        _checkChoice("device", self.device, DEVICES)

    def toArgv(self) -> list[str]:
        """The backend arguments after ``python -m voco_backend``."""
        argv = [
            "pretrain",
            "--data",
            *self.data,
            "--out",
            self.outputRunDir,
            *_optional("--steps", self.steps),
            *_optional("--model-size", self.modelSize),
            *_optional("--init", self.init),
            "--device",
            self.device,
            *_optional("--seed", self.seed),
        ]
        return [*argv, "--resume"] if self.resume else argv
