"""assignlab: label assignment for dense object detectors, as a first-class, batched, verified layer.

The public core::

    from assignlab import make_priors, GroundTruth, Assignment
    from assignlab.assigners import ATSSAssigner, TaskAlignedAssigner
"""

from .core import Assignment, GroundTruth, Matches, Priors, make_priors

__version__ = "0.1.0"
__all__ = ["Assignment", "GroundTruth", "Matches", "Priors", "make_priors", "__version__"]
