"""What differs between TensorRT 10.3 (JetPack 6) and 11.x, in one place.

TensorRT 11 removed weak typing: ``BuilderFlag.FP16``/``INT8``/``OBEY_PRECISION_CONSTRAINTS``,
the implicit INT8 calibrators (``IBuilderConfig.int8_calibrator``), ``ICudaEngine.device_memory_size``
(use ``device_memory_size_v2``, present since 10.0), and the inspector JSON's ``Bindings`` list
(replaced by ``I/O Tensors`` objects). dmc never uses calibrators (its graphs carry explicit Q/DQ),
builds Q/DQ graphs as strongly typed networks on both, and only uses the FP16 flag on 10.x.
"""

from __future__ import annotations

import ctypes
import ctypes.util

from dmc.errors import DmcError

MIN_VERSION = (10, 3)


def version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for p in str(version).split(".")[:3]:
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def import_tensorrt():
    """The real ``tensorrt`` and ``polygraphy.backend.trt`` modules, or a clear error."""
    try:
        import tensorrt as trt
    except ImportError:
        raise DmcError("TensorRT is not installed: `pip install -e \".[tensorrt]\"` on the GPU machine "
                       "(on a Jetson it ships with JetPack 6)") from None
    try:
        from polygraphy.backend import trt as loaders
    except ImportError:
        raise DmcError("polygraphy is not installed: `pip install polygraphy`") from None
    check_version(trt)
    return trt, loaders


def check_version(trt) -> None:
    if version_tuple(trt.__version__)[:2] < MIN_VERSION:
        raise DmcError(f"TensorRT {trt.__version__} is too old: dmc needs TensorRT >= "
                       f"{'.'.join(map(str, MIN_VERSION))} (JetPack 6)")


def has_weak_typing(trt) -> bool:
    """TensorRT 10.x still has ``BuilderFlag.FP16``; 11.x removed it with the rest of weak typing."""
    return hasattr(trt.BuilderFlag, "FP16") and version_tuple(trt.__version__)[0] < 11


def device_memory_size(engine) -> int:
    """Activation memory one execution context needs (``device_memory_size_v2`` on 10.x and 11.x)."""
    size = getattr(engine, "device_memory_size_v2", None)
    return int(size if size is not None else engine.device_memory_size)


def compute_capability(device: int = 0) -> tuple[str, str]:
    """``("8.7", name)`` of CUDA device ``device``, read through the CUDA runtime library (no torch)."""
    for name in ("libcudart.so", "libcudart.so.13", "libcudart.so.12", ctypes.util.find_library("cudart")):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    else:
        raise DmcError("no CUDA runtime (libcudart) found: TensorRT engines need an NVIDIA GPU and driver")
    major, minor = ctypes.c_int(), ctypes.c_int()
    # cudaDevAttrComputeCapabilityMajor = 75, ...Minor = 76 (stable enum values of the CUDA runtime API)
    if lib.cudaDeviceGetAttribute(ctypes.byref(major), 75, device) or \
            lib.cudaDeviceGetAttribute(ctypes.byref(minor), 76, device):
        raise DmcError(f"cannot query CUDA device {device} (no GPU or no driver)")
    return f"{major.value}.{minor.value}", _device_name(lib, device)


def _device_name(lib, device: int) -> str:
    """The GPU's name: ``cudaDeviceProp`` begins with ``char name[256]`` in every CUDA version; the
    buffer is larger than the whole struct (about 1 KB). Empty when the runtime does not say."""
    buf = ctypes.create_string_buffer(16384)
    for symbol in ("cudaGetDeviceProperties_v2", "cudaGetDeviceProperties"):
        fn = getattr(lib, symbol, None)
        if fn is not None and fn(buf, device) == 0:
            return buf.raw[:256].split(b"\0", 1)[0].decode(errors="replace")
    return ""
