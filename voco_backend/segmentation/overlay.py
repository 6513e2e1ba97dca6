"""PNG overlays of a few axial slices for a person to look at, in each class's own colour, with a legend.

The prediction is filled in its classes' colours (the colours Slicer shows: a ``.seg.nrrd`` header's, a colour
table's, or the model's), half transparent over the CT; a reference, when given, is outlined in the same colours,
so a class's fill and outline agree where prediction and reference agree. The legend names every class drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from voco_backend.atomic import atomic_path
from voco_backend.segmentation.labels import SegmentClass, default_color

DISPLAY_WINDOW = (-500.0, 500.0)
FILL_ALPHA = 0.45


def spread_slices(ref: np.ndarray | None, pred: np.ndarray, count: int) -> list[int]:
    """Up to ``count`` axial slices (z indices) spread evenly over the reference's extent (else the prediction's)."""
    mask = ref if ref is not None and (ref > 0).any() else pred
    occupied = np.flatnonzero((mask > 0).any(axis=(1, 2)))
    if occupied.size == 0:
        return [pred.shape[0] // 2]
    picks = np.linspace(0, occupied.size - 1, count + 2)[1:-1] if occupied.size > count else range(occupied.size)
    return sorted({int(occupied[round(i)]) for i in picks})


def classes_of(labels: Sequence[np.ndarray], classes: Sequence[SegmentClass] | None) -> list[SegmentClass]:
    """``classes``, or one palette-coloured ``label_N`` class per non-zero value found in ``labels``."""
    if classes is not None:
        return list(classes)
    values = sorted(set().union(*(np.unique(a).tolist() for a in labels)) - {0})
    return [SegmentClass(f"label_{v}", int(v), default_color(i)) for i, v in enumerate(values)]


def label_rgba(label: np.ndarray, classes: Sequence[SegmentClass], alpha: float = FILL_ALPHA) -> np.ndarray:
    """(H, W, 4) RGBA of a 2-D label slice: each class's value in its colour at ``alpha``, the rest transparent."""
    rgba = np.zeros((*label.shape, 4), dtype=np.float32)
    for cls in classes:
        where = label == cls.value
        rgba[where, :3] = cls.color
        rgba[where, 3] = alpha
    return rgba


def write_overlay(
    ref: sitk.Image | None,
    pred: sitk.Image,
    path: Path,
    title: str,
    image: sitk.Image | None = None,
    count: int = 3,
    classes: Sequence[SegmentClass] | None = None,
) -> Path:
    """Draw ``count`` slices of ``pred`` (filled) and ``ref`` (outlined, same grid) over ``image`` or grey.

    The labels are reoriented to LPS and ``image`` is resampled onto them, so that every slice is shown as Slicer's
    axial view shows it: anterior up, the patient's right on the left of the picture, whatever the files' axes.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    # Slicer's axial view: anterior up, the patient's right on the left (LPS index order: row = y, column = x).
    pred = sitk.DICOMOrient(pred, "LPS")
    ref = sitk.DICOMOrient(ref, "LPS") if ref is not None else None
    grid = ref if ref is not None else pred
    pred_array = sitk.GetArrayViewFromImage(pred)
    ref_array = sitk.GetArrayViewFromImage(ref) if ref is not None else None
    shown_classes = classes_of([a for a in (ref_array, pred_array) if a is not None], classes)
    background = None
    if image is not None:
        resampled = sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear, DISPLAY_WINDOW[0], sitk.sitkFloat32)
        background = sitk.GetArrayViewFromImage(resampled)
    slices = spread_slices(ref_array, pred_array, count)
    aspect = grid.GetSpacing()[1] / grid.GetSpacing()[0]
    figure, axes = plt.subplots(1, len(slices), figsize=(4 * len(slices), 5.2), squeeze=False)
    for axis, z in zip(axes[0], slices, strict=True):
        if background is not None:
            axis.imshow(
                background[z],
                cmap="gray",
                aspect=aspect,
                vmin=DISPLAY_WINDOW[0],
                vmax=DISPLAY_WINDOW[1],
                interpolation="nearest",
            )
        else:
            axis.imshow(np.full(pred_array[z].shape, 0.2), cmap="gray", aspect=aspect, vmin=0, vmax=1)
        axis.imshow(label_rgba(pred_array[z], shown_classes), aspect=aspect, interpolation="nearest")
        if ref_array is not None:
            for cls in shown_classes:
                mask = ref_array[z] == cls.value
                if mask.any():
                    axis.contour(mask, levels=[0.5], colors=[cls.color], linewidths=1.2)
        axis.set_title(f"z = {z}", fontsize=9)
        axis.axis("off")
    present = [
        c
        for c in shown_classes
        if (pred_array == c.value).any() or (ref_array is not None and (ref_array == c.value).any())
    ]
    figure.legend(
        handles=[Patch(facecolor=c.color, edgecolor=c.color, label=c.name) for c in present],
        loc="lower center",
        ncol=min(len(present), 4) or 1,
        fontsize=8,
        frameon=False,
    )
    how = "prediction filled, reference outlined" if ref is not None else "prediction"
    figure.suptitle(f"{title}: {how}", fontsize=10)
    figure.tight_layout(rect=(0, 0.12, 1, 1))
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=100, format="png")
    plt.close(figure)
    return path
