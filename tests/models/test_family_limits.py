"""The family limits the daemon checks before queueing (daemon.models.families)."""

from __future__ import annotations

import pytest

from daemon.models.families import FAMILIES, check_params, family, token_warnings


def test_sizes_must_fit_the_familys_multiple() -> None:
    assert check_params("sd15", {"width": 72, "height": 64}) == []
    [(field, reason)] = check_params("flux", {"width": 72, "height": 64})
    assert field == "width" and "multiple of 16" in reason and "72" in reason
    assert [f for f, _ in check_params("sd3", {"width": 64, "height": 40})] == ["height"]


def test_flux_refuses_a_negative_prompt_the_others_take_it() -> None:
    [(field, reason)] = check_params("flux", {"negative_prompt": "blurry"})
    assert field == "negative_prompt" and "no negative prompt" in reason
    assert check_params("flux", {"negative_prompt": ""}) == []
    for name in ("sd15", "sd2", "sdxl", "sd3", "pixart"):
        assert check_params(name, {"negative_prompt": "blurry"}) == []


def test_flow_matching_families_run_only_with_euler() -> None:
    assert check_params("sd3", {"scheduler": "ddim"}) == [("scheduler", "Stable Diffusion 3 / 3.5 models (sd3) "
                                                                       "run with euler, not ddim")]
    assert check_params("sdxl", {"scheduler": "dpm"}) == []


def test_token_warnings_name_each_encoder_that_truncates() -> None:
    assert token_warnings("flux", {"clip": 70, "t5": 400}) == []
    [clip] = token_warnings("sdxl", {"clip": 90})  # two CLIP encoders, one warning
    assert "90 CLIP tokens" in clip and "first 77" in clip
    warnings = token_warnings("sd3", {"clip": 90, "t5": 300})
    assert len(warnings) == 2 and "first 256" in warnings[1]
    assert "first 512" in token_warnings("flux", {"t5": 600})[0]


def test_defaults_per_device_and_unknown_family() -> None:
    assert FAMILIES["flux"].default_dtype("cuda") == "bfloat16" and FAMILIES["sdxl"].default_dtype("cuda") == "float16"
    assert all(f.default_dtype("cpu") == "float32" for f in FAMILIES.values())
    with pytest.raises(KeyError, match="unknown model family 'sd4'"):
        family("sd4")
