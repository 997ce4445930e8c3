"""Re-planning under a live daemon: an emulated cluster slows down (its cgroup quota is cut) while
clients stream frames; the daemon notices the drift, re-plans with the observed times and switches
pipelines without losing, duplicating or corrupting a single request."""

from __future__ import annotations

import os
import re
import threading
import time

import numpy as np
import pytest

from pipeit.client import Client
from tests.daemon_helpers import Daemon, build_model, leftovers, reference, write_times

PLATFORM = "emulate:big=0@1.0,little=1@0.8"


def _cgroups_writable() -> bool:
    try:
        from cores.emulation import find_cgroup_root

        find_cgroup_root()
        return True
    except Exception:  # noqa: BLE001
        return False


def _set_quota(folder: str, quota_us: int, period_us: int) -> None:
    if os.path.exists(os.path.join(folder, "cpu.cfs_quota_us")):
        with open(os.path.join(folder, "cpu.cfs_quota_us"), "w") as f:
            f.write(str(quota_us))
    else:
        with open(os.path.join(folder, "cpu.max"), "w") as f:
            f.write(f"{quota_us} {period_us}")


def _little_slowdown(reason: str) -> float:
    """The measured/expected ratio the re-planner reported for a stage on the little cluster (0 if none)."""
    found = re.findall(r"at ([0-9.]+)x its expected [0-9.]+ ms on little", reason)
    return max((float(v) for v in found), default=0.0)


def _model_ms(model) -> float:
    from pipeit.runtime import make_interpreter

    it = make_interpreter(model, num_threads=1)
    for _ in range(5):
        it.invoke()
    samples = []
    for _ in range(30):
        t = time.perf_counter()
        it.invoke()
        samples.append((time.perf_counter() - t) * 1000)
    return float(np.median(samples))


@pytest.mark.skipif(not _cgroups_writable(), reason="needs a writable cgroup cpu controller (root)")
def test_slowed_cluster_triggers_replan_and_switch(tmp_path):
    os.chmod(tmp_path, 0o750)
    model = build_model(tmp_path / "m.tflite", layers=6, size=48, channels=24)
    per_layer = _model_ms(model) / 8
    times = write_times(model, PLATFORM, tmp_path / "times.json", ms=per_layer)
    # Pipe-it's strategy: one worker per stage, so each stage's measured time belongs to one cluster
    # (the executor measures stages, not workers: a replicated stage hides a slow replica).
    d = Daemon(["--model", str(model), "--platform", PLATFORM, "--times", str(times), "--window-s", "0.5",
                "--sustain", "2", "--strategy", "pipe-it", "--per-client", "4"],
               tmp_path / "r.sock", env={"PIPEIT_STATE_DIR": str(tmp_path / "state")})
    rng = np.random.default_rng(0)
    frames = [rng.standard_normal((1, 48, 48, 24)).astype(np.float32) for _ in range(4)]
    refs = [reference(model, f) for f in frames]
    stop = threading.Event()
    sent, wrong, errors = [0], [], []

    def stream(k):
        try:
            with Client(d.socket_path) as c:
                def gen():
                    i = 0
                    while not stop.is_set():
                        yield i
                        i += 1
                pending = []
                for i in gen():
                    pending.append((i, c.send("infer", {"image": frames[(i + k) % 4]})))
                    sent[0] += 1
                    if len(pending) >= 3:
                        j, rid = pending.pop(0)
                        if not np.array_equal(c.receive(rid).tensors["fc"], refs[(j + k) % 4]):
                            wrong.append(j)
                for j, rid in pending:
                    if not np.array_equal(c.receive(rid).tensors["fc"], refs[(j + k) % 4]):
                        wrong.append(j)
        except Exception as err:  # noqa: BLE001
            errors.append(repr(err))

    with d:
        threads = [threading.Thread(target=stream, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        with Client(d.socket_path) as admin:
            time.sleep(4.0)  # let any first recalibration happen
            doc = admin.status()
            little = doc["emulation"]["little"]
            first_events = len(doc["events"])
            plan_before = doc["plan"]
            assert any("little" in w["cluster"] for s in plan_before["stages"] for w in s["workers"]), plan_before
            _set_quota(little["cgroup"], 1000, little["period_us"])  # ~0.1 of a core: the board "heats up"
            deadline = time.monotonic() + 40
            switch = None
            while switch is None and time.monotonic() < deadline:
                time.sleep(0.5)
                doc = admin.status()
                switch = next((e for e in doc["events"][first_events:]
                               if e["kind"] == "switch" and _little_slowdown(e["reason"]) > 1.15), None)
            assert switch is not None, (doc["events"], d.log())
            assert "drift" in switch["reason"]

            def little_layers(stages):
                return sum(r[1] - r[0] for r, workers in stages if any(w[-1] == "little" for w in workers))

            # the new pipeline gives the slowed cluster less of the model
            assert little_layers(switch["stages_after"]) < little_layers(switch["stages_before"]), switch
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # the fps after the switch is measured and logged
                ev = next(e for e in admin.status()["events"] if e["generation_after"] == switch["generation_after"])
                if ev["fps_after"] is not None:
                    break
                time.sleep(0.5)
            assert ev["fps_after"] is not None
            stop.set()
            for t in threads:
                t.join(60)
            final = admin.status()
    assert errors == [] and wrong == []
    assert final["requests"]["served"] == sent[0] + 0  # none lost, none twice (status requests are not counted)
    assert final["requests"]["failed"] == 0
    assert "switched pipeline" in d.log()
    assert leftovers(d.proc.pid) == []
