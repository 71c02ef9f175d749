"""The one registry of ``wsss`` sub-commands: a name, a one-line summary and the function that runs it.

A command module declares each of its commands with :func:`command`; :mod:`lightning_wsss.cli.main` imports
those modules and dispatches. Command modules import only this module (never ``main``), and keep their heavy
imports (torch, Lightning) inside the command functions, so ``wsss --help`` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List

Runner = Callable[[List[str]], int]


@dataclass(frozen=True)
class Command:
    """One sub-command: ``run(argv)`` parses the remaining arguments and returns the exit code."""

    name: str
    summary: str
    run: Runner


COMMANDS: Dict[str, Command] = {}
"""Every registered sub-command by name, in registration order."""


def command(name: str, summary: str) -> Callable[[Runner], Runner]:
    """Decorator registering ``fn`` as ``wsss <name>``; ``summary`` is its line in ``wsss --help``.

    Raises:
        ValueError: ``name`` is registered already, or ``summary`` is empty or spans several lines.
    """
    if name in COMMANDS:
        raise ValueError(f"wsss command {name!r} is registered twice")
    if not summary.strip() or "\n" in summary:
        raise ValueError(f"wsss command {name!r} needs a one-line summary")

    def register(fn: Runner) -> Runner:
        COMMANDS[name] = Command(name, summary.strip(), fn)
        return fn

    return register


def help_text() -> str:
    """The text of ``wsss --help``: usage, then one line per command with its summary."""
    width = max((len(name) for name in COMMANDS), default=0)
    lines = ["usage: wsss <command> [options]      (wsss <command> --help: that command's options)", "",
             "Weakly supervised semantic segmentation suite.", "", "commands:"]
    lines += [f"  {c.name:<{width}}  {c.summary}" for c in COMMANDS.values()]
    return "\n".join(lines)
