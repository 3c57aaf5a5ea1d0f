"""Training schedules are never guessed: found beside the model, given as a file or preset, or refused."""

import json

import pytest
import torch

from dmc.errors import DmcError
from dmc.sampling import Recipe
from dmc.sampling.compile import compile_calls
from dmc.sampling.schedules import PRESETS, resolve


@pytest.fixture(scope="module")
def tiny_unet_folders(tmp_path_factory):
    """One tiny random UNet2DModel saved as a hub pipeline (with an SD 2.x-v scheduler) and as a bare unet/."""
    from diffusers import DDIMScheduler, UNet2DModel

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    model = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                        layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                        up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)
    model.save_pretrained(root / "pipe" / "unet")
    DDIMScheduler(**{k: v for k, v in PRESETS["sd2-v"].items() if not k.startswith("_")}).save_pretrained(
        root / "pipe" / "scheduler")
    model.save_pretrained(root / "bare" / "unet")
    return root


def test_bare_model_without_a_schedule_is_refused_naming_both_options(tiny_unet_folders, tmp_path, run_cli):
    out = tmp_path / "x.dmc"
    code, _, err = run_cli("compress", tiny_unet_folders / "bare" / "unet", "--out", out)
    assert code == 2 and not out.exists()
    errors = [line for line in err.splitlines() if not line.startswith("[dmc]")]  # progress lines aside
    assert len(errors) == 1 and errors[0].startswith("dmc: error:")
    assert "--scheduler-config FILE" in err and "--scheduler-preset NAME" in err
    code, _, err = run_cli("compress", tiny_unet_folders / "bare" / "unet", "--out", out,
                           "--scheduler-preset", "sd15", "--scheduler-config", "x.json")
    assert code == 2 and "not both" in err and not out.exists()


def test_resolution_order_and_origin(tmp_path):
    found = {"beta_schedule": "linear", "prediction_type": "epsilon"}
    assert resolve("m", found, "pipe/scheduler/scheduler_config.json") == (found, "pipe/scheduler/scheduler_config.json")
    schedule, origin = resolve("m", found, "pipe/scheduler/scheduler_config.json", preset="sd2-v")
    assert schedule["prediction_type"] == "v_prediction" and origin.startswith("preset sd2-v (overrides")
    path = tmp_path / "s.json"
    path.write_text(json.dumps(PRESETS["sdxl"]))
    assert resolve("m", None, None, config_file=str(path)) == (PRESETS["sdxl"], f"file {path}")
    with pytest.raises(DmcError, match="unknown --scheduler-preset 'sd9'.*sd15"):
        resolve("m", None, None, preset="sd9")
    with pytest.raises(DmcError, match="beta_schedule 'sigmoid'"):
        resolve("m", {"beta_schedule": "sigmoid"}, "f")
    with pytest.raises(DmcError, match="thresholding"):
        resolve("m", {"thresholding": True}, "f")
    path.write_text("[1, 2]")
    with pytest.raises(DmcError, match="JSON object"):
        resolve("m", None, None, config_file=str(path))


def test_presets_reach_the_table():
    """Different training schedules give different tables: nothing falls back to a default."""
    tables = {name: compile_calls(Recipe(sampler="ddim" if name not in ("sd3", "flux") else "flow-euler",
                                         steps=4), PRESETS[name], (4, 64, 64))
              for name in PRESETS}
    assert tables["sd15"][0].timestep == 751  # leading spacing, steps_offset 1
    assert tables["dit"][0].timestep == 750
    assert tables["sd2-v"][0].d_x != tables["sd2-base"][0].d_x  # v vs epsilon prediction
    assert tables["ddpm-linear"][0].c != tables["sd2-base"][0].c  # linear vs scaled-linear betas
    assert tables["flux"][1].timestep != tables["sd3"][1].timestep  # dynamic vs fixed shift


@pytest.mark.slow
def test_pipeline_folder_schedule_is_compiled_and_recorded(tiny_unet_folders, tmp_path):
    from dmc.compress.pipeline import CompileOptions, compile_model
    from dmc.runtimes import load

    recipe = Recipe(sampler="unipc-bh2", steps=4)
    path = compile_model(str(tiny_unet_folders / "pipe"), tmp_path / "p.dmc",
                         CompileOptions(recipe=recipe, verify_images=1))
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["training_schedule"]["prediction_type"] == "v_prediction"
    assert manifest["training_schedule_origin"].endswith("scheduler/scheduler_config.json")
    want = compile_calls(recipe, PRESETS["sd2-v"], (1, 8, 8))
    got = load(path).calls
    assert [c.timestep for c in got] == [c.timestep for c in want]
    assert [c.o for c in got] == pytest.approx([c.o for c in want])
    assert manifest["verification"]["psnr_db"] >= 60
    from dmc.inspect import describe, format_text

    text = format_text(describe(path))
    table = text[text.index("sampler    call"):].splitlines()[1:1 + len(want)]
    assert [float(line.split()[1]) for line in table] == pytest.approx([c.timestep for c in want], abs=0.01)
    assert all(" o=" in line for line in table)  # UniPC rows: the output weight, traced from diffusers
