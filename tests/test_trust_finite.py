"""Issue 14 item 1: non-finite weights, activations and verification figures are refused, never reported."""

import math

import pytest

from dmc.errors import DmcError


@pytest.fixture(scope="module")
def nan_weights(tmp_path_factory):
    """The demo UNet with one NaN in a conv weight, saved with dmc metadata."""
    import torch

    from dmc.models.checkpoint import save_model
    from dmc.models.loading import load_model

    loaded = load_model("demo")
    with torch.no_grad():
        loaded.model.conv_in.weight[0, 0, 0, 0] = float("nan")
    path = tmp_path_factory.mktemp("nan") / "nan.safetensors"
    save_model(loaded.model, path, loaded.scheduler_config)
    return path


def test_nan_weights_refused_at_load_naming_the_tensor(nan_weights, tmp_path, run_cli):
    code, out, err = run_cli("compress", nan_weights, "--out", tmp_path / "x.dmc", "--steps", "2")
    assert code == 2, (out, err)
    assert "conv_in.weight" in err and "non-finite" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_verification_refuses_nan_samples(nan_weights, tmp_path, monkeypatch):
    """With the load check out of the way, the NaN reaches verification, which must not pass it."""
    from dmc.compress.pipeline import CompileOptions, compile_model
    from dmc.models import loading
    from dmc.sampling import Recipe

    monkeypatch.setattr(loading, "check_finite_weights", lambda *a, **k: None, raising=False)
    with pytest.raises(DmcError, match="non-finite"):
        compile_model(str(nan_weights), tmp_path / "x.dmc", CompileOptions(recipe=Recipe(steps=2), verify_images=1))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_calibration_refuses_nan_activations(nan_weights, tmp_path, monkeypatch):
    from dmc.compress.pipeline import CompileOptions, compile_model
    from dmc.models import loading
    from dmc.quantize import QuantizeConfig
    from dmc.sampling import Recipe

    monkeypatch.setattr(loading, "check_finite_weights", lambda *a, **k: None, raising=False)
    opts = CompileOptions(recipe=Recipe(steps=2), passes=[QuantizeConfig(num_samples=8)], verify_images=1)
    with pytest.raises(DmcError, match="non-finite activations.*calibration"):
        compile_model(str(nan_weights), tmp_path / "x.dmc", opts)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("psnr", [math.nan, -math.inf, 10.0])
def test_psnr_floor_cannot_be_met_by_nan(psnr):
    from dmc.compress.pipeline import check_fidelity

    with pytest.raises(DmcError):
        check_fidelity(psnr, 60.0)
    check_fidelity(math.inf, 60.0)  # identical samples
    check_fidelity(61.0, 60.0)
