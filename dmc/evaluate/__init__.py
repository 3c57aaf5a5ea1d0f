"""Evaluation metrics for ``dmc eval``: Frechet distance on pluggable features and
paired same-seed fidelity (RMSE / PSNR / SSIM) against the uncompressed model."""

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

__all__ = [
    "PSNR_CAP_DB",
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
