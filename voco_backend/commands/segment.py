"""Segment a CT with a fine-tuned model folder or a catalogue segmentation network.

Examples::

    python -m voco_backend segment --model models/tumour --input ct.nii.gz --output ct_seg.nii.gz
    python -m voco_backend segment --model VoComni_B --input dicom_folder/ --output seg.seg.nrrd --tta

The image is preprocessed as the model was trained (model.json's recipe), segmented with sliding windows
(gaussian blending, fused attention, mixed precision per --precision) and the label map is written on the
input's exact grid (size, spacing, origin and direction of the input). A .seg.nrrd output carries the segment
names and colours. Each class's voxel count, volume (mL) and mean HU are in the result event (``statistics``) and
in ``<output>.statistics.csv`` beside the label map. VoComni_* networks have 20 classes whose names the authors
did not publish: they are named class_1 … class_20 by label value.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from voco_backend.cancel import CancelToken
from voco_backend.config import check_choice, check_range, field
from voco_backend.cpu_memory import ALLOCATOR_HELP, CPU_ALLOCATORS
from voco_backend.data.io import has_image_suffix
from voco_backend.errors import UsageError
from voco_backend.protocol import Reporter
from voco_backend.segmentation.inference import INTERPOLATIONS, PRECISIONS

DEVICES = ["auto", "cpu", "cuda"]


@dataclasses.dataclass
class SegmentConfig:
    """Configuration of ``segment``."""

    model: str = field(
        help="model folder (model.json + model.pt), registered model or catalogue name", metavar="MODEL_DIR|NAME"
    )
    input: str = field(help="the CT: an image file or a DICOM series folder", metavar="CT")
    output: str = field(help="label map to write: .nii.gz, .nii, .nrrd, .mha or .seg.nrrd", metavar="LABEL")
    device: str = field("auto", help="auto, cpu or cuda", choices=DEVICES)
    overlap: float = field(0.5, help="sliding-window overlap in [0, 1)")
    tta: bool = field(False, help="test-time augmentation: average over flips of each axis (4x the time)")
    precision: str = field(
        "auto",
        help="autocast precision: auto (bf16 on CUDA and on CPU, measured), fp32, bf16 or fp16",
        choices=list(PRECISIONS),
    )
    interpolation: str = field(
        "linear",
        help="onto the input grid: linear (per-class probabilities, smooth) or nearest (argmax labels, cheaper)",
        choices=list(INTERPOLATIONS),
    )
    # Measured (benchmarks/segment_speed.py): retain is the fastest for inference, at the default's peak memory.
    cpu_allocator: str = field("retain", help=ALLOCATOR_HELP, choices=CPU_ALLOCATORS)
    flash_attention: bool = field(True, help="PyTorch fused attention in the Swin blocks (same result, faster)")

    def __post_init__(self) -> None:
        check_choice("device", self.device, DEVICES)
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("interpolation", self.interpolation, INTERPOLATIONS)
        check_choice("cpu_allocator", self.cpu_allocator, CPU_ALLOCATORS)
        check_range("overlap", self.overlap, 0.0, 0.95)
        if not has_image_suffix(Path(self.output)):
            raise UsageError(
                f"field 'output' must end with .nii.gz, .nii, .nrrd, .seg.nrrd or .mha, got {self.output!r}"
            )


CONFIG = SegmentConfig


def run(config: SegmentConfig, reporter: Reporter, cancel: CancelToken) -> None:
    """Load the model and the CT, segment, write the label map and report it."""
    import time

    from voco_backend.cpu_memory import apply_cpu_allocator
    from voco_backend.data.io import read_image
    from voco_backend.distributed import resolve_device
    from voco_backend.segmentation.inference import Segmenter
    from voco_backend.segmentation.model_folder import resolve_segmentation_model
    from voco_backend.segmentation.statistics import label_statistics, statistics_path, write_statistics
    from voco_backend.segmentation.writers import write_label_map

    started = time.monotonic()
    device = resolve_device(config.device)
    apply_cpu_allocator(config.cpu_allocator, device, reporter)
    info, weights = resolve_segmentation_model(config.model)
    if info.init.get("note"):
        reporter.log(f"{info.name}: {info.init['note']}", level="warning")
    segmenter = Segmenter(info, weights, device, config.precision, config.flash_attention)
    reporter.log(f"model {info.name}: {segmenter.report.summary()}")
    image = read_image(config.input)
    label = segmenter.segment(
        image,
        overlap=config.overlap,
        tta=config.tta,
        interpolation=config.interpolation,
        cancel=cancel,
        progress=lambda done, total: reporter.progress("segment", done, total),
    )
    cancel.check()
    path = write_label_map(label, config.output, info.classes)
    statistics = label_statistics(label, image, info.classes)
    csv_path = write_statistics(statistics, statistics_path(path))
    reporter.result(
        output=str(path),
        size=list(label.GetSize()),
        spacing=list(label.GetSpacing()),
        classes=[c.to_dict() for c in info.classes],
        statistics=statistics,
        statistics_csv=str(csv_path),
        seconds=round(time.monotonic() - started, 1),
    )
