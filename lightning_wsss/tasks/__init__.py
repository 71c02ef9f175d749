"""LightningModules ("tasks"), one per method, each with overridable hooks."""

from .classifier import CAMClassifier

__all__ = ["CAMClassifier"]
