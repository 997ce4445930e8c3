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
from tests.host_helpers import needs_cgroups

PLATFORM = "emulate:big=0@1.0,little=1@0.8"
# Layers of a few ms each: with ~1 ms stages the test's own clients, the daemon and the workers
# on a 2-core host swing stage times by half, and re-planning would chase scheduling noise.
SIZE, CHANNELS = 96, 32


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


def _settled_status(client, quiet_s: float = 3.0, limit_s: float = 25.0) -> dict:
    """Status once no re-plan event has been logged for ``quiet_s`` (longer than the cooldown)."""
    start = time.monotonic()
    doc = client.status()
    count, since = len(doc["events"]), time.monotonic()
    while time.monotonic() - start < limit_s:
        time.sleep(0.5)
        doc = client.status()
        if len(doc["events"]) != count:
            count, since = len(doc["events"]), time.monotonic()
        elif time.monotonic() - since >= quiet_s and time.monotonic() - start >= 2.0:
            break
    return doc


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


@needs_cgroups
@pytest.mark.parametrize("path", ["platform", "drift"])
def test_slowed_cluster_triggers_replan_and_switch(tmp_path, path):
    """``platform``: the daemon's monitor reads the emulated cluster's speed from its quota, as a board's
    frequency cap, and re-plans on the next window with the exact factor. ``drift``: that reading is
    hidden (PIPEIT_HIDE_EMULATED_SPEED), as when a co-runner takes the cores: only the measured stage
    times show the slowdown, and the drift detector must blame the little cluster."""
    os.chmod(tmp_path, 0o750)
    model = build_model(tmp_path / "m.tflite", layers=6, size=SIZE, channels=CHANNELS)
    per_layer = _model_ms(model) / 8
    times = write_times(model, PLATFORM, tmp_path / "times.json", ms=per_layer)
    # Pipe-it's strategy: one worker per stage, so each stage's measured time belongs to one cluster
    # (the executor measures stages, not workers: a replicated stage hides a slow replica).
    d = Daemon(["--model", str(model), "--platform", PLATFORM, "--times", str(times), "--window-s", "0.5",
                "--sustain", "2", "--strategy", "pipe-it", "--per-client", "4"],
               tmp_path / "r.sock", env={"PIPEIT_STATE_DIR": str(tmp_path / "state"),
                                         **({"PIPEIT_HIDE_EMULATED_SPEED": "1"} if path == "drift" else {})})
    rng = np.random.default_rng(0)
    frames = [rng.standard_normal((1, SIZE, SIZE, CHANNELS)).astype(np.float32) for _ in range(4)]
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
            # Change the quota only once the daemon has settled: a switch on start-up noise that lands
            # at the moment of the change would take the slowed cluster as its new baseline.
            doc = _settled_status(admin)
            little = doc["emulation"]["little"]
            first_events = len(doc["events"])
            plan_before = doc["plan"]
            assert any("little" in w["cluster"] for s in plan_before["stages"] for w in s["workers"]), plan_before
            _set_quota(little["cgroup"], 1000, little["period_us"])  # ~0.1 of a core: the board "heats up"
            # what the quota cut means: the exact factor of the platform path, on top of any scaling before it
            factor = little["quota_us"] / 1000 * next(c["factor"] for c in doc["clusters"] if c["name"] == "little")
            deadline = time.monotonic() + 40
            switch = None
            while switch is None and time.monotonic() < deadline:
                time.sleep(0.5)
                doc = admin.status()
                switch = next((e for e in doc["events"][first_events:]
                               if e["kind"] == "switch" and (_little_slowdown(e["reason"]) > 1.15 or (
                                   path == "platform" and "cluster little throttled" in e["reason"]))), None)
            assert switch is not None, (doc["events"], d.log())
            if path == "platform":
                # seen as a platform change (no drift streak needed) and re-planned with the exact factor
                assert switch["reason"].startswith("platform changed: cluster little throttled"), switch
                little_now = next(c for c in doc["clusters"] if c["name"] == "little")
                if any("corrected by measurement" in e["reason"] for e in doc["events"]):
                    # the first window after the switch measured little slower than that factor says: the
                    # daemon re-planned from the measured ratio on top of it (or reverted that, back to it)
                    assert (little_now["factor"] > factor * 1.15 or little_now["factor"] == pytest.approx(
                        factor, rel=0.01)), (little_now, factor, doc["events"])
                else:
                    assert little_now["factor"] == pytest.approx(factor, rel=0.01), (little_now, factor)
            else:
                assert "drift" in switch["reason"] and "big" not in switch["reason"].split("(not blamed")[0], switch

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
    # a platform re-plan is verified by its first window: at most one measured follow-up per change, never a loop
    changes = [e for e in final["events"] if e["reason"].startswith("platform changed")]
    follow_ups = [e for e in final["events"] if "corrected by measurement" in e["reason"]]
    assert len(follow_ups) <= len(changes), final["events"]
    assert path == "platform" or not follow_ups, final["events"]
    assert final["requests"]["served"] == sent[0] + 0  # none lost, none twice (status requests are not counted)
    assert final["requests"]["failed"] == 0
    assert "switched pipeline" in d.log()
    assert leftovers(d.proc.pid) == []


def _oversubscribed() -> bool:
    """More runnable work than CPUs: co-runners then really do slow the workers for seconds at a time,
    which is drift the daemon is right to act on, so "nothing changes" cannot be tested."""
    return os.getloadavg()[0] > len(os.sched_getaffinity(0)) + 0.5


@needs_cgroups
def test_stable_platform_does_not_flap(tmp_path):
    """Nothing changes on the platform: over a dozen windows of steady load the daemon may re-base its
    expectations (this host is shared: other work moves the times), but the hysteresis (a cooldown
    after a switch, and a 5 % margin over the *measured* fps) keeps it from switching back and forth.
    One switch can be real here -- a co-runner on the 2-core CI host slows a worker for seconds, and
    re-planning around that is the daemon's job -- a second one within 14 windows is flapping.

    The daemon profiles the model here on start (as on a board), so its times have the model's real
    shape. Equal synthetic times per layer would not do: the re-planner scales whole clusters, and
    cannot tell a model error in one layer range from a slower cluster."""
    if _oversubscribed():
        pytest.skip(f"host load {os.getloadavg()[0]:.1f} exceeds its CPUs: co-runners are real drift here")
    os.chmod(tmp_path, 0o750)
    model = build_model(tmp_path / "m.tflite", layers=6, size=SIZE, channels=CHANNELS)
    d = Daemon(["--model", str(model), "--platform", PLATFORM, "--window-s", "0.5",
                "--sustain", "3", "--strategy", "pipe-it"],  # the default sustain, short windows
               tmp_path / "s.sock", env={"PIPEIT_STATE_DIR": str(tmp_path / "state")})
    frame = np.random.default_rng(5).standard_normal((1, SIZE, SIZE, CHANNELS)).astype(np.float32)
    want = reference(model, frame)
    with d:
        with Client(d.socket_path) as c:
            generation = c.status()["generation"]
            deadline = time.monotonic() + 7.0  # 14 windows
            served = 0
            while time.monotonic() < deadline:
                for out in c.infer_many([frame] * 8, window=4):
                    np.testing.assert_array_equal(out["fc"], want)
                    served += 1
            doc = c.status()
    switches = [e for e in doc["events"] if e["kind"] == "switch"]
    assert len(switches) <= 1, (doc["events"], d.log())
    assert doc["generation"] == generation + len(switches), (doc["events"], d.log())
    assert doc["requests"]["served"] == served and doc["requests"]["failed"] == 0
    stage = doc["stages"][0]
    assert len(stage["worker_ms"]) == len(stage["workers"]) and stage["queue_depth"] is not None
    assert leftovers(d.proc.pid) == []


def test_a_switch_that_measured_worse_is_switched_back_and_banned_without_losing_a_request(tmp_path):
    """The confirmation step end to end on a real in-process server and real pipelines: a switch is made
    (big declared 3x slower), its verdict comes out "worse" (the one number set by hand: the answered fps
    before the switch), and the daemon switches back to the first plan while a client streams frames,
    forgets the evidence the switch was made on, and refuses the banned plan when the same drift
    proposes it again."""
    from cores.platform import load_platform
    from pipeit.daemon.replan import plan_layout
    from pipeit.daemon.server import Server, ServerConfig
    from pipeit.daemon.state import PlanSource

    equal = "emulate:big=0@1.0,little=1@1.0"  # no cgroups needed
    os.chmod(tmp_path, 0o750)
    model = build_model(tmp_path / "m.tflite")
    times = write_times(model, equal, tmp_path / "times.json")
    config = ServerConfig(socket_path=str(tmp_path / "s.sock"), window_s=3600.0, confirm_windows=1)
    server = Server(config, str(model), load_platform(equal), PlanSource(times=str(times), strategy="pipe-it"))
    server.start()
    serving = threading.Thread(target=server.serve_forever, kwargs={"install_signals": False})
    serving.start()
    frames = [np.random.default_rng(k).standard_normal((1, 32, 32, 16)).astype(np.float32) for k in range(3)]
    refs = [reference(model, f) for f in frames]
    stop = threading.Event()
    done, wrong, errors = [0], [], []

    def check_stream():
        try:
            with Client(config.socket_path) as c:
                k = 0
                while not stop.is_set():
                    out = c.infer({"image": frames[k % 3]})
                    if not np.array_equal(out["fc"], refs[k % 3]):
                        wrong.append(k)
                    k += 1
                    done[0] += 1
        except Exception as err:  # noqa: BLE001
            errors.append(repr(err))

    client = threading.Thread(target=check_stream)
    try:
        client.start()
        first = plan_layout(server.engine.current.plan)
        event = server.replan("test: big runs 3x slower", {"big": 3.0})
        assert event.kind == "switch", event
        assert plan_layout(server.engine.current.plan) != first
        check = server._check
        assert check is not None and check.old_plan is not None
        check.answered_before = 1e6  # the one fiction: the old pipeline answered far more
        server._window_fps = 10.0
        assert server._judge_switch(server.engine.current.number)  # reverted
        assert plan_layout(server.engine.current.plan) == first
        assert server.events[-1].kind == "revert" and "banned" in server.events[-1].reason
        assert server._policy.banned(event.layout_after, (("big", "slower"),))
        while server._policy.cooling:
            server._policy.tick()
        assert server._factors == {}  # the revert undid the evidence too: a real drift is seen again
        again = server.replan("test: big 3x slower again", {"big": 3.0})  # proposes the banned plan
        assert again.kind == "skipped" and "banned" in again.reason, again
        assert plan_layout(server.engine.current.plan) == first
        time.sleep(0.5)
    finally:
        stop.set()
        client.join(60)
        server.request_stop()
        serving.join(60)
    assert errors == [] and wrong == [] and done[0] > 0
    assert server.counters["served"] == done[0] and server.counters["failed"] == 0
    assert leftovers(os.getpid()) == []
