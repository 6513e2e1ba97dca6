"""Segment a CT with a fine-tuned model folder or a catalogue segmentation network.

Examples::

    python -m voco_backend segment --model models/tumour --input ct.nii.gz --output ct_seg.nii.gz
    python -m voco_backend segment --model VoComni_B --input dicom_folder/ --output seg.seg.nrrd --tta

The image is preprocessed as the model was trained (model.json's recipe), segmented with sliding windows
(gaussian blending, fused attention, mixed precision per --precision) and the label map is written on the
input's exact grid (size, spacing, origin and direction of the input). ``--roi-box`` (RAS mm) and
``--body-crop`` segment only that part of the input: faster and smaller, the label map still on the full grid.
A .seg.nrrd output carries the segment names and colours. VoComni_* networks carry the 20 class names the
authors publish (spleen … lung cancer).
Each class's voxel count, volume (mL) and mean HU are in the result event (``statistics``) and in
``<output>.statistics.csv`` beside the label map.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from voco_backend.cancel import CancelToken
from voco_backend.config import check_choice, check_range, field
from voco_backend.cpu_memory import ALLOCATOR_HELP, CPU_ALLOCATORS
from voco_backend.data.io import IMAGE_SUFFIXES, has_image_suffix
from voco_backend.devices import DEVICES, PRECISIONS, resolve_device
from voco_backend.errors import DataError, UsageError
from voco_backend.protocol import Reporter
from voco_backend.segmentation.inference import INTERPOLATIONS


@dataclasses.dataclass
class SegmentConfig:
    """Configuration of ``segment``."""

    model: str = field(
        help="model folder (model.json + model.pt), registered model or catalogue name", metavar="MODEL_DIR|NAME"
    )
    input: list[str] = field(
        help="the CT(s): image files, DICOM series folders or list files (.txt: one path a line); several need "
        "--output-dir",
        metavar="CT",
    )
    output: str | None = field(
        None, help="label map to write (one input): .nii.gz, .nii, .nrrd, .mha or .seg.nrrd", metavar="LABEL"
    )
    output_dir: str | None = field(
        None, help="batch: write <name>_seg<--output-suffix> here for each input (one model load)", metavar="DIR"
    )
    output_suffix: str = field(".nii.gz", help="batch: the label maps' format, e.g. .nii.gz or .seg.nrrd")
    device: str = field("auto", help="auto, cpu or cuda", choices=list(DEVICES))
    overlap: float | None = field(
        None, help="sliding-window overlap in [0, 0.95] (default: the model's recommended, e.g. VoComni 0.75; else 0.5)"
    )
    blend: str | None = field(
        None,
        help="blending of overlapping windows: gaussian or constant (default: the model's, e.g. VoComni constant; "
        "else gaussian)",
        choices=["gaussian", "constant"],
    )
    tta: bool = field(False, help="test-time augmentation: average over flips of each axis (4x the time)")
    precision: str = field(
        "auto",
        help="autocast precision: auto (bf16 on CUDA and on a CPU with native bf16, else fp32), fp32, bf16 or fp16",
        choices=list(PRECISIONS),
    )
    interpolation: str = field(
        "linear",
        help="onto the input grid: linear (per-class probabilities, smooth) or nearest (argmax labels, cheaper)",
        choices=list(INTERPOLATIONS),
    )
    roi_box: list[float] | None = field(
        None,
        help="segment only this box, in RAS mm as Slicer shows coordinates (x0 y0 z0 x1 y1 z1, low corner then "
        "high; files store LPS: negate x and y of LPS points); the network also sees a quarter window around it; "
        "the label map stays on the input's full grid, background outside; in a batch the same box applies to each",
        nargs=6,
        metavar=("X0", "Y0", "Z0", "X1", "Y1", "Z1"),
    )
    body_crop: bool = field(
        False,
        help="segment only the body's box (above -500 HU: the largest component and any of 5 percent of its size, such "
        "as an arm apart; 10 mm margin); the label map stays on the input's full grid",
    )
    # Measured (benchmarks/segment_speed.py): retain is the fastest for inference, at the default's peak memory.
    cpu_allocator: str = field("retain", help=ALLOCATOR_HELP, choices=CPU_ALLOCATORS)
    flash_attention: bool = field(True, help="PyTorch fused attention in the Swin blocks (same result, faster)")

    def __post_init__(self) -> None:
        check_choice("device", self.device, DEVICES)
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("interpolation", self.interpolation, INTERPOLATIONS)
        check_choice("cpu_allocator", self.cpu_allocator, CPU_ALLOCATORS)
        if self.overlap is not None:
            check_range("overlap", self.overlap, 0.0, 0.95)
        if self.blend is not None:
            check_choice("blend", self.blend, ["gaussian", "constant"])
        if self.roi_box is not None:
            check_box("roi_box", self.roi_box)
        if (self.output is None) == (self.output_dir is None):
            raise UsageError("give either --output LABEL (one input) or --output-dir DIR (one or more inputs)")
        if self.output is not None and (len(self.input) != 1 or is_list_file(self.input[0])):
            raise UsageError("several inputs (or a list file) need --output-dir DIR instead of --output")
        for name, value in (("output", self.output), ("output_suffix", f"x{self.output_suffix}")):
            if value is not None and not has_image_suffix(Path(value)):
                raise UsageError(f"field '{name}' must end with .nii.gz, .nii, .nrrd, .seg.nrrd or .mha, got {value!r}")


def check_box(name: str, box: list[float]) -> None:
    """Refuse a box that is not 6 finite numbers with each low corner coordinate below the high one."""
    if len(box) != 6 or not all(math.isfinite(v) for v in box):
        raise UsageError(f"field '{name}' needs 6 finite numbers x0 y0 z0 x1 y1 z1 (RAS mm), got {box}")
    empty = [axis for axis, low, high in zip("xyz", box[:3], box[3:], strict=True) if not low < high]
    if empty:
        raise UsageError(
            f"field '{name}': the box {box} is empty or inverted along {', '.join(empty)}; give the low corner "
            "(x0 y0 z0) first, then the high one (x1 y1 z1), each coordinate larger than the first"
        )


LIST_SUFFIXES = (".txt", ".lst")


def is_list_file(path: str) -> bool:
    """Whether ``path`` names a list file (one CT path a line) rather than an image."""
    return Path(path).suffix.lower() in LIST_SUFFIXES and Path(path).is_file()


def expand_inputs(inputs: list[str]) -> list[str]:
    """The CTs of ``inputs``: list files replaced by their lines (relative to the list's folder; # comments)."""
    found: list[str] = []
    for item in inputs:
        if not is_list_file(item):
            found.append(item)
            continue
        for line in Path(item).read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                found.append(str(Path(item).parent / line) if not Path(line).is_absolute() else line)
    return found


def batch_output(input_path: str, folder: str, suffix: str, taken: set[str]) -> Path:
    """``folder/<name>_seg<suffix>`` for one input (its file or folder name, image suffix dropped; unique)."""
    name = Path(input_path.rstrip("/\\")).name
    for image_suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(image_suffix):
            name = name[: -len(image_suffix)]
            break
    candidate, n = f"{name}_seg", 1
    while candidate in taken:
        n += 1
        candidate = f"{name}_{n}_seg"
    taken.add(candidate)
    return Path(folder) / f"{candidate}{suffix}"


CONFIG = SegmentConfig


def run(config: SegmentConfig, reporter: Reporter, cancel: CancelToken) -> None:
    """Load the model and the CT, segment, write the label map and report it."""
    import time

    from voco_backend.cpu_memory import apply_cpu_allocator
    from voco_backend.data.io import read_image
    from voco_backend.segmentation.inference import Segmenter, window_settings
    from voco_backend.segmentation.model_folder import resolve_segmentation_model
    from voco_backend.segmentation.region import Region, segment_region
    from voco_backend.segmentation.statistics import label_statistics, statistics_path, write_statistics
    from voco_backend.segmentation.writers import write_label_map

    started = time.monotonic()
    device = resolve_device(config.device)
    apply_cpu_allocator(config.cpu_allocator, device, reporter)
    info, weights = resolve_segmentation_model(config.model)
    if info.note:
        reporter.log(f"{info.name}: {info.note}", level="warning")
    segmenter = Segmenter(info, weights, device, config.precision, config.flash_attention)
    reporter.log(f"model {info.name}: {segmenter.report.summary()}")
    overlap, blend, recommended = window_settings(info.init, config.overlap, config.blend)
    if recommended:
        reporter.log(
            f"sliding windows: overlap {overlap}, {blend} blending, as {info.name}'s authors run it "
            "(--overlap / --blend to change)"
        )
    if info.largest_component:
        reporter.log(
            f"post-processing: {', '.join(info.largest_component)} keep only their largest connected component "
            "(chosen on the model's validation cases, recorded in model.json)"
        )
    inputs = expand_inputs(config.input)
    if not inputs:
        raise UsageError(f"field 'input': the list file {config.input[0]} names no CT")
    taken: set[str] = set()
    if config.output_dir is not None:
        Path(config.output_dir).mkdir(parents=True, exist_ok=True)
        outputs = [batch_output(p, config.output_dir, config.output_suffix, taken) for p in inputs]
    else:
        outputs = [Path(str(config.output))]
    done: list[dict] = []
    failed: list[tuple[str, DataError]] = []
    for index, (input_path, output_path) in enumerate(zip(inputs, outputs, strict=True)):
        volume = {"volume": index + 1, "volumes": len(inputs)} if len(inputs) > 1 else {}
        try:
            image = read_image(input_path)
            region = segment_region(image, config.roi_box, config.body_crop, segmenter.context_margin_mm(image))
            if region is not None:
                whole = Region.whole(image).voxels
                reporter.log(
                    f"segmenting {region.labelled.voxels / whole:.0%} of the voxels "
                    f"(index {list(region.labelled.start)}, size {list(region.labelled.size)}), the network seeing "
                    f"{region.context.voxels / whole:.0%}",
                    **volume,
                )
            label = segmenter.segment(
                image,
                overlap=overlap,
                blend=blend,
                tta=config.tta,
                interpolation=config.interpolation,
                cancel=cancel,
                progress=lambda done_, total, v=volume: reporter.progress("segment", done_, total, **v),
                region=region,
            )
        except (DataError, UsageError) as exc:
            if len(inputs) == 1:
                raise
            failed.append((input_path, exc))
            reporter.log(f"{input_path}: {exc.message}; going on with the others", level="warning", input=input_path)
            continue
        cancel.check()
        path = write_label_map(label, output_path, info.classes)
        statistics = label_statistics(label, image, info.classes)
        csv_path = write_statistics(statistics, statistics_path(path))
        fields = dict(
            input=input_path,
            output=str(path),
            size=list(label.GetSize()),
            spacing=list(label.GetSpacing()),
            classes=[c.to_dict() for c in info.classes],
            statistics=statistics,
            statistics_csv=str(csv_path),
            seconds=round(time.monotonic() - started, 1),
        )
        done.append(fields)
        reporter.result(**fields, **volume)
    if len(inputs) > 1:
        reporter.result(
            outputs=[d["output"] for d in done],
            failed=[{"input": p, "message": e.message} for p, e in failed],
            classes=[c.to_dict() for c in info.classes],
            seconds=round(time.monotonic() - started, 1),
        )
    if failed:
        first, error = failed[0]
        raise DataError(f"{len(failed)} of {len(inputs)} volumes failed, the others are done: {error.message}", first)
