"""The loading rule of VOCO.md §7: wrappers, prefixes, shape checks, refusals and the 145-key export."""

from __future__ import annotations

import argparse
import io
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from monai.networks.nets import SwinUNETR
from torch import nn

from voco_backend.errors import DataError, UsageError
from voco_backend.networks import ENCODER_PREFIXES, SwinEncoder, build_swinunetr
from voco_backend.weights import ENCODER_KEY_COUNT, export_encoder, load_pretrained, read_checkpoint


def swinunetr(
    seed: int, *, out_channels: int = 2, in_channels: int = 1, feature_size: int = 12, use_v2: bool = True
) -> SwinUNETR:
    """A small SwinUNETR with a seeded initialisation."""
    torch.manual_seed(seed)
    return SwinUNETR(in_channels=in_channels, out_channels=out_channels, feature_size=feature_size, use_v2=use_v2)


def encoder_part(model: nn.Module) -> nn.ModuleDict:
    """The encoder path of a SwinUNETR as a module whose state dict keys are the official 145 names."""
    return nn.ModuleDict({name: getattr(model, name) for name in ENCODER_PREFIXES})


def is_encoder_key(key: str) -> bool:
    return key.split(".")[0] in ENCODER_PREFIXES


@pytest.fixture(scope="module")
def official() -> dict[str, torch.Tensor]:
    """A checkpoint in the official layout, made from a fresh tiny SwinEncoder."""
    torch.manual_seed(1)
    return SwinEncoder("tiny").state_dict()


WRAPPINGS: dict[str, Callable[[dict[str, torch.Tensor]], object]] = {
    "bare flat": lambda sd: dict(sd),
    "state_dict + module.": lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3},
    "net + swin_vit": lambda sd: {"net": {k.replace("swinViT", "swin_vit"): v for k, v in sd.items()}},
    "backbone.": lambda sd: {f"backbone.{k}": v for k, v in sd.items()},
    "student + module.backbone.": lambda sd: {"student": {f"module.backbone.{k}": v for k, v in sd.items()}},
}


@pytest.mark.parametrize("wrapping", list(WRAPPINGS))
def test_official_layout_loads_all_145_tensors(official, wrapping, tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save(WRAPPINGS[wrapping](official), path)
    assert len(official) == ENCODER_KEY_COUNT

    target = swinunetr(seed=2)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    assert any(not torch.equal(before[k], official[k]) for k in official)
    report = load_pretrained(target, path)

    assert sorted(report.loaded) == sorted(official)
    assert report.shape_mismatch == [] and report.unexpected == []
    assert sorted(report.missing) == sorted(k for k in before if not is_encoder_key(k))
    after = target.state_dict()
    assert all(torch.equal(after[k], official[k]) for k in official)
    assert all(torch.equal(after[k], before[k]) for k in report.missing)
    assert f"loaded {ENCODER_KEY_COUNT}/{len(before)} tensors ({ENCODER_KEY_COUNT} encoder)" in report.summary()
    assert "decoder1" in report.summary() and "\n" not in report.summary()
    state = read_checkpoint(path)
    assert set(state) == set(official)
    encoder_part(target).load_state_dict(state, strict=True)


def test_swin_encoder_target_and_in_memory_source(official):
    target = SwinEncoder("tiny")
    report = load_pretrained(target, {"model": official})
    assert len(report.loaded) == ENCODER_KEY_COUNT and report.missing == [] and report.source == "<state dict>"
    assert all(torch.equal(v, official[k]) for k, v in target.state_dict().items())


def test_other_class_count_keeps_out_fresh(tmp_path):
    path = tmp_path / "omni.pt"
    source = swinunetr(seed=3, out_channels=21).state_dict()
    torch.save(source, path)
    target = swinunetr(seed=4, out_channels=5)
    out_before = {k: v.clone() for k, v in target.state_dict().items() if k.startswith("out.")}

    report = load_pretrained(target, path)

    assert sorted(report.shape_mismatch) == sorted(out_before)
    assert report.missing == [] and len(report.loaded) == len(source) - len(out_before)
    after = target.state_dict()
    assert all(torch.equal(after[k], v) for k, v in out_before.items())
    assert all(torch.equal(after[k], source[k]) for k in report.loaded)
    assert "kept fresh (shape differs): out" in report.summary()


def test_two_input_channels_keep_patch_embed_and_encoder1_fresh(official):
    target = swinunetr(seed=5, in_channels=2)
    before = {k: v.clone() for k, v in target.state_dict().items()}

    report = load_pretrained(target, official)

    assert "swinViT.patch_embed.proj.weight" in report.shape_mismatch
    assert any(k.startswith("encoder1.") for k in report.shape_mismatch)
    assert all(k.startswith(("swinViT.patch_embed.", "encoder1.")) for k in report.shape_mismatch)
    after = target.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in report.shape_mismatch)
    assert all(torch.equal(after[k], official[k]) for k in report.loaded)
    assert len(report.loaded) == ENCODER_KEY_COUNT - len(report.shape_mismatch)


def test_no_matching_key_is_refused(tmp_path):
    path = tmp_path / "unrelated.pt"
    torch.save({"state_dict": {"classifier.weight": torch.zeros(3, 4)}}, path)
    with pytest.raises(DataError, match="no weight fits the model") as info:
        load_pretrained(swinunetr(seed=0), path)
    assert info.value.file == str(path)


def test_other_feature_size_is_refused_with_both_sizes():
    source = swinunetr(seed=0, feature_size=24).state_dict()
    with pytest.raises(DataError, match="feature_size 24 but the model has 12"):
        load_pretrained(swinunetr(seed=0), source)


def test_decoder_only_match_fails_the_encoder_requirement():
    source = {k: v for k, v in swinunetr(seed=0).state_dict().items() if k.startswith("decoder")}
    with pytest.raises(DataError, match="none of the swinViT weights fit"):
        load_pretrained(swinunetr(seed=1), source)
    assert load_pretrained(swinunetr(seed=1), source, require=()).loaded == list(source)


def test_v1_target_is_refused(official, tmp_path):
    path = tmp_path / "VoCo_B_SSL_head.pt"
    torch.save(official, path)
    with pytest.raises(UsageError, match="use_v2=True") as info:
        load_pretrained(swinunetr(seed=0, use_v2=False), path)
    assert info.value.file == str(path)


def test_v1_checkpoint_into_v2_is_refused():
    v1_state = swinunetr(seed=0, use_v2=False).state_dict()
    with pytest.raises(DataError, match="v1 checkpoint"):
        load_pretrained(swinunetr(seed=1), v1_state)


def test_files_that_are_not_weight_checkpoints_name_the_file(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(DataError, match="not a weights-only PyTorch checkpoint") as info:
        read_checkpoint(text)
    assert info.value.file == str(text)

    pickled = tmp_path / "objects.pt"
    torch.save({"args": argparse.Namespace(lr=1.0)}, pickled)
    with pytest.raises(DataError, match="not a weights-only PyTorch checkpoint"):
        read_checkpoint(pickled)

    no_tensors = tmp_path / "meta.pt"
    torch.save({"epoch": 3, "name": "x"}, no_tensors)
    with pytest.raises(DataError, match="holds no tensors"):
        read_checkpoint(no_tensors)

    with pytest.raises(DataError, match="not found"):
        read_checkpoint(tmp_path / "missing.pt")


def test_export_encoder_writes_the_official_layout(tmp_path):
    source = swinunetr(seed=6, out_channels=3)
    path = export_encoder(source, tmp_path / "out" / "encoder.pt")

    exported = torch.load(path, map_location="cpu", weights_only=True)
    assert len(exported) == ENCODER_KEY_COUNT
    assert all(is_encoder_key(k) for k in exported)
    assert all(t.is_contiguous() and t.device.type == "cpu" for t in exported.values())
    assert [p.name for p in path.parent.iterdir()] == ["encoder.pt"]

    target = SwinUNETR(in_channels=1, out_channels=7, feature_size=12, use_v2=True)
    encoder_part(target).load_state_dict(exported, strict=True)
    expected = source.state_dict()
    assert all(torch.equal(target.state_dict()[k], expected[k]) for k in exported)

    from_wrapped_state = export_encoder({"state_dict": source.state_dict()}, tmp_path / "again.pt")
    again = torch.load(from_wrapped_state, weights_only=True)
    assert all(torch.equal(again[k], exported[k]) for k in exported)


def test_export_refuses_a_v1_model(tmp_path):
    with pytest.raises(DataError, match="145-tensor"):
        export_encoder(swinunetr(seed=0, use_v2=False), tmp_path / "encoder.pt")
    assert not any(tmp_path.iterdir())


def test_checkpoint_path_may_be_a_string(official, tmp_path: Path):
    path = tmp_path / "flat.pt"
    torch.save(official, path)
    report = load_pretrained(SwinEncoder("tiny"), str(path))
    assert report.source == str(path) and len(report.loaded) == ENCODER_KEY_COUNT


def _save_as_the_vocomni_trainer(path: Path, state: dict) -> Path:
    """``torch.save`` of the official VoComni trainer's dict: ``best_acc`` is ``np.mean`` of Dice scores."""
    import numpy as np

    torch.save({"epoch": 5, "best_acc": np.mean([0.62, 0.7, 0.91]), "state_dict": state}, path)
    return path


def test_vocomni_style_checkpoint_loads_weights_only(tmp_path):
    torch.manual_seed(0)
    net = build_swinunetr("tiny", 3)
    path = _save_as_the_vocomni_trainer(
        tmp_path / "VoComni_tiny.pt", {f"module.{k}": v for k, v in net.state_dict().items()}
    )
    state = read_checkpoint(path)
    assert len(state) == 167
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())


def test_vocomni_style_checkpoint_loads_through_finetune_init(tmp_path):
    from voco_backend.protocol import Reporter
    from voco_backend.segmentation.finetune_run import _init_encoder

    torch.manual_seed(0)
    source = build_swinunetr("tiny", 3)
    path = _save_as_the_vocomni_trainer(tmp_path / "omni.pt", source.state_dict())
    target = build_swinunetr("tiny", 2)  # another class count: `out` stays fresh
    init = _init_encoder(target, str(path), Reporter(stdout=io.StringIO(), stderr=io.StringIO()))
    assert init["summary"].startswith("loaded 165/167 tensors (145 encoder)")
    assert torch.equal(target.swinViT.patch_embed.proj.weight, source.swinViT.patch_embed.proj.weight)


def test_a_pickle_with_any_other_global_is_refused(tmp_path):
    import datetime

    import numpy as np

    for i, extra in enumerate((np.array([0.5]), datetime.date(2024, 1, 1), argparse.Namespace(lr=1))):
        path = tmp_path / f"other{i}.pt"
        torch.save({"best_acc": np.float64(0.5), "extra": extra, "state_dict": SwinEncoder("tiny").state_dict()}, path)
        with pytest.raises(DataError, match="not a weights-only PyTorch checkpoint") as info:
            read_checkpoint(path)
        assert "\n" not in str(info.value) and info.value.file == str(path)
