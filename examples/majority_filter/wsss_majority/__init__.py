"""A method added to lightning-wsss from outside the package: a focal-loss CAM classifier and a majority filter
on the pseudo labels, run by ``wsss pipeline pipeline_majority.yaml`` (see the README's "Adding a method")."""

from .classifier import FocalCAMClassifier
from .stages import majority_filter

__all__ = ["FocalCAMClassifier", "majority_filter"]
