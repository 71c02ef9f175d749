"""The ``wsss`` command: one entry point for every job of the suite.

Every sub-command is declared once, in :data:`lightning_wsss.cli.registry.COMMANDS`, by the command modules
imported below; ``wsss --help`` lists them with their one-line summaries. Data errors, a busy stage and
file-system errors are printed as one line with exit code 2.
"""

from __future__ import annotations

import errno
import os
import sys
from typing import List, Optional

from ..errors import DataError, StageBusyError
from . import training, commands, data, scoring, labels  # noqa: F401  (each registers its commands; this order is --help's)
from .registry import COMMANDS, help_text


def main(argv: Optional[List[str]] = None) -> int:
    """Run ``wsss``; returns the exit code (data errors print one clear line and exit 2)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(help_text())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"wsss: unknown command {name!r}; choose from {', '.join(COMMANDS)} (wsss --help)", file=sys.stderr)
        return 2
    try:
        return COMMANDS[name].run(rest)
    except DataError as exc:
        print(f"{_who(name)}: data error: {exc}", file=sys.stderr)
        return 2
    except StageBusyError as exc:
        print(f"{_who(name)}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in FILE_SYSTEM_ERRORS:
            raise
        print(f"{_who(name)}: error: {file_system_error(exc)}", file=sys.stderr)
        return 2


def _who(command: str) -> str:
    """``wsss <command>``, and ``(rank r of n)`` in one of several processes torchrun or srun started."""
    for rank_key, size_key in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
        size = os.environ.get(size_key, "")
        if size.isdigit() and int(size) > 1:
            return f"wsss {command} (rank {os.environ.get(rank_key, '?')} of {size})"
    return f"wsss {command}"


FILE_SYSTEM_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR,
                      errno.EEXIST, errno.EISDIR, errno.ENAMETOOLONG, errno.EFBIG, errno.ELOOP}
"""What the file system says about the user's folders (full disk, permissions, a file where a folder belongs):
``wsss`` prints these as one line naming the path, instead of a traceback."""


def file_system_error(exc: OSError) -> str:
    """``<path>: <cause>`` (both paths for a rename) of a file-system error."""
    cause = exc.strerror or str(exc)
    if exc.filename is None:
        return cause
    target = f" -> {exc.filename2}" if getattr(exc, "filename2", None) else ""
    return f"{exc.filename}{target}: {cause}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
