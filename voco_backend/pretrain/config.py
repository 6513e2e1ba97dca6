"""The configuration of ``pretrain``: one dataclass, filled from flags and/or a YAML/JSON file."""

from __future__ import annotations

import dataclasses

from voco_backend.config import check_choice, check_range, field
from voco_backend.cpu_memory import ALLOCATOR_HELP, CPU_ALLOCATORS
from voco_backend.devices import DEVICES
from voco_backend.errors import UsageError
from voco_backend.networks import FEATURE_SIZES, MERGE_MONAI13, MERGE_ORDERS
from voco_backend.pretrain.geometry import CropGrid

# Recipe defaults (shared/VOCO.md §2–§4): region side, depth, grid, crop resize, head width, negative term.
RECIPES: dict[str, dict] = {
    "tpami": {
        "region_xy": 192,
        "region_depth": 64,
        "grid": 3,
        "crop_resize": None,
        "head_hidden": 1024,
        "negative": "log",
        "teacher": "head",
        "region_mode": "crop",
        "dropout": 0.2,
        "shift_prob": 0.5,
        "inter": True,
        "symmetric": False,
        "window": [-1000.0, 1000.0],
        "resample": True,
        "foreground_threshold": 0.0,
    },
    "10k": {
        "region_xy": 384,
        "region_depth": 96,
        "grid": 4,
        "crop_resize": 64,
        "head_hidden": 2048,
        "negative": "l2",
        "teacher": "network",
        "region_mode": "resize",
        # Luffy03/VoCo (CVPR) where it differs from TPAMI (VOCO.md §6b): no dropout, no inter-volume loss,
        # symmetric logits, intensity shift p 0.1, the abdomen window with a foreground above 0.3 of it
        # (≈ −47.5 HU) and each scan at its own spacing.
        "dropout": 0.0,
        "shift_prob": 0.1,
        "inter": False,
        "symmetric": True,
        "window": [-175.0, 250.0],
        "resample": False,
        "foreground_threshold": 0.3,
    },
}


@dataclasses.dataclass
class PretrainConfig:
    """Everything a pretraining run needs; stored resolved as ``RUN_DIR/config.yaml``."""

    data: list[str] = field(
        help="image files, folders, DICOM series folders, globs or list files (.txt)", metavar="PATH"
    )
    out: str = field(help="run folder: checkpoints, config, logs and encoder.pt", metavar="RUN_DIR")
    steps: int = field(100, help="total optimiser steps (a resumed run continues up to this count)")
    model_size: str = field(
        "B", help="encoder size: tiny (fs 12, CPU), B (48), L (96), H (192)", choices=list(FEATURE_SIZES)
    )
    init: str | None = field(
        None,
        help="start from this VoCo checkpoint (official or ours) instead of scratch",
        metavar="CHECKPOINT",
    )
    resume: bool = field(False, help="continue RUN_DIR/checkpoint_last.pt (step, optimiser, scheduler, EMA, RNG)")
    device: str = field("auto", help="auto, cpu or cuda", choices=list(DEVICES))
    seed: int = field(0, help="seed of every random choice; same seed, same run")
    recipe: str = field("tpami", help="tpami (default, official TPAMI code) or 10k (CVPR code)", choices=list(RECIPES))
    region_xy: int | None = field(None, help="in-plane side of the region cut into base crops (recipe default)")
    region_depth: int | None = field(None, help="depth of the region and of every crop (recipe default)")
    grid: int | None = field(None, help="base crops per side: grid×grid base crops (recipe default)")
    crop_resize: int | None = field(None, help="resize every crop to this cube side (10k recipe: 64)")
    random_crops: int = field(2, help="random crops per volume (sw)")
    volumes_per_step: int = field(2, help="volumes per step on each process (batch)")
    lr: float = field(1e-4, help="peak learning rate of AdamW (amsgrad)")
    weight_decay: float = field(0.01, help="AdamW weight decay")
    warmup_steps: int | None = field(None, help="linear warm-up steps (default min(5000, steps // 10))")
    head_hidden: int | None = field(None, help="projection head width (recipe default: 1024 tpami, 2048 10k)")
    ema_momentum: float = field(0.9, help="teacher EMA momentum: teacher = m·teacher + (1−m)·student")
    dropout: float | None = field(
        None, help="Dropout1d probability on the student's crop embeddings (recipe default: 0.2 tpami, 0 10k)"
    )
    shift_prob: float | None = field(
        None, help="probability of the ±0.1 intensity shift per crop (recipe default: 0.5 tpami, 0.1 10k)"
    )
    inter: bool | None = field(None, help="add the inter-volume loss (recipe default: on tpami, off 10k)")
    symmetric: bool | None = field(
        None, help="symmetric student/teacher overlap logits (recipe default: off tpami, on 10k)"
    )
    merge_order: str = field(
        MERGE_MONAI13,
        help="PatchMerging order: monai1.3 (the official VoCo network) or monai1.5 (runs made before it was recorded)",
        choices=list(MERGE_ORDERS),
    )
    spacing: list[float] = field([1.5, 1.5, 1.5], help="resampling spacing in mm (x y z)")
    resample: bool | None = field(
        None, help="resample to --spacing (recipe default: on tpami; off 10k, which keeps each scan's spacing)"
    )
    window: list[float] | None = field(
        None, help="HU window mapped to [0, 1] (low high; recipe default: -1000 1000 tpami, -175 250 10k)"
    )
    foreground_threshold: float | None = field(
        None, help="the foreground crop keeps windowed values above this (recipe default: 0 tpami, 0.3 10k)"
    )
    cache_dir: str | None = field(None, help="preprocessing cache (default $VOCO_CACHE_DIR/preprocessed)")
    preprocess_only: bool = field(
        False, help="fill the preprocessing cache and exit (several processes may fill one cache at once)"
    )
    checkpoint_every: int = field(100, help="write a resumable checkpoint every N steps")
    keep_checkpoints: int = field(2, help="step checkpoints kept besides checkpoint_last.pt (0 keeps none)")
    gradient_checkpointing: bool = field(False, help="recompute activations in backward: less memory")
    amp: bool = field(
        True,
        help="mixed precision: on CUDA bf16 where supported, else fp16 with loss scaling; on a CPU bf16 where "
        "it has bf16 instructions (AVX512-BF16 or AMX), else fp32",
    )
    cpu_allocator: str = field("hugepages", help=ALLOCATOR_HELP, choices=CPU_ALLOCATORS)
    workers: int = field(0, help="DataLoader processes cutting and augmenting crops (0: one background thread)")
    threads: int | None = field(None, help="CPU threads for torch (default: torch's choice)")
    region_mode: str | None = field(
        None, help="crop (tpami) or resize (10k): how the region is cut", choices=["crop", "resize"]
    )
    negative: str | None = field(None, help="negative term: log (tpami) or l2 (10k)", choices=["log", "l2"])
    teacher: str | None = field(None, help="EMA teacher: head (tpami) or network (10k)", choices=["head", "network"])

    def __post_init__(self) -> None:
        check_choice("model_size", self.model_size, list(FEATURE_SIZES))
        check_choice("device", self.device, DEVICES)
        check_choice("recipe", self.recipe, list(RECIPES))
        for name, value in RECIPES[self.recipe].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        check_choice("region_mode", self.region_mode, ["crop", "resize"])
        check_choice("negative", self.negative, ["log", "l2"])
        check_choice("teacher", self.teacher, ["head", "network"])
        check_choice("cpu_allocator", self.cpu_allocator, CPU_ALLOCATORS)
        check_choice("merge_order", self.merge_order, list(MERGE_ORDERS))
        if not self.data:
            raise UsageError("field 'data' needs at least one path")
        for name in ("steps", "random_crops", "volumes_per_step", "checkpoint_every", "head_hidden"):
            check_range(name, getattr(self, name), low=1)
        check_range("keep_checkpoints", self.keep_checkpoints, low=0)
        check_range("workers", self.workers, low=0)
        check_range("lr", self.lr, low=0.0)
        check_range("weight_decay", self.weight_decay, low=0.0)
        check_range("ema_momentum", self.ema_momentum, 0.0, 1.0)
        check_range("dropout", self.dropout, 0.0, 0.99)
        check_range("shift_prob", self.shift_prob, 0.0, 1.0)
        check_range("foreground_threshold", self.foreground_threshold, 0.0, 0.99)
        if self.threads is not None:
            check_range("threads", self.threads, low=1)
        if self.warmup_steps is None:
            self.warmup_steps = min(5000, self.steps // 10)
        check_range("warmup_steps", self.warmup_steps, low=0)
        self.crop_grid()  # validates the crop geometry fields
        if len(self.spacing) != 3 or min(self.spacing) <= 0:
            raise UsageError(f"field 'spacing' must be three positive numbers (mm), got {self.spacing}")
        if len(self.window) != 2 or self.window[0] >= self.window[1]:
            raise UsageError(f"field 'window' must be two numbers low < high (HU), got {self.window}")

    def crop_grid(self) -> CropGrid:
        """The crop geometry of this run (validated: sides that the Swin encoder accepts)."""
        return CropGrid(self.region_xy, self.region_depth, self.grid, self.crop_resize)
