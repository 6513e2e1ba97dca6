"""The fine-tuning loop's schedule: ``--max-minutes`` and the learning rates of the encoder and the fresh layers.

Under ``--max-minutes`` training stops at the first step boundary after the budget and keeps the best model. The
clock of the fine-tuning loop is replaced by one that advances 10 s per reading, so the budget is reached after a
known number of steps without waiting. The network is a two-layer stand-in of ours whose first layer is named
like SwinUNETR's encoder path (the loop, not the architecture, is under test); the grouping itself is checked
on the real SwinUNETR-v2 against what an encoder file holds.
"""

from __future__ import annotations

import io
import json
import math

import pytest
import torch
from backend_cli import events, loop_schedule

from voco_backend.cancel import CancelToken
from voco_backend.commands.finetune import ENCODER_LR_SCALE, FinetuneConfig
from voco_backend.data.recipe import Recipe
from voco_backend.errors import UsageError
from voco_backend.networks import build_swinunetr
from voco_backend.protocol import Reporter
from voco_backend.segmentation import finetune as finetune_module
from voco_backend.segmentation.finetune import MODEL_PT, FineTuner, Schedule, parameter_groups
from voco_backend.segmentation.labels import SegmentClass
from voco_backend.segmentation.model_folder import ModelInfo
from voco_backend.weights import encoder_state

SIDE = 16


class Clock:
    """``time.monotonic`` stand-in advancing ``tick`` seconds per call."""

    def __init__(self, tick: float) -> None:
        self.now, self.tick = 0.0, tick

    def monotonic(self) -> float:
        self.now += self.tick
        return self.now


class TwoLayers(torch.nn.Module):
    """Stand-in network: an "encoder" (``swinViT``) and a fresh output layer."""

    def __init__(self) -> None:
        super().__init__()
        self.swinViT = torch.nn.Conv3d(1, 4, 3, padding=1)
        self.out = torch.nn.Conv3d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.swinViT(x)))


def tuner(folder, steps: int, max_seconds: float, encoder_lr: float | None = None) -> FineTuner:
    torch.manual_seed(0)
    image = torch.rand(1, SIDE, SIDE, SIDE)
    label = torch.zeros(1, SIDE, SIDE, SIDE, dtype=torch.uint8)
    label[:, 4:12, 4:12, 4:12] = 1
    case = finetune_module.Case("cube", image, label)
    info = ModelInfo("t", "tiny", [SegmentClass("cube", 1, (1.0, 0.0, 0.0))], Recipe(), (SIDE,) * 3)
    schedule = loop_schedule(steps=steps, lr=1e-2, max_seconds=max_seconds, encoder_lr=encoder_lr)
    model = TwoLayers()
    return FineTuner(model, info, folder, schedule, torch.device("cpu"), [case], [case])


def test_budget_stops_at_the_first_step_boundary_after_it_and_keeps_the_best_model(tmp_path, monkeypatch):
    monkeypatch.setattr(finetune_module, "time", Clock(10.0))
    out = io.StringIO()
    progress = tuner(tmp_path, steps=50, max_seconds=35.0).run(
        Reporter(stdout=out, stderr=io.StringIO()), CancelToken()
    )
    # One clock reading per step (10 s each) after the start: the 4th step boundary is the first past 35 s.
    assert progress.step == 4
    assert progress.validations[-1]["step"] == 4
    assert (tmp_path / MODEL_PT).is_file() and (tmp_path / "checkpoint_last.pt").is_file()
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["training"]["steps_done"] == 4 and meta["training"]["best_step"] == 4
    seen = events(out.getvalue())
    remaining = [e["remaining_s"] for e in seen if e["event"] == "progress" and e["stage"] == "finetune"]
    assert remaining == [25.0, 15.0, 5.0, 0.0]
    assert any("time budget" in e.get("message", "") for e in seen if e["event"] == "log")


def test_the_learning_rate_decays_over_the_time_budget_not_over_the_step_cap(tmp_path, monkeypatch):
    # 10 s per step against 100 s: the step schedule (1000 steps) has barely moved, the budget's cosine ends at 0.
    monkeypatch.setattr(finetune_module, "time", Clock(10.0))
    out = io.StringIO()
    tuner(tmp_path, steps=1000, max_seconds=100.0).run(Reporter(stdout=out, stderr=io.StringIO()), CancelToken())
    seen = [e for e in events(out.getvalue()) if e["event"] == "progress" and e["stage"] == "finetune"]
    used = [e["lr"] for e in seen]
    # Step k runs after 10·(k-1) s of training; the lower of the two schedules decides.
    expected = [
        1e-2 * min(0.5 * (1 + math.cos(math.pi * 10 * k / 1000)), 0.5 * (1 + math.cos(math.pi * k / 10)))
        for k in range(10)
    ]
    assert used == pytest.approx(expected, rel=1e-6)
    assert used[-1] < 0.03 * used[0]


def test_no_budget_runs_every_step_and_reports_no_remaining_time(tmp_path, monkeypatch):
    monkeypatch.setattr(finetune_module, "time", Clock(10.0))
    out = io.StringIO()
    progress = tuner(tmp_path, steps=6, max_seconds=0.0).run(Reporter(stdout=out, stderr=io.StringIO()), CancelToken())
    assert progress.step == 6
    assert not any("remaining_s" in e for e in events(out.getvalue()))


@pytest.mark.parametrize("minutes", [-1.0, float("nan")])
def test_negative_or_nan_budget_is_a_usage_error_naming_the_field(minutes):
    with pytest.raises(UsageError, match="'max_minutes'"):
        FinetuneConfig(images=["a.nii.gz"], labels=["a_seg.nii.gz"], out="m", max_minutes=minutes)


def test_max_minutes_flag_reaches_the_config():
    from voco_backend.cli import build_parser

    args = build_parser().parse_args(
        ["finetune", "--images", "a", "--labels", "b", "--out", "m", "--max-minutes", "2.5"]
    )
    assert args.max_minutes == 2.5


def test_the_encoder_group_is_exactly_what_an_encoder_file_holds():
    model = build_swinunetr("tiny", 2)
    fresh, encoder = parameter_groups(model, lr=1e-3, encoder_lr=1e-4)
    name_of = {id(p): name for name, p in model.named_parameters()}
    parameters = {name for name, _ in model.named_parameters()}
    assert {name_of[id(p)] for p in encoder["params"]} == set(encoder_state(model)) & parameters
    assert {name_of[id(p)] for p in fresh["params"]} == parameters - set(encoder_state(model))
    assert (fresh["lr"], encoder["lr"]) == (1e-3, 1e-4)
    assert parameter_groups(model, lr=1e-3, encoder_lr=None)[1]["lr"] == 1e-3


@pytest.mark.parametrize(
    ("init", "given", "expected"),
    [("none", None, 2e-3), ("runs/b/encoder.pt", None, 2e-3 * ENCODER_LR_SCALE), ("VoCo_B_SSL_head", 5e-4, 5e-4)],
)
def test_the_encoder_learns_at_the_fresh_layers_rate_from_scratch_and_slower_from_an_init(init, given, expected):
    config = FinetuneConfig(images=["a"], labels=["b"], out="m", init=init, lr=2e-3, encoder_lr=given)
    assert config.encoder_lr == pytest.approx(expected)
    assert Schedule.from_config(config).encoder_lr == pytest.approx(expected)


def test_each_group_follows_its_own_peak_through_the_schedule(tmp_path, monkeypatch):
    monkeypatch.setattr(finetune_module, "time", Clock(10.0))
    run = tuner(tmp_path, steps=6, max_seconds=0.0, encoder_lr=1e-3)
    run.run(Reporter(stdout=io.StringIO(), stderr=io.StringIO()), CancelToken())
    groups = torch.load(run.last_path, weights_only=True)["optimizer"]["param_groups"]
    assert [g["initial_lr"] for g in groups] == [1e-2, 1e-3]
    assert groups[1]["lr"] == pytest.approx(groups[0]["lr"] / 10)


def test_a_checkpoint_with_one_learning_rate_resumes_as_it_was_made(tmp_path, monkeypatch):
    monkeypatch.setattr(finetune_module, "time", Clock(10.0))
    quiet = Reporter(stdout=io.StringIO(), stderr=io.StringIO())
    before = tuner(tmp_path, steps=2, max_seconds=0.0)
    # what fine-tuning wrote before --encoder-lr: one parameter group for the whole network
    before.optimizer, before.scheduler = before._optimizer([{"params": list(before.model.parameters())}])
    before.run(quiet, CancelToken())
    resumed = tuner(tmp_path, steps=4, max_seconds=0.0, encoder_lr=1e-3)
    resumed.resume()
    assert resumed.progress.step == 2 and len(resumed.optimizer.param_groups) == 1
    assert resumed.run(quiet, CancelToken()).step == 4
