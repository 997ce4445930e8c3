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
    out = capsys.readouterr().out
    assert out.startswith("pipeit ") and "(runtime " in out  # bench-board.sh's report shows both


_WITHOUT_LITERT = '''
import sys
class _Absent:
    """ai-edge-litert as on a 32-bit ARM board, where it has no build."""
    def find_spec(self, name, path=None, target=None):
        if name == "ai_edge_litert" or name.startswith("ai_edge_litert."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, _Absent())
'''


def test_without_ai_edge_litert_every_command_says_why_in_one_line(tmp_path):
    """pipeit reads models through the schema ai-edge-litert ships; without it (32-bit ARM) every command
    was an ImportError traceback."""
    import os
    from pathlib import Path

    (tmp_path / "sitecustomize.py").write_text(_WITHOUT_LITERT)
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(root)]))
    done = subprocess.run([sys.executable, "-m", "pipeit", "--help"], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=60)
    assert done.returncode == 0 and "inspect" in done.stdout, done.stderr  # the help needs no model schema
    for args in (["inspect", "m.tflite"], ["split", "m.tflite", "--at", "3", "-o", "out"]):
        done = subprocess.run([sys.executable, "-m", "pipeit", *args], capture_output=True, text=True, env=env,
                              cwd=tmp_path, timeout=60)
        assert done.returncode == 2, done.stderr
        assert done.stderr.splitlines() == [done.stderr.strip()] and "ai-edge-litert is not installed" in done.stderr


def test_the_help_imports_no_model_machinery():
    """`pipeit --help` (and every argument refused before work) took 0.9 s here, seconds on a small board:
    it imported networkx, numpy and the model schema to build the parser. A shell script feels that."""
    code = ("import sys; from pipeit.cli import build_parser; build_parser(); "
            "print(' '.join(m for m in ('networkx', 'ai_edge_litert', 'pipeit.graph', 'pipeit.dse') "
            "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", done.stdout


@pytest.mark.parametrize("argv, words", [
    (["fit", "p.csv", "-o", "x.json", "--kind", "bogus"], "pipeit fit: error: argument --kind: invalid choice"),
    ([], "pipeit: error: the following arguments are required: COMMAND"),
    (["gpu", "tune"], "pipeit gpu tune: error: the following arguments are required: model"),
    (["run", "--frames", "many", "plan.json"], "pipeit run: error: argument --frames: invalid int value"),
])
def test_a_bad_command_line_is_one_line(capsys, argv, words):
    """argparse printed its usage block first: three to six lines for one mistake."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(words) and "--help)" in err, err


def test_a_ctrl_c_while_the_cli_still_loads_is_one_line_and_exit_130():
    """A Ctrl-C in a command's first ~0.1 s, while its modules still imported, printed a KeyboardInterrupt
    traceback (pipeit.cli.main handles one only once it runs). Raised here at the import, deterministically."""
    import subprocess
    import sys

    script = ("import sys\n"
              "class Interrupt:\n"
              "    def find_spec(self, name, path=None, target=None):\n"
              "        if name == 'cores':\n"
              "            raise KeyboardInterrupt\n"
              "sys.meta_path.insert(0, Interrupt())\n"
              "from pipeit.console import main\n"
              "sys.exit(main())\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (130, "pipeit: interrupted\n")
