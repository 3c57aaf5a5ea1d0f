"""Every supported architecture, as the hub lays it out: dispatch, conditioning inputs, compiles, refusals."""

import json
import shutil

import numpy as np
import pytest
import torch

from dmc.errors import DmcError
from dmc.models import families
from dmc.models.loading import inspect_source, load_model
from hub_models import HUB_MODELS, build_model, save_layouts

LAYOUTS = ("pipeline", "folder", "file")


@pytest.fixture(scope="session")
def hub(tmp_path_factory):
    """All tiny hub models in all three layouts, built once."""
    root = tmp_path_factory.mktemp("hub")
    return {key: save_layouts(key, root) for key in HUB_MODELS}


def _weights_equal(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("key", list(HUB_MODELS))
def test_every_layout_resolves_to_the_family(hub, key):
    spec = HUB_MODELS[key]
    loaded = {layout: load_model(str(hub[key][layout])) for layout in LAYOUTS}
    for layout, m in loaded.items():
        assert m.family == spec.name, layout
        assert m.class_name == spec.diffusers_class, layout
    assert _weights_equal(loaded["pipeline"].model, loaded["file"].model)
    assert loaded["pipeline"].scheduler_config["prediction_type"] == spec.schedule["prediction_type"]


def test_hub_transformer2d_configs_dispatch_on_config_then_tensors(hub, tmp_path):
    for key, fam in (("dit", "dit"), ("pixart", "pixart")):
        folder = tmp_path / key
        shutil.copytree(hub[key]["folder"], folder)
        cfg = json.loads((folder / "config.json").read_text())
        assert cfg["_class_name"] == "Transformer2DModel"
        assert inspect_source(str(folder)).family.name == fam
        del cfg["norm_type"]  # an older config without norm_type: the tensors decide
        (folder / "config.json").write_text(json.dumps(cfg))
        assert inspect_source(str(folder)).family.name == fam
    cfg["norm_type"] = "layer_norm"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(DmcError, match="matches no supported family.*DiT.*ada_norm_zero.*PixArt.*ada_norm_single"):
        inspect_source(str(folder))


def test_unsupported_class_names_what_is_supported(hub, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(hub["sd"]["folder"], folder)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "_class_name": "UNet3DConditionModel"}))
    with pytest.raises(DmcError) as err:
        inspect_source(str(folder))
    msg = str(err.value)
    assert "UNet3DConditionModel" in msg and "\n" not in msg
    for cls in ("UNet2DConditionModel", "Transformer2DModel", "SD3Transformer2DModel", "FluxTransformer2DModel"):
        assert cls in msg
    (folder / "config.json").write_text(json.dumps({**cfg, "addition_embed_type": "text"}))
    with pytest.raises(DmcError, match="SDXL UNet needs addition_embed_type 'text_time'"):
        inspect_source(str(folder))


def test_bare_checkpoints_are_detected_from_tensor_names(hub, tmp_path):
    from safetensors.torch import load_file, save_file

    for key, spec in HUB_MODELS.items():
        bare = tmp_path / f"{key}.safetensors"
        save_file(load_file(str(hub[key]["file"])), str(bare))  # no config anywhere
        if spec.name in ("dit",):  # a config dmc can infer from shapes
            with pytest.warns(UserWarning, match="inferred"):
                assert load_model(str(bare)).family == "dit"
        else:
            with pytest.raises(DmcError, match=f"found a {spec.diffusers_class} but no config"):
                load_model(str(bare))


WIDTH_KEY = {"sd": "cross_attention_dim", "sd2": "cross_attention_dim", "sdxl": "projection_class_embeddings_input_dim",
             "dit": "num_layers", "pixart": "caption_channels", "sd3": "joint_attention_dim",
             "flux": "pooled_projection_dim"}


@pytest.mark.parametrize("key", list(HUB_MODELS))
def test_config_and_weights_that_disagree_are_refused(hub, key, tmp_path):
    file = tmp_path / "w.safetensors"
    shutil.copy(hub[key]["file"], file)
    cfg = json.loads(hub[key]["file"].with_suffix(".json").read_text())
    cfg[WIDTH_KEY[key]] = cfg[WIDTH_KEY[key]] * 2 if isinstance(cfg[WIDTH_KEY[key]], int) else 48
    file.with_suffix(".json").write_text(json.dumps(cfg))
    with pytest.raises(DmcError, match="tensors do not match the .* config"):
        load_model(str(file))


def test_pipeline_folder_without_scheduler_is_refused(hub, tmp_path):
    pipe = tmp_path / "pipe"
    shutil.copytree(hub["sd"]["pipeline"], pipe)
    shutil.rmtree(pipe / "scheduler")
    with pytest.raises(DmcError, match="no scheduler/scheduler_config.json"):
        load_model(str(pipe))


def test_too_large_for_memory_is_refused_before_loading(hub, monkeypatch):
    import dmc.models.loading as loading

    monkeypatch.setenv("DMC_MEMORY_BUDGET_GB", "0.00001")
    monkeypatch.setattr(loading, "load_tensors", lambda *a: pytest.fail("tensors were loaded"))
    params = inspect_source(str(hub["sd3"]["pipeline"])).parameters
    assert params == sum(t.numel() for t in build_model(HUB_MODELS["sd3"]).state_dict().values())
    with pytest.raises(DmcError) as err:
        load_model(str(hub["sd3"]["pipeline"]))
    msg = str(err.value)
    assert "GiB to compile" in msg and "only 0.0 GiB is available" in msg and "\n" not in msg


@pytest.mark.parametrize("key,flags", [("pixart", ["--cache"]), ("sd3", ["--int8", "--cache"]),
                                       ("flux", ["--cache"]), ("sdxl", ["--cache"])])
def test_unsupported_pass_is_refused_before_any_work(hub, key, flags, run_cli, tmp_path, monkeypatch):
    import dmc.compress.pipeline as pipeline

    monkeypatch.setattr(pipeline, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    out = tmp_path / "out.dmc"
    code, _, err = run_cli("compress", hub[key]["pipeline"], "--out", out, *flags)
    assert code != 0 and not out.exists()
    line = err.strip()
    assert "\n" not in line and "--cache is not supported for" in line and "yet:" in line


def test_capability_table_covers_every_family():
    for fam in families.FAMILIES:
        for stage in ("cache", "quantize"):
            verdict = fam.supports[stage]
            assert verdict is True or (isinstance(verdict, str) and len(verdict) > 20), (fam.name, stage)


def test_pixart_masked_cross_attention_matches_diffusers():
    from dmc.models.adapters import make_adapter

    spec = HUB_MODELS["pixart"]
    stock = build_model(spec)
    ex = list(make_adapter(build_model(spec)).example_inputs(3))
    mask = torch.ones(3, ex[3].shape[1])
    mask[:, 9:] = 0
    mask[1, 2:5] = 0
    with torch.no_grad():
        want = stock(ex[0], encoder_hidden_states=ex[2], timestep=ex[1], encoder_attention_mask=mask,
                     added_cond_kwargs={"resolution": ex[4], "aspect_ratio": ex[5]}, return_dict=False)[0]
        adapter = make_adapter(stock)
        got = adapter(ex[0], ex[1], ex[2], mask, ex[4], ex[5])
        unmasked = adapter(ex[0], ex[1], ex[2], torch.ones_like(mask), ex[4], ex[5])
    torch.testing.assert_close(got, want[:, :4], rtol=1e-5, atol=1e-5)  # learned sigma dropped
    assert (unmasked - got).abs().max() > 1e-3  # the mask reaches the network


def test_flux_packing_matches_the_pipeline():
    from diffusers import FluxPipeline

    from dmc.models.families.mmdit import image_ids, pack, unpack

    x = torch.randn(2, 16, 6, 8)
    torch.testing.assert_close(pack(x), FluxPipeline._pack_latents(x, 2, 16, 6, 8))
    torch.testing.assert_close(unpack(pack(x), 6, 8), x)
    ids = FluxPipeline._prepare_latent_image_ids(2, 3, 4, "cpu", torch.float32)
    torch.testing.assert_close(image_ids(6, 8), ids)


def test_runtime_feeds_named_conditions_without_torch_types():
    from dmc.runtimes.conditions import condition_feeds

    cond = {"kind": "embedding", "inputs": [
        {"name": "encoder_hidden_states", "shape": [3, 2], "dtype": "float32", "uncond": "zeros", "default": None},
        {"name": "time_ids", "shape": [2], "dtype": "float32", "uncond": "same", "default": [64.0, 32.0]},
        {"name": "guidance", "shape": [], "dtype": "float32", "uncond": "same", "default": 3.5}]}
    emb = np.arange(6, dtype=np.float32).reshape(3, 2)
    feeds, unfeeds = condition_feeds(cond, 2, {"encoder_hidden_states": emb, "guidance": [1.0, 2.0]}, None)
    assert feeds["encoder_hidden_states"].shape == (2, 3, 2) and (feeds["encoder_hidden_states"][1] == emb).all()
    assert (unfeeds["encoder_hidden_states"] == 0).all()
    assert feeds["time_ids"].tolist() == [[64.0, 32.0]] * 2 and unfeeds["time_ids"].tolist() == [[64.0, 32.0]] * 2
    assert feeds["guidance"].tolist() == [1.0, 2.0] == unfeeds["guidance"].tolist()
    with pytest.raises(DmcError, match="takes no input 'text_embeds'.*it takes: encoder_hidden_states"):
        condition_feeds(cond, 2, {"text_embeds": np.zeros(4)}, None)
    with pytest.raises(DmcError, match=r"'time_ids' must have shape \[2, 2\]"):
        condition_feeds(cond, 2, {"time_ids": np.zeros(3)}, None)


def _compile(source, out, spec, passes=(), steps=3):
    from dmc.compress.pipeline import CompileOptions, compile_model
    from dmc.sampling import Recipe

    guidance = 2.0 if spec.name != "flux" else 1.0
    recipe = Recipe(steps=steps, guidance=guidance, resolution=spec.resolution)
    return compile_model(str(source), out, CompileOptions(recipe=recipe, passes=list(passes), verify_images=2))


def _check_artifact(path, spec):
    from dmc.runtimes import load

    pipe = load(path)
    m = pipe.manifest.model
    assert m["architecture"] == spec.name and m["class"] == spec.diffusers_class
    names = [i["name"] for i in m["conditioning"]["inputs"]]
    for g in pipe.manifest.graphs.values():
        assert [i["name"] for i in g["inputs"]][2:2 + len(names)] == names
    v = pipe.manifest.data["verification"]
    assert v["psnr_db"] >= v["floor_psnr_db"]
    return pipe, m["conditioning"]["inputs"]


@pytest.mark.slow
@pytest.mark.parametrize("key", ["sdxl", "pixart", "sd3", "flux"])  # SD (2.x config): the test below
def test_fp32_compile_of_each_family(hub, key, tmp_path):
    """Pipeline folder -> artifact, verified by dmc's own verify step; every named condition reaches the graph."""
    spec = HUB_MODELS[key]
    pipe, inputs = _check_artifact(_compile(hub[key]["pipeline"], tmp_path / "a.dmc", spec), spec)
    rng = np.random.default_rng(0)
    random = {i["name"]: rng.uniform(0.5, 1.5, i["shape"]).astype(np.float32)
              for i in inputs if i["dtype"] == "float32"}
    text = {"encoder_hidden_states": random.pop("encoder_hidden_states")}
    base = pipe.sample(1, seed=0)
    assert base.shape[1:] == tuple(pipe.manifest.sample_shape) and np.isfinite(base).all()
    with_text = pipe.sample(1, seed=0, conditions=text)
    assert np.abs(with_text - base).max() > 1e-4
    for name, value in random.items():  # each other condition changes the result (text states fixed)
        changed = pipe.sample(1, seed=0, conditions={**text, name: value})
        assert np.abs(changed - with_text).max() > 1e-4, name


@pytest.mark.slow
# DiT: on this 2-layer DiT, BAC picks calls with every branch cached; such a graph has no layer to
# quantize and stays FP32 (with a warning) while the others run INT8
@pytest.mark.parametrize("key", ["sd2", "dit"])
def test_int8_and_cache_on_a_unet_and_a_transformer_family(hub, key, tmp_path):
    from dmc.cache import CacheConfig
    from dmc.cache.correction import CorrectConfig
    from dmc.quantize import QuantizeConfig

    spec = HUB_MODELS[key]
    # DiT: BAC (the CLI's default) keeps some branches live in every cached call; a uniform schedule's
    # all-cached call leaves no layer to quantize
    schedule = "uniform" if key == "sd2" else "bac"
    passes = [CacheConfig(schedule=schedule, interval=2, num_samples=2),
              QuantizeConfig(num_samples=8, search_candidates=10, calibration="uniform", uniform_calls=4),
              CorrectConfig()]
    pipe, _ = _check_artifact(_compile(hub[key]["pipeline"], tmp_path / "q.dmc", spec, passes, steps=4), spec)
    done = [p["name"] for p in pipe.manifest.data["passes"]]
    # the decoupled error correction exists for DeepCache's shallow graphs; DiT block caching has none yet
    assert done == (["cache", "quantize", "correct"] if key == "sd2" else ["cache", "quantize"])
    assert pipe.manifest.data["precision"] == "int8"
    precisions = {g.get("precision") for g in pipe.manifest.graphs.values()}
    assert "int8" in precisions
    assert len({c.graph for c in pipe.manifest.calls}) >= 2  # full and cached-step graphs both run
