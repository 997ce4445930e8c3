"""``pipeit run`` as a user runs it: a subprocess, a plan file, exit codes, signals, cleanup."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import psutil
import pytest

from pipeit.graph import load_graph
from tests.host_helpers import cgroups_writable, sigint_as_default
from tests.test_executor import TWO, make_plan

pytestmark = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")


def pipeit(*args: str, timeout: float = 120, cwd: Optional[Path] = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeit", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd)


@pytest.fixture(scope="module")
def planned(zoo_models, tmp_path_factory):
    """A 2-stage plan for mobilenet_v2 saved beside a copy of its model (as `pipeit plan` leaves them)."""
    folder = tmp_path_factory.mktemp("run")
    model = folder / "mobilenet_v2.tflite"
    model.write_bytes(zoo_models("mobilenet_v2").read_bytes())
    n = len(load_graph(model).layers)
    plan = make_plan(model, [((0, n // 3), [("big", (TWO[0],))]), ((n // 3, n), [("little", (TWO[1],))])])
    plan.validate()
    plan_path = folder / "plan.json"
    plan.save(plan_path)
    return plan_path, model


@pytest.fixture(scope="module")
def planned_emulated(planned):
    """An all-cores plan on an emulated platform whose second cluster runs at half speed, with a cgroup to
    clean up: one interpreter over both clusters, its thread on the slowed CPU under the cluster's CPU
    quota (per-thread placement needs cgroup v1; a worker wholly on a slowed cluster pads instead)."""
    from cores.emulation import find_cgroup_root
    from cores.model import Cluster, Platform

    if not cgroups_writable() or find_cgroup_root().version != 1:
        pytest.skip("per-thread cgroups (v1) cannot be written here")
    plan_path, model = planned
    slow = Platform((Cluster("big", "host", (TWO[0],)), Cluster("little", "host", (TWO[1],), speed=0.5)),
                    source="emulate:test")
    n = len(load_graph(model).layers)
    plan = make_plan(model, [((0, n), [("big+little", TWO)])], slow)
    path = plan_path.parent / "plan_emulated.json"
    plan.save(path)
    return path, model


def _small_shm_namespace() -> bool:
    """Whether this process may run a command in a mount namespace of its own with a small /dev/shm."""
    try:
        probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /dev/shm"],
                               capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def test_a_small_dev_shm_is_one_line_not_a_crash(planned):
    """Docker gives a container 64 MB of /dev/shm: rings that do not fit are refused, not a SIGBUS mid-stream."""
    if not _small_shm_namespace():
        pytest.skip("cannot mount a tmpfs in a private mount namespace here (needs CAP_SYS_ADMIN)")
    plan_path, _model = planned
    command = (f"mount -t tmpfs -o size=4m tmpfs /dev/shm && exec {sys.executable} -m pipeit run {plan_path} "
               "--frames 4 --slots 8")  # edge 0 alone: 8 slots of a 224x224x3 float32 frame, 4.8 MB
    result = subprocess.run(["unshare", "-m", "sh", "-c", command], capture_output=True, text=True, timeout=120)
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("INFO:")]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and "not enough shared memory for edge 0" in lines[0], result.stderr
    assert "docker run --shm-size" in lines[0]


def test_run_check_json_reports_identical_outputs(planned):
    plan_path, _ = planned
    result = pipeit("run", str(plan_path), "--frames", "12", "--warmup", "2", "--check", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["frames"] == 12 and doc["fps"] > 0
    assert doc["outputs_match"] is True
    assert set(doc["latency_ms"]) == {"p50", "p95", "p99"}
    assert len(doc["stages"]) == 2
    for stage in doc["stages"]:
        assert {"measured_ms", "predicted_ms", "busy"} <= set(stage)
        assert stage["measured_ms"] > 0 and 0 < stage["busy"] <= 1


def test_run_reads_frames_from_npy_and_prints_a_table(planned, tmp_path):
    plan_path, model = planned
    frames = np.random.default_rng(3).uniform(-1, 1, size=(3, 1, 224, 224, 3)).astype(np.float32)
    np.save(tmp_path / "frames.npy", frames)
    result = pipeit("run", str(plan_path), "--model", str(model), "--input", str(tmp_path / "frames.npy"),
                    "--frames", "6", "--warmup", "0", "--check")
    assert result.returncode == 0, result.stderr
    assert "outputs match the whole model" in result.stdout
    assert "measured ms" in result.stdout
    assert "INFO:" not in result.stderr  # the runtime's delegate line: no news to the user
    assert "latency limit" not in result.stdout  # a plan made for throughput alone


def test_run_says_whether_the_plans_latency_limit_was_met(planned, tmp_path):
    """The table showed p99 alone: a plan made for a limit (and run gated) never said whether it kept it."""
    plan_path, model = planned
    doc = json.loads(plan_path.read_text())
    for limit, verdict in ((1e6, "met"), (0.001, "MISSED")):
        doc["limits"]["latency_ms"] = limit
        limited = tmp_path / f"limited{limit:g}.json"
        limited.write_text(json.dumps(doc))
        result = pipeit("run", str(limited), "--model", str(model), "--frames", "4", "--warmup", "0")
        assert result.returncode == 0, result.stderr
        assert f"latency limit {limit:g} ms (the plan's; frames admitted gated): p99 {verdict}" in result.stdout


@pytest.mark.parametrize("array", [np.zeros((1, 224, 224, 1), np.float32), np.zeros((1, 224, 224, 3), np.float64)])
def test_bad_input_shape_or_dtype_exits_2(planned, tmp_path, array):
    plan_path, _ = planned
    np.save(tmp_path / "bad.npy", array)
    result = pipeit("run", str(plan_path), "--input", str(tmp_path / "bad.npy"), "--frames", "2")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    ours = [line for line in result.stderr.splitlines() if not line.startswith("INFO:")]  # runtime's log lines
    assert len(ours) == 1 and "the model takes" in ours[0]


def test_model_with_another_hash_exits_2(planned, tmp_path):
    plan_path, model = planned
    other = tmp_path / "changed.tflite"
    data = bytearray(model.read_bytes())
    data[-1] ^= 0x01
    other.write_bytes(bytes(data))
    result = pipeit("run", str(plan_path), "--model", str(other), "--frames", "2")
    assert result.returncode == 2
    assert "sha256" in result.stderr and "Traceback" not in result.stderr


def test_missing_model_exits_2(planned, tmp_path):
    plan_path, _ = planned
    moved = tmp_path / "plan.json"
    moved.write_text(plan_path.read_text())
    result = pipeit("run", str(moved), "--frames", "2")
    assert result.returncode == 2 and "--model" in result.stderr


def _one_error_line(result: subprocess.CompletedProcess) -> str:
    """The run's one ``pipeit: error:`` line, once it is checked to be all it said (and exit 2)."""
    assert result.returncode == 2, result.stderr
    ours = [line for line in result.stderr.splitlines() if not line.startswith("INFO:")]  # runtime's log lines
    assert len(ours) == 1 and ours[0].startswith("pipeit: error:"), result.stderr
    return ours[0]


def _input_name(model) -> str:
    return load_graph(model).inputs[0].name


@pytest.mark.parametrize("make, message", [
    (lambda path, name: np.save(path.with_suffix(".npy"), np.float32(1)),
     "frame is () (a 0-d array) float32, the model takes (1, 224, 224, 3) float32"),
    (lambda path, name: np.savez(path, a=np.zeros(3, np.float32), b=np.zeros(3, np.float32)),
     "holds arrays ['a', 'b'], the model's inputs are"),
    (lambda path, name: np.savez(path, x=np.zeros(3, np.float32)),
     "frame is (3,) float32, the model takes (1, 224, 224, 3) float32"),
    (lambda path, name: np.savez(path, img=np.array([None], dtype=object)), "not a readable .npy/.npz file"),
    (lambda path, name: np.savez(path, **{name: np.zeros((0, 1, 224, 224, 3), np.float32)}), "holds no frames"),
    (lambda path, name: path.write_bytes(b"PK\x03\x04 not a zip"), "not a readable .npy/.npz file"),
])
def test_unusable_input_files_exit_2_with_one_line(planned, tmp_path, make, message):
    plan_path, model = planned
    make(tmp_path / "frames.npz", _input_name(model))
    given = next(tmp_path.glob("frames.*"))
    line = _one_error_line(pipeit("run", str(plan_path), "--input", str(given), "--frames", "2"))
    assert message in line


def test_an_empty_input_name_is_refused_not_read_as_the_current_folder(planned, tmp_path):
    plan_path, _ = planned
    (tmp_path / "stray.npy").write_bytes(b"not numpy")  # what the current folder's files were read as
    line = _one_error_line(pipeit("run", str(plan_path), "--input", "", "--frames", "2", cwd=tmp_path))
    assert "--input needs random, a file or a folder name" in line


def test_run_takes_frames_saved_in_the_other_byte_order(planned, tmp_path):
    """`pipeit infer` took a big-endian .npy and `run` refused it: the values are the same floats."""
    plan_path, model = planned
    frame = np.random.default_rng(6).uniform(-1, 1, size=(1, 224, 224, 3)).astype(">f4")
    np.save(tmp_path / "be.npy", frame)
    result = pipeit("run", str(plan_path), "--input", str(tmp_path / "be.npy"), "--frames", "2", "--warmup", "0",
                    "--check", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["outputs_match"] is True


def test_run_reads_frames_from_npz_by_input_name(planned, tmp_path):
    plan_path, model = planned
    frames = np.random.default_rng(5).uniform(-1, 1, size=(2, 1, 224, 224, 3)).astype(np.float32)
    np.savez(tmp_path / "frames.npz", **{_input_name(model): frames})
    result = pipeit("run", str(plan_path), "--input", str(tmp_path / "frames.npz"), "--frames", "4",
                    "--warmup", "0", "--check", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["outputs_match"] is True


def test_negative_seed_exits_2(planned):
    plan_path, _ = planned
    line = _one_error_line(pipeit("run", str(plan_path), "--seed", "-1", "--frames", "2"))
    assert "--seed must be >= 0, got -1" in line


def test_a_folder_given_as_the_model_exits_2(planned, tmp_path):
    plan_path, _ = planned
    line = _one_error_line(pipeit("run", str(plan_path), "--model", str(tmp_path), "--frames", "2"))
    assert "is a folder, not a model file" in line


def _edited_plan(plan_path, tmp_path, edit) -> str:
    doc = json.loads(plan_path.read_text())
    text = edit(doc)
    out = tmp_path / "edited.json"
    out.write_text(text if isinstance(text, str) else json.dumps(doc))
    return str(out)


def _set_layers(doc, layers):
    doc["stages"][-1]["layers"] = layers


@pytest.mark.parametrize("edit, message", [
    (lambda doc: doc.update(limits="none"), "limits must be an object, got 'none'"),
    (lambda doc: doc["limits"].update(latency_ms="5"), "limits latency_ms must be a number, got '5'"),
    (lambda doc: "[" * 100_000, "JSON nested too deeply"),
    (lambda doc: json.dumps(doc).replace('"version": 1', '"version": 1, "x": ' + "9" * 5000),
     "not a readable plan JSON file"),
    (lambda doc: doc["stages"][0]["workers"][0].update(cpus=[str(c) for c in doc["stages"][0]["workers"][0]["cpus"]]),
     "a worker's CPU must be an integer, got '"),
    (lambda doc: doc["stages"][0]["workers"][0].update(threads=1.0), "a worker's threads must be an integer, got 1.0"),
    (lambda doc: doc["stages"][0]["workers"][0].update(threads=1000), "1000 threads on 1 CPU(s)"),
    (lambda doc: doc["stages"][0]["workers"][0].update(cpus=doc["stages"][0]["workers"][0]["cpus"] * 2),
     "lists a CPU twice"),
    (lambda doc: doc.update(version=True), "plan version True is not supported"),
    # an infinite worker time hung run (frames in flight from inf/inf) and broke the daemon's status JSON
    (lambda doc: json.dumps(doc).replace('"predicted_ms": ', '"predicted_ms": Infinity, "x": ', 1),
     "a worker's predicted_ms must be a finite number"),
    (lambda doc: doc["stages"][0].update(layers=[0, float(doc["stages"][0]["layers"][1])]),
     "a stage's layer index must be an integer"),
    (lambda doc: _set_layers(doc, [doc["stages"][-1]["layers"][0], 999]),
     "plan stage 1 covers layers"),
    (lambda doc: _set_layers(doc, [doc["stages"][-1]["layers"][0], doc["stages"][-1]["layers"][1] - 1]),
     "plan stage 1 covers layers"),
])
def test_a_plan_that_is_not_what_pipeit_writes_exits_2_with_one_line(planned, tmp_path, edit, message):
    plan_path, model = planned
    edited = _edited_plan(plan_path, tmp_path, edit)
    line = _one_error_line(pipeit("run", edited, "--model", str(model), "--frames", "2"))
    assert message in line


@pytest.mark.parametrize("signum,emulated", [(signal.SIGTERM, True), (signal.SIGINT, False), (signal.SIGTERM, False),
                                            (signal.SIGHUP, True)])
def test_signal_mid_stream_stops_cleanly(request, signum, emulated):
    plan_path, _ = request.getfixturevalue("planned_emulated" if emulated else "planned")
    # the plain plan: 2 stages of one worker; the emulated one: 1 stage of one worker over both CPUs
    want_workers, want_segments = (1, 2) if emulated else (2, 3)  # segments: edge 0, each cut, the outputs
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeit", "run", str(plan_path), "--frames", "1000000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=sigint_as_default,
    )
    try:
        parent = psutil.Process(proc.pid)
        deadline = time.monotonic() + 60
        workers = []
        # streaming has begun once both workers exist and have done real work
        while time.monotonic() < deadline and proc.poll() is None:
            workers = [c for c in parent.children() if "spawn_main" in " ".join(c.cmdline())]
            if len(workers) == want_workers and all(sum(c.cpu_times()[:2]) > 0.2 for c in workers):
                break
            time.sleep(0.1)
        assert len(workers) == want_workers, "workers never started"
        segments = glob.glob(f"/dev/shm/pipeit_{proc.pid}_*")
        assert len(segments) == want_segments
        groups = glob.glob(f"/sys/fs/cgroup/**/pipeit-{proc.pid}-*", recursive=True)
        assert bool(groups) == emulated
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # the shell's code for the signal (128 + its number), as a script running ``timeout pipeit ...`` expects
    assert proc.returncode == 128 + signum, stderr
    expected_line = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
    assert "Traceback" not in stderr and expected_line in stderr, stderr
    for worker in workers:
        assert not worker.is_running() or worker.status() == psutil.STATUS_ZOMBIE
    assert glob.glob(f"/dev/shm/pipeit_{proc.pid}_*") == []
    assert glob.glob(f"/sys/fs/cgroup/**/pipeit-{proc.pid}-*", recursive=True) == []


def test_a_scalar_input_from_a_file_stays_a_scalar(tmp_path):
    """np.ascontiguousarray made a 0-d input 1-d: the file's frame was refused as "(1,) float32, the model
    takes () float32", and with --check the reference raised a traceback."""
    from pipeit.cli.cmd_run import load_frames
    from pipeit.descriptor import TensorInfo

    inputs = (TensorInfo("x", (1, 4), "float32"), TensorInfo("s", (), "float32"))
    np.savez(tmp_path / "f.npz", x=np.ones((1, 4), np.float32), s=np.float32(2.5))
    frame, = load_frames(str(tmp_path / "f.npz"), inputs)
    assert frame["s"].shape == () and frame["s"] == np.float32(2.5)


def test_a_frame_the_whole_model_cannot_run_is_one_error():
    """``run --check`` runs the whole model on the frames first: a frame it refuses (a GATHER index out of
    range) was a RuntimeError traceback."""
    from pipeit.errors import ModelError
    from pipeit.runtime import invoke_frames, make_interpreter
    from pipeit.tflite_builder import single_layer_model

    interpreter = make_interpreter(single_layer_model("conv", (1, 6, 6, 4), out_channels=4))
    with pytest.raises(ModelError, match="^the whole model fails on frame 1: "):
        invoke_frames(interpreter, [{"input": np.zeros((1, 6, 6, 4), np.float32)},
                                    {"input": np.zeros((1, 5, 6, 4), np.float32)}])
