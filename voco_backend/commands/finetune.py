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

from voco_backend.cancel import CancelToken
from voco_backend.config import check_choice, check_range, field
from voco_backend.cpu_memory import ALLOCATOR_HELP, CPU_ALLOCATORS
from voco_backend.devices import DEVICES
from voco_backend.errors import UsageError
from voco_backend.networks import FEATURE_SIZES
from voco_backend.protocol import Reporter
from voco_backend.segmentation.training_data import AUGMENTATIONS

# The default peak learning rates. From scratch, 5-shot STS, tiny, 20 min on one core (benchmarks/few_shot.py,
# seeds 0 and 1): 3e-3 reaches held-out Dice 0.696 / 0.660 where 3e-4 reaches 0.631 / 0.597. A pretrained
# encoder (--init) keeps 3e-4, the rate every run used before, and only the fresh decoder takes the higher one.
DEFAULT_LR = 3e-3
ENCODER_LR_SCALE = 0.1


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
        help="training time budget in minutes (0: none): the learning rate decays (cosine) over it, training stops "
        "at the first step boundary after it, validates and keeps the best model; a resumed run counts its "
        "earlier time",
    )
    crops: str = field(
        "classes",
        help="crop centres: classes (every class, background included, equally often) or posneg (the official "
        "9:1 foreground/background)",
        choices=["classes", "posneg"],
    )
    augment: str = field(
        "voco",
        help="crop augmentation: voco (the official fine-tuning set: flips, rot90, intensity scale/shift) or nnunet "
        "(nnU-Net's default set: rotation and scaling, noise, blur, brightness, contrast, low resolution, gamma, "
        "flips)",
        choices=list(AUGMENTATIONS),
    )
    deep_supervision: bool = field(
        False,
        help="also train 1x1x1 heads on the decoder's outputs at 1/2, 1/4 and 1/8 of the crop (nnU-Net's deep "
        "supervision; loss weights halving per level, summing to 1); model.pt is the plain network",
    )
    model_size: str = field(
        "B", help="network size: tiny (fs 12, CPU tests), B (48), L (96), H (192)", choices=list(FEATURE_SIZES)
    )
    roi: int | None = field(
        None, help="crop and sliding-window side in voxels, a multiple of 32 >= 64 (default 64 for tiny, 96 otherwise)"
    )
    batch_size: int = field(2, help="crops per step (drawn from one case)")
    lr: float = field(DEFAULT_LR, help="peak AdamW learning rate of the fresh layers (all of them from scratch)")
    encoder_lr: float | None = field(
        None,
        help="peak learning rate of the encoder path (swinViT, encoder1-4 and 10: what --init loads) (default: "
        f"--lr from scratch, --lr x {ENCODER_LR_SCALE:g} with --init): a pretrained encoder moves less than the "
        "new decoder",
    )
    weight_decay: float = field(1e-5, help="AdamW weight decay")
    warmup_steps: int | None = field(None, help="linear warm-up steps before the cosine decay (default steps // 10)")
    val_every: int = field(50, help="validate (sliding windows) every N steps and at the end")
    checkpoint_every: int = field(50, help="write checkpoint_last.pt every N steps")
    spacing: list[float] | None = field(
        None, help="resampling spacing in mm (x y z) (default: the --init encoder's recommended one, else 1.5)", nargs=3
    )
    spacing_from_fov: bool = field(
        False,
        help="resample isotropically so that one --roi crop spans the training images' median field of view (their "
        "largest extent), never finer than their native spacing: the whole context in every crop, for short "
        "budgets (a CPU); instead of --spacing",
    )
    window: list[float] | None = field(
        None,
        help="HU window mapped to [0, 1] (low high) (default: the --init encoder's recommended one, e.g. -175 250 "
        "for the official VoCo encoders, else -1000 1000)",
        nargs=2,
    )
    window_from_labels: bool = field(
        False,
        help="window the 0.5–99.5 percentiles of the HU under the training labels (nnU-Net's CT normalisation) "
        "instead of --window; for training from scratch",
    )
    name: str | None = field(None, help="model name in model.json (default: the folder name)")
    resume: bool = field(False, help="continue MODEL_DIR/checkpoint_last.pt")
    amp: bool = field(
        True,
        help="mixed precision: on CUDA bf16 where supported, else fp16 with loss scaling; on a CPU bf16 where "
        "it has bf16 instructions (AVX512-BF16 or AMX), else fp32",
    )
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
        check_choice("augment", self.augment, AUGMENTATIONS)
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
        if self.encoder_lr is None:
            self.encoder_lr = self.lr if self.init.lower() == "none" else self.lr * ENCODER_LR_SCALE
        check_range("encoder_lr", self.encoder_lr, low=0.0)
        check_range("weight_decay", self.weight_decay, low=0.0)
        if self.warmup_steps is None:
            self.warmup_steps = self.steps // 10
        check_range("warmup_steps", self.warmup_steps, 0, self.steps)
        if self.spacing is not None and min(self.spacing) <= 0:
            raise UsageError(f"field 'spacing' must be three positive numbers (mm), got {self.spacing}")
        if self.spacing is not None and self.spacing_from_fov:
            raise UsageError("give either field 'spacing' or field 'spacing_from_fov', not both")
        if self.window is not None and self.window_from_labels:
            raise UsageError("give either field 'window' or field 'window_from_labels', not both")
        if self.window is not None and self.window[0] >= self.window[1]:
            raise UsageError(f"field 'window' must be two numbers low < high (HU), got {self.window}")


CONFIG = FinetuneConfig


def run(config: FinetuneConfig, reporter: Reporter, cancel: CancelToken) -> None:
    """Train (segmentation.finetune_run), then report the model folder."""
    from voco_backend.segmentation.finetune_run import train

    reporter.result(**train(config, reporter, cancel))
