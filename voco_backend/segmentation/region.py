"""The part of the input a segment run labels: a physical box (``--roi-box``) and/or the body (``--body-crop``).

The network runs on that part plus a context margin, and the label map is still written on the input's full
grid, background outside the part: the time and memory of a run follow the region, not the scan.

Coordinates of ``--roi-box`` are RAS millimetres (what Slicer shows and its ROI markups hold). Image files store
LPS (ITK), so a box is turned into LPS before it meets the grid. A voxel belongs to the box when its centre lies
in it; on an oblique grid the voxels labelled are the grid-aligned box around the physical box.

The recipe's own foreground crop (windowed values above ``foreground_threshold``, i.e. HU above the window's low
end) still runs inside the part. On real CT it removes little: air noise lies above -1000 HU, so a -1000..1000
window keeps the whole field of view, and a -175..250 window keeps the table. The body crop thresholds at
-500 HU and keeps the largest connected component and those of at least 5% of its size (a separate arm), which
drops the air, the table, the noise and small objects before the recipe is applied.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

from voco_backend.data.io import LPS_TO_RAS
from voco_backend.errors import UsageError

BODY_THRESHOLD_HU = -500.0
# Components kept besides the largest (the trunk): those of at least this share of its volume. The largest alone
# is not enough: an arm lying apart from the trunk is its own component (TotalSegmentator's DICOM example: 7% of
# the trunk, the humerus labelled in it). Smaller ones are the table (2-4% in slicerio's chest and that DICOM),
# edge artefacts, cables and noise.
BODY_MIN_SHARE = 0.05
# Around the body's box: the skin's partial-volume voxels and the windows' blending at the body's edge.
BODY_MARGIN_MM = 10.0


@dataclasses.dataclass(frozen=True)
class Region:
    """A box of voxels of an image: its first index and size, both (i, j, k) in SimpleITK's order."""

    start: tuple[int, int, int]
    size: tuple[int, int, int]

    @property
    def stop(self) -> tuple[int, int, int]:
        """One past the last index on each axis."""
        return tuple(s + n for s, n in zip(self.start, self.size, strict=True))

    @property
    def voxels(self) -> int:
        """How many voxels the region holds."""
        return math.prod(self.size)

    @classmethod
    def spanning(cls, first: Sequence[int], last: Sequence[int]) -> Region | None:
        """The region from index ``first`` to ``last`` inclusive; None if it is empty on some axis."""
        if any(b < a for a, b in zip(first, last, strict=True)):
            return None
        return cls(tuple(int(a) for a in first), tuple(int(b - a + 1) for a, b in zip(first, last, strict=True)))

    @classmethod
    def whole(cls, image: sitk.Image) -> Region:
        """Every voxel of ``image``."""
        return cls((0, 0, 0), tuple(image.GetSize()))

    def intersect(self, other: Region) -> Region | None:
        """The voxels in both regions; None if they do not overlap."""
        first = [max(a, b) for a, b in zip(self.start, other.start, strict=True)]
        last = [min(a, b) - 1 for a, b in zip(self.stop, other.stop, strict=True)]
        return Region.spanning(first, last)

    def grow(self, image: sitk.Image, margin_mm: float) -> Region:
        """This region widened by ``margin_mm`` on every side, within ``image``."""
        steps = [math.ceil(margin_mm / s) for s in image.GetSpacing()]
        first = [max(a - m, 0) for a, m in zip(self.start, steps, strict=True)]
        last = [min(b - 1 + m, n - 1) for b, m, n in zip(self.stop, steps, image.GetSize(), strict=True)]
        return Region(tuple(first), tuple(b - a + 1 for a, b in zip(first, last, strict=True)))

    def extract(self, image: sitk.Image) -> sitk.Image:
        """The region's voxels as an image in the same physical place."""
        return sitk.RegionOfInterest(image, list(self.size), list(self.start))

    def paste(self, part: sitk.Image, reference: sitk.Image) -> sitk.Image:
        """``part`` (on this region's grid) on ``reference``'s full grid, zeros elsewhere."""
        full = sitk.Image(reference.GetSize(), part.GetPixelID())
        full.CopyInformation(reference)
        return sitk.Paste(full, part, part.GetSize(), [0, 0, 0], list(self.start))


@dataclasses.dataclass(frozen=True)
class SegmentRegion:
    """What a run labels (``labelled``) and what the network sees (``context``: ``labelled`` and a margin)."""

    labelled: Region
    context: Region


def ras_box_to_lps(box: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """The low and high LPS corners of a RAS box ``(x0, y0, z0, x1, y1, z1)``."""
    low, high = np.asarray(box[:3], dtype=np.float64), np.asarray(box[3:], dtype=np.float64)
    flip = np.diag(LPS_TO_RAS)[:3]
    corners = np.stack([low * flip, high * flip])
    return corners.min(0), corners.max(0)


def box_region(image: sitk.Image, box: Sequence[float]) -> Region | None:
    """The voxels of ``image`` whose centres lie in the RAS box ``(x0, y0, z0, x1, y1, z1)``; None if none do."""
    low, high = ras_box_to_lps(box)
    corners = [
        image.TransformPhysicalPointToContinuousIndex([float(c) for c in (x, y, z)])
        for x in (low[0], high[0])
        for y in (low[1], high[1])
        for z in (low[2], high[2])
    ]
    index = np.asarray(corners)
    first = np.maximum(np.ceil(index.min(0) - 1e-6), 0).astype(int)
    last = np.minimum(np.floor(index.max(0) + 1e-6), np.asarray(image.GetSize()) - 1).astype(int)
    return Region.spanning(first, last)


def image_extent_ras(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """The low and high RAS corners of the box around ``image``'s voxel centres (for error messages)."""
    size = np.asarray(image.GetSize()) - 1
    corners = [
        image.TransformContinuousIndexToPhysicalPoint([float(i * size[0]), float(j * size[1]), float(k * size[2])])
        for i in (0, 1)
        for j in (0, 1)
        for k in (0, 1)
    ]
    ras = np.asarray(corners) * np.diag(LPS_TO_RAS)[:3]
    return ras.min(0), ras.max(0)


def body_region(image: sitk.Image) -> Region | None:
    """The box around the body: voxels above -500 HU in the largest connected component and those of at least 5%
    of its size (a separate arm); None if no voxel is above -500 HU."""
    components = sitk.ConnectedComponent(sitk.Cast(image > BODY_THRESHOLD_HU, sitk.sitkUInt8))
    shapes = sitk.LabelShapeStatisticsImageFilter()
    shapes.Execute(components)
    if not shapes.GetLabels():
        return None
    largest = max(shapes.GetNumberOfPixels(c) for c in shapes.GetLabels())
    kept = [c for c in shapes.GetLabels() if shapes.GetNumberOfPixels(c) >= BODY_MIN_SHARE * largest]
    boxes = [shapes.GetBoundingBox(c) for c in kept]
    first = np.min([b[:3] for b in boxes], axis=0)
    last = np.max([np.add(b[:3], b[3:]) - 1 for b in boxes], axis=0)
    return Region.spanning(first, last)


def context_margin_mm(roi: Sequence[int], spacing: Sequence[float]) -> float:
    """A quarter of a sliding window's extent (mm): the context a full run guarantees every voxel.

    With the default overlap of 0.5, every voxel not at the image's border lies at least a quarter window inside
    some window; with this margin around a box (the crop's windows overlapping as much), every voxel of the box
    does too.

    Args:
        roi: the window in voxels.
        spacing: the recipe spacing (the voxels the window counts).
    """
    return 0.25 * max(r * s for r, s in zip(roi, spacing, strict=True))


def segment_region(
    image: sitk.Image, roi_box: Sequence[float] | None, body_crop: bool, context_mm: float
) -> SegmentRegion | None:
    """The part of ``image`` to label and the part the network sees; None for the whole image.

    Args:
        roi_box: RAS box ``(x0, y0, z0, x1, y1, z1)`` in mm, or None.
        body_crop: also keep to the body's box (the whole image when no voxel is above -500 HU).
        context_mm: the margin around ``roi_box`` the network sees (:func:`context_margin_mm`).

    Raises:
        UsageError: the box holds no voxel centre of the image, or (with ``body_crop``) none of the body.
    """
    labelled = context = None
    if roi_box is not None:
        labelled = box_region(image, roi_box)
        if labelled is None:
            low, high = image_extent_ras(image)
            raise UsageError(
                f"field 'roi_box': the box {_corners(roi_box[:3], roi_box[3:])} misses the image, whose voxel "
                f"centres span {_corners(low, high)} (RAS mm); give a box that overlaps it"
            )
        context = labelled.grow(image, context_mm)
    if body_crop:
        body = body_region(image)
        if body is not None:
            body = body.grow(image, BODY_MARGIN_MM)
            labelled = body if labelled is None else labelled.intersect(body)
            context = body if context is None else context.intersect(body)
            if labelled is None or context is None:
                raise UsageError(
                    f"field 'roi_box': the box holds none of the body (voxels above {BODY_THRESHOLD_HU:g} HU); "
                    "move the box or leave out --body-crop"
                )
    if labelled is None or context is None:
        return None
    return SegmentRegion(labelled, context)


def _corners(low: Sequence[float], high: Sequence[float]) -> str:
    """``(x0, y0, z0)..(x1, y1, z1)`` rounded to 0.1 mm."""
    return f"({', '.join(f'{v:.1f}' for v in low)})..({', '.join(f'{v:.1f}' for v in high)})"
