"""The memory guard's estimate grows with what a step holds, and refuses a step above the limit with advice."""

import pytest
import torch

from voco_backend.errors import OutOfMemory
from voco_backend.memory_guard import GB, StepShape, available_bytes, check_step_memory, estimate_peak_bytes

TINY = StepShape(feature_size=12, parameters=3_500_000, crops=22, crop_voxels=64**3)
CPU = torch.device("cpu")


def test_estimate_grows_with_crops_and_features_and_shrinks_with_checkpointing():
    base = estimate_peak_bytes(TINY)
    assert estimate_peak_bytes(StepShape(12, 3_500_000, 44, 64**3)) > base
    assert estimate_peak_bytes(StepShape(48, 62_000_000, 22, 64**3)) > 2 * base
    assert estimate_peak_bytes(StepShape(12, 3_500_000, 22, 64**3, gradient_checkpointing=True)) < base


# Peak RSS of SwinEncoder fwd+bwd (hugepages allocator, SDPA attention) measured on this project's machine:
# tiny on 2 and 6 crops of 64³, B on 2. Those runs had no optimiser: AdamW-amsgrad's three moments are added.
@pytest.mark.parametrize(
    ("shape", "measured_gb"),
    [
        (StepShape(12, 3_514_134, 2, 64**3), 1.30),
        (StepShape(12, 3_514_134, 6, 64**3), 2.94),
        (StepShape(48, 53_164_146, 2, 64**3), 2.67),
    ],
)
def test_estimate_is_at_most_a_third_above_the_measured_peaks(shape, measured_gb):
    step_gb = measured_gb + shape.parameters * 3 * 4 / GB
    assert step_gb <= estimate_peak_bytes(shape) / GB <= 1.35 * step_gb


def test_limit_from_the_environment_refuses_with_one_line_of_advice(monkeypatch):
    monkeypatch.setenv("VOCO_MEMORY_LIMIT_GB", "1")
    with pytest.raises(OutOfMemory) as refused:
        check_step_memory(TINY, CPU, 1, "use fewer --volumes-per-step")
    assert refused.value.exit_code == 4
    message = refused.value.message
    assert "\n" not in message and message.endswith("use fewer --volumes-per-step")
    assert "$VOCO_MEMORY_LIMIT_GB is 1.0 GB" in message


def test_processes_on_one_machine_share_its_ram(monkeypatch):
    need = estimate_peak_bytes(TINY)
    monkeypatch.setenv("VOCO_MEMORY_LIMIT_GB", str(1.5 * need / GB))
    assert check_step_memory(TINY, CPU, 1, "advice") == need
    with pytest.raises(OutOfMemory, match="× 2 processes"):
        check_step_memory(TINY, CPU, 2, "advice")


def test_cpu_limit_is_the_available_ram_by_default(monkeypatch):
    monkeypatch.delenv("VOCO_MEMORY_LIMIT_GB", raising=False)
    have, source = available_bytes(CPU)
    assert source == "available RAM" and 0.1 * GB < have < 1e15


def test_a_bad_limit_is_a_usage_error(monkeypatch):
    monkeypatch.setenv("VOCO_MEMORY_LIMIT_GB", "lots")
    with pytest.raises(Exception, match="VOCO_MEMORY_LIMIT_GB must be a number"):
        available_bytes(CPU)
