"""The fine-tuning loop: SwinUNETR-v2 from VoCo weights, DiceCE, AdamW warm-up + cosine, best-Dice keeping, resume.

``model.pt`` always holds the weights of the best validation Dice so far and is replaced (atomically) only when
the Dice improves (the Dice after the largest-component post-processing chosen per class on the same validation,
:mod:`~voco_backend.segmentation.postprocess`); ``checkpoint_last.pt`` (model, optimiser, scheduler, loss
scaler, step, RNG, figures) is written every ``checkpoint_every`` steps, at the end and when a cancel is asked
for at a step boundary.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np
import torch
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric
from monai.networks.utils import one_hot
from monai.optimizers import WarmupCosineSchedule

from voco_backend.atomic import save_torch_atomic
from voco_backend.cancel import CancelToken
from voco_backend.devices import autocast, training_precision
from voco_backend.errors import NON_FINITE_LOSS_ADVICE, Cancelled, DataError, UsageError
from voco_backend.networks import feature_size_of, in_encoder, use_channels_last
from voco_backend.protocol import Reporter
from voco_backend.resume import LAST_CHECKPOINT, rng_state, set_rng_state
from voco_backend.segmentation.deep_supervision import DeepSupervision, deep_supervision_loss
from voco_backend.segmentation.inference import sliding_window_probabilities
from voco_backend.segmentation.model_folder import MODEL_PT, ModelInfo, write_model_info
from voco_backend.segmentation.postprocess import LARGEST_COMPONENT, keep_largest_component
from voco_backend.segmentation.training_data import Case, sample_batch, train_transforms

if TYPE_CHECKING:
    from voco_backend.commands.finetune import FinetuneConfig

VAL_OVERLAP = 0.25


@dataclasses.dataclass
class Schedule:
    """Optimisation settings of a run."""

    steps: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup_steps: int
    val_every: int
    checkpoint_every: int
    seed: int
    amp: bool
    mirror_left_right: bool = False
    crops: str = "classes"
    augment: str = "voco"
    max_seconds: float = 0.0  # stop at the first step boundary after this much training time (0: no limit)
    encoder_lr: float | None = None  # the encoder path's peak learning rate (None: lr)
    deep_supervision: bool = False  # heads on the decoder's 1/2, 1/4, 1/8 outputs (a SwinUNETR only)

    @classmethod
    def from_config(cls, config: FinetuneConfig) -> Schedule:
        """The schedule of a ``finetune`` config (its fields of the same names; ``max_minutes`` in seconds)."""
        names = [f.name for f in dataclasses.fields(cls) if f.name != "max_seconds"]
        return cls(**{name: getattr(config, name) for name in names}, max_seconds=config.max_minutes * 60.0)


def parameter_groups(model: torch.nn.Module, lr: float, encoder_lr: float | None) -> list[dict[str, Any]]:
    """AdamW's parameter groups: the fresh layers at ``lr`` first, then the encoder path at ``encoder_lr``."""
    named = list(model.named_parameters())
    return [
        {"params": [p for name, p in named if not in_encoder(name)], "lr": lr},
        {"params": [p for name, p in named if in_encoder(name)], "lr": lr if encoder_lr is None else encoder_lr},
    ]


def budget_lr_scale(seconds: float, max_seconds: float) -> float:
    """The cosine decay over a time budget: 1 at its start, 0 at its end.

    Under ``--max-minutes`` the step count is only a cap, so a step-based cosine would barely decay before the
    budget ends; the learning rate of each step is the lower of the step schedule's and this one's.
    """
    return 0.5 * (1.0 + math.cos(math.pi * min(seconds / max_seconds, 1.0)))


@dataclasses.dataclass
class Progress:
    """What the run has done so far (saved in ``checkpoint_last.pt`` and reported in ``model.json``)."""

    step: int = 0
    best_dice: float = -1.0
    best_step: int | None = None
    best_per_class: list[float] = dataclasses.field(default_factory=list)
    best_largest_component: list[str] = dataclasses.field(default_factory=list)
    losses: list[float] = dataclasses.field(default_factory=list)
    validations: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    seconds: float = 0.0


def _mean_finite(values: Sequence[float]) -> float:
    """The mean of the finite values (a class absent from every case is NaN); 0 when there is none."""
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else 0.0


def validation_dice(
    model: torch.nn.Module,
    cases: Sequence[Case],
    info: ModelInfo,
    device: torch.device,
    dtype: torch.dtype | None,
    cancel: CancelToken,
) -> tuple[list[float], list[float]]:
    """Mean Dice per class over ``cases`` (sliding windows, argmax), as predicted and with each class cut to its
    largest connected component; NaN for a class absent from every case."""
    metrics = [DiceMetric(include_background=False, reduction="mean_batch", ignore_empty=True) for _ in range(2)]
    classes = range(1, info.out_channels)
    model.eval()
    for case in cases:
        probabilities = sliding_window_probabilities(
            model, case.image, info.roi, overlap=VAL_OVERLAP, device=device, dtype=dtype, cancel=cancel
        )
        predicted = probabilities.argmax(0).numpy()
        reference = one_hot(case.label[None].long(), info.out_channels)
        for metric, labels in zip(metrics, (predicted, keep_largest_component(predicted, classes)), strict=True):
            metric(one_hot(torch.as_tensor(labels)[None, None], info.out_channels), reference)
    model.train()
    raw, largest = ([float(d) for d in metric.aggregate()] for metric in metrics)
    return raw, largest


class FineTuner:
    """One fine-tuning run writing into a model folder.

    Args:
        model: the SwinUNETR-v2, already initialised and on ``device``.
        info: the model's description (classes, recipe, roi); its ``training`` figures are filled in.
        folder: the model folder.
        schedule: optimisation settings.
        device: where training runs.
        train_cases: the cases crops are drawn from.
        val_cases: the cases validation Dice is measured on.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        info: ModelInfo,
        folder: Path,
        schedule: Schedule,
        device: torch.device,
        train_cases: Sequence[Case],
        val_cases: Sequence[Case],
    ) -> None:
        self.model, self.info, self.folder, self.schedule, self.device = model, info, folder, schedule, device
        self.train_cases, self.val_cases = list(train_cases), list(val_cases)
        self.dtype, scaled = training_precision(device, schedule.amp)
        groups = parameter_groups(model, schedule.lr, schedule.encoder_lr)
        self.loss = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)
        self.deep: DeepSupervision | None = None
        if schedule.deep_supervision:
            self.deep = DeepSupervision(model, feature_size_of(info.model_size), info.out_channels).to(device)
            use_channels_last(self.deep, device)
            groups[0]["params"] += list(self.deep.parameters())  # fresh layers
            self.loss = deep_supervision_loss(self.loss)
        self.optimizer, self.scheduler = self._optimizer(groups)
        self.scaler = torch.amp.GradScaler(device.type, enabled=scaled)
        self.transforms = train_transforms(
            info.roi,
            schedule.batch_size,
            schedule.mirror_left_right,
            info.out_channels,
            schedule.crops,
            schedule.augment,
        )
        self.progress = Progress()
        self.lr = schedule.lr  # the fresh layers' learning rate of the last step

    def _optimizer(
        self, groups: list[dict[str, Any]]
    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        optimizer = torch.optim.AdamW(groups, weight_decay=self.schedule.weight_decay)
        return optimizer, WarmupCosineSchedule(optimizer, self.schedule.warmup_steps, self.schedule.steps)

    @property
    def last_path(self) -> Path:
        """The resumable checkpoint."""
        return self.folder / LAST_CHECKPOINT

    def _setup(self) -> dict[str, Any]:
        """What must not change between a run and its resumption."""
        return {
            "model_size": self.info.model_size,
            "classes": [c.to_dict() for c in self.info.classes],
            "recipe": self.info.recipe.to_dict(),
            "roi": list(self.info.roi),
            "seed": self.schedule.seed,
            "batch_size": self.schedule.batch_size,
            "mirror_left_right": self.schedule.mirror_left_right,
            "crops": self.schedule.crops,
            "augment": self.schedule.augment,
            "deep_supervision": self.schedule.deep_supervision,
        }

    def save_last(self) -> None:
        """Write ``checkpoint_last.pt`` atomically (weights-only loadable)."""
        save_torch_atomic(
            {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": rng_state(self.device),
                "setup": self._setup(),
                "init": self.info.init,
                "progress": dataclasses.asdict(self.progress),
                "deep_supervision": self.deep.state_dict() if self.deep else {},
            },
            self.last_path,
        )

    def resume(self) -> None:
        """Continue from ``checkpoint_last.pt``; a missing, damaged or incompatible one is a one-line error."""
        if not self.last_path.is_file():
            raise UsageError("no checkpoint to resume; run without --resume first", file=self.last_path)
        try:
            state = torch.load(self.last_path, map_location="cpu", weights_only=True)
            setup, progress, init = state["setup"], Progress(**state["progress"]), dict(state["init"])
        except Exception as exc:
            raise DataError(
                f"not a readable fine-tuning checkpoint ({type(exc).__name__})", file=self.last_path
            ) from exc
        setup.setdefault("augment", "voco")  # checkpoints from before --augment
        setup.setdefault("deep_supervision", False)  # and from before --deep-supervision
        changed = sorted(k for k, v in self._setup().items() if setup.get(k) != v)
        if changed:
            raise UsageError(
                f"cannot resume: {', '.join(changed)} differ from the checkpoint's; use the same "
                "settings or a new --out folder",
                file=self.last_path,
            )
        if progress.step > self.schedule.steps:
            raise UsageError(
                f"field 'steps' ({self.schedule.steps}) is below the checkpoint's step {progress.step}",
                file=self.last_path,
            )
        self.model.load_state_dict(state["model"])
        if self.deep:
            self.deep.load_state_dict(state["deep_supervision"])
        if len(state["optimizer"]["param_groups"]) == 1:  # from before --encoder-lr: one rate, as it was made
            self.optimizer, self.scheduler = self._optimizer([{"params": list(self.model.parameters())}])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scheduler.t_total = self.schedule.steps
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"], self.device)
        self.progress, self.info.init = progress, init

    def train_step(self) -> float:
        """One optimiser step on the batch of the current step; returns the loss."""
        image, label = sample_batch(self.transforms, self.train_cases, self.schedule.seed, self.progress.step)
        image, label = image.to(self.device), label.to(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.dtype):
            logits = self.model(image)
            if self.deep:  # the label map is downsampled (nearest) per level, which needs a float tensor
                loss = self.loss([out.float() for out in self.deep.outputs(logits)], label.float())
            else:
                loss = self.loss(logits.float(), label)
        value = loss.detach().item()
        if not math.isfinite(value):
            raise DataError(f"the loss became {value} at step {self.progress.step + 1}; {NON_FINITE_LOSS_ADVICE}")
        self.scaler.scale(loss).backward()
        if self.schedule.max_seconds:
            scale = budget_lr_scale(self.progress.seconds, self.schedule.max_seconds)
            for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs, strict=True):
                group["lr"] = min(group["lr"], base * scale)
        self.lr = self.optimizer.param_groups[0]["lr"]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return value

    def validate(self, cancel: CancelToken) -> list[float]:
        """Validation Dice per class; keeps ``model.pt`` (and ``model.json``) when the mean improves.

        A class is cut to its largest connected component where that raises its Dice in this validation; the
        Dice reported and compared is the post-processed one, and the classes so chosen go with the kept model.
        """
        raw, largest = validation_dice(self.model, self.val_cases, self.info, self.device, self.dtype, cancel)
        chosen = [i for i, (r, k) in enumerate(zip(raw, largest, strict=True)) if math.isfinite(r) and k > r]
        per_class = [largest[i] if i in chosen else raw[i] for i in range(len(raw))]
        p = self.progress
        p.validations.append(
            {
                "step": p.step,
                "dice": _mean_finite(per_class),
                "dice_per_class": per_class,
                "dice_as_predicted": _mean_finite(raw),
                LARGEST_COMPONENT: [self.info.classes[i].name for i in chosen],
                "loss": float(np.mean(p.losses[-self.schedule.val_every :])),
            }
        )
        dice = p.validations[-1]["dice"]
        if dice > p.best_dice:
            p.best_dice, p.best_step, p.best_per_class = dice, p.step, per_class
            p.best_largest_component = p.validations[-1][LARGEST_COMPONENT]
            save_torch_atomic(self.model.state_dict(), self.folder / MODEL_PT)
            self.write_info()
        return per_class

    def write_info(self) -> None:
        """Write ``model.json`` with the current training figures."""
        p = self.progress
        self.info.largest_component = list(p.best_largest_component)
        self.info.training.update(
            steps_done=p.step,
            best_step=p.best_step,
            best_dice=p.best_dice,
            best_dice_per_class=dict(zip([c.name for c in self.info.classes], p.best_per_class, strict=False)),
            validations=p.validations,
            seconds=round(p.seconds, 1),
            schedule=dataclasses.asdict(self.schedule),
        )
        write_model_info(self.folder, self.info)

    def run(self, reporter: Reporter, cancel: CancelToken) -> Progress:
        """Train up to ``schedule.steps``, validating every ``val_every`` steps and at the end.

        Raises:
            Cancelled: after ``checkpoint_last.pt`` was written, when a cancel was asked for.
        """
        self.model.train()
        p, s = self.progress, self.schedule
        started = time.monotonic() - p.seconds
        while p.step < s.steps:
            if cancel.cancelled:
                self._stop(started)
            p.losses.append(self.train_step())
            p.step += 1
            p.seconds = time.monotonic() - started
            budget = {"remaining_s": round(max(s.max_seconds - p.seconds, 0.0), 1)} if s.max_seconds else {}
            reporter.progress(
                "finetune",
                p.step,
                s.steps,
                loss=round(p.losses[-1], 4),
                lr=self.lr,
                **budget,
            )
            out_of_time = bool(s.max_seconds) and p.seconds >= s.max_seconds
            if p.step % s.val_every == 0 or p.step == s.steps or out_of_time:
                self._validate(reporter, cancel, started)
            if p.step % s.checkpoint_every == 0 or p.step == s.steps or out_of_time:
                self.save_last()
            if out_of_time and p.step < s.steps:
                reporter.log(
                    f"time budget of {s.max_seconds / 60:g} min reached at step {p.step} of {s.steps}; "
                    f"keeping the best model (step {p.best_step})",
                    step=p.step,
                )
                break
        if not p.validations or p.validations[-1]["step"] != p.step:  # resumed after a cancel in the last one
            self._validate(reporter, cancel, started)
            self.save_last()
        self.write_info()
        return p

    def _validate(self, reporter: Reporter, cancel: CancelToken, started: float) -> None:
        """Validate and log the figures; a cancel during validation still saves the resumable checkpoint."""
        p = self.progress
        try:
            per_class = self.validate(cancel)
        except Cancelled:
            self._stop(started)
        last = p.validations[-1]
        cut = f"; largest component kept for {', '.join(last[LARGEST_COMPONENT])}" if last[LARGEST_COMPONENT] else ""
        reporter.log(
            f"validation Dice at step {p.step}: {last['dice']:.4f} (best {p.best_dice:.4f} at step {p.best_step}){cut}",
            step=p.step,
            dice=last["dice"],
            dice_per_class=per_class,
            dice_as_predicted=last["dice_as_predicted"],
            largest_component=last[LARGEST_COMPONENT],
        )

    def _stop(self, started: float) -> NoReturn:
        """Save the resumable checkpoint and raise :class:`Cancelled`."""
        self.progress.seconds = time.monotonic() - started
        self.save_last()
        raise Cancelled()
