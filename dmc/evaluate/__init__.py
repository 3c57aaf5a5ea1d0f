"""Evaluation: metrics (Frechet distance on pluggable features, paired same-seed RMSE / PSNR /
SSIM against the uncompressed model) and the commands built on them: ``evaluate`` (dmc eval),
``benchmark`` (dmc bench), ``check`` (dmc check, the CI gate) and ``report`` (dmc report)."""

from dmc.evaluate.features import (
    DigitsClassifier,
    FeatureExtractor,
    InceptionFeatures,
    OnnxFeatures,
    classifier_split,
    load_extractor,
    to_unit_nhwc,
)
from dmc.evaluate.frechet import (
    feature_stats,
    frechet_distance,
    frechet_from_stats,
    frechet_with_ci,
    reference_features,
)
from dmc.evaluate.paired import PSNR_CAP_DB, paired_fidelity, psnr_from_rmse

# The commands' Python API (light imports: the runtimes and torch load when called). Imported
# eagerly so ``dmc.evaluate.evaluate`` is the function, not the submodule of the same name.
from dmc.evaluate.bench import benchmark
from dmc.evaluate.evaluate import evaluate
from dmc.evaluate.gate import Thresholds, check, load_thresholds
from dmc.evaluate.report import report

__all__ = [
    "PSNR_CAP_DB",
    "Thresholds",
    "benchmark",
    "check",
    "evaluate",
    "load_thresholds",
    "report",
    "DigitsClassifier",
    "FeatureExtractor",
    "InceptionFeatures",
    "OnnxFeatures",
    "classifier_split",
    "feature_stats",
    "frechet_distance",
    "frechet_from_stats",
    "frechet_with_ci",
    "load_extractor",
    "paired_fidelity",
    "psnr_from_rmse",
    "reference_features",
    "to_unit_nhwc",
]
