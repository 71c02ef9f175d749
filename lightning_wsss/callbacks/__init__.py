"""Lightning callbacks: artifact writers for prediction stages."""

from .writers import ArtifactWriter

__all__ = ["ArtifactWriter"]
