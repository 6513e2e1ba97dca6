"""The pretraining run: data → VoCo model → loss → AdamW step → EMA teacher, with resume, DDP and cancel.

:func:`train` (what the ``pretrain`` command delegates to) prepares the data and the run folder and runs a
:class:`PretrainRun`, the same shape as fine-tuning's (``segmentation.finetune_run.train`` and ``FineTuner``).
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

import torch
import yaml
from monai.optimizers import WarmupCosineSchedule
from torch.nn.parallel import DistributedDataParallel

from voco_backend.atomic import remove_orphans, write_text_atomic
from voco_backend.cache import cache_dir
from voco_backend.cancel import CancelToken
from voco_backend.config import to_dict
from voco_backend.cpu_memory import apply_cpu_allocator
from voco_backend.data.recipe import Recipe
from voco_backend.data.sources import resolve_sources
from voco_backend.devices import autocast, training_precision
from voco_backend.distributed import (
    DistContext,
    any_rank,
    barrier,
    gather_objects,
    init_distributed,
    shutdown,
)
from voco_backend.errors import NON_FINITE_LOSS_ADVICE, Cancelled, DataError, UsageError
from voco_backend.memory_guard import StepShape, check_step_memory, estimated_as_half_precision, processes_per_machine
from voco_backend.networks import MERGE_MONAI15, feature_size_of
from voco_backend.pretrain.checkpoint import load_checkpoint, save_checkpoint
from voco_backend.pretrain.config import PretrainConfig
from voco_backend.pretrain.dataset import Batch, CachedVolumes, CropBatcher, batches, require_volumes
from voco_backend.pretrain.heads import VoCoModel
from voco_backend.pretrain.losses import voco_loss
from voco_backend.pretrain.run_log import RunLog
from voco_backend.protocol import Reporter
from voco_backend.resume import LAST_CHECKPOINT, rng_state, set_rng_state
from voco_backend.run_lock import run_folder_lock
from voco_backend.weights import export_encoder, load_pretrained

# The EMA teacher's encoder of a whole-network teacher (10k recipe), in the same flat 145-key layout.
TEACHER_ENCODER = "encoder_teacher.pt"
# The smallest cached volume of the 10k recipe's `resize` region mode. That mode resizes the whole cached volume
# to the region, so padding it up to the region (as `crop` mode needs) would only shrink the anatomy in the resize;
# this floor (this project's choice) keeps a tiny foreground crop large enough to resize.
RESIZE_MODE_MIN_SIZE = (32, 32, 16)
# Rank r of a run seeded s draws its dropout from seed s * RANK_SEED_STRIDE + r: different on every rank, and no
# two (seed, rank) pairs share a seed while the job has fewer ranks than the stride.
RANK_SEED_STRIDE = 1000


def recipe_of(config: PretrainConfig) -> Recipe:
    """The deterministic preprocessing of this run (volumes padded to at least one region)."""
    min_size = (config.region_xy, config.region_xy, config.region_depth)
    if config.region_mode == "resize":
        min_size = RESIZE_MODE_MIN_SIZE
    return Recipe(
        spacing=tuple(config.spacing) if config.resample else None,
        window=tuple(config.window),
        min_size=min_size,
        foreground_threshold=config.foreground_threshold,
    )


def init_fresh_parts(config: PretrainConfig) -> str:
    """The log line of ``--init``: which parts start fresh. A VoCo file holds the backbone only (the released
    SSL files hold no projection heads), so a run from it is a new run, not a resumption of the authors'."""
    fresh = "the student and teacher projection heads"
    if config.teacher == "network":
        fresh += " and the teacher encoder (initialised independently, as the 10k code does)"
    return (
        f"--init {config.init}: the student encoder starts from it; {fresh} start fresh; step, optimiser "
        "and schedule start at 0. This is a new run from those weights, not a resumption of the run that "
        "made them"
    )


def _autocast(config: PretrainConfig, device: torch.device) -> tuple[contextlib.AbstractContextManager, bool]:
    """The AMP context of a step and whether the loss needs scaling (fp16)."""
    dtype, fp16 = training_precision(device, config.amp)
    return autocast(device, dtype), fp16


def _prepare_data(
    config: PretrainConfig, ctx: DistContext, reporter: Reporter, cancel: CancelToken
) -> tuple[CachedVolumes, list[int]]:
    sources = resolve_sources(config.data)
    cache_root = Path(config.cache_dir) if config.cache_dir else cache_dir() / "preprocessed"
    volumes = CachedVolumes(sources, recipe_of(config), cache_root)
    mine = list(range(ctx.rank, len(sources), ctx.world))
    failed: dict[int, str] = {}
    for part in gather_objects(volumes.prepare(mine, reporter, cancel), ctx):
        failed.update(part)
    valid = [i for i in range(len(sources)) if i not in failed]
    require_volumes(valid, len(sources), failed, sources)
    reporter.log(
        f"{len(valid)} volumes ready, {len(failed)} unreadable skipped; cache {volumes.cache_dir}",
        volumes=len(valid),
        skipped=len(failed),
    )
    return volumes, valid


def _check_run_dir(config: PretrainConfig, run_dir: Path) -> None:
    if not config.resume and (run_dir / LAST_CHECKPOINT).exists():
        raise UsageError(
            "the run folder already holds a run: pass --resume to continue it, or choose another --out", file=run_dir
        )


def _check_memory(config: PretrainConfig, model: VoCoModel, ctx: DistContext) -> None:
    """Exit 4 with advice before the first step when its estimated peak does not fit (memory_guard)."""
    grid = config.crop_grid()
    side = grid.crop_resize or grid.crop
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    shape = StepShape(
        feature_size=feature_size_of(config.model_size),
        parameters=trained,
        crops=config.volumes_per_step * (config.random_crops + grid.num_bases),
        crop_voxels=side * side * (grid.crop_resize or grid.depth),
        gradient_checkpointing=config.gradient_checkpointing,
        half_precision=estimated_as_half_precision(ctx.device, config.amp),
        extra_parameters=frozen,
    )
    advice = (
        "use fewer --volumes-per-step, a smaller --region-xy/--grid or fewer --random-crops (fewer, "
        "smaller crops), or --gradient-checkpointing"
    )
    if config.gradient_checkpointing:
        advice = advice.removesuffix(", or --gradient-checkpointing")
    check_step_memory(shape, ctx.device, processes_per_machine(ctx.world), advice)


def train_step(
    net: torch.nn.Module,
    model: VoCoModel,
    batch: Batch,
    optimizer: torch.optim.Optimizer,
    scheduler: WarmupCosineSchedule,
    scaler: torch.amp.GradScaler,
    autocast: contextlib.AbstractContextManager,
    config: PretrainConfig,
) -> dict[str, float]:
    """One optimiser step on ``batch`` (``net`` is ``model`` or its DDP wrapper); returns the step's scalars."""
    with autocast:
        student, teacher = net(batch.crops.to(next(model.parameters()).device, non_blocking=True))
    losses = voco_loss(
        student,
        teacher,
        batch.targets,
        len(batch.indices),
        config.random_crops,
        batch.targets.shape[-1],
        negative=config.negative,
        inter=config.inter,
        symmetric=config.symmetric,
    )
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(losses["total"]).backward()
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    model.update_teacher(config.ema_momentum)
    return {
        "loss": losses["total"].item(),
        **{k: losses[k].item() for k in ("intra", "inter", "reg")},
        "lr": scheduler.get_last_lr()[0],
    }


def train(config: PretrainConfig, reporter: Reporter, cancel: CancelToken) -> dict:
    """Run (or resume) pretraining to ``config.steps``; returns the result fields."""
    ctx = init_distributed(config.device)
    reporter.enabled = reporter.enabled and ctx.is_main
    try:
        return _train(config, ctx, reporter, cancel)
    finally:
        shutdown(ctx)


def _train(config: PretrainConfig, ctx: DistContext, reporter: Reporter, cancel: CancelToken) -> dict:
    """Prepare the data and the run folder, then build, resume and run a :class:`PretrainRun`."""
    if config.threads:
        torch.set_num_threads(config.threads)
    apply_cpu_allocator(config.cpu_allocator, ctx.device, reporter)
    run_dir = Path(config.out)
    if config.preprocess_only:
        volumes, valid = _prepare_data(config, ctx, reporter, cancel)
        return {"preprocessed": len(valid), "skipped": len(volumes) - len(valid), "cache_dir": str(volumes.cache_dir)}
    _check_run_dir(config, run_dir)
    volumes, valid = _prepare_data(config, ctx, reporter, cancel)
    run_dir.mkdir(parents=True, exist_ok=True)
    # The main rank writes the run folder: it holds the folder's lock, and checks it again under the lock.
    with run_folder_lock(run_dir) if ctx.is_main else contextlib.nullcontext():
        if ctx.is_main:
            _check_run_dir(config, run_dir)
            remove_orphans(run_dir)  # temporary files of a killed run
        resumed = load_checkpoint(run_dir / LAST_CHECKPOINT) if config.resume else None
        if resumed is not None:
            _resume_merge_order(config, resumed, run_dir, reporter)
        run = PretrainRun(config, ctx, reporter)
        if resumed is not None:
            run.resume(resumed, reporter)
        run.run(volumes, valid, reporter, cancel)
        return run.result(len(valid))


def _resume_merge_order(config: PretrainConfig, resumed: dict, run_dir: Path, reporter: Reporter) -> None:
    """A resumed run keeps the PatchMerging order it was trained in (MONAI 1.5's when the checkpoint names none)."""
    if "merge_order" not in resumed.get("config", {}):
        config.merge_order = MERGE_MONAI15
        reporter.log(
            f"{run_dir / LAST_CHECKPOINT} records no merge order: made by an earlier version, so the run continues "
            "in MONAI 1.5's PatchMerging order it was trained in (not the official VoCo network)",
            level="warning",
        )
    else:
        config.merge_order = resumed["config"]["merge_order"]


class PretrainRun:
    """One pretraining run writing into its run folder (the shape of fine-tuning's ``FineTuner``).

    Built from the config (model, ``--init`` weights, optimiser, schedule), optionally :meth:`resume`-d from
    ``checkpoint_last.pt``, then :meth:`run` to ``config.steps``; :meth:`result` gives the result fields.

    Args:
        config: the run's configuration (``merge_order`` already settled for a resumed run).
        ctx: this process's place in the (DDP) job.
        reporter: where the initialisation is logged.
    """

    def __init__(self, config: PretrainConfig, ctx: DistContext, reporter: Reporter) -> None:
        self.config, self.ctx, self.run_dir = config, ctx, Path(config.out)
        self.grid = config.crop_grid()
        torch.manual_seed(config.seed)  # identical initial weights on every rank
        self.model = VoCoModel(
            config.model_size,
            config.head_hidden,
            config.teacher,
            config.dropout,
            config.gradient_checkpointing,
            config.merge_order,
        )
        self.init_summary = None
        if config.init:
            self.init_summary = load_pretrained(self.model.encoder, config.init).summary()
            reporter.log(self.init_summary)
            reporter.log(init_fresh_parts(config))
        # PyTorch's default layout: channels-last gained nothing for the pretraining step (B: 62.6 s against
        # 61.9 s; tiny: 29.9 against 26.3, benchmarks/pretrain_throughput.py), unlike fine-tuning's.
        self.model.to(ctx.device)
        _check_memory(config, self.model, ctx)
        self.optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad],
            lr=config.lr,
            weight_decay=config.weight_decay,
            amsgrad=True,
        )
        self.scheduler = WarmupCosineSchedule(self.optimizer, warmup_steps=config.warmup_steps, t_total=config.steps)
        self.step, self.history = 0, []
        self.log: RunLog | None = None
        torch.manual_seed(config.seed * RANK_SEED_STRIDE + ctx.rank)  # dropout differs across ranks

    def resume(self, state: dict, reporter: Reporter) -> None:
        """Continue from a loaded ``checkpoint_last.pt``: weights, optimiser, schedule, step, history, RNG."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scheduler.t_total = (
            self.config.steps
        )  # a run resumed with more --steps stretches its cosine to the new end
        self.step, self.history = int(state["step"]), list(state["history"])
        rngs = state["rng"]
        if len(rngs) == self.ctx.world:
            set_rng_state(rngs[self.ctx.rank], self.ctx.device)
        reporter.log(f"resumed at step {self.step} from {self.run_dir / LAST_CHECKPOINT}", step=self.step)

    def save_checkpoint(self, step: int, keep: int) -> None:
        """Write the resumable checkpoint (``keep`` step checkpoints besides it) and export the encoder(s)."""
        model = self.model
        state = {
            "model": model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": step,
            "history": self.log.history if self.log else [],
            "rng": gather_objects(rng_state(self.ctx.device), self.ctx),
            "config": to_dict(self.config),
        }
        if self.ctx.is_main:
            save_checkpoint(state, self.run_dir, step, keep)
            export_encoder(model.encoder, self.run_dir / "encoder.pt")
            if model.teacher_encoder is not None:  # the CVPR release may be the EMA teacher (VOCO.md §6b)
                export_encoder(model.teacher_encoder, self.run_dir / TEACHER_ENCODER)
        barrier(self.ctx)

    def run(self, volumes: CachedVolumes, valid: list[int], reporter: Reporter, cancel: CancelToken) -> int:
        """Train on the ``valid`` volumes up to ``config.steps``; returns the step reached.

        Raises:
            Cancelled: after ``checkpoint_last.pt`` was written, when a cancel was asked for (on any rank).
        """
        config, ctx, model = self.config, self.ctx, self.model
        if self.step >= config.steps:
            raise UsageError(
                f"field 'steps' is {config.steps} but the run already did {self.step}; raise --steps",
                file=self.run_dir / LAST_CHECKPOINT,
            )
        if ctx.is_main:
            write_text_atomic(self.run_dir / "config.yaml", yaml.safe_dump(to_dict(config), sort_keys=False))
        net = (
            DistributedDataParallel(model, device_ids=[ctx.device] if ctx.device.type == "cuda" else None)
            if ctx.distributed
            else model
        )
        autocast, fp16 = _autocast(config, ctx.device)
        scaler = torch.amp.GradScaler("cuda", enabled=fp16)
        batcher = CropBatcher(
            volumes,
            valid,
            self.grid,
            config.random_crops,
            config.volumes_per_step,
            config.region_mode,
            config.seed,
            ctx.rank,
            ctx.world,
            config.shift_prob,
        )
        self.log = RunLog(self.run_dir, self.history) if ctx.is_main else None
        crops_per_step = config.volumes_per_step * (config.random_crops + self.grid.num_bases) * ctx.world
        model.train()
        try:
            for batch in batches(batcher, self.step, config.steps, config.workers, ctx.device.type == "cuda"):
                if any_rank(cancel.cancelled, ctx):
                    self.save_checkpoint(self.step, keep=0)
                    reporter.log(f"cancelled at step {self.step}; resume with --resume", step=self.step)
                    raise Cancelled()
                began = time.perf_counter()
                values = train_step(net, model, batch, self.optimizer, self.scheduler, scaler, autocast, config)
                self.step += 1
                # fp16's scaler skips a step whose gradients overflow; without it the weights are now broken, and
                # neither they nor the encoder may be saved over the last good checkpoint.
                if not fp16 and any_rank(not math.isfinite(values["loss"]), ctx):
                    raise DataError(
                        f"the loss became {values['loss']} at step {self.step}; nothing after the last checkpoint "
                        f"was saved: {NON_FINITE_LOSS_ADVICE}",
                        file=self.run_dir,
                    )
                seconds = time.perf_counter() - began
                reporter.progress(
                    "pretrain",
                    self.step,
                    config.steps,
                    **values,
                    step_s=round(seconds, 3),
                    crops_per_s=round(crops_per_step / seconds, 2),
                )
                if self.log:
                    self.log.record(self.step, {**values, "step_s": seconds})
                if self.step % config.checkpoint_every == 0 and self.step < config.steps:
                    self.save_checkpoint(self.step, config.keep_checkpoints)
            self.save_checkpoint(self.step, config.keep_checkpoints)
        finally:
            if self.log:
                if self.log.history:
                    self.log.plot(f"VoCo pretraining ({config.model_size}, {config.recipe})")
                self.log.close()
        return self.step

    def result(self, volumes: int) -> dict:
        """The result fields of the run (files written, steps, final loss) after :meth:`run`."""
        run_dir, log = self.run_dir, self.log
        teacher = {"teacher_encoder": str(run_dir / TEACHER_ENCODER)} if self.model.teacher_encoder is not None else {}
        return {
            "run_dir": str(run_dir),
            "encoder": str(run_dir / "encoder.pt"),
            **teacher,
            "checkpoint": str(run_dir / LAST_CHECKPOINT),
            "steps": self.step,
            "final_loss": log.history[-1]["loss"] if log and log.history else None,
            "volumes": volumes,
            "init": self.init_summary,
            "merge_order": self.config.merge_order,
            "loss_png": str(run_dir / "loss.png"),
        }
