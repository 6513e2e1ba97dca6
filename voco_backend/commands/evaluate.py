"""Dice, 95% Hausdorff distance and surface Dice per class between predictions and references.

Examples::

    python -m voco_backend evaluate --pred ct_seg.nii.gz --ref ct_manual.nii.gz --out eval/report.json
    python -m voco_backend evaluate --pred preds/ --ref refs/ --out eval/report.json --images cts/

--pred and --ref are two label files, or two folders whose files are paired by name. A prediction on another
grid is resampled onto its reference in physical space (nearest neighbour). --out writes REPORT.json, a CSV
beside it (one row per case and class) and one PNG per case of a few slices (prediction filled and reference
outlined in each class's colour, with a legend of class names, over the CT when --images is given). Without
--out the figures are only reported.
Classes: --classes or --color-table, else the segments named in a .seg.nrrd reference (or prediction), else
every label value found (``label_N``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from voco_backend.cancel import CancelToken
from voco_backend.config import check_range, field
from voco_backend.errors import UsageError
from voco_backend.protocol import Reporter


@dataclasses.dataclass
class EvaluateConfig:
    """Configuration of ``evaluate``."""

    pred: str = field(help="predicted label map, or a folder of them", metavar="P")
    ref: str = field(help="reference label map, or a folder of them paired with --pred by name", metavar="R")
    out: str | None = field(
        None, help="report JSON to write (a CSV and PNG overlays go beside it)", metavar="REPORT.json"
    )
    classes: list[str] = field(
        [], help="class names and label values to evaluate (default: all values found)", metavar="NAME=VALUE"
    )
    color_table: str | None = field(None, help="Slicer colour table naming the label values", metavar="FILE")
    tolerance: float = field(2.0, help="surface Dice tolerance in mm")
    images: str | None = field(
        None,
        help="the CT drawn under the overlays: one file or DICOM folder, or a folder of CTs named as the labels",
        metavar="CT",
    )
    overlay_slices: int = field(3, help="axial slices per overlay PNG (0: no PNG)")

    def __post_init__(self) -> None:
        check_range("tolerance", self.tolerance, low=0.0)
        check_range("overlay_slices", self.overlay_slices, 0, 12)
        if self.classes and self.color_table:
            raise UsageError("give either field 'classes' or field 'color_table', not both")
        if self.out is not None and not self.out.lower().endswith(".json"):
            raise UsageError(f"field 'out' must name a .json file, got {self.out!r}")


CONFIG = EvaluateConfig


def run(config: EvaluateConfig, reporter: Reporter, cancel: CancelToken) -> None:
    """Evaluate each pair, write the report files and report the figures."""
    from voco_backend.data.io import read_image
    from voco_backend.segmentation.evaluation import (
        evaluate_pair,
        match_images,
        match_pairs,
        summarise,
        write_report,
    )
    from voco_backend.segmentation.labels import is_seg_nrrd, parse_classes, read_color_table, read_seg_nrrd_classes
    from voco_backend.segmentation.overlay import write_overlay

    classes = (
        parse_classes(config.classes)
        if config.classes
        else (read_color_table(config.color_table) if config.color_table else None)
    )
    pairs = match_pairs(config.pred, config.ref)
    if classes is None:  # a Slicer segmentation names its segments: the reference's first, else the prediction's
        named = [path for _, pred_path, ref_path in pairs[:1] for path in (ref_path, pred_path) if is_seg_nrrd(path)]
        classes = read_seg_nrrd_classes(named[0]) if named else None
    images = match_images(config.images, [name for name, _, _ in pairs]) if config.images else {}
    out = Path(config.out) if config.out else None
    cases, overlays = {}, []
    for i, (name, pred_path, ref_path) in enumerate(pairs):
        cancel.check()
        reporter.progress("evaluate", i, len(pairs), case=name)
        cases[name], ref, pred = evaluate_pair(pred_path, ref_path, classes, config.tolerance)
        if out is not None and config.overlay_slices:
            ct = read_image(images[name]) if name in images else None
            png = out.with_name(f"{out.stem}_{name}.png")
            overlays.append(str(write_overlay(ref, pred, png, name, ct, config.overlay_slices, classes)))
    reporter.progress("evaluate", len(pairs), len(pairs))
    report = {
        "tolerance_mm": config.tolerance,
        "mean": summarise(cases),
        "cases": cases,
        "pairs": {name: {"pred": str(p), "ref": str(r)} for name, p, r in pairs},
    }
    files = {}
    if out is not None:
        json_path, csv_path = write_report(report, out)
        files = {"report": str(json_path), "csv": str(csv_path), "overlays": overlays}
    reporter.result(mean=report["mean"], cases=cases, **files)
