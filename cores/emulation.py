"""Emulated heterogeneous clusters: CPU bandwidth quotas in cgroups.

A cluster declared at speed ``f`` < 1 gets one cgroup whose CPU bandwidth
is limited (v1 ``cpu.cfs_quota_us``/``cpu.cfs_period_us``, v2 ``cpu.max``);
work pinned to that cluster runs inside it. Short periods throttle evenly
but the kernel hands bandwidth out in slices, so a quota of ``f x period``
throttles *harder* than declared (measured on a 2-core x86 host: 0.4 at
2.5 ms gave 0.26-0.31, 5 ms 0.36-0.37, 10 ms 0.37-0.39). The period also
sets how long a throttled worker can stall a single frame: up to (1 - f) x
period, which a latency limit must absorb (6 ms of a 23 ms budget at 10 ms).
So the period is 5 ms (the quota floor is 1 ms, so factors below 0.2 get a
longer period) and the quota is *calibrated*: a
pinned busy loop alternates between the base cgroup and the throttled one,
the achieved ratio is measured, and the quota is corrected until it lands
within a few percent of ``f``. Results are cached per (factor, period,
kernel) in ``$XDG_CACHE_HOME/pipeit/emulation.json``.

Cgroups are named ``pipeit-<pid>-<cluster>`` and removed on exit, also on
exceptions; ones left by a killed process (dead pid) are removed on the next
``Throttles`` entry.

A quota is not a slow clock, though: it hands out ``f x period`` of CPU per
period, so work that needs less than one period's quota after an idle spell
runs at *full* speed. A pipeline stage on the LITTLE cluster that waits for
frames between jobs therefore ran 2-3x faster than its cluster's speed
(measured: mobilenet_v2's ``[46,65) little`` 2.5 ms against 6.2 planned at
busy 0.88), while a real LITTLE core is slow whether or not it idled. So a
process that runs wholly on one slowed cluster is *not* put in the cgroup:
its interpreter's ``invoke`` is wrapped by :class:`PaddedInvoke`, which
waits after each job until the job has taken ``work / f`` -- slow by the
same factor at every load. The wait sleeps, so ``1 - f`` of the core stays
free for the pipeline's coordinator, as under the quota. The cgroup stays
for two things: the threads of one interpreter that spans a fast and a
slowed cluster (the all-cores strategy; padding cannot
slow one thread of a pool), and the speed *now*: a padded process reads its
cluster's quota (:meth:`SlowCore.speed_now`), so a quota cut from outside
(the tests' "the board heats up") slows padded and throttled work alike.
"""

from __future__ import annotations

import collections
import json
import os
import platform as _pyplatform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Deque, Dict, Optional, Tuple

from cores.errors import EmulationError
from cores.filewrite import write_file
from cores.jsonfile import JsonFileError, read_json
from cores.model import Platform

__all__ = [
    "CgroupRoot",
    "find_cgroup_root",
    "choose_period_us",
    "Calibration",
    "calibrate",
    "Throttles",
    "MIN_QUOTA_US",
    "read_bandwidth",
    "SlowCore",
    "PaddedInvoke",
    "slow_core_for",
]

MIN_QUOTA_US = 1000
DEFAULT_PERIOD_US = 5000
_PREFIX = "pipeit-"


@dataclass(frozen=True)
class CgroupRoot:
    """Where this process's cpu controller lives: ``version`` 1 or 2, and our own cgroup folder."""

    version: int
    base: str  # the cgroup this process is in (children are made here)

    def procs(self, folder: Optional[str] = None) -> str:
        return os.path.join(folder or self.base, "cgroup.procs")


def _mounts():
    try:
        with open("/proc/self/mounts", encoding="ascii", errors="replace") as handle:
            for line in handle:
                parts = line.split()
                if len(parts) >= 4:
                    yield parts[1], parts[2], parts[3].split(",")
    except OSError:
        return


def _own_cgroup(controller: Optional[str]) -> str:
    """This process's path in the hierarchy of ``controller`` (None: the v2 unified one)."""
    try:
        with open("/proc/self/cgroup", encoding="ascii") as handle:
            for line in handle:
                _, names, path = line.rstrip("\n").split(":", 2)
                if controller is None and names == "":
                    return path
                if controller is not None and controller in names.split(","):
                    return path
    except (OSError, ValueError):
        pass
    return "/"


def find_cgroup_root() -> CgroupRoot:
    """Find a writable cpu controller (v1 first, then v2), or raise :class:`EmulationError`."""
    problems = []
    for mount, fstype, options in _mounts():
        if fstype == "cgroup" and "cpu" in options:
            base = os.path.join(mount, _own_cgroup("cpu").lstrip("/"))
            if not os.path.exists(os.path.join(base, "cpu.cfs_quota_us")):
                problems.append(f"{base} has no cpu.cfs_quota_us (kernel without CFS bandwidth control)")
            elif not os.access(base, os.W_OK):
                problems.append(f"{base} is not writable (run as root or delegate the cgroup)")
            else:
                return CgroupRoot(1, base)
    for mount, fstype, _ in _mounts():
        if fstype == "cgroup2":
            base = os.path.join(mount, _own_cgroup(None).lstrip("/"))
            try:
                with open(os.path.join(base, "cgroup.controllers"), encoding="ascii") as handle:
                    controllers = handle.read().split()
            except OSError:
                continue
            if "cpu" not in controllers:
                problems.append(f"{base}: the cgroup2 cpu controller is not available")
            elif not os.access(base, os.W_OK):
                problems.append(f"{base} is not writable (run as root or delegate the cgroup)")
            else:
                return CgroupRoot(2, base)
    detail = "; ".join(problems) if problems else "no cgroup cpu controller is mounted"
    raise EmulationError(f"cannot emulate slow clusters here: {detail}")


def choose_period_us(factor: float) -> int:
    """5 ms, or longer where the 1 ms minimum quota would not fit ``factor``."""
    need = int(MIN_QUOTA_US / factor) + 1 if factor > 0 else DEFAULT_PERIOD_US
    return max(DEFAULT_PERIOD_US, need)


def _write(path: str, text: str) -> None:
    try:
        with open(path, "w", encoding="ascii") as handle:
            handle.write(text)
    except OSError as err:
        raise EmulationError(f"cannot write {text.strip()!r} to {path}: {err.strerror or err}") from err


def _set_bandwidth(root: CgroupRoot, folder: str, quota_us: int, period_us: int) -> None:
    if root.version == 1:
        # Period first: a quota larger than the old period is fine, the order avoids EINVAL
        # only when shrinking, so set the quota to unlimited before changing the period.
        _write(os.path.join(folder, "cpu.cfs_quota_us"), "-1")
        _write(os.path.join(folder, "cpu.cfs_period_us"), str(period_us))
        _write(os.path.join(folder, "cpu.cfs_quota_us"), str(quota_us))
    else:
        _write(os.path.join(folder, "cpu.max"), f"{quota_us} {period_us}")


def read_bandwidth(folder: str) -> Optional[Tuple[Optional[int], int]]:
    """``(quota_us, period_us)`` a cgroup folder has now (quota None: unlimited); None if unreadable.

    v1 keeps the two in ``cpu.cfs_quota_us``/``cpu.cfs_period_us`` (-1: no
    limit), v2 in one ``cpu.max`` line (``max``: no limit). Never raises: a
    monitor reads this every window, and a group removed meanwhile is "no
    reading", not an error.
    """
    try:
        if os.path.exists(os.path.join(folder, "cpu.cfs_quota_us")):
            with open(os.path.join(folder, "cpu.cfs_quota_us"), encoding="ascii") as handle:
                quota = int(handle.read().strip())
            with open(os.path.join(folder, "cpu.cfs_period_us"), encoding="ascii") as handle:
                period = int(handle.read().strip())
        else:
            with open(os.path.join(folder, "cpu.max"), encoding="ascii") as handle:
                quota_text, period_text = handle.read().split()[:2]
            quota = -1 if quota_text == "max" else int(quota_text)
            period = int(period_text)
    except (OSError, ValueError):
        return None
    if period <= 0:
        return None
    return (quota if quota > 0 else None), period


def _make_group(root: CgroupRoot, name: str) -> str:
    folder = os.path.join(root.base, name)
    try:
        os.mkdir(folder)
    except FileExistsError:
        pass
    except OSError as err:
        raise EmulationError(f"cannot create cgroup {folder}: {err.strerror or err}") from err
    if root.version == 2:
        try:
            _write(os.path.join(root.base, "cgroup.subtree_control"), "+cpu")
        except EmulationError:
            pass  # already on, or refused: cpu.max will say so
        if not os.path.exists(os.path.join(folder, "cpu.max")):
            _remove_group(root, folder)
            raise EmulationError(
                f"cgroup2 at {root.base} does not delegate the cpu controller to its children"
            )
    return folder


def _remove_group(root: CgroupRoot, folder: str) -> None:
    """Move any process left inside back to the base cgroup, then remove the folder."""
    for attempt in range(20):
        try:
            with open(root.procs(folder), encoding="ascii") as handle:
                pids = [p for p in handle.read().split() if p.strip()]
        except OSError:
            pids = []
        for pid in pids:
            try:
                with open(root.procs(), "w", encoding="ascii") as handle:
                    handle.write(pid)
            except OSError:
                pass  # exited meanwhile
        try:
            os.rmdir(folder)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.01 * (attempt + 1))
    raise EmulationError(f"cannot remove cgroup {folder}: processes are still inside")


def _cleanup_stale(root: CgroupRoot) -> None:
    """Remove ``pipeit-<pid>-*`` groups whose creating process is gone."""
    try:
        names = os.listdir(root.base)
    except OSError:
        return
    for name in names:
        if not name.startswith(_PREFIX):
            continue
        pid_text = name[len(_PREFIX):].split("-", 1)[0]
        if pid_text.isdigit() and not os.path.exists(f"/proc/{pid_text}"):
            try:
                _remove_group(root, os.path.join(root.base, name))
            except EmulationError:
                pass


# --------------------------------------------------------------------------- calibration


@dataclass(frozen=True)
class Calibration:
    """A quota that achieves ``factor`` at ``period_us``, and what was measured."""

    factor: float
    period_us: int
    quota_us: int
    achieved: Optional[float]  # measured factor with this quota (None: not calibrated)
    cached: bool = False
    steps: Tuple[Tuple[int, float], ...] = ()  # (quota_us, achieved) tried, in order

    def to_json(self) -> dict:
        return {"factor": self.factor, "period_us": self.period_us, "quota_us": self.quota_us,
                "achieved": self.achieved}


def _spin(seconds: float) -> Tuple[int, float, float]:
    """Busy-loop for ``seconds`` of wall time; returns (iterations, wall s, this thread's CPU s)."""
    clock = time.perf_counter
    cpu_clock = time.thread_time
    start, cpu_start = clock(), cpu_clock()
    end = start + seconds
    count = 0
    now = start
    while now < end:
        for _ in range(200):
            count += 1
        now = clock()
    return count, now - start, cpu_clock() - cpu_start


def _calibration_worker(base_procs: str, test_procs: str, rounds: int, window_s: float) -> float:
    """In a pinned process: alternate unthrottled / throttled windows; return the median factor.

    The factor of one round is (iterations per wall second, throttled) divided by
    (iterations per CPU second, unthrottled): the reference is the loop's speed
    while it holds the CPU, so other processes sharing the CPU in the free window
    (this host is shared) do not inflate the result, while everything the
    throttle costs (lost bandwidth, cold caches after each stall) counts.
    """
    me = str(os.getpid())
    ratios = []
    _spin(0.05)  # warm up the clock and the loop
    for _ in range(rounds):
        with open(base_procs, "w", encoding="ascii") as handle:
            handle.write(me)
        count_f, _, cpu_f = _spin(window_s)
        with open(test_procs, "w", encoding="ascii") as handle:
            handle.write(me)
        count_t, wall_t, _ = _spin(window_s)
        if cpu_f > 0 and wall_t > 0:
            ratios.append((count_t / wall_t) / (count_f / cpu_f))
    with open(base_procs, "w", encoding="ascii") as handle:
        handle.write(me)
    if not ratios:
        raise EmulationError("calibration measured nothing (no CPU time obtained)")
    return statistics.median(ratios)


def _cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pipeit" / "emulation.json"


def _cache_key(factor: float, period_us: int) -> str:
    return f"{factor:.4f}@{period_us}us@{_pyplatform.release()}@{os.cpu_count()}cpu"


def _load_cache(path: Path) -> dict:
    """The calibration cache; a cache that is missing or unreadable in any way is empty."""
    try:
        doc = read_json(path, "emulation cache")
    except JsonFileError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _store_cache(path: Path, key: str, calibration: Calibration) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = _load_cache(path)
        doc[key] = calibration.to_json()
        write_file(path, json.dumps(doc, indent=2, sort_keys=True))
    except OSError:
        pass  # a cache we cannot write only costs a calibration next time


def calibrate(
    factor: float,
    cpu: int,
    period_us: Optional[int] = None,
    root: Optional[CgroupRoot] = None,
    use_cache: bool = True,
    rounds: int = 5,
    window_s: float = 0.2,
    tolerance: float = 0.03,
    max_steps: int = 4,
) -> Calibration:
    """Find the quota that slows a busy loop on ``cpu`` by ``factor`` (see module docstring)."""
    from cores.pinning import run_pinned

    if not (0.0 < factor <= 1.0):
        raise EmulationError(f"speed factor {factor} is outside (0, 1]")
    period = period_us or choose_period_us(factor)
    nominal = factor * period
    quota = max(MIN_QUOTA_US, int(round(nominal)))
    if factor >= 1.0:
        return Calibration(factor, period, -1, 1.0)
    cache = _cache_path()
    key = _cache_key(factor, period)
    if use_cache:
        hit = _load_cache(cache).get(key)
        # a hand-edited or foreign entry is a miss, not a crash: the quota and the measured factor
        seen = hit.get("achieved") if isinstance(hit, dict) else None
        if (isinstance(hit, dict) and isinstance(hit.get("quota_us"), int)
                and (seen is None or (isinstance(seen, (int, float)) and not isinstance(seen, bool)
                                      and 0.0 < seen <= 2.0))
                and 0.7 * nominal - 1 <= hit["quota_us"] <= min(period, 1.6 * nominal) + 1):
            return Calibration(factor, period, hit["quota_us"], hit.get("achieved"), cached=True)
    root = root or find_cgroup_root()
    folder = _make_group(root, f"{_PREFIX}{os.getpid()}-calibrate")
    best: Optional[Tuple[float, int, float]] = None
    steps = []
    try:
        for _ in range(max_steps):
            _set_bandwidth(root, folder, quota, period)
            achieved = run_pinned(
                _calibration_worker, (root.procs(), root.procs(folder), rounds, window_s),
                cpus=(cpu,), timeout=60,
            )
            steps.append((quota, round(achieved, 4)))
            error = abs(achieved - factor) / factor
            if best is None or error < best[0]:
                best = (error, quota, achieved)
            if error <= tolerance:
                break
            # achieved is roughly proportional to quota: correct multiplicatively (damped).
            step = (factor / achieved) if achieved > 0 else 2.0
            # Clamp to [0.7, 1.6] x nominal: the slice effect measured on quiet hosts needs
            # at most ~1.4x (0.4 at 2.5 ms), and a busy shared CPU must not push the quota
            # to "no limit" (other processes, not the quota, were slowing the loop).
            low, high = 0.7 * nominal, min(period, 1.6 * nominal)
            quota = int(round(min(high, max(MIN_QUOTA_US, low, quota * step))))
    finally:
        _remove_group(root, folder)
    if best is None:
        raise EmulationError("calibration made no measurement")
    if best[0] > 3 * tolerance:
        # No quota got close: the CPU is busy with other work (a factor above the share
        # it leaves us cannot be reached). Keep the plain quota and do not cache.
        plain = max(MIN_QUOTA_US, int(round(factor * period)))
        return Calibration(factor, period, plain, round(best[2], 4), steps=tuple(steps))
    result = Calibration(factor, period, best[1], round(best[2], 4), steps=tuple(steps))
    if use_cache:
        _store_cache(cache, key, result)
    return result


# --------------------------------------------------------------------------- padding


@dataclass(frozen=True)
class SlowCore:
    """A slowed cluster as a process running on it sees it: its declared speed, and where to read it now.

    Plain data, so it travels to spawned workers. ``folder`` is the cluster's
    cgroup and ``calibrated_share`` the quota/period it was given for the
    declared ``speed``; the speed now is the declared one scaled by the share
    the quota gives now (a halved quota reads as half the speed, as
    :meth:`Throttles.speed_now` says). Without a folder the speed is fixed.
    """

    cluster: str
    speed: float
    folder: Optional[str] = None
    calibrated_share: float = 0.0

    def quota_speed(self) -> Optional[float]:
        """The speed the quota says now (1.0: no quota); None without a folder or an unreadable one."""
        if not self.folder or self.calibrated_share <= 0:
            return None
        now = read_bandwidth(self.folder)
        if now is None:
            return None
        quota, period = now
        if quota is None:
            return 1.0
        return min(1.0, self.speed * (quota / period) / self.calibrated_share)

    def speed_now(self) -> float:
        """The speed to pad to now: the quota's, else (no group, or the owner removed it) the declared one."""
        speed = self.quota_speed()
        return self.speed if speed is None else max(0.01, speed)


def slow_core_for(platform: Platform, cluster: str, throttles: Optional["Throttles"] = None) -> Optional[SlowCore]:
    """What work wholly on ``cluster`` pads to: None at full speed; the speed read from ``throttles``'
    cgroup when given (a quota cut from outside then slows it), else the declared speed, fixed (no
    cgroup needed: padding alone emulates a slow core)."""
    if platform.cluster(cluster).speed >= 1.0:
        return None
    if throttles is not None:
        return throttles.slow_core(cluster)
    return SlowCore(cluster, platform.cluster(cluster).speed)


class PaddedInvoke:
    """Wraps an interpreter's ``invoke`` so that each job takes ``work / speed`` on a slowed cluster.

    ``work`` is the CPU time of the calling thread during the job when the
    interpreter has one thread (so time the CPU spent on another process is
    not stretched: it delays the job as it would on the board, once), and the
    wall time with a thread pool (whose threads the caller's clock does not
    see). The job then ends at ``start + wall + base x (1/speed - 1)``: the
    caller sleeps until ``spin_s`` before that and busy-waits the rest (a
    sleep alone overshoots by tens of microseconds).

    ``base`` is the least ``work`` of the last ``window`` jobs (the
    interpreter runs the same model every time): the job's own work,
    without what a neighbour added to it. A slower clock stretches a job's
    compute, not the DRAM and cache stalls another core's traffic causes;
    stretching the contended work instead multiplied that interference by
    ``1/speed`` (measured: LITTLE stages beside a busy big worker 16-20 %
    over their plan at busy 1.0, 2.5x what the same contention cost the big
    worker). Interference, and time the CPU spent on another process, are
    added once, as on a board.

    Sleeping, not spinning, through the padding is deliberate: it leaves
    ``1 - speed`` of the core idle, as the quota did, for the pipeline's
    coordinator (pinned to the slowest cluster). Spinning was measured: the
    coordinator then waited behind the spinning worker for the scheduler's
    wake-up granularity, the big worker starved for frames (busy 0.93) and
    replicas ran 10-16 % below their plan on three zoo models. The cost
    model counts that idle share as the coordinator's
    (``pipeit.dse.cost.coordinator_placement``). The speed is re-read from
    ``slow`` at most every ``refresh_s``.
    """

    def __init__(self, invoke: Callable[[], object], slow: SlowCore, threads: int = 1,
                 refresh_s: float = 0.1, spin_s: float = 0.0002, window: int = 32) -> None:
        self._recent: Deque[float] = collections.deque(maxlen=max(1, int(window)))
        self._invoke = invoke
        self._slow = slow
        self._one_thread = threads <= 1
        self._refresh_s = float(refresh_s)
        self._spin_s = float(spin_s)
        self._speed = slow.speed_now()
        self._read_at = time.perf_counter()

    @property
    def speed(self) -> float:
        """The speed the last job was padded to."""
        return self._speed

    def __call__(self) -> None:
        clock, cpu_clock = time.perf_counter, time.thread_time
        start, cpu_start = clock(), cpu_clock()
        self._invoke()
        end, cpu_end = clock(), cpu_clock()
        work = cpu_end - cpu_start if self._one_thread else end - start
        self._recent.append(work)
        if end - self._read_at >= self._refresh_s:
            self._speed, self._read_at = self._slow.speed_now(), end
        if self._speed >= 1.0:
            return
        until = end + min(self._recent) * (1.0 / self._speed - 1.0)
        nap = until - self._spin_s - end
        if nap > 0:
            time.sleep(nap)
        while clock() < until:
            pass


# --------------------------------------------------------------------------- throttles


class Throttles:
    """One bandwidth-limited cgroup per slowed cluster of ``platform``, for a ``with`` block.

    >>> with Throttles(load_platform("emulate:big=0@1.0,little=1@0.4")) as t:
    ...     run_pinned(work, cpus=(1,), throttle=t.cgroup_path("little"))

    Clusters at speed 1.0 get no cgroup (``cgroup_path`` is None, ``attach``
    does nothing). ``calibrate=False`` uses the plain ``factor x period`` quota.
    """

    def __init__(self, platform: Platform, calibrate: bool = True, period_us: Optional[int] = None,
                 use_cache: bool = True) -> None:
        self.platform = platform
        self._calibrate = calibrate
        self._period_us = period_us
        self._use_cache = use_cache
        self._root: Optional[CgroupRoot] = None
        self._groups: Dict[str, str] = {}
        self.calibrations: Dict[str, Calibration] = {}

    @property
    def slowed(self) -> Tuple[str, ...]:
        return tuple(c.name for c in self.platform.cpu_clusters if c.speed < 1.0)

    def __enter__(self) -> "Throttles":
        if not self.slowed:
            return self
        self._root = find_cgroup_root()
        _cleanup_stale(self._root)
        try:
            for cluster in self.platform.cpu_clusters:
                if cluster.speed >= 1.0:
                    continue
                if self._calibrate:
                    cal = calibrate(cluster.speed, cluster.cpus[0], self._period_us,
                                    self._root, use_cache=self._use_cache)
                else:
                    period = self._period_us or choose_period_us(cluster.speed)
                    cal = Calibration(cluster.speed, period,
                                      max(MIN_QUOTA_US, int(round(cluster.speed * period))), None)
                folder = _make_group(self._root, f"{_PREFIX}{os.getpid()}-{cluster.name}")
                self._groups[cluster.name] = folder
                _set_bandwidth(self._root, folder, cal.quota_us, cal.period_us)
                self.calibrations[cluster.name] = cal
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Remove every cgroup made (processes still inside go back to the base cgroup)."""
        errors = []
        for name, folder in list(self._groups.items()):
            try:
                _remove_group(self._root, folder)  # type: ignore[arg-type]
            except EmulationError as err:
                errors.append(str(err))
            del self._groups[name]
        if errors:
            raise EmulationError("; ".join(errors))

    def cgroup_path(self, cluster: str) -> Optional[str]:
        """The cgroup folder of a slowed cluster; None for a full-speed one."""
        self.platform.cluster(cluster)  # unknown names raise PlatformError
        return self._groups.get(cluster)

    def attach(self, cluster: str, pid: int) -> None:
        """Move process ``pid`` (all its threads) into ``cluster``'s cgroup."""
        folder = self.cgroup_path(cluster)
        if folder is None:
            if cluster in self.slowed:
                raise EmulationError("Throttles is not entered: use it in a with block")
            return
        _write(os.path.join(folder, "cgroup.procs"), str(int(pid)))

    def attach_thread(self, cluster: str, tid: int) -> None:
        """Move one thread ``tid`` into ``cluster``'s cgroup, leaving its siblings where they are.

        One interpreter whose threads span a fast and a slowed cluster (the
        all-cores strategy) is emulated by throttling only the threads pinned
        to the slowed cluster's CPUs: the layer then waits for its slowest
        thread, as it does on a real big.LITTLE board. cgroup v1 places
        threads through ``tasks``; v2 only inside threaded subtrees, which this
        module does not make, so there it refuses clearly.
        """
        folder = self.cgroup_path(cluster)
        if folder is None:
            if cluster in self.slowed:
                raise EmulationError("Throttles is not entered: use it in a with block")
            return
        if self._root is None or self._root.version != 1:
            raise EmulationError(
                "per-thread throttling (one interpreter over a fast and a slowed cluster) needs cgroup v1"
            )
        _write(os.path.join(folder, "tasks"), str(int(tid)))

    def speed_now(self, cluster: str) -> Optional[float]:
        """The emulated cluster's speed as its cgroup stands now: what a board's frequency cap says.

        The declared speed scaled by the share of a CPU the quota gives now
        over the share it gave when calibrated (``quota/period``); a quota
        halved from outside (a test's or a benchmark's "the board heats up")
        reads as half the speed, no quota as full speed (1.0). None for a
        cluster with no cgroup (full speed by declaration, or not entered) or
        an unreadable one. Reading it is two small file reads.
        """
        slow = self.slow_core(cluster)
        return None if slow is None else slow.quota_speed()

    def slow_core(self, cluster: str) -> Optional[SlowCore]:
        """What a process running wholly on ``cluster`` pads its work to; None for a full-speed cluster.

        Such a process stays out of the cgroup (see the module docstring:
        a quota is fast after idling) and reads the speed from it instead.
        Before the ``with`` block (or with no cgroup) the speed is the
        declared one, fixed.
        """
        speed = self.platform.cluster(cluster).speed
        if speed >= 1.0:
            return None
        cal = self.calibrations.get(cluster)
        share = cal.quota_us / cal.period_us if cal is not None and cal.quota_us > 0 and cal.period_us > 0 else 0.0
        return SlowCore(cluster, speed, self._groups.get(cluster), share)

    def report(self) -> dict:
        """Declared factor, period, quota and calibrated factor per slowed cluster."""
        return {name: cal.to_json() for name, cal in self.calibrations.items()}
