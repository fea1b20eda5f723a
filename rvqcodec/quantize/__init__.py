"""Vector quantization with the rotation trick: estimators, codebooks, residual VQ and statistics."""
from .codebook import EuclideanCodebook
from .defaults import QUANTIZER_DEFAULTS
from .estimators import ESTIMATORS, apply_estimator, grit_rotation, grit_surrogate, rotation_trick, straight_through
from .kmeans import kmeans, nearest_code
from .residual import QuantizerOutput, ResidualVQ
from .stats import CodebookStats
from .vq import VectorQuantizer, VQStageOutput

__all__ = [
    "ESTIMATORS",
    "QUANTIZER_DEFAULTS",
    "CodebookStats",
    "EuclideanCodebook",
    "QuantizerOutput",
    "ResidualVQ",
    "VQStageOutput",
    "VectorQuantizer",
    "apply_estimator",
    "grit_rotation",
    "grit_surrogate",
    "kmeans",
    "nearest_code",
    "rotation_trick",
    "straight_through",
]
