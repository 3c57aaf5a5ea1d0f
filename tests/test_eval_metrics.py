"""Metric core of ``dmc eval``: Frechet distance, bootstrap CI, paired fidelity,
the shipped digits classifier and the feature-extractor plumbing."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from dmc.data.digits import load_digits_split
from dmc.evaluate import (
    PSNR_CAP_DB,
    DigitsClassifier,
    FeatureExtractor,
    InceptionFeatures,
    OnnxFeatures,
    classifier_split,
    frechet_distance,
    frechet_with_ci,
    load_extractor,
    paired_fidelity,
    reference_features,
)
from dmc.evaluate.frechet import _psd_sqrt


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Busy 2-core CI boxes: multi-threaded BLAS spinning makes sqrtm 100x slower."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - comes with scikit-learn
        threadpool_limits = contextlib.nullcontext
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def digits() -> DigitsClassifier:
    return DigitsClassifier()


def _unit(split: str) -> np.ndarray:
    x, _ = load_digits_split(split)
    return ((x[:, 0] + 1.0) / 2.0)[..., None]  # [N, 16, 16, 1] in [0, 1]


# --- Frechet distance ----------------------------------------------------------------


def test_fd_of_a_set_with_itself_is_zero():
    a = np.random.default_rng(0).standard_normal((300, 16))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)


def test_fd_equals_squared_mean_shift_and_grows_with_it():
    a = np.random.default_rng(1).standard_normal((300, 16))
    fds = [frechet_distance(a, a + s) for s in (0.0, 0.25, 0.5, 1.0, 2.0)]
    assert fds == sorted(fds) and fds[-1] > fds[1] > 0
    for s, fd in zip((0.25, 0.5, 1.0, 2.0), fds[1:]):
        assert fd == pytest.approx(16 * s * s, rel=1e-6)  # equal covariances


def test_fd_closed_form_for_scaled_set():
    # b = 2a: mu_b = 2 mu_a, S_b = 4 S_a, so FD = |mu_a|^2 + Tr(S_a + 4 S_a - 4 S_a).
    a = np.random.default_rng(2).standard_normal((400, 10)) @ np.diag(np.linspace(0.5, 2, 10)) + 0.3
    expect = np.sum(a.mean(0) ** 2) + np.trace(np.cov(a, rowvar=False))
    assert frechet_distance(a, 2 * a) == pytest.approx(expect, rel=1e-6)


def test_fd_with_singular_covariances_is_finite():
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((20, 64)), rng.standard_normal((20, 64)) + 1.0  # n < d
    fd = frechet_distance(a, b)
    assert np.isfinite(fd) and fd > 0
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-3)


def test_fd_rejects_mismatched_or_tiny_inputs():
    with pytest.raises(ValueError):
        frechet_distance(np.zeros((10, 3)), np.zeros((10, 4)))
    with pytest.raises(ValueError):
        frechet_distance(np.zeros((1, 3)), np.zeros((10, 3)))


def test_symmetric_trace_form_matches_sqrtm():
    # The bootstrap uses Tr sqrt(S1 S2) = sum sqrt eig(R S1 R), R = S2^(1/2).
    import scipy.linalg

    rng = np.random.default_rng(4)
    s1, s2 = (np.cov(rng.standard_normal((50, 12)) @ rng.standard_normal((12, 12)), rowvar=False) for _ in range(2))
    r = _psd_sqrt(s2)
    fast = np.sqrt(np.clip(np.linalg.eigvalsh(r @ s1 @ r), 0, None)).sum()
    assert fast == pytest.approx(np.trace(scipy.linalg.sqrtm(s1 @ s2)).real, rel=1e-8)


def test_bootstrap_ci_contains_estimate_and_is_ordered():
    rng = np.random.default_rng(5)
    gen, ref = rng.standard_normal((200, 8)) + 0.3, rng.standard_normal((500, 8))
    r = frechet_with_ci(gen, ref, n_boot=100, seed=0)
    assert r["ci_low"] <= r["fd"] <= r["ci_high"] and r["ci_low"] < r["ci_high"]
    assert r["fd"] == pytest.approx(frechet_distance(gen, ref))
    assert (r["n_gen"], r["n_ref"], r["n_boot"]) == (200, 500, 100)
    assert r == frechet_with_ci(gen, ref, n_boot=100, seed=0)  # deterministic in seed
    wide = frechet_with_ci(gen[:50], ref, n_boot=100, seed=0)
    assert wide["ci_high"] - wide["ci_low"] > r["ci_high"] - r["ci_low"]  # fewer samples, wider


# --- the shipped digits classifier ---------------------------------------------------


def test_classifier_accuracy_on_its_test_split(digits):
    _, _, x_test, y_test = classifier_split(seed=int(digits.metadata["split_seed"]))
    unit = ((x_test[:, 0] + 1.0) / 2.0)[..., None]
    acc = float((digits.predict(unit) == y_test).mean())
    assert acc >= 0.90
    assert acc == pytest.approx(float(digits.metadata["test_accuracy"]), abs=1e-3)
    assert digits.metadata["arch"] == digits.name == "digits-cnn-v1"


def test_classifier_split_is_disjoint_part_of_heldout():
    x_tr, _, x_te, _ = classifier_split()
    assert len(x_tr) + len(x_te) == len(load_digits_split("heldout")[0])
    assert len(x_te) == pytest.approx(0.2 * (len(x_tr) + len(x_te)), abs=1)
    flat = {row.tobytes() for row in x_tr}
    assert sum(row.tobytes() in flat for row in x_te) <= 2  # digits has a few duplicate images


def test_digits_features_shapes_and_input_forms(digits):
    assert isinstance(digits, FeatureExtractor)
    unit = _unit("train")[:32]
    f = digits(unit)
    assert f.shape == (32, digits.dim) == (32, 128) and f.dtype == np.float64
    f8 = digits((unit * 255).round().astype(np.uint8))
    assert np.abs(f8 - f).max() < 0.05 * np.abs(f).max()
    np.testing.assert_allclose(digits(unit[..., 0]), f)  # [n, H, W] accepted
    x32, y32 = load_digits_split("train", size=32)  # resized down to 16x16
    assert (digits.predict(((x32[:64, 0] + 1) / 2)[..., None]) == y32[:64]).mean() > 0.9
    p = digits.probabilities(unit)
    np.testing.assert_allclose(p.sum(1), 1.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        digits(unit * 2 - 1)  # [-1, 1] passed by mistake


def test_real_digits_score_far_below_noise(digits):
    ref = reference_features(digits)  # heldout half
    real = frechet_distance(digits(_unit("train")), ref)
    noise = frechet_distance(digits(np.random.default_rng(6).random((300, 16, 16, 1))), ref)
    assert real < 0.05 * noise, (real, noise)


# --- paired fidelity -----------------------------------------------------------------


def test_paired_identical_images():
    imgs = _unit("train")[:8]
    r = paired_fidelity(imgs, imgs.copy())
    assert r["n"] == 8 and r["rmse_worst"] == 0.0
    assert r["psnr"] == [PSNR_CAP_DB] * 8 and r["psnr_mean"] == PSNR_CAP_DB
    assert r["ssim_worst"] == pytest.approx(1.0)


def test_paired_metrics_degrade_with_noise():
    rng = np.random.default_rng(7)
    imgs = _unit("train")[:16]
    results = [
        paired_fidelity(imgs, np.clip(imgs + s * rng.standard_normal(imgs.shape), 0, 1)) for s in (0.01, 0.05, 0.2)
    ]
    psnr = [r["psnr_mean"] for r in results]
    ssim = [r["ssim_mean"] for r in results]
    rmse = [r["rmse_mean"] for r in results]
    assert psnr[0] > psnr[1] > psnr[2] and ssim[0] > ssim[1] > ssim[2] and rmse == sorted(rmse)
    assert 38 < psnr[0] < 42  # sigma 0.01 -> ~40 dB (clipping lowers the error a little)
    r = results[1]
    assert r["rmse_worst"] == max(r["rmse"]) and r["psnr_worst"] == min(r["psnr"]) and r["ssim_worst"] == min(r["ssim"])


def test_paired_uint8_rgb_and_shape_checks():
    rng = np.random.default_rng(8)
    a = rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + 3, 0, 255).astype(np.uint8)
    r = paired_fidelity(a, b)
    assert 0 < r["rmse_mean"] < 4 / 255 and r["ssim_mean"] > 0.95
    r_float = paired_fidelity(a / 255.0, b / 255.0)
    assert r_float["rmse"] == pytest.approx(r["rmse"])
    with pytest.raises(ValueError, match="shape"):
        paired_fidelity(a, b[:3])


# --- extractor plumbing --------------------------------------------------------------


def test_load_extractor_specs_and_errors(tmp_path):
    assert isinstance(load_extractor(None), DigitsClassifier)
    assert isinstance(load_extractor("digits"), DigitsClassifier)
    with pytest.raises(ValueError, match="unknown feature extractor"):
        load_extractor("resnet50")
    with pytest.raises(ValueError, match="unknown feature extractor"):
        load_extractor(str(tmp_path / "features.npz"))
    with pytest.raises(ValueError, match="not found"):
        load_extractor(str(tmp_path / "missing.onnx"))
    with pytest.raises(ValueError, match="not found"):
        load_extractor(str(tmp_path / "missing.pth"))


def test_onnx_extractor(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(9).standard_normal((256, 5)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["y"])],
        "emb",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5])],
        [numpy_helper.from_array(w, "w")],
    )
    path = tmp_path / "emb.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    ext = load_extractor(str(path))
    assert isinstance(ext, OnnxFeatures) and ext.dim == 5 and ext.predict(None) is None
    imgs = _unit("train")[:3]
    np.testing.assert_allclose(ext(imgs), imgs[..., 0].reshape(3, -1) @ w, rtol=1e-4, atol=1e-4)


def test_inception_structure_and_loading(tmp_path):
    from safetensors.torch import save_file

    from dmc.evaluate.inception import FIDInceptionV3

    net = FIDInceptionV3()
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 94  # Inception v3 without the aux head
    sd = net.state_dict()
    assert sd["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
    assert sd["Mixed_6e.branch7x7dbl_5.conv.weight"].shape == (192, 192, 1, 7)
    assert sd["Mixed_7c.branch3x3dbl_3b.bn.running_var"].shape == (384,)
    # pytorch-fid layout: same keys plus a 1008-way fc head, here without BN counters.
    g = torch.Generator().manual_seed(0)
    fake = {k: torch.randn(v.shape, generator=g) * 0.05 for k, v in sd.items() if "num_batches" not in k}
    fake.update({k: v.abs() + 1 for k, v in fake.items() if k.endswith("running_var")})
    fake["fc.weight"], fake["fc.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)
    torch.save(fake, tmp_path / "pt_inception-test.pth")
    ext = load_extractor(str(tmp_path / "pt_inception-test.pth"))
    assert isinstance(ext, InceptionFeatures) and ext.dim == 2048 and ext.predict(None) is None
    f = ext(_unit("train")[:2])
    assert f.shape == (2, 2048) and f.dtype == np.float64 and np.isfinite(f).all()
    save_file({k: v.contiguous() for k, v in fake.items()}, tmp_path / "inc.safetensors")
    loaded = InceptionFeatures(tmp_path / "inc.safetensors").net.Mixed_5b.branch1x1.conv.weight
    torch.testing.assert_close(loaded, fake["Mixed_5b.branch1x1.conv.weight"])
    del fake["Mixed_7c.branch_pool.conv.weight"]
    torch.save(fake, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match="missing"):
        InceptionFeatures(tmp_path / "broken.pth")


def test_stratified_bootstrap_keeps_the_class_mix_and_is_narrower():
    """With labels fixed by design, class imbalance in replicates is not noise: resampling within
    classes gives a narrower interval on class-driven features, still around the same fd."""
    rng = np.random.default_rng(7)
    labels = np.arange(600) % 6
    centers = rng.standard_normal((6, 8)) * 3.0
    gen = centers[labels] + rng.standard_normal((600, 8))
    ref = centers[rng.integers(0, 6, 900)] + rng.standard_normal((900, 8))
    plain = frechet_with_ci(gen, ref, n_boot=100)
    strat = frechet_with_ci(gen, ref, n_boot=100, strata=labels)
    assert strat["fd"] == plain["fd"] and strat["stratified"] and not plain["stratified"]
    assert strat["ci_low"] <= strat["fd"] <= strat["ci_high"]
    assert strat["ci_high"] - strat["ci_low"] < 0.7 * (plain["ci_high"] - plain["ci_low"])
    with pytest.raises(ValueError, match="strata"):
        frechet_with_ci(gen, ref, n_boot=2, strata=labels[:10])
