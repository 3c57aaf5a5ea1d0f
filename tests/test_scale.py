"""Any size and calibration that scales: external-data writer, streaming statistics, cost bounds."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from dmc.errors import DmcError
from dmc.export import external
from dmc.export.graphs import write_graphs
from dmc.quantize.ranges import ActivationStats, params_from_range, search_params

LIMIT = 64 << 10  # a lowered protobuf limit: every test graph below holds more weight bytes than this


def _matmul_model(w: np.ndarray, b: np.ndarray, name: str = "g") -> onnx.ModelProto:
    """y = x @ w + b, with w and b as initializers (w alone is over LIMIT)."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])], name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", w.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", w.shape[1]])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.fixture
def low_limit(monkeypatch):
    monkeypatch.setattr(external, "MAX_PROTO_BYTES", LIMIT)


def test_writer_streams_weights_and_never_serializes_them(low_limit, tmp_path):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((128, 256), dtype=np.float32)  # 128 KB > LIMIT
    b1, b2 = rng.standard_normal(256, dtype=np.float32), rng.standard_normal(256, dtype=np.float32)
    full, variant = _matmul_model(w, b1), _matmul_model(w, b2)  # variants share w, differ in b
    with pytest.raises(DmcError, match="refusing to serialize"):
        external.serialize(full)  # the guard every dmc serialization goes through
    paths = write_graphs({"full": full, "variant": variant}, tmp_path)
    for p in paths.values():
        assert p.stat().st_size < LIMIT  # graph files hold structure, not weights
    # one copy of w, one of each bias (plus alignment padding)
    assert w.nbytes + 2 * b1.nbytes <= (tmp_path / "weights.bin").stat().st_size < w.nbytes + 2 * b1.nbytes + 3 * 64
    x = rng.standard_normal((3, 128), dtype=np.float32)
    for name, bias in (("full", b1), ("variant", b2)):
        got = ort.InferenceSession(str(paths[name]), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        np.testing.assert_allclose(got, x @ w + bias, rtol=1e-5, atol=1e-5)
    # the caller's graphs are unchanged: bytes back in place, nothing external
    assert numpy_helper.to_array(full.graph.initializer[0]).tobytes() == w.tobytes()
    assert all(t.data_location == TensorProto.DEFAULT for t in full.graph.initializer)


def test_release_and_in_memory_session_of_a_large_graph(low_limit, tmp_path):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((128, 256), dtype=np.float32)
    model = _matmul_model(w, np.zeros(256, np.float32))
    x = rng.standard_normal((2, 128), dtype=np.float32)
    # over the limit, the session goes through a temporary folder with external data
    assert external.needs_external(model)
    np.testing.assert_allclose(external.inference_session(model).run(None, {"x": x})[0], x @ w, rtol=1e-5, atol=1e-5)
    write_graphs({"full": model}, tmp_path, release=True)
    assert model.ByteSize() < LIMIT  # the bytes now live only in weights.bin
    assert model.graph.initializer[0].data_location == TensorProto.EXTERNAL


def test_export_to_external_data_shares_one_writer(low_limit, tmp_path):
    import torch

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.SiLU(), torch.nn.Linear(256, 64)).eval()
    with external.WeightsWriter(tmp_path / "weights.bin") as weights:
        a = external.export_to_external_data(module, (torch.randn(2, 64),), ["x"], ["y"], tmp_path,
                                             name="encoder", weights=weights)
        b = external.export_to_external_data(module, (torch.randn(2, 64),), ["x"], ["y"], tmp_path,
                                             name="encoder_twin", weights=weights)
    params = sum(p.numel() * 4 for p in module.parameters())
    assert (tmp_path / "weights.bin").stat().st_size < 1.1 * params  # the twin added no weight bytes
    x = torch.randn(70, 64)  # above the traced batch range: the ONNX batch dim stays symbolic
    with torch.no_grad():
        want = module(x).numpy()
    for p in (a, b):
        assert p.stat().st_size < LIMIT
        got = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_streaming_statistics_equal_batch_statistics():
    rng = np.random.default_rng(2)
    batches = [rng.standard_normal((4, 8, 16, 16)).astype(np.float32) * (1 + i) for i in range(6)]
    everything = np.concatenate([b.reshape(-1) for b in batches])
    stats = ActivationStats(np.random.default_rng(0), cap=4096, tail=32)
    for b in batches:
        stats.update(b, b.size / everything.size)
    # exact: extremes, count and tails are those of all the data at once
    assert stats.min == everything.min() and stats.max == everything.max()
    assert stats.count == everything.size
    srt = np.sort(everything)
    np.testing.assert_array_equal(stats._low, srt[:32])
    np.testing.assert_array_equal(stats._high, srt[-32:])
    # bounded: the reservoir stays at the cap (one rounding per batch), not the data size
    assert len(stats.sample) <= 4096 + len(batches)
    assert stats.params("uint8", False, "minmax") == params_from_range(everything.min(), everything.max(), "uint8", False)
    # the MSE-2.4 search on the stream's summary picks (within 5%) the range the whole data picks
    want = search_params(everything, everything.min(), everything.max(), "uint8", False)
    got = stats.params("uint8", False, "mse")
    assert abs(got.scale - want.scale) <= 0.05 * want.scale


def test_record_stats_chunking_does_not_change_statistics(tmp_path):
    from dmc.quantize.qdq import PreparedGraph, record_stats

    rng = np.random.default_rng(3)
    w = rng.standard_normal((16, 8), dtype=np.float32)
    model = _matmul_model(w, np.zeros(8, np.float32))
    feeds = [{"sample": rng.standard_normal((10, 16), dtype=np.float32)} for _ in range(3)]
    for f in feeds:
        f["x"] = f.pop("sample")
        f["sample"] = f["x"]  # record_stats counts rows on "sample"; the graph reads "x"
    prepared = PreparedGraph(model, {}, {}, tensors=["xw", "y"], folder=tmp_path)
    a = record_stats(prepared, feeds, seed=0, rows_per_run=1)
    b = record_stats(prepared, feeds, seed=0, rows_per_run=128)
    everything = np.concatenate([f["x"] for f in feeds]) @ w
    for s in (a, b):
        assert s["xw"].min == pytest.approx(everything.min(), rel=1e-6)
        assert s["xw"].max == pytest.approx(everything.max(), rel=1e-6)
        assert s["xw"].count == everything.size


class _FakePipe:
    def __init__(self, calls, offset=0.0):
        self.calls, self.offset, self.timed = calls, offset, 0

    def sample(self, n, seed=None, batch_size=1, first=0, progress=False, on_call=None):
        self.timed += 1
        return np.full((n, 1, 2, 2), 0.1 * len(self.calls) + self.offset, np.float32)


def test_calibration_budget_keeps_an_unbiased_prefix_and_a_floor():
    from types import SimpleNamespace

    from dmc.quantize.calibration import _within_budget

    wanted = [[k] for k in (5, 1, 9, 3, 7, 2, 8, 4)]
    cfg = SimpleNamespace(seed=0, calibration_budget_s=1e-9, min_samples=3)
    kept, info = _within_budget(_FakePipe(list(range(10))), wanted, cfg)
    assert kept == wanted[:3] and info["chains_kept"] == 3  # a tiny budget still keeps min_samples, in draw order
    cfg.calibration_budget_s = 1e9
    kept, _ = _within_budget(_FakePipe(list(range(10))), wanted, cfg)
    assert kept == wanted


def test_early_verification_fails_fast_with_the_figure():
    from types import SimpleNamespace

    from dmc.compress.verify_early import first_group_check

    ctx = SimpleNamespace(recipe=SimpleNamespace(seed=0), fidelity_floor_psnr=25.0)
    good = first_group_check(ctx, _FakePipe(list(range(20))), _FakePipe(list(range(20))))
    assert good["calls"] == 5 and good["psnr_db"] == 100.0
    runtime = _FakePipe(list(range(20)), offset=0.5)
    with pytest.raises(DmcError, match=r"first 5 of 20 calls .*PSNR 12\.0 dB < floor 25"):
        first_group_check(ctx, runtime, _FakePipe(list(range(20))))
    assert len(runtime.calls) == 20  # the full call table is restored


def test_device_cuda_is_refused_without_a_gpu():
    import torch

    from dmc.compress.device import check_device

    if torch.cuda.is_available():
        pytest.skip("torch sees a GPU here")
    with pytest.raises(DmcError, match="sees no GPU"):
        check_device("cuda")
    with pytest.raises(DmcError, match="unknown device"):
        check_device("tpu")


@pytest.mark.slow
def test_int8_compile_end_to_end_under_a_lowered_protobuf_limit(monkeypatch, tmp_path):
    """Every graph the INT8 compile hands to a tool (pre-processing, quantize_static, coverage,
    statistics sessions, the artifact) must go through external data once the weights exceed the limit."""
    from dmc.compress.pipeline import CompileOptions, compile_model
    from dmc.quantize import QuantizeConfig
    from dmc.runtimes import load
    from dmc.sampling import Recipe

    monkeypatch.setattr(external, "MAX_PROTO_BYTES", 2 << 20)  # the demo UNet holds 4.4 MB of weights, its graph ~1 MB
    opts = CompileOptions(recipe=Recipe(steps=6), verify_images=2,
                          passes=[QuantizeConfig(num_samples=16, calibration_budget_s=5.0)])
    out = compile_model("demo", tmp_path / "a.dmc", opts)
    graphs = sorted((out / "graphs").glob("*.onnx"))
    assert graphs and all(p.stat().st_size < (2 << 20) for p in graphs)
    assert load(out)(n=2, seed=0).shape[0] == 2


def test_verification_images_fit_the_budget():
    from dmc.compress.verify_early import images_within_budget

    early = {"of": 20, "seconds_per_image_call": 0.5}  # 20 s per full image (ORT + torch)
    assert images_within_budget(early, 4, None) == 4
    assert images_within_budget(early, 4, 45.0) == 2
    assert images_within_budget(early, 4, 1.0) == 1  # never fewer than one image


def test_loading_builds_on_meta_and_takes_the_file_tensors():
    """No random init, no second copy: the model's parameters are the file's tensors, loaded once."""
    import torch
    from safetensors.torch import load_file

    from dmc.models.builtin import demo_path
    from dmc.models.loading import load_model

    model = load_model("demo").model
    state = load_file(str(demo_path("demo")))
    params = dict(model.named_parameters())
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    assert set(state) >= set(params)
    for k, p in params.items():
        assert torch.equal(p, state[k].float()), k


def test_release_torch_frees_every_weight_before_onnx_runtime_opens(monkeypatch, tmp_path):
    """Verification runs torch first and frees its weights, so ORT never shares the process with them."""
    import dmc.runtimes.onnxruntime_executor as ortx
    from dmc.compress import device
    from dmc.compress.pipeline import CompileOptions, compile_model
    from dmc.sampling import Recipe

    seen = {}
    released = device.release_torch

    def spy(ctx):
        released(ctx)
        seen["alive"] = sum(p.numel() for p in ctx.adapter.parameters())

    real_init = ortx.OnnxRuntimeExecutor.__init__

    def init(self, *a, **k):
        seen.setdefault("opened_after_release", "alive" in seen)
        real_init(self, *a, **k)

    monkeypatch.setattr(device, "release_torch", spy)
    monkeypatch.setattr(ortx.OnnxRuntimeExecutor, "__init__", init)
    out = compile_model("demo", tmp_path / "a.dmc", CompileOptions(recipe=Recipe(steps=4), verify_images=1))
    assert seen == {"alive": 0, "opened_after_release": True}
    assert (out / "manifest.json").exists()


def test_released_graphs_compact_to_their_structure(tmp_path):
    """After a release-mode write, ``compact`` gives a graph without the weight bytes (upb frees a
    message tree's memory only when the whole tree goes, so the pipeline swaps in this copy)."""
    from dmc.export.graphs import compact

    w = np.random.default_rng(2).standard_normal((256, 256), dtype=np.float32)
    model = _matmul_model(w, np.zeros(256, np.float32))
    write_graphs({"g": model}, tmp_path, release=True)
    small = compact(model)
    assert small.ByteSize() < 4096 < w.nbytes
    assert [t.name for t in small.graph.initializer] == ["w", "b"]
    assert small.graph.initializer[0].data_location == TensorProto.EXTERNAL
    x = np.ones((1, 256), np.float32)
    got = ort.InferenceSession(str(tmp_path / "g.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, x @ w, rtol=1e-5, atol=1e-4)


def test_memory_pattern_is_off_for_big_weights(tmp_path, monkeypatch):
    """ONNX Runtime's memory pattern doubles an SD-size model's activation peak: off above the bound."""
    from dmc.artifact import read_manifest
    from dmc.compress.pipeline import CompileOptions, compile_model
    from dmc.runtimes import onnxruntime_executor as ex
    from dmc.sampling import Recipe

    art = compile_model("demo", tmp_path / "a.dmc", CompileOptions(recipe=Recipe(steps=4), verify_images=1))
    manifest = read_manifest(art)
    assert ex.OnnxRuntimeExecutor(manifest).sessions["full"].get_session_options().enable_mem_pattern
    monkeypatch.setattr(ex, "MEM_PATTERN_MAX_WEIGHT_BYTES", 1 << 20)  # the demo's 4.4 MB of weights is "big"
    assert not ex.OnnxRuntimeExecutor(manifest).sessions["full"].get_session_options().enable_mem_pattern


def test_tensor_bytes_bounds_the_serialized_size_without_serializing_the_whole_graph(monkeypatch):
    """upb's ByteSize serializes (and fails above 2 GB), so the size is counted part by part; the count
    must stay an upper bound, and must not call the whole graph's ByteSize."""
    rng = np.random.default_rng(3)
    model = _matmul_model(rng.standard_normal((64, 64), dtype=np.float32), np.zeros(64, np.float32))
    onnx.helper.set_model_props(model, {"note": "x" * 20000})  # model-level fields count too
    exact = model.ByteSize()
    assert exact <= external.tensor_bytes(model) <= exact * 1.05 + 1024
    monkeypatch.setattr(onnx.ModelProto, "ByteSize", lambda self: (_ for _ in ()).throw(AssertionError("whole graph")))
    assert external.tensor_bytes(model) > 64 * 64 * 4
