"""One fine-tuning run from its config: what the ``finetune`` command delegates to.

:func:`train` reads and checks the labelled cases (class table, validation split), picks the recipe (the
``--init`` encoder's recommended window/spacing unless given), builds and initialises the network, describes
the model (:class:`ModelInfo`) and runs a :class:`FineTuner` in the model folder: the same shape as pretraining's
``pretrain.loop.train`` and ``PretrainRun``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk
import torch
from torch import nn

from voco_backend.atomic import remove_orphans
from voco_backend.cancel import CancelToken
from voco_backend.cpu_memory import apply_cpu_allocator
from voco_backend.data.recipe import Recipe
from voco_backend.devices import resolve_device
from voco_backend.errors import UsageError
from voco_backend.memory_guard import StepShape, check_step_memory, estimated_as_half_precision
from voco_backend.networks import build_swinunetr, feature_size_of, use_channels_last
from voco_backend.protocol import Reporter
from voco_backend.resume import LAST_CHECKPOINT
from voco_backend.run_lock import run_folder_lock
from voco_backend.segmentation.finetune import FineTuner, Schedule
from voco_backend.segmentation.labels import SegmentClass, class_table
from voco_backend.segmentation.model_folder import MODEL_PT, ModelInfo
from voco_backend.segmentation.training_data import Case, LabelledImage, build_cases, read_labelled, split_cases

if TYPE_CHECKING:
    from voco_backend.commands.finetune import FinetuneConfig

DEFAULT_SPACING = (1.5, 1.5, 1.5)
DEFAULT_WINDOW = (-1000.0, 1000.0)
FOREGROUND_PERCENTILES = (0.5, 99.5)


def recipe_from_init(
    init: str, window: list[float] | None, spacing: list[float] | None
) -> tuple[tuple[float, float], tuple[float, float, float], str | None]:
    """The window and spacing of a fine-tuning run, and the log line when they come from ``init``.

    An official encoder (a catalogue entry, by name or by its file) carries the window and spacing it was
    pretrained with; fine-tuning from it in another window feeds it intensities it never saw. The user's
    ``--window``/``--spacing`` always win.
    """
    from voco_backend.catalogue import entry_of_file, get_entry, load_catalogue

    entry = None
    if init.lower() != "none":
        entry = get_entry(init) if init in {e.name for e in load_catalogue()} else entry_of_file(init)
    recommended = entry.recipe if entry is not None and entry.recipe else {}
    used = []
    if window is None and "window" in recommended:
        window = recommended["window"]
        used.append(f"window {window[0]:g}…{window[1]:g} HU")
    if spacing is None and "spacing" in recommended:
        spacing = recommended["spacing"]
        used.append("spacing " + "×".join(f"{s:g}" for s in spacing) + " mm")
    message = (
        f"{', '.join(used)}: recommended for {entry.name} (its pretraining); --window/--spacing override"
        if used
        else None
    )
    window = tuple(float(w) for w in window) if window is not None else DEFAULT_WINDOW
    spacing = tuple(float(s) for s in spacing) if spacing is not None else DEFAULT_SPACING
    return window, spacing, message


def _init_encoder(model: nn.Module, init: str, reporter: Reporter) -> dict:
    """Load the initial weights by the shared loading rule and report what loaded."""
    if init.lower() == "none":
        reporter.log("initialisation: none (training from scratch)")
        return {"source": "none", "summary": "from scratch"}
    from voco_backend.catalogue import resolve_model
    from voco_backend.weights import load_pretrained

    report = load_pretrained(model, resolve_model(init).weights)
    reporter.log(
        f"initialisation: {report.summary()}",
        loaded=len(report.loaded),
        missing=len(report.missing),
        shape_mismatch=len(report.shape_mismatch),
        unexpected=len(report.unexpected),
    )
    return {"source": init, "file": report.source, "summary": report.summary()}


def _check_memory(config: FinetuneConfig, model: nn.Module, device: torch.device) -> None:
    """Exit 4 with advice before the first step when its estimated peak does not fit (memory_guard)."""
    shape = StepShape(
        feature_size=feature_size_of(config.model_size),
        parameters=sum(p.numel() for p in model.parameters()),
        crops=config.batch_size,
        crop_voxels=config.roi**3,
        gradient_checkpointing=config.gradient_checkpointing,
        half_precision=estimated_as_half_precision(device, config.amp),
        decoder=True,
    )
    advice = "use a smaller --batch-size or --roi" + (
        "" if config.gradient_checkpointing else ", or --gradient-checkpointing"
    )
    check_step_memory(shape, device, 1, advice)


def read_pairs(config: FinetuneConfig, cancel: CancelToken) -> tuple[list[LabelledImage], list[LabelledImage]]:
    """The training and validation image/label pairs as read (each label checked against its image's grid)."""
    return read_labelled(config.images, config.labels, cancel), read_labelled(
        config.val_images, config.val_labels, cancel
    )


def foreground_window(pairs: list[LabelledImage]) -> tuple[float, float]:
    """The 0.5 and 99.5 percentiles of the HU under the training labels' foreground: nnU-Net's CT normalisation.

    nnU-Net clips CT to these percentiles of the foreground intensities of its training set (then z-scores);
    the window maps the same range linearly to [0, 1], which differs from it by an affine map only.
    """
    values = np.concatenate(
        [sitk.GetArrayViewFromImage(p.image)[sitk.GetArrayViewFromImage(p.label) > 0].astype(np.float64) for p in pairs]
    )
    low, high = (float(v) for v in np.percentile(values, FOREGROUND_PERCENTILES))
    if high <= low:  # a constant foreground: keep a 1 HU wide window around it
        low, high = low - 0.5, low + 0.5
    return low, high


def fov_spacing(images: list[sitk.Image], roi: int) -> tuple[float, float, float]:
    """The isotropic spacing at which ``roi`` voxels span the median field of view (``--spacing-from-fov``).

    A case's field of view is its largest physical extent. The spacing is never finer than the median of the
    images' finest native spacing: it does not invent resolution.
    """
    extent = float(np.median([max(n * s for n, s in zip(i.GetSize(), i.GetSpacing(), strict=True)) for i in images]))
    native = float(np.median([min(i.GetSpacing()) for i in images]))
    side = max(extent / roi, native)
    return (side, side, side)


def read_cases(
    config: FinetuneConfig,
    pairs: tuple[list[LabelledImage], list[LabelledImage]],
    recipe: Recipe,
    reporter: Reporter,
    cancel: CancelToken,
) -> tuple[list[SegmentClass], list[Case], list[Case]]:
    """The class table and the training and validation cases: ``--val-images``, else a held-back share, else
    (too few cases) the training cases themselves, with a warning."""
    train_pairs, val_pairs = pairs
    classes, class_source = class_table(
        config.classes, config.color_table, [p.label for p in train_pairs], config.labels
    )
    reporter.log(f"classes from {class_source}: " + ", ".join(f"{c.value} {c.name}" for c in classes))
    train_cases = build_cases(train_pairs, classes, recipe, cancel)
    val_cases = build_cases(val_pairs, classes, recipe, cancel)
    if not val_cases:
        train_cases, val_cases = split_cases(train_cases, config.val_fraction, config.seed)
    if not val_cases:
        val_cases = train_cases
        reporter.log(
            f"only {len(train_cases)} case(s): validating on the training case(s), so the validation "
            "Dice measures fit, not generalisation; give --val-images/--val-labels",
            level="warning",
        )
    return classes, train_cases, val_cases


def _check_folder(config: FinetuneConfig, folder: Path) -> None:
    """A run without --resume does not start over an earlier run's checkpoint."""
    if not config.resume and (folder / LAST_CHECKPOINT).exists():
        raise UsageError(
            "already holds a fine-tuning run: add --resume to continue it, or choose another --out", file=folder
        )


def train(config: FinetuneConfig, reporter: Reporter, cancel: CancelToken) -> dict:
    """Read and check the data, initialise the network and train; returns the result fields (the model folder)."""
    device = resolve_device(config.device)
    apply_cpu_allocator(config.cpu_allocator, device, reporter)
    folder = Path(config.out)
    _check_folder(config, folder)
    roi = (config.roi,) * 3
    window, spacing, recommended = recipe_from_init(config.init, config.window, config.spacing)
    if recommended:
        reporter.log(recommended)
    pairs = read_pairs(config, cancel)
    if config.window_from_labels:
        window = foreground_window(pairs[0])
        reporter.log(
            f"window {window[0]:.0f}…{window[1]:.0f} HU: the 0.5–99.5 percentiles of the training labels' "
            "foreground (--window-from-labels)"
        )
    if config.spacing_from_fov:
        spacing = fov_spacing([p.image for p in pairs[0]], config.roi)
        reporter.log(
            f"spacing {spacing[0]:.2f} mm: one {config.roi}³ crop spans the training images' median field of view "
            "(--spacing-from-fov)"
        )
    recipe = Recipe(spacing=spacing, window=window, min_size=roi)
    classes, train_cases, val_cases = read_cases(config, pairs, recipe, reporter, cancel)
    torch.manual_seed(config.seed)
    model = build_swinunetr(config.model_size, len(classes) + 1, gradient_checkpointing=config.gradient_checkpointing)
    init = _init_encoder(model, config.init, reporter) if not config.resume else {}
    model.to(device)
    use_channels_last(model, device)
    _check_memory(config, model, device)
    info = ModelInfo(
        name=config.name or folder.resolve().name,
        model_size=config.model_size,
        classes=classes,
        recipe=recipe,
        roi=roi,
        init=init,
        training={
            "train_cases": [c.name for c in train_cases],
            "val_cases": [c.name for c in val_cases],
            "device": str(device),
        },
    )
    with run_folder_lock(folder):
        _check_folder(config, folder)  # again, under the lock
        remove_orphans(folder)  # temporary files of a killed run
        tuner = FineTuner(model, info, folder, Schedule.from_config(config), device, train_cases, val_cases)
        if config.resume:
            tuner.resume()
            reporter.log(f"resumed at step {tuner.progress.step} of {config.steps}", step=tuner.progress.step)
        progress = tuner.run(reporter, cancel)
    return {
        "model": str(folder),
        "weights": str(folder / MODEL_PT),
        "steps": progress.step,
        "best_dice": progress.best_dice,
        "best_step": progress.best_step,
        "seconds": round(progress.seconds, 1),
    }
