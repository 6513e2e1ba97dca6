"""Class tables (label value → name and colour) and the checks every training label goes through.

A class table comes from ``--classes name=value``, a Slicer colour table (``.ctbl``/``.txt`` lines
``value name r g b a``) or the segment header of a ``.seg.nrrd``. A label must lie on its image's grid in
physical space (a label cropped to a sub-block of the image's voxels, as Slicer exports it, is fine), hold only
values of the table, and hold at least one foreground voxel.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from voco_backend.errors import DataError, UsageError

# Distinct colours (0-1 RGB) for classes whose source names none (from Slicer's generic anatomy table).
PALETTE: tuple[tuple[float, float, float], ...] = (
    (0.502, 0.682, 0.502),
    (0.945, 0.839, 0.569),
    (0.694, 0.478, 0.396),
    (0.435, 0.722, 0.824),
    (0.847, 0.396, 0.310),
    (0.867, 0.510, 0.396),
    (0.565, 0.933, 0.565),
    (0.753, 0.408, 0.345),
    (0.863, 0.961, 0.078),
    (0.306, 0.247, 0.000),
    (1.000, 0.980, 0.863),
    (0.902, 0.863, 0.275),
)
SPACING_RTOL = 1e-3
MAX_LABEL_VALUE = 2**31 - 1  # labels are resampled as int32; larger values are refused, never wrapped
VOXEL_ATOL = 0.05


@dataclasses.dataclass(frozen=True)
class SegmentClass:
    """One foreground class: its name, its value in label files and its display colour (RGB in 0-1)."""

    name: str
    value: int
    color: tuple[float, float, float]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (stored in ``model.json``)."""
        return {"name": self.name, "value": self.value, "color": [round(c, 4) for c in self.color]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SegmentClass:
        """Inverse of :meth:`to_dict`."""
        return cls(str(data["name"]), int(data["value"]), tuple(float(c) for c in data["color"]))


def default_color(index: int) -> tuple[float, float, float]:
    """The palette colour of the ``index``-th class (0-based)."""
    return PALETTE[index % len(PALETTE)]


def _sorted_unique(classes: list[SegmentClass], source: str) -> list[SegmentClass]:
    """Classes sorted by value; a duplicate value or a background (0) class is an error naming ``source``."""
    values = [c.value for c in classes]
    duplicates = sorted({v for v in values if values.count(v) > 1})
    if duplicates:
        raise DataError(f"label value(s) {', '.join(map(str, duplicates))} named twice", file=source)
    if not classes:
        raise DataError("names no foreground class (label value > 0)", file=source)
    return sorted(classes, key=lambda c: c.value)


def parse_classes(specs: Sequence[str]) -> list[SegmentClass]:
    """Parse ``--classes``: ``name=value`` entries (value > 0), or bare names valued 1, 2, ... in order."""
    bare = ["=" not in spec for spec in specs]
    if any(bare) and not all(bare):
        raise UsageError(f"field 'classes' mixes bare names and name=value entries: {' '.join(specs)}; use one form")
    if all(bare):
        specs = [f"{spec}={i}" for i, spec in enumerate(specs, 1)]
    classes = []
    for i, spec in enumerate(specs):
        name, sep, value = spec.rpartition("=")
        if not sep or not name.strip() or not value.strip().isdigit() or int(value) <= 0:
            raise UsageError(
                f"field 'classes' entries must be names or look like name=value with value > 0, got {spec!r}"
            )
        if int(value) > MAX_LABEL_VALUE:
            raise UsageError(f"field 'classes' value {int(value)} is above the largest class value {MAX_LABEL_VALUE}")
        classes.append(SegmentClass(name.strip(), int(value), default_color(i)))
    values = [c.value for c in classes]
    if len(set(values)) != len(values):
        raise UsageError(f"field 'classes' names a label value twice: {' '.join(specs)}")
    names = [c.name for c in classes]
    if len(set(names)) != len(names):
        raise UsageError(f"field 'classes' names a class twice: {' '.join(specs)}")
    return sorted(classes, key=lambda c: c.value)


def read_color_table(path: str | Path) -> list[SegmentClass]:
    """Read a Slicer colour table; value 0 is background.

    ``.ctbl``/``.txt``: ``value name r g b [a]`` per line, ``#`` comments. ``.csv`` (what Slicer writes since
    5.x): columns LabelValue, Name, Color_R/G/B in 0–255; names may hold spaces there.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read the colour table ({exc})", file=path) from exc
    if path.suffix.lower() == ".csv":
        return _sorted_unique(_csv_classes(text, path), str(path))
    classes = []
    for number, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        try:
            value, name, rgb = int(parts[0]), parts[1], [float(x) / 255 for x in parts[2:5]]
            if len(rgb) != 3 or value < 0:
                raise ValueError(line)
        except (ValueError, IndexError) as exc:
            raise DataError(f"line {number} is not 'value name r g b a': {line.strip()!r}", file=path) from exc
        if value > 0:
            classes.append(SegmentClass(name, value, (rgb[0], rgb[1], rgb[2])))
    return _sorted_unique(classes, str(path))


def _csv_classes(text: str, path: Path) -> list[SegmentClass]:
    """The classes of a Slicer ``.csv`` colour table."""
    import csv

    try:
        rows = list(csv.DictReader(text.splitlines()))
        classes = [
            SegmentClass(
                row["Name"],
                int(row["LabelValue"]),
                (float(row["Color_R"]) / 255, float(row["Color_G"]) / 255, float(row["Color_B"]) / 255),
            )
            for row in rows
            if int(row["LabelValue"]) > 0 and row["Name"]
        ]
    except (KeyError, ValueError, TypeError) as exc:
        raise DataError(
            f"not a Slicer .csv colour table (needs LabelValue, Name, Color_R/G/B: {exc})", file=path
        ) from exc
    return classes


def read_seg_nrrd_classes(path: str | Path) -> list[SegmentClass]:
    """The segments (name, label value, colour) of a Slicer ``.seg.nrrd`` header, via slicerio."""
    import slicerio

    try:
        segmentation = slicerio.read_segmentation(str(path), skip_voxels=True)
    except Exception as exc:  # slicerio/pynrrd raise assorted errors on foreign files
        raise DataError(f"cannot read the segmentation header ({type(exc).__name__}: {exc})", file=path) from exc
    segments = segmentation.get("segments", [])
    if any(int(s.get("layer", 0)) > 0 for s in segments):
        raise DataError("segments overlap (several layers); export a label map without overlaps", file=path)
    classes = [
        SegmentClass(
            str(s.get("name", s.get("id"))),
            int(s["labelValue"]),
            tuple(float(c) for c in s.get("color", default_color(i))),
        )
        for i, s in enumerate(segments)
    ]
    return _sorted_unique(classes, str(path))


def is_seg_nrrd(path: str | Path) -> bool:
    """Whether ``path`` names a Slicer segmentation file."""
    return str(path).lower().endswith(".seg.nrrd")


def class_table(
    classes: Sequence[str], color_table: str | None, labels: Sequence[sitk.Image], label_paths: Sequence[str]
) -> tuple[list[SegmentClass], str]:
    """The classes of a training run and where they came from.

    Precedence: ``--classes``, then ``--color-table``, then the first label's ``.seg.nrrd`` header, else one
    class per label value found in the labels (named ``label_N``).
    """
    if classes:
        return parse_classes(classes), "--classes"
    if color_table:
        return read_color_table(color_table), str(color_table)
    if label_paths and is_seg_nrrd(label_paths[0]):
        return read_seg_nrrd_classes(label_paths[0]), str(label_paths[0])
    values = sorted(set().union(*(label_values(lab) for lab in labels)) - {0})
    found = [SegmentClass(f"label_{v}", v, default_color(i)) for i, v in enumerate(values)]
    return _sorted_unique(found, str(label_paths[0]) if label_paths else "labels"), "label values"


def label_values(label: sitk.Image) -> set[int]:
    """The distinct values of a label image."""
    return {int(v) for v in np.unique(sitk.GetArrayViewFromImage(label))}


def _voxel_map(label: sitk.Image, image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Matrix and offset taking ``label`` voxel indices to ``image`` continuous voxel indices."""

    def index_to_physical(im: sitk.Image) -> np.ndarray:
        return np.asarray(im.GetDirection()).reshape(3, 3) * np.asarray(im.GetSpacing())

    to_image = np.linalg.inv(index_to_physical(image))
    offset = to_image @ (np.asarray(label.GetOrigin()) - np.asarray(image.GetOrigin()))
    return to_image @ index_to_physical(label), offset


def check_same_space(label: sitk.Image, image: sitk.Image, label_path: str | Path) -> None:
    """Raise unless every voxel of ``label`` sits on a voxel centre of ``image``, inside it, in physical space.

    The label may be a cropped block of the image's voxels or store its axes flipped or permuted (the array
    shapes differ, the physical grid is the same); other spacings, rotations or half-voxel shifts are refused.
    """
    matrix, offset = _voxel_map(label, image)
    rounded = np.round(matrix)
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)]) * (np.asarray(label.GetSize()) - 1)
    reach = corners @ matrix.T + offset
    problem = None
    if (
        not np.allclose(matrix, rounded, atol=SPACING_RTOL)
        or not np.array_equal(np.abs(rounded).sum(0), [1, 1, 1])
        or not np.array_equal(np.abs(rounded).sum(1), [1, 1, 1])
    ):
        problem = (
            f"voxel axes differ (spacing {_fmt(label.GetSpacing())} mm, direction {_fmt(label.GetDirection())}"
            f" vs the image's {_fmt(image.GetSpacing())} mm, {_fmt(image.GetDirection())})"
        )
    elif not np.allclose(offset, np.round(offset), atol=VOXEL_ATOL):
        problem = f"origin {_fmt(label.GetOrigin())} falls between the image's voxels"
    elif reach.min() < -VOXEL_ATOL or np.any(reach.max(0) > np.asarray(image.GetSize()) - 1 + VOXEL_ATOL):
        problem = (
            f"extent (image voxels {_fmt(reach.min(0))} to {_fmt(reach.max(0))}) leaves the image of size "
            f"{_fmt(image.GetSize())}"
        )
    if problem:
        raise DataError(
            f"label grid does not match its image in physical space: {problem}; resample the label onto its image",
            file=label_path,
        )


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def label_on_image_grid(label: sitk.Image, image: sitk.Image, label_path: str | Path) -> sitk.Image:
    """Check ``label`` against ``image`` (:func:`check_same_space`) and return it on the image's exact grid."""
    check_same_space(label, image, label_path)
    check_label_range(sitk.GetArrayViewFromImage(label), label_path)
    return sitk.Resample(
        sitk.Cast(label, sitk.sitkInt32), image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkInt32
    )


def label_pixel_type(max_value: int) -> tuple[type, int]:
    """The narrowest unsigned (numpy dtype, SimpleITK pixel type) that holds label values up to ``max_value``."""
    if max_value < 2**8:
        return np.uint8, sitk.sitkUInt8
    if max_value < 2**16:
        return np.uint16, sitk.sitkUInt16
    if max_value <= MAX_LABEL_VALUE:
        return np.uint32, sitk.sitkUInt32
    raise DataError(f"class value {max_value} is above the largest class value {MAX_LABEL_VALUE}")


def check_label_range(array: np.ndarray, label_path: str | Path) -> None:
    """Refuse values that an int32 label cannot hold, before any cast, naming the true value.

    Checked on the file's own dtype: a cast first would wrap 2**32 + 1 to 1 and train it as class 1.
    """
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)):
            raise DataError(
                "label holds NaN or infinite values; a label map must hold integer class values", file=label_path
            )
        if not np.array_equal(array, np.round(array)):
            raise DataError(
                "label holds non-integer values; a label map must hold integer class values", file=label_path
            )
    elif not np.issubdtype(array.dtype, np.integer) and array.dtype != np.bool_:
        raise DataError(
            f"label has pixel type {array.dtype}; a label map must hold integer class values", file=label_path
        )
    if array.size == 0:
        return
    low, high = array.min(), array.max()
    if low < 0:
        raise DataError(f"label holds the negative value {_exact(low)}; class values are >= 0", file=label_path)
    if high > MAX_LABEL_VALUE:
        raise DataError(
            f"label holds the value {_exact(high)}, above the largest class value {MAX_LABEL_VALUE}", file=label_path
        )


def _exact(value: np.generic) -> str:
    """A label value as written in the file (an integer when it is one, without wrap-around)."""
    number = value.item()
    return str(int(number)) if isinstance(number, float) and number.is_integer() else str(number)


def to_class_indices(label: np.ndarray, classes: Sequence[SegmentClass], label_path: str | Path) -> np.ndarray:
    """Map label values to channel indices (0 background, i for ``classes[i - 1]``) as uint8.

    Raises:
        DataError: a value outside the classes, or no foreground voxel at all.
    """
    index = np.zeros(label.shape, dtype=np.uint8)
    known = {0}
    for i, cls in enumerate(classes, 1):
        index[label == cls.value] = i
        known.add(cls.value)
    unknown = sorted({int(v) for v in np.unique(label)} - known)
    if unknown:
        names = ", ".join(f"{c.value} {c.name}" for c in classes)
        raise DataError(
            f"label value(s) {', '.join(map(str, unknown[:10]))} not among the classes ({names}); "
            "name them with --classes or a colour table",
            file=label_path,
        )
    if not index.any():
        raise DataError("label is empty (no voxel of any class)", file=label_path)
    return index
