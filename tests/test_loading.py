"""Model loading from every accepted source, and clean failures on bad input."""

import json
import pickle
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from dmc.errors import DmcError
from dmc.models.builtin import demo_path
from dmc.models.loading import load_model


@pytest.fixture(scope="module")
def demo_state():
    loaded = load_model("demo")
    return loaded, {k: v.clone() for k, v in loaded.model.state_dict().items()}


def same_weights(a, b):
    return all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())


def test_diffusers_folder_and_pipeline_folder(demo_state, tmp_path):
    loaded, _ = demo_state
    loaded.model.save_pretrained(tmp_path / "pipe" / "unet", safe_serialization=True)
    (tmp_path / "pipe" / "scheduler").mkdir()
    (tmp_path / "pipe" / "scheduler" / "scheduler_config.json").write_text(json.dumps(loaded.scheduler_config))
    direct = load_model(str(tmp_path / "pipe" / "unet"))
    via_pipeline = load_model(str(tmp_path / "pipe"))
    assert direct.class_name == via_pipeline.class_name == "UNet2DModel"
    assert same_weights(direct.model, loaded.model)


def test_bare_safetensors_config_sources(demo_state, tmp_path):
    loaded, state = demo_state
    bare = tmp_path / "bare.safetensors"
    save_file(state, str(bare))  # no metadata at all
    config = dict(loaded.config, _class_name="UNet2DModel")
    (tmp_path / "cfg.json").write_text(json.dumps(config))
    assert same_weights(load_model(str(bare), str(tmp_path / "cfg.json")).model, loaded.model)
    (tmp_path / "bare.json").write_text(json.dumps(config))  # sidecar next to the file
    assert same_weights(load_model(str(bare)).model, loaded.model)


@pytest.mark.parametrize("name", ["demo", "demo-dit"])
def test_detection_from_tensor_names(name, tmp_path):
    loaded = load_model(name)
    bare = tmp_path / "x.safetensors"
    save_file({k: v.contiguous() for k, v in loaded.model.state_dict().items()}, str(bare))
    with pytest.warns(UserWarning, match="inferred"):
        found = load_model(str(bare))
    assert found.class_name == loaded.class_name
    assert found.assumptions  # what could not be read from the weights is said
    assert same_weights(found.model, loaded.model)


BAD_INPUTS = {}


def bad(name):
    def deco(fn):
        BAD_INPUTS[name] = fn
        return fn
    return deco


@bad("missing file")
def _missing(tmp):
    return tmp / "nope.safetensors", "no such file"


@bad("folder without config")
def _no_config(tmp):
    (tmp / "m").mkdir()
    return tmp / "m", "no config.json"


@bad("truncated safetensors")
def _truncated(tmp):
    data = demo_path("demo").read_bytes()
    (tmp / "t.safetensors").write_bytes(data[: len(data) // 2])
    return tmp / "t.safetensors", "truncated"


@bad("corrupt header")
def _corrupt(tmp):
    data = bytearray(demo_path("demo").read_bytes())
    data[20:40] = b"\xff" * 20
    (tmp / "c.safetensors").write_bytes(bytes(data))
    return tmp / "c.safetensors", "corrupt"


@bad("oversized header")
def _oversized(tmp):
    (tmp / "o.safetensors").write_bytes((2**40).to_bytes(8, "little") + b"{}")
    return tmp / "o.safetensors", "corrupt safetensors header"


@bad("tensors that do not match the config")
def _mismatch(tmp):
    loaded = load_model("demo")
    cfg = dict(loaded.config, _class_name="UNet2DModel", block_out_channels=[32, 64, 128])
    save_file({k: v.contiguous() for k, v in loaded.model.state_dict().items()}, str(tmp / "w.safetensors"))
    (tmp / "w.json").write_text(json.dumps(cfg))
    return tmp / "w.safetensors", "do not match"


@bad("unknown architecture")
def _unknown(tmp):
    save_file({"encoder.weight": torch.zeros(3, 3)}, str(tmp / "u.safetensors"))
    return tmp / "u.safetensors", "unknown architecture"


@bad("pickle renamed to .safetensors")
def _pickle(tmp):
    torch.save({"w": torch.zeros(2)}, tmp / "p.safetensors")
    return tmp / "p.safetensors", "pickle"


@bad("raw pickle renamed")
def _raw_pickle(tmp):
    (tmp / "r.safetensors").write_bytes(pickle.dumps({"w": np.zeros(2)}, protocol=4))
    return tmp / "r.safetensors", "pickle"


@bad("a .ckpt checkpoint")
def _ckpt(tmp):
    torch.save({"w": torch.zeros(2)}, tmp / "model.ckpt")
    return tmp / "model.ckpt", "never loads"


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_model_input_fails_cleanly(case, tmp_path, run_cli):
    path, needle = BAD_INPUTS[case](tmp_path)
    out = tmp_path / "out.dmc"
    code, stdout, stderr = run_cli("compress", path, "--out", out)
    assert code == 2
    assert "Traceback" not in stderr
    lines = [line for line in stderr.strip().splitlines() if line.startswith("dmc: error:")]
    assert len(lines) == 1 and needle in lines[0].lower()
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.dmc")]  # no temp folder left


def test_load_model_raises_dmc_error(tmp_path):
    with pytest.raises(DmcError, match="no such file"):
        load_model(str(tmp_path / "missing"))


def test_existing_output_needs_force(tmp_path, run_cli, demo_artifact):
    target = tmp_path / "a.dmc"
    shutil.copytree(demo_artifact, target)
    code, _, err = run_cli("compress", "demo", "--out", target, "--steps", "4")
    assert code == 2 and "--force" in err
