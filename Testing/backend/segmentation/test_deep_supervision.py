"""``finetune --deep-supervision``: heads on the real SwinUNETR-v2's decoder, a plain ``model.pt``, exact resume.

The network is MONAI's SwinUNETR-v2 (tiny) as ``finetune`` builds it, on 64³ crops (its smallest) of a synthetic
cube (the loop and the heads are under test, not what they learn).
"""

from __future__ import annotations

import io

import pytest
import torch
from backend_cli import loop_schedule

from voco_backend.cancel import CancelToken
from voco_backend.cli import build_parser
from voco_backend.commands.finetune import FinetuneConfig
from voco_backend.data.recipe import Recipe
from voco_backend.errors import UsageError
from voco_backend.networks import build_swinunetr
from voco_backend.protocol import Reporter
from voco_backend.segmentation.deep_supervision import DeepSupervision, level_weights
from voco_backend.segmentation.finetune import MODEL_PT, FineTuner, Schedule
from voco_backend.segmentation.labels import SegmentClass
from voco_backend.segmentation.model_folder import ModelInfo
from voco_backend.segmentation.training_data import Case

ROI = 64


def test_heads_give_logits_at_a_half_a_quarter_and_an_eighth_of_the_crop():
    torch.manual_seed(0)
    net = build_swinunetr("tiny", 3)
    deep = DeepSupervision(net, 12, 3)
    net.train()
    outputs = deep.outputs(net(torch.rand(2, 1, 64, 64, 64)))
    assert [tuple(o.shape) for o in outputs] == [(2, 3, s, s, s) for s in (64, 32, 16, 8)]
    net.eval()
    with torch.no_grad():  # inference keeps nothing for the heads
        net(torch.rand(1, 1, 64, 64, 64))
    with pytest.raises(RuntimeError, match="training mode"):
        deep.outputs(torch.zeros(1))


def test_the_level_weights_halve_and_sum_to_one():
    assert level_weights(3) == pytest.approx([8 / 15, 4 / 15, 2 / 15, 1 / 15])


def tuner(folder, deep_supervision: bool, steps: int = 2) -> FineTuner:
    image = torch.rand(1, ROI + 8, ROI + 8, ROI + 8)
    label = torch.zeros(1, ROI + 8, ROI + 8, ROI + 8, dtype=torch.uint8)
    label[:, 20:52, 20:52, 20:52] = 1
    case = Case("cube", image, label)
    info = ModelInfo("t", "tiny", [SegmentClass("cube", 1, (1.0, 0.0, 0.0))], Recipe(), (ROI,) * 3)
    schedule = loop_schedule(steps=steps, checkpoint_every=1, lr=1e-2, deep_supervision=deep_supervision)
    return FineTuner(build_swinunetr("tiny", 2), info, folder, schedule, torch.device("cpu"), [case], [case])


def heads(run: FineTuner) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in run.deep.state_dict().items()}


def test_deep_supervision_trains_its_heads_keeps_a_plain_model_and_resumes_them(tmp_path):
    torch.manual_seed(0)
    run = tuner(tmp_path, deep_supervision=True)
    fresh = heads(run)
    run.run(Reporter(stdout=io.StringIO(), stderr=io.StringIO()), CancelToken())
    trained = heads(run)
    assert all(not torch.equal(fresh[k], trained[k]) for k in fresh), "the heads' loss must reach their weights"
    # model.pt is the plain SwinUNETR-v2 that segment builds: every key, no head.
    build_swinunetr("tiny", 2).load_state_dict(torch.load(tmp_path / MODEL_PT, weights_only=True), strict=True)

    torch.manual_seed(1)  # other initial heads: resuming must replace them by the checkpoint's
    resumed = tuner(tmp_path, deep_supervision=True, steps=3)
    resumed.resume()
    assert all(torch.equal(resumed.deep.state_dict()[k], trained[k]) for k in trained)
    assert resumed.progress.step == 2
    with pytest.raises(UsageError, match="deep_supervision differ"):
        tuner(tmp_path, deep_supervision=False, steps=3).resume()


def test_the_flag_reaches_the_loop_and_is_off_by_default():
    args = ["finetune", "--images", "a", "--labels", "b", "--out", "m"]
    assert build_parser().parse_args([*args, "--deep-supervision"]).deep_supervision is True
    assert FinetuneConfig(images=["a"], labels=["b"], out="m").deep_supervision is False
    config = FinetuneConfig(images=["a"], labels=["b"], out="m", deep_supervision=True)
    assert Schedule.from_config(config).deep_supervision is True
