"""Sliding-window inference and restoring the label map onto the input's exact grid.

The network runs on the preprocessed volume (RAS, recipe spacing, foreground crop) with MONAI's
``sliding_window_inference`` and gaussian blending of per-window softmax probabilities. By default each class's
blended probability is then resampled (linear, in physical space) onto the input's grid one class at a time,
keeping a running maximum and its argmax: smooth boundaries, and full-resolution float data is never held for
more than two volumes, whatever the number of classes. ``nearest`` instead resamples the argmax label map (the
classic, cheaper way: staircase boundaries). Voxels outside the preprocessed region (cropped background) are
background, and so are those outside a requested region (:mod:`voco_backend.segmentation.region`). Last, the
classes ``model.json`` names keep only their largest connected component (:mod:`.postprocess`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from monai.inferers import sliding_window_inference
from torch import nn

from voco_backend.cancel import CancelToken
from voco_backend.data.io import from_array
from voco_backend.devices import autocast, resolve_precision
from voco_backend.errors import DataError
from voco_backend.networks import build_swinunetr, use_channels_last
from voco_backend.segmentation.labels import label_pixel_type
from voco_backend.segmentation.model_folder import ModelInfo
from voco_backend.segmentation.postprocess import keep_largest_component_image
from voco_backend.segmentation.preprocess import preprocess
from voco_backend.segmentation.region import SegmentRegion, context_margin_mm

INTERPOLATIONS: tuple[str, ...] = ("linear", "nearest")
TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (2,), (3,), (4,))
# Windows per forward pass. A GPU runs a few windows at once at little extra time per window, and 4 windows of a
# 96³ roi stay a small part of its memory; a CPU gains nothing from batching (its cores are already busy on one
# window) and each extra window only adds to the peak memory.
WINDOWS_PER_BATCH = {"cuda": 4, "cpu": 1}

ProgressFn = Callable[[int, int], None]


def count_windows(shape: Sequence[int], roi: Sequence[int], overlap: float) -> int:
    """How many windows ``sliding_window_inference`` visits (its scan rule, for progress reports)."""
    total = 1
    for size, r in zip(shape, roi, strict=True):
        size = max(size, r)
        interval = r if size == r else max(int(r * (1 - overlap)), 1)
        total *= math.ceil((size - r) / interval) + 1
    return total


DEFAULT_OVERLAP = 0.5
DEFAULT_BLEND = "gaussian"


def window_settings(info_init: dict, overlap: float | None, blend: str | None) -> tuple[float, str, bool]:
    """Sliding-window overlap and blending: the user's, else the model's recommended (a catalogue network's
    authors' recipe, e.g. VoComni 0.75 / constant), else 0.5 / gaussian. The flag says the model's were used."""
    recommended = (overlap is None and "overlap" in info_init) or (blend is None and "blend" in info_init)
    chosen_overlap = overlap if overlap is not None else float(info_init.get("overlap", DEFAULT_OVERLAP))
    chosen_blend = blend if blend is not None else str(info_init.get("blend", DEFAULT_BLEND))
    return chosen_overlap, chosen_blend, recommended


def sliding_window_probabilities(
    model: nn.Module,
    image: torch.Tensor,
    roi: Sequence[int],
    *,
    overlap: float,
    device: torch.device,
    dtype: torch.dtype | None = None,
    tta: bool = False,
    mode: str = "gaussian",
    cancel: CancelToken | None = None,
    progress: ProgressFn | None = None,
) -> torch.Tensor:
    """Blended softmax probabilities (C, X, Y, Z), float32 on the CPU, of ``model`` over a (1, X, Y, Z) image.

    Args:
        tta: average over flips of each spatial axis (4 passes per window).
        cancel: checked before every window.
        progress: called with (windows done, windows in all).
    """
    total = count_windows(image.shape[1:], roi, overlap)
    done = 0

    def predict(window: torch.Tensor) -> torch.Tensor:
        nonlocal done
        if cancel is not None:
            cancel.check()
        flips = TTA_FLIPS if tta else ((),)
        with autocast(device, dtype):
            probabilities = sum(
                torch.softmax(model(window.flip(dims)).float(), dim=1).flip(dims) for dims in flips
            ) / len(flips)
        done += window.shape[0]
        if progress is not None:
            progress(done, total)
        return probabilities

    batch = WINDOWS_PER_BATCH.get(device.type, 1)
    with torch.inference_mode():
        out = sliding_window_inference(
            torch.as_tensor(image)[None],
            roi,
            batch,
            predict,
            overlap=overlap,
            mode=mode,
            sw_device=device,
            device="cpu",
        )
    return torch.as_tensor(out)[0].float()


def restore_to_grid(
    probabilities: torch.Tensor,
    affine: np.ndarray,
    reference: sitk.Image,
    values: Sequence[int],
    interpolation: str = "linear",
) -> sitk.Image:
    """The label map on ``reference``'s exact grid from probabilities on the grid of ``affine`` (RAS).

    Args:
        probabilities: (C, X, Y, Z), channel 0 background.
        affine: voxel → RAS-mm affine of the probabilities' grid.
        reference: the input image; the output has its size, spacing, origin and direction.
        values: the label value written for each channel (``values[0]`` is 0).
        interpolation: ``linear`` (per-class probabilities) or ``nearest`` (the argmax label map).
    """
    dtype, pixel = label_pixel_type(max(values))
    if interpolation == "nearest":
        argmax = np.asarray(values, dtype=dtype)[probabilities.argmax(0).numpy()]
        moving = from_array(argmax, affine, pixel)
        return sitk.Resample(moving, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, pixel)
    label = np.zeros(tuple(reversed(reference.GetSize())), dtype=dtype)
    best: np.ndarray | None = None
    for channel, value in enumerate(values):
        moving = from_array(probabilities[channel].numpy(), affine, sitk.sitkFloat32)
        resampled = sitk.Resample(
            moving, reference, sitk.Transform(), sitk.sitkLinear, 1.0 if channel == 0 else 0.0, sitk.sitkFloat32
        )
        current = sitk.GetArrayViewFromImage(resampled)
        if best is None:
            best = current.copy()
            continue
        better = current > best
        label[better] = value
        np.maximum(best, current, out=best)
    out = sitk.GetImageFromArray(label)
    out.CopyInformation(reference)
    return out


class Segmenter:
    """A segmentation network ready to apply: architecture, weights, recipe and classes from a :class:`ModelInfo`.

    Args:
        info: the model's description.
        weights: its weights file (``model.pt`` or a catalogue checkpoint).
        device: where the network runs.
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16`` autocast.
        flash_attention: PyTorch's fused attention in the Swin blocks (same weights, faster).
    """

    def __init__(
        self,
        info: ModelInfo,
        weights: Path,
        device: torch.device,
        precision: str = "auto",
        flash_attention: bool = True,
    ) -> None:
        from voco_backend.weights import load_pretrained

        self.info = info
        self.device = device
        self.dtype = resolve_precision(precision, device)
        self.model = build_swinunetr(
            info.model_size, info.out_channels, flash_attention=flash_attention, merge_order=info.merge_order
        )
        self.report = load_pretrained(self.model, weights, require=("swinViT", "out"))
        if self.report.missing or self.report.shape_mismatch:
            raise DataError(
                f"weights do not fit the model described in model.json: {self.report.summary()}", file=weights
            )
        self.model.to(device).eval()
        use_channels_last(self.model, device)

    def probabilities(
        self,
        image: sitk.Image,
        *,
        overlap: float,
        tta: bool = False,
        blend: str = DEFAULT_BLEND,
        cancel: CancelToken | None = None,
        progress: ProgressFn | None = None,
    ) -> tuple[torch.Tensor, np.ndarray]:
        """Preprocess ``image`` and return the blended probabilities with the affine of their grid."""
        data = preprocess(self.info.recipe, image)
        probabilities = sliding_window_probabilities(
            self.model,
            data["image"],
            self.info.roi,
            overlap=overlap,
            device=self.device,
            dtype=self.dtype,
            tta=tta,
            mode=blend,
            cancel=cancel,
            progress=progress,
        )
        return probabilities, np.asarray(data["image"].affine, dtype=np.float64)

    def segment(
        self,
        image: sitk.Image,
        *,
        overlap: float,
        tta: bool = False,
        interpolation: str = "linear",
        blend: str = DEFAULT_BLEND,
        cancel: CancelToken | None = None,
        progress: ProgressFn | None = None,
        region: SegmentRegion | None = None,
        postprocess: bool = True,
    ) -> sitk.Image:
        """The label map of ``image`` (label values of the classes) on ``image``'s exact grid.

        Args:
            region: label only ``region.labelled``, the network seeing ``region.context``; background elsewhere.
            postprocess: apply the model's post-processing (``model.json``'s classes that keep their largest
                connected component); False: the network's label map as predicted.
        """
        seen = image if region is None else region.context.extract(image)
        probabilities, affine = self.probabilities(
            seen, overlap=overlap, tta=tta, blend=blend, cancel=cancel, progress=progress
        )
        values = [0] + [c.value for c in self.info.classes]
        largest = self.info.largest_component_values if postprocess else []
        if region is None:
            return keep_largest_component_image(
                restore_to_grid(probabilities, affine, image, values, interpolation), largest
            )
        part = restore_to_grid(probabilities, affine, region.labelled.extract(image), values, interpolation)
        return region.labelled.paste(keep_largest_component_image(part, largest), image)

    def context_margin_mm(self, image: sitk.Image) -> float:
        """A quarter of a sliding window's extent in mm at the recipe spacing (the image's own when it has none)."""
        return context_margin_mm(self.info.roi, self.info.recipe.spacing or image.GetSpacing())
