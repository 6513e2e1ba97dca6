"""Dice, 95% Hausdorff distance and surface Dice per class between predictions and references (MONAI metrics).

A prediction may lie on another grid than its reference: it is resampled onto the reference grid in physical
space (nearest neighbour) first. Metrics are computed one class at a time on binary masks, so memory does not
grow with the number of classes.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice

from voco_backend.atomic import write_text_atomic
from voco_backend.data.io import dicom_series_files, has_image_suffix, read_image
from voco_backend.errors import DataError, UsageError
from voco_backend.segmentation.labels import SegmentClass, label_values
from voco_backend.segmentation.training_data import case_name

CSV_FIELDS = ("case", "class", "value", "dice", "hd95_mm", "surface_dice", "ref_voxels", "pred_voxels")


def match_pairs(pred: str | Path, ref: str | Path) -> list[tuple[str, Path, Path]]:
    """(case, prediction, reference) triples: two files, or two folders whose label files match by name."""
    pred, ref = Path(pred), Path(ref)
    for path in (pred, ref):
        if not path.exists():
            raise DataError("no such file or folder", file=path)
    if pred.is_dir() != ref.is_dir():
        raise UsageError("fields 'pred' and 'ref' must both be files or both be folders")
    if not pred.is_dir():
        return [(case_name(ref), pred, ref)]
    preds = {case_name(p): p for p in sorted(pred.iterdir()) if has_image_suffix(p)}
    refs = {case_name(p): p for p in sorted(ref.iterdir()) if has_image_suffix(p)}
    missing = sorted(set(refs) - set(preds))
    if missing:
        raise DataError(f"no prediction for reference(s) {', '.join(missing[:5])}", file=pred)
    if not refs:
        raise DataError("folder holds no label files", file=ref)
    return [(name, preds[name], refs[name]) for name in refs]


def match_images(images: str | Path, cases: Sequence[str]) -> dict[str, Path]:
    """The CT under each case's overlay: one file for all cases, or a folder's files (or DICOM folders) by name."""
    images = Path(images)
    if not images.exists():
        raise DataError("no such file or folder", file=images)
    if not images.is_dir() or dicom_series_files(images):
        return dict.fromkeys(cases, images)
    found = {case_name(p): p for p in sorted(images.iterdir()) if has_image_suffix(p) or p.is_dir()}
    return {name: found[name] for name in cases if name in found}


def on_reference_grid(pred: sitk.Image, ref: sitk.Image) -> sitk.Image:
    """``pred`` resampled onto ``ref``'s grid in physical space (nearest neighbour; outside → 0)."""
    return sitk.Resample(pred, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkInt32)


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def class_metrics(
    pred: np.ndarray, ref: np.ndarray, spacing_zyx: Sequence[float], tolerance_mm: float
) -> dict[str, Any]:
    """Dice, HD95 (mm) and surface Dice of two binary masks; ``None`` where a metric is undefined (empty mask)."""
    y_pred = torch.as_tensor(pred)[None, None].float()
    y = torch.as_tensor(ref)[None, None].float()
    counts = {"ref_voxels": int(ref.sum()), "pred_voxels": int(pred.sum())}
    if counts["ref_voxels"] == 0 and counts["pred_voxels"] == 0:
        return {"dice": None, "hd95_mm": None, "surface_dice": None, **counts}
    dice = float(compute_dice(y_pred, y, include_background=True, ignore_empty=False)[0, 0])
    if counts["ref_voxels"] == 0 or counts["pred_voxels"] == 0:
        return {"dice": dice, "hd95_mm": None, "surface_dice": 0.0, **counts}
    spacing = [float(s) for s in spacing_zyx]
    hd95 = float(compute_hausdorff_distance(y_pred, y, include_background=True, percentile=95, spacing=spacing)[0, 0])
    surface = float(
        compute_surface_dice(y_pred, y, class_thresholds=[tolerance_mm], include_background=True, spacing=spacing)[0, 0]
    )
    return {"dice": dice, "hd95_mm": _finite(hd95), "surface_dice": _finite(surface), **counts}


def evaluate_pair(
    pred_path: Path, ref_path: Path, classes: Sequence[SegmentClass] | None, tolerance_mm: float
) -> tuple[dict[str, dict[str, Any]], sitk.Image, sitk.Image]:
    """Per-class metrics of one pair, with the reference and the prediction on its grid.

    Without ``classes``, every non-zero value found in either label is a class named ``label_N``.
    """
    ref = read_image(ref_path)
    pred = on_reference_grid(read_image(pred_path), ref)
    if classes is None:
        values = sorted((label_values(ref) | label_values(pred)) - {0})
        classes = [SegmentClass(f"label_{v}", v, (0.0, 0.0, 0.0)) for v in values]
    pred_array = sitk.GetArrayViewFromImage(pred)
    ref_array = sitk.GetArrayViewFromImage(ref)
    spacing_zyx = tuple(reversed(ref.GetSpacing()))
    results = {
        c.name: {
            "value": c.value,
            **class_metrics(pred_array == c.value, ref_array == c.value, spacing_zyx, tolerance_mm),
        }
        for c in classes
    }
    return results, ref, pred


def summarise(cases: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, float | None]]:
    """Mean of each metric per class over the cases where it is defined."""
    names = dict.fromkeys(name for per_class in cases.values() for name in per_class)
    summary = {}
    for name in names:
        defined = {
            m: [c[name][m] for c in cases.values() if c.get(name, {}).get(m) is not None]
            for m in ("dice", "hd95_mm", "surface_dice")
        }
        summary[name] = {m: float(np.mean(v)) if v else None for m, v in defined.items()}
    return summary


def write_report(report: dict[str, Any], path: Path) -> tuple[Path, Path]:
    """Write the JSON report and a CSV of one row per (case, class) beside it, atomically."""
    write_text_atomic(path, json.dumps(report, indent=2) + "\n")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for case, per_class in report["cases"].items():
        for name, metrics in per_class.items():
            writer.writerow({"case": case, "class": name, **{k: metrics[k] for k in CSV_FIELDS[2:]}})
    csv_path = path.with_suffix(".csv")
    write_text_atomic(csv_path, buffer.getvalue())
    return path, csv_path
