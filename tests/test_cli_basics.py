"""The CLI's contract: help works, unknown commands and user errors exit 2 with one line."""

import subprocess
import sys

import pytest

from pipeit.cli import main


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "pipeit", *args], capture_output=True, text=True, timeout=120
    )


def test_help_lists_commands():
    result = run_cli("--help")
    assert result.returncode == 0
    assert "COMMAND" in result.stdout


def test_unknown_command_exits_2():
    result = run_cli("no-such-command")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert "pipeit" in capsys.readouterr().out
