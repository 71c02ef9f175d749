"""The ``wsss`` command registry: one declaration per command, ``wsss --help`` lists them all with a summary,
``wsss <command> --help`` works for each, and the help needs neither torch nor a cycle between modules."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lightning_wsss.cli.main import main
from lightning_wsss.cli.registry import COMMANDS, command

EXPECTED = {"fit", "validate", "test", "predict", "pipeline", "demo", "compare", "make-synthetic", "evaluate",
            "evaluate-cams", "sweep-walk", "affinity-labels", "boxes-from-masks", "predict-box-crops"}
REPO = Path(__file__).resolve().parents[1]


def test_help_lists_every_command_with_its_summary(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert set(COMMANDS) == EXPECTED
    for name, entry in COMMANDS.items():
        assert f"  {name}  " in out or f"  {name} " in out
        assert entry.summary in out and "\n" not in entry.summary


def test_no_arguments_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "commands:" in capsys.readouterr().out


def test_unknown_command(capsys):
    assert main(["fitt"]) == 2
    assert "unknown command 'fitt'" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(EXPECTED - {"fit", "validate", "test", "predict"}))
def test_each_command_help(name, capsys):
    with pytest.raises(SystemExit) as info:
        main([name, "--help"])
    assert info.value.code == 0
    assert f"usage: wsss {name}" in capsys.readouterr().out


def test_lightning_commands_help(capsys, monkeypatch):
    """LightningCLI's own help, for the four trainer sub-commands."""
    monkeypatch.setattr(sys, "argv", ["wsss"])
    for name in ("fit", "validate", "test", "predict"):
        with pytest.raises(SystemExit) as info:
            main([name, "--help"])
        assert info.value.code == 0
        out = capsys.readouterr().out
        assert "--config" in out and "--trainer" in out, name


def test_registering_a_name_twice_or_without_summary_fails():
    with pytest.raises(ValueError, match="twice"):
        command("evaluate", "again")
    with pytest.raises(ValueError, match="one-line"):
        command("new-command", "two\nlines")


def test_help_imports_no_torch_and_command_modules_not_main():
    """``wsss --help`` stays fast (no torch, no Lightning); command modules never import the entry point."""
    code = ("import sys; from lightning_wsss.cli.main import main; main(['--help']); "
            "heavy = [m for m in ('torch', 'lightning', 'numpy') if m in sys.modules]; assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, capture_output=True)
    for module in ("commands", "data", "labels", "scoring", "training", "registry"):
        source = (REPO / "lightning_wsss" / "cli" / f"{module}.py").read_text()
        assert "from .main import" not in source and "importlib" not in source, module
