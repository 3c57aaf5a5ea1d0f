"""ONNX export of every supported family against torch eager."""

import numpy as np
import onnxruntime as ort
import pytest
import torch

from dmc.export.graphs import write_graphs
from dmc.export.onnx_export import export_onnx
from dmc.models.adapters import make_adapter
from dmc.models.loading import load_model


def tiny_cond_unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
                                layers_per_block=1, cross_attention_dim=32, attention_head_dim=8,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), norm_num_groups=8).eval()


def check_export(adapter, tmp_path):
    graph = export_onnx(adapter, adapter.example_inputs(2), adapter.input_names, ["prediction"])
    # A second variant of the same weights must not grow the shared weights file.
    paths = write_graphs({"full": graph, "twin": graph}, tmp_path)
    params = sum(p.numel() * 4 for p in adapter.parameters())
    assert (tmp_path / "weights.bin").stat().st_size < 1.1 * params
    session = ort.InferenceSession(str(paths["full"]), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        inputs = adapter.example_inputs(batch)
        with torch.no_grad():
            want = adapter(*inputs).numpy()
        got = session.run(None, {n: v.numpy() for n, v in zip(adapter.input_names, inputs)})[0]
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= 1e-4


@pytest.mark.parametrize("name", ["demo", "demo-dit"])
def test_demo_models_export(name, tmp_path):
    loaded = load_model(name)
    check_export(make_adapter(loaded.model, loaded.class_name), tmp_path)


def test_unet2d_condition_export(tmp_path):
    check_export(make_adapter(tiny_cond_unet()), tmp_path)


def test_timestep_is_a_batch_input(demo_artifact):
    import json

    graphs = json.loads((demo_artifact / "manifest.json").read_text())["graphs"]
    inputs = {i["name"]: i for i in graphs["full"]["inputs"]}
    assert inputs["timestep"]["dtype"] == "float32" and len(inputs["timestep"]["shape"]) == 1
    assert isinstance(inputs["sample"]["shape"][0], str)  # dynamic batch


def test_embedding_conditioned_unet_compiles_and_runs(tmp_path):
    """UNet2DConditionModel end to end: bare safetensors + config -> artifact -> runtime with embeddings."""
    import json

    import numpy as np

    from dmc.compress.pipeline import CompileOptions, compile_model
    from dmc.models.checkpoint import save_model
    from dmc.runtimes import load
    from dmc.sampling import Recipe

    from dmc.sampling.schedules import PRESETS

    # the training schedule rides in dmc's safetensors metadata (a bare file has none otherwise)
    save_model(tiny_cond_unet(), tmp_path / "cond.safetensors", scheduler_config=PRESETS["sd15"])
    art = compile_model(str(tmp_path / "cond.safetensors"), tmp_path / "cond.dmc",
                        CompileOptions(recipe=Recipe(steps=3, guidance=3.0), verify_images=2,
                                       scheduler_preset="sd15"))
    m = json.loads((art / "manifest.json").read_text())
    assert m["training_schedule"] == PRESETS["sd15"] and "metadata" in m["training_schedule_origin"]
    assert m["model"]["conditioning"]["kind"] == "embedding"
    pipe = load(art)
    emb = np.random.default_rng(0).standard_normal((2, 77, 32)).astype(np.float32)
    a = pipe.sample(2, seed=0, embeddings=emb)
    b = pipe.sample(2, seed=0, embeddings=emb * 0)
    assert a.shape == (2, 4, 8, 8) and np.isfinite(a).all()
    assert np.abs(a - b).max() > 1e-4  # the embeddings reach the network
