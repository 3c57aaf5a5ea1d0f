"""``QuantizeConfig``: the knobs of the INT8 pass (``dmc compress MODEL --int8``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar

from dmc.errors import DmcError

CALIBRATIONS = ("ndtc", "uniform", "noise", "single-step")
RANGE_METHODS = ("mse", "minmax")
PROFILE_NAMES = ("ort-cpu", "trt", "ov-cpu")
OP_TYPES = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# Policy words accepted in ``keep_float`` (anything else is an fnmatch pattern on the layer name).
KEEP_FLOAT_WORDS = ("first", "last", "time_embedding")


@dataclass
class QuantizeConfig:
    """PTQ4DM / Q-Diffusion W8A8 post-training quantization.

    calibration: where the activation statistics come from.
        "ndtc"        PTQ4DM: per calibration chain a native timestep t ~ N(mean*T, std*T) (T = training
                      timesteps, clamped), mapped to the nearest deployed call; the chain's state there.
        "uniform"     Q-Diffusion: every call (or ``uniform_calls`` evenly spaced calls), equal samples each.
        "noise"       naive baseline: N(0, 1) inputs at uniformly random timesteps (no trajectory).
        "single-step" every sample at one call (``single_step_call``; -1 = the last, cleanest call).
    num_samples: calibration states (x, tau); a guided recipe feeds both CFG halves of each, so the
        network sees twice as many rows.
    range_method: "mse" = PTQ4DM's search over ``search_candidates`` clipping ranges minimising
        mean |x - Q(x)|^lp_norm; "minmax" = the observed range (what ORT's default calibrator gives).
    scale_groups: K > 1 makes K variants of each graph (``<graph>@g<i>``), each calibrated on its own
        contiguous range of calls; the INT8 weights stay shared (same bytes, deduplicated).
    profile: "ort-cpu" (u8 activations, s8 weights with reduce_range, Q/DQ on layer outputs so ORT fuses
        QLinearConv), "trt" (int8 symmetric everywhere, zero point 0, Q/DQ on inputs only) or "ov-cpu"
        (the trt rules with private Q/DQ, which OpenVINO reproduces; run with ``--backend openvino``).
    op_types: layer types to quantize; MatMul only where B is a constant weight unless
        ``attention_matmuls`` (softmax always stays float).
    attention_matmuls: also quantize the MatMuls of two activations (attention's Q K^T and P V), each
        input with its own per-tensor range (per scale group, so per step range where ``scale_groups``
        splits the calls); softmax stays float between them. None: the profile's choice (on for
        ov-cpu, where OpenVINO fuses the INT8 attention; off for ort-cpu, where it is slower).
    residual_stream: also quantize the tensors between the quantized layers (conv outputs, residual and
        time-embedding adds, skip concats) with one Q/DQ pair every reader shares, as NNCF's default
        does: OpenVINO then runs the GroupNorms, adds and concats on int8 (the trained mid-size UNet's
        image 1.15-1.21x faster on an AMX CPU, level with NNCF's) at a lower fidelity (verified at 46.7 dB
        against torch instead of 52.5; BENCHMARKS.md #17). Off by default; profiles that allow it: ov-cpu.
    keep_float: float islands: "first" (layer fed by the sample), "last" (layer producing the output),
        "time_embedding" (time/class/adaLN conditioning MLPs), or fnmatch patterns on layer names.
    weight_only_islands: which float islands (by rule: "first", "last", "time_embedding", "patterns")
        still store their weights as int8 behind a DequantizeLinear: float activations and arithmetic,
        4x fewer bytes (PTQ4DM keeps every weight at 8 bit). Default: the conditioning MLPs, which hold
        most island bytes (DiT's adaLN) and lose nothing measurable; int8 first/last conv weights cost
        ~10% more one-call error on the demo UNet for a few KB. The trt profile applies it to
        Gemm/MatMul only (TensorRT has no weight-only conv).
    split_concat: Q-Diffusion shortcut splitting, Conv(concat(a, b)) -> Conv(a) + Conv(b), so each
        input group gets its own activation scale.
    calibration_budget_s: bound on the seconds trajectory recording may take: one timed model call
        sets how many of the ``num_samples`` chains fit (never fewer than ``min_samples``); None = all.
    batch_size: calibration chains run together in torch (lowered for big models to bound memory).
    calibrate_under_schedule: calibrate each graph variant on the feeds it receives under the cache
        schedule (CacheQuant); False calibrates on the uncached full-graph trajectory and maps ranges to
        partial graphs by layer identity.
    """

    # Peak compile memory over the FP32 weight bytes (dmc.models.memory refuses a model that would
    # not fit): torch model, calibration activations and ONNX Runtime sessions over the prepared graph.
    COMPILE_MEMORY_FACTOR: ClassVar[float] = 6.5

    calibration: str = "ndtc"
    num_samples: int = 256
    ndtc_mean: float = 0.4
    ndtc_std: float = 0.4
    uniform_calls: int = 20
    single_step_call: int = -1
    range_method: str = "mse"
    lp_norm: float = 2.4
    search_candidates: int = 100
    scale_groups: int = 1
    profile: str = "ort-cpu"
    op_types: tuple = ("Conv", "Gemm", "MatMul")
    attention_matmuls: bool | None = None
    residual_stream: bool = False
    keep_float: tuple = ("first", "last", "time_embedding")
    weight_only_islands: tuple = ("time_embedding",)
    split_concat: bool = True
    calibrate_under_schedule: bool = True
    seed: int = 0
    batch_size: int = 64
    calibration_budget_s: float | None = None
    min_samples: int = 4

    def __post_init__(self):
        self.op_types = tuple(self.op_types)
        self.keep_float = tuple(self.keep_float)
        self.weight_only_islands = tuple(self.weight_only_islands)
        self.validate()

    def validate(self) -> None:
        if self.calibration not in CALIBRATIONS:
            raise DmcError(f"unknown calibration {self.calibration!r} (choose from {', '.join(CALIBRATIONS)})")
        if self.range_method not in RANGE_METHODS:
            raise DmcError(f"unknown range_method {self.range_method!r} (choose from {', '.join(RANGE_METHODS)})")
        if self.profile not in PROFILE_NAMES:
            raise DmcError(f"unknown INT8 profile {self.profile!r} (choose from {', '.join(PROFILE_NAMES)})")
        if self.residual_stream:
            from dmc.quantize.profiles import PROFILES

            allowed = [name for name, p in PROFILES.items() if p.allows_residual_stream]
            if self.profile not in allowed:
                raise DmcError(f"a quantized residual stream needs the {' or '.join(allowed)} profile "
                               f"(got {self.profile})")
        bad = [o for o in self.op_types if o not in OP_TYPES]
        if bad or not self.op_types:
            raise DmcError(f"op_types must be a non-empty subset of {', '.join(OP_TYPES)} (got {bad or 'none'})")
        bad = [r for r in self.weight_only_islands if r not in ("first", "last", "time_embedding", "patterns")]
        if bad:
            raise DmcError(f"weight_only_islands takes first/last/time_embedding/patterns, got {bad}")
        if self.num_samples < 1:
            raise DmcError(f"num_samples must be at least 1, got {self.num_samples}")
        if self.scale_groups < 1:
            raise DmcError(f"scale_groups must be at least 1, got {self.scale_groups}")
        if self.ndtc_std <= 0:
            raise DmcError(f"ndtc_std must be positive, got {self.ndtc_std}")
        if self.search_candidates < 1 or self.lp_norm <= 0:
            raise DmcError("search_candidates must be >= 1 and lp_norm > 0")
        if self.calibration_budget_s is not None and self.calibration_budget_s <= 0:
            raise DmcError(f"calibration_budget_s must be positive, got {self.calibration_budget_s}")
        if self.min_samples < 1:
            raise DmcError(f"min_samples must be at least 1, got {self.min_samples}")
        if self.uniform_calls < 1 or self.batch_size < 1:
            raise DmcError("uniform_calls and batch_size must be at least 1")

    def quantizes_attention(self, profile) -> bool:
        """``attention_matmuls``, or the profile's choice when it is None."""
        return profile.attention_int8 if self.attention_matmuls is None else self.attention_matmuls

    def to_json(self) -> dict:
        d = asdict(self)
        d["op_types"] = list(self.op_types)
        d["keep_float"] = list(self.keep_float)
        d["weight_only_islands"] = list(self.weight_only_islands)
        return d
