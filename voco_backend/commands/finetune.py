"""Few-shot fine-tuning of a SwinUNETR-v2 segmentation network from VoCo weights.

Examples::

    python -m voco_backend finetune --images a.nii.gz b.nii.gz --labels a_seg.nii.gz b_seg.nii.gz \\
        --classes tumour=1 --out models/tumour --init runs/voco_b/encoder.pt --steps 400
    python -m voco_backend finetune --images ct.nrrd --labels ct.seg.nrrd --out models/chest --init VoCo_B_SSL_head
    python -m voco_backend finetune ... --out models/tumour --steps 800 --resume

Labels are integer label maps on their image's physical grid; their values are named by --classes, a Slicer
colour table (--color-table), the .seg.nrrd header, or else by the values found. Validation uses --val-images/
--val-labels, else a held-back share of the cases (--val-fraction), else (too few cases) the training cases.
MODEL_DIR receives model.pt (weights of the best validation Dice), model.json (classes, recipe, roi,
architecture, init source, training figures) and checkpoint_last.pt (resumable).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import TYPE_CHECKING

from voco_backend.atomic import remove_orphans
from voco_backend.cancel import CancelToken
from voco_backend.config import check_choice, check_range, field
from voco_backend.cpu_memory import ALLOCATOR_HELP, CPU_ALLOCATORS
from voco_backend.devices import DEVICES, resolve_device
from voco_backend.errors import UsageError
from voco_backend.networks import FEATURE_SIZES
from voco_backend.protocol import Reporter
from voco_backend.resume import LAST_CHECKPOINT

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclasses.dataclass
class FinetuneConfig:
    """Configuration of ``finetune``."""

    images: list[str] = field(help="training CT images (files or DICOM series folders)", metavar="IMAGE")
    labels: list[str] = field(help="their label maps, in the same order", metavar="LABEL")
    out: str = field(help="model folder to write (model.pt, model.json, checkpoint_last.pt)", metavar="MODEL_DIR")
    init: str = field(
        "none",
        help="encoder initialisation: a checkpoint file (encoder.pt of pretrain, an official "
        "VoCo file), a catalogue name, or none (from scratch)",
        metavar="PATH|NAME|none",
    )
    classes: list[str] = field(
        [],
        help="class names and label values, e.g. tumour=1 edema=2, or names alone (valued 1, 2, ... in order)",
        metavar="NAME[=VALUE]",
    )
    color_table: str | None = field(
        None, help="Slicer colour table (.ctbl/.txt) naming the label values", metavar="FILE"
    )
    val_images: list[str] = field([], help="validation CT images (default: held back from --images)", metavar="IMAGE")
    val_labels: list[str] = field([], help="their label maps", metavar="LABEL")
    val_fraction: float = field(0.2, help="share of the cases held back for validation when no --val-images")
    steps: int = field(200, help="optimiser steps (a resumed run continues up to this count)")
    max_minutes: float = field(
        0.0,
        help="training time budget in minutes (0: none): stop at the first step boundary after it, validate and "
        "keep the best model; a resumed run counts its earlier time",
    )
    crops: str = field(
        "classes",
        help="crop centres: classes (every class, background included, equally often) or posneg (the official "
        "9:1 foreground/background)",
        choices=["classes", "posneg"],
    )
    model_size: str = field(
        "B", help="network size: tiny (fs 12, CPU tests), B (48), L (96), H (192)", choices=list(FEATURE_SIZES)
    )
    roi: int | None = field(
        None, help="crop and sliding-window side in voxels, a multiple of 32 >= 64 (default 64 for tiny, 96 otherwise)"
    )
    batch_size: int = field(2, help="crops per step (drawn from one case)")
    lr: float = field(3e-4, help="peak AdamW learning rate")
    weight_decay: float = field(1e-5, help="AdamW weight decay")
    warmup_steps: int | None = field(None, help="linear warm-up steps before the cosine decay (default steps // 10)")
    val_every: int = field(50, help="validate (sliding windows) every N steps and at the end")
    checkpoint_every: int = field(50, help="write checkpoint_last.pt every N steps")
    spacing: list[float] | None = field(
        None, help="resampling spacing in mm (x y z) (default: the --init encoder's recommended one, else 1.5)", nargs=3
    )
    window: list[float] | None = field(
        None,
        help="HU window mapped to [0, 1] (low high) (default: the --init encoder's recommended one, e.g. -175 250 "
        "for the official VoCo encoders, else -1000 1000)",
        nargs=2,
    )
    name: str | None = field(None, help="model name in model.json (default: the folder name)")
    resume: bool = field(False, help="continue MODEL_DIR/checkpoint_last.pt")
    amp: bool = field(True, help="mixed precision on CUDA (bf16 where supported, else fp16 with loss scaling)")
    gradient_checkpointing: bool = field(False, help="recompute activations in backward: less memory, slower")
    mirror_left_right: bool = field(
        False,
        help="also flip crops left-right and rotate them in the axial plane (the official recipe); leave off "
        "when classes are lateral (left/right lung): those augmentations swap them",
    )
    cpu_allocator: str = field("hugepages", help=ALLOCATOR_HELP, choices=CPU_ALLOCATORS)
    device: str = field("auto", help="auto, cpu or cuda", choices=list(DEVICES))
    seed: int = field(0, help="seed of every random choice; same seed, same run")

    def __post_init__(self) -> None:
        check_choice("model_size", self.model_size, list(FEATURE_SIZES))
        check_choice("device", self.device, DEVICES)
        check_choice("cpu_allocator", self.cpu_allocator, CPU_ALLOCATORS)
        check_choice("crops", self.crops, ["classes", "posneg"])
        if not math.isfinite(self.max_minutes) or self.max_minutes < 0:
            raise UsageError(f"field 'max_minutes' must be a number >= 0 (0: no limit), got {self.max_minutes!r}")
        if not self.images:
            raise UsageError("field 'images' needs at least one image")
        for images, labels in (("images", "labels"), ("val_images", "val_labels")):
            if len(getattr(self, images)) != len(getattr(self, labels)):
                raise UsageError(
                    f"fields '{images}' and '{labels}' must have the same length, got "
                    f"{len(getattr(self, images))} and {len(getattr(self, labels))}"
                )
        if self.classes and self.color_table:
            raise UsageError("give either field 'classes' or field 'color_table', not both")
        if self.roi is None:
            self.roi = 64 if self.model_size == "tiny" else 96
        if self.roi < 64 or self.roi % 32:
            raise UsageError(f"field 'roi' must be a multiple of 32 and at least 64, got {self.roi}")
        for name in ("steps", "batch_size", "val_every", "checkpoint_every"):
            check_range(name, getattr(self, name), low=1)
        check_range("val_fraction", self.val_fraction, 0.0, 0.9)
        check_range("lr", self.lr, low=0.0)
        check_range("weight_decay", self.weight_decay, low=0.0)
        if self.warmup_steps is None:
            self.warmup_steps = self.steps // 10
        check_range("warmup_steps", self.warmup_steps, 0, self.steps)
        if self.spacing is not None and min(self.spacing) <= 0:
            raise UsageError(f"field 'spacing' must be three positive numbers (mm), got {self.spacing}")
        if self.window is not None and self.window[0] >= self.window[1]:
            raise UsageError(f"field 'window' must be two numbers low < high (HU), got {self.window}")


CONFIG = FinetuneConfig
DEFAULT_SPACING = (1.5, 1.5, 1.5)
DEFAULT_WINDOW = (-1000.0, 1000.0)


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
    from voco_backend.segmentation.model_folder import MODEL_PT
    from voco_backend.weights import load_pretrained

    path = resolve_model(init)
    report = load_pretrained(model, path / MODEL_PT if path.is_dir() else path)
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
    from voco_backend.memory_guard import StepShape, check_step_memory
    from voco_backend.networks import feature_size_of

    shape = StepShape(
        feature_size=feature_size_of(config.model_size),
        parameters=sum(p.numel() for p in model.parameters()),
        crops=config.batch_size,
        crop_voxels=config.roi**3,
        gradient_checkpointing=config.gradient_checkpointing,
        half_precision=device.type == "cuda" and config.amp,
        decoder=True,
    )
    advice = "use a smaller --batch-size or --roi" + (
        "" if config.gradient_checkpointing else ", or --gradient-checkpointing"
    )
    check_step_memory(shape, device, 1, advice)


def run(config: FinetuneConfig, reporter: Reporter, cancel: CancelToken) -> None:
    """Read and check the data, initialise the network, train, and report the model folder."""
    import torch

    from voco_backend.cpu_memory import apply_cpu_allocator
    from voco_backend.data.recipe import Recipe
    from voco_backend.networks import build_swinunetr
    from voco_backend.segmentation.finetune import FineTuner, Schedule
    from voco_backend.segmentation.labels import class_table
    from voco_backend.segmentation.model_folder import MODEL_PT, ModelInfo
    from voco_backend.segmentation.training_data import build_cases, read_labelled, split_cases

    device = resolve_device(config.device)
    apply_cpu_allocator(config.cpu_allocator, device, reporter)
    folder = Path(config.out)
    if not config.resume and (folder / LAST_CHECKPOINT).exists():
        raise UsageError(
            "already holds a fine-tuning run: add --resume to continue it, or choose another --out", file=folder
        )
    roi = (config.roi,) * 3
    window, spacing, recommended = recipe_from_init(config.init, config.window, config.spacing)
    if recommended:
        reporter.log(recommended)
    recipe = Recipe(spacing=spacing, window=window, min_size=roi)
    train_pairs = read_labelled(config.images, config.labels, cancel)
    val_pairs = read_labelled(config.val_images, config.val_labels, cancel)
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
    torch.manual_seed(config.seed)
    model = build_swinunetr(config.model_size, len(classes) + 1, gradient_checkpointing=config.gradient_checkpointing)
    init = _init_encoder(model, config.init, reporter) if not config.resume else {}
    model.to(device)
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
    schedule = Schedule(
        steps=config.steps,
        batch_size=config.batch_size,
        lr=config.lr,
        weight_decay=config.weight_decay,
        warmup_steps=config.warmup_steps,
        val_every=config.val_every,
        checkpoint_every=config.checkpoint_every,
        seed=config.seed,
        amp=config.amp,
        mirror_left_right=config.mirror_left_right,
        crops=config.crops,
        max_seconds=config.max_minutes * 60.0,
    )
    folder.mkdir(parents=True, exist_ok=True)
    remove_orphans(folder)  # temporary files of a killed run
    tuner = FineTuner(model, info, folder, schedule, device, train_cases, val_cases)
    if config.resume:
        tuner.resume()
        reporter.log(f"resumed at step {tuner.progress.step} of {config.steps}", step=tuner.progress.step)
    progress = tuner.run(reporter, cancel)
    reporter.result(
        model=str(folder),
        weights=str(folder / MODEL_PT),
        steps=progress.step,
        best_dice=progress.best_dice,
        best_step=progress.best_step,
        seconds=round(progress.seconds, 1),
    )
