"""The batched assignment core: priors, padded ground truth, the assignment result, box helpers."""

from . import devices
from .assignment import Assignment, Matches, dense_from_matches, select_best_per_prior
from .chunking import DEFAULT_MAX_PAIRS, chunk_slices, gt_chunks
from .groundtruth import BadBoxError, GroundTruth
from .priors import Priors, make_priors

__all__ = [
    "Assignment",
    "BadBoxError",
    "DEFAULT_MAX_PAIRS",
    "GroundTruth",
    "Matches",
    "Priors",
    "chunk_slices",
    "dense_from_matches",
    "devices",
    "gt_chunks",
    "make_priors",
    "select_best_per_prior",
]
