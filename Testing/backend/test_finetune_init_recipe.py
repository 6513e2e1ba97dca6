"""The window rule for official encoders: ``finetune --init`` uses the encoder's pretraining window and spacing."""

from __future__ import annotations

import pytest

from voco_backend.segmentation.finetune_run import DEFAULT_SPACING, DEFAULT_WINDOW, recipe_from_init


@pytest.mark.parametrize("init", ["VoCo_B_SSL_head", "/data/weights/VoCo_H_SSL_head.pt"])
def test_official_encoder_brings_its_window_and_spacing(init):
    window, spacing, message = recipe_from_init(init, None, None)
    assert window == (-175.0, 250.0) and spacing == (1.5, 1.5, 1.5)
    assert message.startswith("window -175…250 HU, spacing 1.5×1.5×1.5 mm: recommended for VoCo_")


def test_the_users_window_and_spacing_win():
    window, spacing, message = recipe_from_init("VoCo_L_SSL_head", [-1000.0, 500.0], [2.0, 2.0, 3.0])
    assert (window, spacing, message) == ((-1000.0, 500.0), (2.0, 2.0, 3.0), None)
    window, spacing, message = recipe_from_init("VoCo_L_SSL_head", [-1000.0, 500.0], None)
    assert window == (-1000.0, 500.0) and message.startswith("spacing 1.5×1.5×1.5 mm")


@pytest.mark.parametrize("init", ["none", "runs/voco_b/encoder.pt"])
def test_other_inits_keep_the_defaults(init):
    assert recipe_from_init(init, None, None) == (DEFAULT_WINDOW, DEFAULT_SPACING, None)
