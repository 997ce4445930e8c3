"""Emulated slow clusters: cgroup quotas that slow a real conv layer by the declared factor."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys

import pytest

from cores.emulation import Throttles, calibrate, choose_period_us, find_cgroup_root
from cores.errors import EmulationError, PlatformError
from cores.pinning import run_pinned, start_pinned
from cores.platform import load_platform
from tests import pinned_workers

CPUS = tuple(sorted(os.sched_getaffinity(0)))


def _cgroups_or_skip():
    try:
        return find_cgroup_root()
    except EmulationError as err:
        pytest.skip(f"cgroups are not writable here: {err}")


def _ours(root):
    return sorted(n for n in os.listdir(root.base) if n.startswith(f"pipeit-{os.getpid()}-"))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "pipeit" / "emulation.json"


def test_period_respects_minimum_quota():
    assert choose_period_us(0.4) == 5000
    assert choose_period_us(0.05) * 0.05 >= 1000


def test_full_speed_platform_needs_no_cgroup():
    with Throttles(load_platform("emulate:big=0@1.0")) as t:
        assert t.cgroup_path("big") is None
        t.attach("big", os.getpid())  # a no-op
        with pytest.raises(PlatformError):
            t.cgroup_path("nosuch")


def test_cgroups_made_and_removed_also_on_error(cache):
    root = _cgroups_or_skip()
    platform = load_platform(f"emulate:big={CPUS[0]}@1.0,little={CPUS[-1]}@0.5")
    with pytest.raises(RuntimeError):
        with Throttles(platform, calibrate=False) as t:
            folder = t.cgroup_path("little")
            assert os.path.isdir(folder)
            with open(os.path.join(folder, "cpu.cfs_quota_us" if root.version == 1 else "cpu.max")) as f:
                assert f.read().split()[0] == str(int(0.5 * choose_period_us(0.5)))  # uncalibrated: f x period
            info = run_pinned(pinned_workers.affinity_and_cgroup, cpus=(CPUS[-1],),
                              throttle=folder, timeout=60)
            assert os.path.basename(folder) in info["cgroup"]
            raise RuntimeError("boom")
    assert _ours(root) == []


def test_processes_left_inside_are_moved_out(cache):
    root = _cgroups_or_skip()
    platform = load_platform(f"emulate:little={CPUS[-1]}@0.5")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with Throttles(platform, calibrate=False) as t:
            t.attach("little", child.pid)
            with open(os.path.join(t.cgroup_path("little"), "cgroup.procs")) as f:
                assert str(child.pid) in f.read().split()
        assert _ours(root) == []
    finally:
        child.kill()
        child.wait()


def test_unwritable_cgroups_say_so():
    """As an unprivileged user the cgroup tree is read-only: one clear EmulationError."""
    if os.geteuid() != 0:
        with pytest.raises(EmulationError, match="cannot emulate"):
            with Throttles(load_platform(f"emulate:little={CPUS[0]}@0.5")):
                pass
        return
    code = (
        "import os, encodings.ascii, encodings.utf_8\n"
        "from cores.emulation import Throttles\n"
        "from cores.platform import load_platform\n"
        "from cores.errors import EmulationError\n"
        "platform = load_platform('emulate:little=0@0.5')\n"
        "os.setgid(65534); os.setuid(65534)\n"
        "try:\n"
        "    Throttles(platform).__enter__()\n"
        "except EmulationError as err:\n"
        "    print('EmulationError:', err)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, cwd=os.path.dirname(os.path.dirname(__file__)))
    if result.returncode != 0 and "EmulationError" not in result.stdout:
        pytest.skip("the test interpreter is not readable by an unprivileged user")
    assert "EmulationError: cannot emulate slow clusters here" in result.stdout, result.stderr
    assert "not writable" in result.stdout


def test_calibration_is_cached(cache):
    _cgroups_or_skip()
    first = calibrate(0.5, CPUS[-1], rounds=3, window_s=0.1)
    assert first.steps and not first.cached
    assert 1000 <= first.quota_us <= first.period_us
    if cache.exists():  # not written when the host was too busy to converge
        again = calibrate(0.5, CPUS[-1])
        assert again.cached and again.quota_us == first.quota_us


def _measure_once(platform, throttles, model, reps=9):
    """Interleaved batches on big and little; returns (achieved factor, big contention)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    workers = {}
    for name in ("big", "little"):
        commands, results = ctx.Queue(), ctx.Queue()
        proc = start_pinned(pinned_workers.conv_server, (model, commands, results),
                            cpus=platform.cluster(name).cpus, throttle=throttles.cgroup_path(name))
        workers[name] = (proc, commands, results)
    try:
        for _, _, results in workers.values():
            assert results.get(timeout=60)[0] == "ready"
        _, commands, results = workers["big"]
        commands.put(20)  # size a batch to ~40 ms on the big cluster
        _, _, cpu = results.get(timeout=60)
        batch = max(5, int(20 * 0.04 / max(cpu, 1e-4)))
        times = {"big": [], "little": []}
        for _ in range(reps):
            for name in ("big", "little"):
                _, commands, results = workers[name]
                commands.put(batch)
                _, wall, cpu = results.get(timeout=120)
                times[name].append((wall, cpu))
    finally:
        for _, commands, _ in workers.values():
            commands.put(None)
        for proc, _, _ in workers.values():
            proc.result(timeout=60)
    big_cpu = statistics.median(c for _, c in times["big"])
    little_wall = statistics.median(w for w, _ in times["little"])
    contention = statistics.median(w / c for w, c in times["big"] if c > 0)
    return big_cpu / little_wall, contention


@pytest.mark.skipif(len(CPUS) < 2, reason="needs two CPUs: one full-speed, one emulated")
def test_conv_layer_slowed_by_declared_factor(cache):
    """Single-thread conv on each emulated cluster, interleaved; the ratio is the declared factor.

    The reference is the big worker's thread CPU time per batch (its speed while
    it holds the CPU), so other processes on the shared host do not pull the
    ratio towards 1; the little worker is timed on the wall clock, where the
    throttle shows. Up to three attempts; a miss only counts as a failure when
    the big CPU was quiet (wall/CPU time < 1.15) during that attempt, because a
    CPU shared with other work cannot show what the quota alone does.

    Tolerance 25 %: CFS charges the quota at scheduler ticks (4 ms at HZ=250),
    so a throttled worker overruns its quota by up to a tick per period and
    repays it later; over a short batch that leaves the achieved share up to
    ~0.1 above 0.4 (seen: 0.49 three attempts in a row on a quiet CPU, with
    the start-up calibration at 0.394). No throttle at all (1.0) still fails.
    """
    root = _cgroups_or_skip()
    factor = 0.4
    tolerance = 0.25
    platform = load_platform(f"emulate:big={CPUS[0]}@1.0,little={CPUS[1]}@{factor}")
    model = pinned_workers.conv_model_bytes(size=28, channels=32)
    attempts = []
    with Throttles(platform) as throttles:
        for _ in range(3):
            achieved, contention = _measure_once(platform, throttles, model)
            attempts.append((round(achieved, 3), round(contention, 2)))
            if abs(achieved / factor - 1) <= tolerance:
                break
        report = throttles.report()
    print(f"declared {factor}: (achieved, big wall/cpu) per attempt {attempts}; calibration {report}")
    assert _ours(root) == []
    if abs(attempts[-1][0] / factor - 1) <= tolerance:
        return
    quiet = [a for a in attempts if a[1] < 1.15]
    if not quiet:
        pytest.skip(f"host too busy to measure the throttle (attempts {attempts})")
    pytest.fail(f"emulated factor off by more than {tolerance:.0%} on a quiet CPU: {attempts}, {report}")


def test_read_bandwidth_parses_both_cgroup_versions(tmp_path):
    from cores.emulation import read_bandwidth

    v1 = tmp_path / "v1"
    v1.mkdir()
    (v1 / "cpu.cfs_quota_us").write_text("2500\n")
    (v1 / "cpu.cfs_period_us").write_text("5000\n")
    assert read_bandwidth(str(v1)) == (2500, 5000)
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    assert read_bandwidth(str(v1)) == (None, 5000)  # no limit
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("max 100000\n")
    assert read_bandwidth(str(v2)) == (None, 100000)
    (v2 / "cpu.max").write_text("1000 5000\n")
    assert read_bandwidth(str(v2)) == (1000, 5000)
    (v2 / "cpu.max").write_text("garbage\n")
    assert read_bandwidth(str(v2)) is None and read_bandwidth(str(tmp_path / "gone")) is None


def test_speed_now_follows_the_quota_as_a_frequency_cap_would(cache):
    """The emulated cluster's speed is its quota share over the calibrated one, times the declared speed:
    halving the quota from outside reads as half the speed; lifting it, as full speed."""
    root = _cgroups_or_skip()
    platform = load_platform(f"emulate:big={CPUS[0]}@1.0,little={CPUS[-1]}@0.5")
    with Throttles(platform, calibrate=False) as t:
        assert t.speed_now("big") is None  # full speed by declaration: no cgroup, nothing to read
        assert t.speed_now("little") == pytest.approx(0.5)
        cal = t.calibrations["little"]
        folder = t.cgroup_path("little")
        v1 = root.version == 1
        with open(os.path.join(folder, "cpu.cfs_quota_us" if v1 else "cpu.max"), "w") as f:
            f.write(str(cal.quota_us // 2) if v1 else f"{cal.quota_us // 2} {cal.period_us}")
        assert t.speed_now("little") == pytest.approx(0.25)
        with open(os.path.join(folder, "cpu.cfs_quota_us" if v1 else "cpu.max"), "w") as f:
            f.write("-1" if v1 else f"max {cal.period_us}")
        assert t.speed_now("little") == 1.0
    assert t.speed_now("little") is None  # closed: the group is gone


# ---- padding: what a worker wholly on a slowed cluster does instead of joining the quota ----------


def _burn(seconds: float) -> None:
    """Real CPU work on this thread for ``seconds`` of its CPU time."""
    import time

    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_a_padded_job_takes_its_work_over_the_speed_and_leaves_the_rest_of_the_core_free():
    import time

    from cores.emulation import PaddedInvoke, SlowCore

    padded = PaddedInvoke(lambda: _burn(0.004), SlowCore("little", 0.4))
    walls, cpus = [], []
    for _ in range(15):
        w0, c0 = time.perf_counter(), time.thread_time()
        padded()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.thread_time() - c0)
    # 4 ms of work at 0.4: 10 ms; the padding sleeps (all but its last 0.2 ms), so the 0.6 of the core
    # the quota used to leave idle stays free for the pipeline's coordinator
    assert 0.0098 <= statistics.median(walls) <= 0.0115, walls
    assert statistics.median(cpus) <= 0.0055, cpus


def test_waiting_is_not_work_and_is_not_stretched():
    import time

    from cores.emulation import PaddedInvoke, SlowCore

    padded = PaddedInvoke(lambda: time.sleep(0.01), SlowCore("little", 0.25))
    c0 = time.thread_time()
    w0 = time.perf_counter()
    padded()
    assert time.perf_counter() - w0 < 0.02  # 10 ms asleep, not 40
    assert time.thread_time() - c0 < 0.005


def test_the_speed_now_follows_the_quota_as_it_stands(tmp_path):
    from cores.emulation import PaddedInvoke, SlowCore

    fixed = SlowCore("little", 0.4)
    assert fixed.speed_now() == 0.4
    group = tmp_path / "pipeit-1-little"
    group.mkdir()
    (group / "cpu.max").write_text("2000 5000\n")  # the calibrated share: 0.4 of a CPU
    slow = SlowCore("little", 0.4, str(group), calibrated_share=0.4)
    assert slow.speed_now() == pytest.approx(0.4)
    (group / "cpu.max").write_text("1000 5000\n")  # halved from outside: the board throttles
    assert slow.speed_now() == pytest.approx(0.2)
    padded = PaddedInvoke(lambda: _burn(0.002), slow, refresh_s=0.0)
    padded()
    assert padded.speed == pytest.approx(0.2)
    (group / "cpu.max").write_text("max 5000\n")  # no quota: full speed, no padding
    assert slow.speed_now() == 1.0
    (group / "cpu.max").unlink()  # the owner removed the group: the declared speed
    assert slow.speed_now() == 0.4


def test_throttles_hand_out_slow_cores_only_for_slowed_clusters():
    from cores.emulation import slow_core_for

    platform = load_platform(f"emulate:big={CPUS[0]}@1.0,little={CPUS[-1]}@0.5")
    assert slow_core_for(platform, "big") is None
    little = slow_core_for(platform, "little")
    assert little.speed == 0.5 and little.folder is None
    with pytest.raises(PlatformError):
        slow_core_for(platform, "medium")


def test_interference_is_added_once_not_stretched():
    """A job slowed by a neighbour (more CPU time for the same work) is padded by its own least work:
    the extra time counts once, as DRAM stalls do on a slow core, not 1/speed times."""
    import time

    from cores.emulation import PaddedInvoke, SlowCore

    took = []
    for _ in range(5):  # the least of five: the shared host only ever adds time (one run took 14.4 ms)
        costs = iter([0.004] * 5 + [0.008])
        padded = PaddedInvoke(lambda: _burn(next(costs)), SlowCore("little", 0.5))
        for _ in range(5):
            padded()
        w0 = time.perf_counter()
        padded()  # 4 ms of extra work: 8 + 4 ms, not 16
        took.append(time.perf_counter() - w0)
    assert 0.0115 <= min(took) <= 0.014, took
