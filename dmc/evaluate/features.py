"""Feature extractors for Frechet distance, behind one small protocol.

The default is a tiny CNN trained on the ``heldout`` half of scikit-learn's digits
(the half the demo generators never saw), shipped in ``weights/``. A real FID
needs the user's own Inception weights (``InceptionFeatures``), and any other
embedding can be plugged in as an ONNX file (``OnnxFeatures``).

All extractors take images as uint8 ``[n, H, W, C]`` (0..255) or float in [0, 1]
(``[n, H, W, C]`` or ``[n, H, W]``) and return float64 ``[n, dim]``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

WEIGHTS_DIR = Path(__file__).parent / "weights"
DIGITS_WEIGHTS = WEIGHTS_DIR / "digits_classifier.safetensors"
DIGITS_ARCH = "digits-cnn-v1"
DIGITS_FEATURE_DIM = 128
CLASSIFIER_SPLIT_SEED = 0
CLASSIFIER_TEST_FRACTION = 0.2


@runtime_checkable
class FeatureExtractor(Protocol):
    name: str
    dim: int

    def __call__(self, images: np.ndarray) -> np.ndarray: ...

    def predict(self, images: np.ndarray) -> np.ndarray | None: ...


def to_unit_nhwc(images: np.ndarray) -> np.ndarray:
    """uint8 0..255 or float 0..1 images -> float64 ``[n, H, W, C]`` in [0, 1].

    Floats outside [0, 1] are rejected rather than clipped: a [-1, 1] tensor passed
    by mistake would otherwise give plausible-looking but wrong metrics.
    """
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(f"expected images [n, H, W, C] or [n, H, W], got shape {x.shape}")
    if x.dtype == np.uint8:
        return x.astype(np.float64) / 255.0
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"images must be uint8 or float in [0, 1], got dtype {x.dtype}")
    x = x.astype(np.float64)
    if x.size and (x.min() < -1e-3 or x.max() > 1 + 1e-3):
        raise ValueError(
            f"float images must lie in [0, 1], got [{x.min():.3g}, {x.max():.3g}]"
            " (map [-1, 1] outputs with (x + 1) / 2)"
        )
    return np.clip(x, 0.0, 1.0)


def _to_nchw_tensor(images: np.ndarray, size: int, channels: int, antialias: bool = True):
    """[0, 1] NCHW float32 tensor at ``size``x``size`` with ``channels`` channels.

    Bilinear resize; anti-aliased when shrinking unless ``antialias=False``.
    """
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(to_unit_nhwc(images)).float().permute(0, 3, 1, 2)
    if x.shape[1] != channels:
        x = x.mean(1, keepdim=True) if channels == 1 else x.mean(1, keepdim=True).repeat(1, channels, 1, 1)
    if tuple(x.shape[2:]) != (size, size):
        shrink = antialias and (x.shape[2] > size or x.shape[3] > size)
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
    return x


# --- default: the shipped digits CNN ------------------------------------------------


def build_digits_net():
    """The ``digits-cnn-v1`` architecture.

    Features are the 128-d penultimate layer *before* its ReLU (``net[:-2]``): after
    the ReLU a third of the units are always zero, which makes covariances singular.
    """
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 8x8
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 4x4
        nn.Flatten(),
        nn.Linear(64 * 4 * 4, DIGITS_FEATURE_DIM), nn.ReLU(),
        nn.Linear(DIGITS_FEATURE_DIM, 10),
    )  # fmt: skip


def classifier_split(
    seed: int = CLASSIFIER_SPLIT_SEED, test_fraction: float = CLASSIFIER_TEST_FRACTION
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The classifier's own train/test split of the ``heldout`` digits.

    Returns ``x_train, y_train, x_test, y_test`` with images float32 ``[N, 1, 16, 16]``
    in [-1, 1]. Shared by the training script and the accuracy test.
    """
    from dmc.data.digits import load_digits_split

    x, y = load_digits_split("heldout")
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(len(x) * test_fraction))
    test, train = np.sort(order[:n_test]), np.sort(order[n_test:])
    return x[train], y[train], x[test], y[test]


class DigitsClassifier:
    """128-d penultimate (pre-ReLU) features of the shipped digits CNN; inputs resized to 16x16."""

    dim = DIGITS_FEATURE_DIM

    def __init__(self, path: str | os.PathLike | None = None, batch_size: int = 512):
        from safetensors import safe_open
        from safetensors.torch import load_file

        path = Path(path) if path is not None else DIGITS_WEIGHTS
        if not path.is_file():
            raise FileNotFoundError(f"digits classifier weights not found: {path}")
        with safe_open(str(path), framework="pt") as f:
            self.metadata: dict[str, str] = dict(f.metadata() or {})
        self.net = build_digits_net()
        self.net.load_state_dict(load_file(str(path)))
        self.net.eval()
        self.name = self.metadata.get("arch", DIGITS_ARCH)
        self.batch_size = batch_size

    def _run(self, images: np.ndarray, upto: int | None) -> np.ndarray:
        import torch

        x = _to_nchw_tensor(images, 16, 1) * 2.0 - 1.0
        body = self.net if upto is None else self.net[:upto]
        with torch.inference_mode():
            out = [body(x[i : i + self.batch_size]) for i in range(0, len(x), self.batch_size)]
        return torch.cat(out).double().numpy() if out else np.zeros((0, 10 if upto is None else self.dim))

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self._run(images, upto=-2)

    def logits(self, images: np.ndarray) -> np.ndarray:
        return self._run(images, upto=None)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Softmax class probabilities ``[n, 10]`` (for confidence / class-entropy)."""
        z = self.logits(images)
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.logits(images).argmax(axis=1)


# --- user-supplied extractors -------------------------------------------------------


class InceptionFeatures:
    """pool3 (2048-d) features of the FID Inception v3, from the user's weights file.

    Expects pytorch-fid's ``pt_inception-2015-12-05-*.pth`` state dict (or the same
    keys in a ``.safetensors``). Images: bilinear to 299, gray repeated to RGB,
    scaled to [-1, 1], as pytorch-fid does, so numbers are comparable with it.
    """

    dim = 2048

    def __init__(self, path: str | os.PathLike, batch_size: int = 32):
        from dmc.evaluate.inception import FIDInceptionV3, load_fid_state_dict

        self.net = FIDInceptionV3()
        load_fid_state_dict(self.net, path)
        self.net.eval()
        self.name = f"inception:{Path(path).name}"
        self.batch_size = batch_size

    def __call__(self, images: np.ndarray) -> np.ndarray:
        import torch

        x = _to_nchw_tensor(images, 299, 3, antialias=False) * 2.0 - 1.0  # as pytorch-fid
        with torch.inference_mode():
            out = [self.net(x[i : i + self.batch_size]) for i in range(0, len(x), self.batch_size)]
        return torch.cat(out).double().numpy() if out else np.zeros((0, self.dim))

    def predict(self, images: np.ndarray) -> None:
        return None


class OnnxFeatures:
    """Any ONNX embedding: the first output, flattened to ``[n, d]``.

    The input is fed as float32 NCHW in [0, 1], resized to the model's static H, W
    (if any) and with gray/RGB matched to its channel count (default 16x16, 1 ch).
    """

    def __init__(self, path: str | os.PathLike, batch_size: int = 64):
        import onnxruntime as ort

        if not Path(path).is_file():
            raise FileNotFoundError(f"ONNX feature model not found: {path}")
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        inp = self.session.get_inputs()[0]
        if len(inp.shape) != 4:
            raise ValueError(f"{path}: expected a 4-d NCHW image input, got {inp.name} {inp.shape}")
        _, c, h, w = (d if isinstance(d, int) else None for d in inp.shape)
        if h is not None and w is not None and h != w:
            raise ValueError(f"{path}: only square inputs are supported, got {h}x{w}")
        self.input_name = inp.name
        self.channels = c or 1
        self.size = h or 16
        self.batch_size = batch_size
        self.name = f"onnx:{Path(path).name}"
        self.dim = self(np.zeros((1, self.size, self.size, self.channels))).shape[1]

    def __call__(self, images: np.ndarray) -> np.ndarray:
        x = _to_nchw_tensor(images, self.size, self.channels).numpy()
        out = [
            self.session.run(None, {self.input_name: x[i : i + self.batch_size]})[0]
            for i in range(0, len(x), self.batch_size)
        ]
        return np.concatenate([o.reshape(len(o), -1) for o in out]).astype(np.float64)

    def predict(self, images: np.ndarray) -> None:
        return None


def load_extractor(spec: str | os.PathLike | None = None) -> FeatureExtractor:
    """``None``/"digits" -> DigitsClassifier; ``*.onnx`` -> OnnxFeatures;
    ``*.pth``/``*.pt``/``*.safetensors`` -> InceptionFeatures (pytorch-fid weights)."""
    if spec is None or str(spec).strip().lower() in ("", "digits", DIGITS_ARCH):
        return DigitsClassifier()
    path = Path(spec)
    suffix = path.suffix.lower()
    if suffix not in (".onnx", ".pth", ".pt", ".safetensors"):
        raise ValueError(
            f"unknown feature extractor {str(spec)!r}: use 'digits', an ONNX model (*.onnx)"
            " or pytorch-fid Inception weights (*.pth, *.pt, *.safetensors)"
        )
    if not path.is_file():
        raise ValueError(f"feature extractor file not found: {path}")
    return OnnxFeatures(path) if suffix == ".onnx" else InceptionFeatures(path)
