"""Exceptions raised by lightning-wsss.

Every problem with user data (images, masks, annotations, split files, pseudo-label folders) raises
:class:`DataError`, whose message names the offending file and says what is wrong with it, so a user can
fix the data without reading a traceback. :class:`StageBusyError` says that another process runs a pipeline
stage; ``wsss`` prints either (and file-system errors such as a full disk) as one line and exits with 2.
"""

from __future__ import annotations

import os
from typing import Optional, Union

PathLike = Union[str, "os.PathLike[str]"]


class DataError(ValueError):
    """A problem with input data: a corrupt image, a mask of the wrong size, a bad box, an unknown class.

    Attributes:
        path: the file the problem was found in (``None`` where no single file is to blame).
        problem: a short human-readable description of the problem.
    """

    def __init__(self, path: Optional[PathLike], problem: str) -> None:
        self.path = None if path is None else os.fspath(path)
        if self.path is not None and problem.startswith(f"{self.path}: "):  # re-raised for the same file
            problem = problem[len(self.path) + 2:]
        self.problem = problem
        where = f"{self.path}: " if self.path is not None else ""
        super().__init__(f"{where}{problem}")

    def __reduce__(self):  # keep the exception picklable across DataLoader workers and process pools
        return (type(self), (self.path, self.problem))


class StageBusyError(RuntimeError):
    """Another process is running the same pipeline stage (same folder) right now."""
