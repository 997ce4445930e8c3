"""The one cost model every strategy is judged by: stage times, rates, latency, memory.

A *plan candidate* is an ordered tuple of stages; a stage runs the layer
range ``[start, end)`` and is served by one or more workers, each a
:class:`~cores.model.CoreSetup` (``k`` cores of one cluster, ``k`` threads).

Model (docs/DSE.md explains the choices):

* a worker's time for a stage ``[a, b)`` =
  ``scale * sum(layer ms on its setup) + stage_ms + hop(a)/2 + hop(b)/2``,
  where ``hop(i) = hop_ms(cut_bytes[i])``. A hop is one copy in (paid by the
  sender) and one copy out (paid by the receiver), so each side is charged
  half. The first stage's receive half is the copy of the input frame out of
  the feeder's ring, the last stage's send half the copy of the result into
  the collector's ring; there is no other hop cost at the ends. Every
  strategy, replicas and all-cores included, streams through the same rings,
  so they all pay these two halves.
* a stage's rate = sum over its workers of ``1000 / time`` (frames are dealt
  to whichever worker is free; output order is restored);
* throughput = min over stages of the stage rate;
* latency (the p99 a frame stream sees, docs/DSE.md "Latency") = the larger of
  the *path* -- sum over stages of the slowest worker's time plus that
  worker's throttle jitter -- and the *queue* -- ``W * 1000 / throughput + J``
  with ``W`` the plan's workers (frames kept in flight) and ``J`` the largest
  throttle jitter of any worker. An interpreter spanning an emulated cluster
  of speed ``f < 1`` (its threads there run under a CPU bandwidth quota of
  ``f`` per period ``P``) can stall up to ``(1 - f) * P`` beyond its sustained
  time; that is its jitter (0 elsewhere: a worker wholly on a slowed cluster
  pads its jobs and is steady).
  Under *gated* admission (``admission="gated"``, what a latency limit
  selects: the stream admits a frame only when it can pass every stage
  without waiting, :mod:`pipeit.admission`) no frame queues, so the latency
  is the path alone;
* memory = sum over workers of the weight bytes of its stage's layers plus
  ``worker_bytes`` (a per-worker constant, 0 by default).
* a worker on a GPU cluster (``devices`` names it) also pays the host<->device
  copy of the cut at each end of its stage: ``copy(a) + copy(b)`` with
  ``copy(i) = devices[cluster].hop_ms(cut_bytes[i])`` (upload of what it
  receives, download of what it sends), on top of the ring's half hops.
  The GPU has one setup, ``gpu:1``, and at most one worker.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence, Tuple

from cores.emulation import choose_period_us
from cores.model import CoreSetup, Platform
from pipeit.errors import PlanError
from pipeit.layer_times import LayerTimes
from pipeit.transfer import (
    DEFAULT_HOP, DEFAULT_OVERHEAD, ExecutorOverhead, HopModel, coordinator_stage, frame_ms_of,
)

__all__ = [
    "MB",
    "coordinator_placement",
    "DEFAULT_DEVICE_COPY",
    "Limits",
    "StagePlan",
    "Candidate",
    "CostModel",
    "throttle_jitter_ms",
    "SCHED_TICK_MS",
    "device_copies",
    "queue_latency_ms",
    "charged_hop",
    "cost_model_for",
    "ADMISSIONS",
]

#: how a frame stream admits frames (docs/DSE.md "Latency"): ``window`` keeps one frame in flight
#: per worker (frames queue before the slowest stage), ``gated`` admits a frame only when it can
#: pass every stage without waiting (pipeit.admission), so its latency is the path alone
ADMISSIONS = ("window", "gated")

#: bytes in the ``--memory-mb`` unit (MiB, as ``free -m`` counts)
MB = 1024 * 1024

#: one direction of a host<->device copy, when none was measured (a profile read on
#: another machine, a table that lost it): the line ``pipeit.gpu.measure.measure_copy`` fitted on this
#: project's host, pocl 3.0 CPU device, 2 shared cores, three runs -- fixed 0.025-0.035 ms,
#: 0.022-0.030 ms per MiB (64 KiB 0.03 ms, 1 MiB 0.05-0.06 ms, 4 MiB 0.12-0.15 ms per
#: direction; docs/GPU.md). pocl's "device memory" is host RAM, so this is a memcpy plus
#: the driver call; an integrated GPU (Mali) shares RAM too, a discrete GPU over PCIe pays
#: several times more per byte -- measure it (pipeit plan measures it with the layers).
DEFAULT_DEVICE_COPY = HopModel(0.03, 0.025 / (1024 * 1024), "default (pocl on the development host)")


@dataclass(frozen=True)
class Limits:
    """The user's limits: a frame's latency in ms and the weights held in memory, in MiB."""

    latency_ms: Optional[float] = None
    memory_mb: Optional[float] = None

    def __post_init__(self) -> None:
        for name in ("latency_ms", "memory_mb"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise PlanError(f"--{name.replace('_', '-')} must be a positive number, got {value!r}")

    @property
    def memory_bytes(self) -> Optional[float]:
        return None if self.memory_mb is None else self.memory_mb * MB

    def admits(self, candidate: "Candidate") -> bool:
        if self.latency_ms is not None and candidate.latency_ms > self.latency_ms:
            return False
        if self.memory_mb is not None and candidate.memory_bytes > self.memory_mb * MB:
            return False
        return True

    def describe(self) -> str:
        parts = []
        if self.latency_ms is not None:
            parts.append(f"latency <= {self.latency_ms:g} ms")
        if self.memory_mb is not None:
            parts.append(f"memory <= {self.memory_mb:g} MB")
        return ", ".join(parts) or "no limits"


@dataclass(frozen=True)
class StagePlan:
    """Layers ``[start, end)`` served by ``workers`` (one CoreSetup per worker)."""

    start: int
    end: int
    workers: Tuple[CoreSetup, ...]


@dataclass(frozen=True)
class Candidate:
    """A fully evaluated plan candidate: its stages and the cost model's verdict."""

    stages: Tuple[StagePlan, ...]
    fps: float
    latency_ms: float
    memory_bytes: float
    stage_fps: Tuple[float, ...]
    worker_ms: Tuple[Tuple[float, ...], ...]

    @property
    def num_workers(self) -> int:
        return sum(len(s.workers) for s in self.stages)

    def describe(self) -> str:
        """``[0,14) big:2 | [14,31) little:1+little:1`` -- compact, for messages and tables."""
        return " | ".join(
            f"[{s.start},{s.end}) " + "+".join(str(w) for w in s.workers) for s in self.stages
        )


#: the scheduler tick of the development host's kernel, in ms (CONFIG_HZ=250). CFS charges a running
#: task's CPU time against its group's quota at ticks and scheduling events, so a CPU-bound worker in a
#: quota-throttled cgroup runs up to one tick past its quota and pays the overrun back out of the next
#: periods' quota (see :func:`throttle_jitter_ms`). A kernel with HZ=1000 has 1 ms.
SCHED_TICK_MS = 4.0


def throttle_jitter_ms(platform: Platform, tick_ms: float = SCHED_TICK_MS) -> Dict[str, float]:
    """Per cluster, the most a frame can stall on it beyond its sustained time (ms).

    An emulated cluster of speed ``f < 1`` runs under a CPU bandwidth quota
    of ``f * P`` per period ``P`` (``cores.emulation.choose_period_us``): a
    job of ``c`` ms of CPU work that starts just as the quota runs out waits
    ``(1 - f) * P``, then gets ``f * P`` per period. With ``c = m f P + r``
    (``0 < r <= f P``) it ends after ``(1 - f) P + m P + r`` against the
    sustained ``c / f = m P + r / f``: the excess is ``(1 - f)(P - r / f)``,
    at most ``(1 - f) * P``. That is the ideal quota; the kernel charges
    quota at scheduler ticks, so the worker may run ``tick_ms`` past its
    quota and then stall until ``f`` of the following time has repaid it:
    it falls ``tick_ms * (1 - f) / f`` further behind its sustained pace.
    Jitter = ``(1 - f) * (P + tick_ms / f)``: 3 + 6 = 9 ms for f = 0.4,
    P = 5 ms, a 4 ms tick, where the benchmark's p99 ran 7.7-11.5 ms above
    its mean latency on five of six zoo models (docs/DSE.md, "Latency").
    Real clusters (speed 1) and GPUs: 0.
    """
    out: Dict[str, float] = {}
    for cluster in platform.clusters:
        f = cluster.speed
        if cluster.kind == "cpu" and 0 < f < 1:
            out[cluster.name] = (1.0 - f) * (choose_period_us(f) / 1000.0 + tick_ms / f)
        else:
            out[cluster.name] = 0.0
    return out


def device_copies(platform: Platform, times: LayerTimes) -> Dict[str, HopModel]:
    """Per GPU cluster, its host<->device copy model: the one measured with its times, else the default."""
    return {c.name: times.device_copy.get(c.name, DEFAULT_DEVICE_COPY)
            for c in platform.clusters if c.kind == "gpu"}


def coordinator_placement(platform: Platform) -> Tuple[Tuple[str, ...], int, float]:
    """Where the executor's coordinating process runs: (cluster names, their cores, idle core-units).

    As ``pipeit.executor.pipeline.coordinator_cpus`` pins it: on the slowest CPU
    cluster of a heterogeneous platform, else anywhere (every CPU cluster). A
    worker on an emulated cluster of speed ``f < 1`` sleeps through the
    padding that slows its jobs (``cores.emulation.PaddedInvoke``), leaving
    ``(1 - f)`` of each core idle; the coordinator uses that first.
    """
    cpu = [c for c in platform.clusters if c.kind == "cpu"]
    if not cpu:
        return (), 0, 0.0
    slowest = min(cpu, key=lambda c: (c.speed, c.capacity or 0, c.max_freq_khz or 0))
    fastest = max(cpu, key=lambda c: (c.speed, c.capacity or 0, c.max_freq_khz or 0))
    if len(cpu) < 2 or (slowest.speed >= 1.0 and slowest.capacity == fastest.capacity):
        chosen = cpu
    else:
        chosen = [slowest]
    spare = sum((1.0 - c.speed) * c.size for c in chosen if 0 < c.speed < 1)
    return tuple(c.name for c in chosen), sum(c.size for c in chosen), spare


def queue_latency_ms(workers: int, fps: float, jitter_ms: float) -> float:
    """Latency of a frame stream that keeps ``workers`` frames in flight (Little's law), plus jitter.

    The benchmark (and any client that keeps every worker busy) submits a
    frame when the oldest one returns, so ``workers`` frames are in the
    pipeline at all times and each spends ``workers / throughput`` in it on
    average; an unbalanced pipeline's frames wait before its slowest stage.
    Over those ``workers`` back-to-back frames a throttled worker loses at
    most one stall, hence ``+ jitter_ms`` (the largest jitter in the plan).
    """
    if fps <= 0 or workers <= 0:
        return math.inf
    return workers * 1000.0 / fps + jitter_ms


class CostModel:
    """Evaluates candidates from a :class:`LayerTimes`, a :class:`HopModel` and the clusters' jitter.

    ``jitter`` maps cluster names to their throttle jitter in ms
    (:func:`throttle_jitter_ms`); a cluster it does not name has none.
    ``devices`` maps GPU cluster names to their copy model
    (:func:`device_copies`); a cluster it does not name pays no copies.
    ``overhead``/``coordinator``: the executor's own cost
    (:class:`~pipeit.transfer.ExecutorOverhead`) and where its coordinating
    process runs (:func:`coordinator_placement`); both None here, so a bare
    ``CostModel`` is the layers and hops only. :func:`cost_model_for` -- what
    every planning entry point uses -- turns them on.
    """

    def __init__(self, times: LayerTimes, hop: Optional[HopModel] = None, worker_bytes: int = 0,
                 jitter: Optional[Mapping[str, float]] = None,
                 devices: Optional[Mapping[str, HopModel]] = None, *,
                 overhead: Optional[ExecutorOverhead] = None,
                 coordinator: Optional[Tuple[Tuple[str, ...], int, float]] = None,
                 admission: str = "window") -> None:
        if worker_bytes < 0:
            raise PlanError(f"per-worker memory must be >= 0, got {worker_bytes}")
        if admission not in ADMISSIONS:
            raise PlanError(f"unknown admission {admission!r}; choose one of {', '.join(ADMISSIONS)}")
        self.times = times
        self.hop: HopModel = charged_hop(times, hop)
        self.worker_bytes = int(worker_bytes)
        #: how the stream admits frames: ``window`` (the queue term counts) or ``gated`` (path only)
        self.admission = admission
        self.jitter: Dict[str, float] = {k: float(v) for k, v in (jitter or {}).items()}
        for name, value in self.jitter.items():
            if not (math.isfinite(value) and value >= 0):
                raise PlanError(f"throttle jitter of cluster {name!r} must be a finite number >= 0, got {value!r}")
        #: the executor's own per-frame cost at this model's frame time (None: not modelled); its dispatch_ms
        #: rides on the hops (two halves per worker), its coordinator_ms is taken from the workers on
        #: ``coordinator`` = (cluster names the coordinating process runs on, their cores, their idle core-units)
        self.devices: Dict[str, HopModel] = dict(devices or {})
        # the frame time the overhead scales with is a CPU core's: a GPU's faster frame is not the executor's
        cpu_rows = {setup: row for setup, row in times.times.items() if setup.cluster not in self.devices}
        self.overhead = None if overhead is None else overhead.for_frame(frame_ms_of(cpu_rows))
        self.coordinator = coordinator
        dispatch = self.overhead.dispatch_ms if self.overhead is not None else 0.0
        self.hops: Tuple[float, ...] = tuple(self.hop.hop_ms(b) + dispatch for b in times.cut_bytes)
        #: per device cluster, the copy cost of each cut (n + 1 values, like ``hops``)
        self.copies: Dict[str, Tuple[float, ...]] = {
            name: tuple(model.hop_ms(b) for b in times.cut_bytes) for name, model in self.devices.items()
        }

    def copy_ms(self, setup: CoreSetup, cut: int) -> float:
        """Host<->device copy a worker of ``setup`` pays at cut ``cut`` (0 for a CPU setup)."""
        row = self.copies.get(setup.cluster)
        return 0.0 if row is None else row[cut]

    def jitter_ms(self, setup: CoreSetup) -> float:
        """The setup's throttle jitter: the largest of its clusters' (``big+little`` waits for both).

        Only an interpreter spanning clusters has its threads on a slowed
        cluster under the CPU quota; a worker wholly on one slowed cluster
        pads each job to the cluster's speed instead (``cores.emulation``),
        as steady as a slow core, so it has none.
        """
        names = setup.cluster.split("+")
        if len(names) == 1:
            return 0.0
        return max(self.jitter.get(name, 0.0) for name in names)

    @property
    def num_layers(self) -> int:
        return self.times.num_layers

    def with_times(self, times: LayerTimes) -> "CostModel":
        return CostModel(times, self.hop, self.worker_bytes, self.jitter, self.devices,
                         overhead=self.overhead, coordinator=self.coordinator, admission=self.admission)

    @property
    def gated(self) -> bool:
        """Whether frames are admitted only when they wait nowhere (no queue term in the latency)."""
        return self.admission == "gated"

    def queue_ms(self, workers: int, fps: float, jitter_ms: float) -> float:
        """The queue term of the latency: :func:`queue_latency_ms` under a window, 0 when gated."""
        return 0.0 if self.gated else queue_latency_ms(workers, fps, jitter_ms)

    def worker_ms(self, setup: CoreSetup, start: int, end: int) -> float:
        """One worker's time per frame for stage ``[start, end)``, half hops (and device copies) included."""
        if setup not in self.times.times:
            raise PlanError(f"no layer times for setup {setup}")
        return (
            self.times.stage_compute_ms(setup, start, end)
            + 0.5 * self.hops[start]
            + 0.5 * self.hops[end]
            + self.copy_ms(setup, start)
            + self.copy_ms(setup, end)
        )

    @property
    def coordinating(self) -> bool:
        """Whether the coordinator's CPU is taken from workers (an overhead and a placement were given)."""
        return (self.overhead is not None and self.coordinator is not None
                and self.overhead.coordinator_ms > 0 and self.coordinator[1] > 0)

    def on_coordinator(self, setup: CoreSetup) -> bool:
        """Whether a worker of ``setup`` shares its CPUs with the coordinating process."""
        if self.coordinator is None:
            return False
        return bool(set(self.coordinator[0]) & set(setup.cluster.split("+")))

    def stage_rate(self, setups: Sequence[CoreSetup], times: Sequence[float]) -> Tuple[float, Tuple[float, ...]]:
        """A stage's rate and its workers' times once the coordinator has taken its CPU share.

        ``times``: the workers' own times (:meth:`worker_ms`). Without the
        coordinator term the rate is the sum of ``1000 / time``. With it,
        workers on the coordinator's CPUs run at the speed ``s`` the
        coordinator leaves them at this stage's own rate cap
        (:func:`pipeit.transfer.coordinator_stage`): the stage's value depends
        on its own workers only, so the plan's throughput stays the min over
        stages and the exact search stays exact.
        """
        if any(math.isinf(t) for t in times):
            return 0.0, tuple(times)
        on = [self.on_coordinator(w) for w in setups]
        a = math.fsum(1000.0 / t if t > 0 else math.inf for t, o in zip(times, on) if not o)
        b = math.fsum(1000.0 / t if t > 0 else math.inf for t, o in zip(times, on) if o)
        if not self.coordinating:
            return a + b, tuple(times)
        names, cores, spare = self.coordinator  # type: ignore[misc]
        rate, slow = coordinator_stage(a, b, self.overhead.coordinator_ms, cores, spare)  # type: ignore[union-attr]
        s = float(slow)
        return float(rate), tuple(t / s if o else t for t, o in zip(times, on))

    def stage_weight_bytes(self, start: int, end: int) -> int:
        return sum(self.times.weight_bytes[start:end])

    def evaluate(self, stages: Sequence[StagePlan]) -> Candidate:
        """Throughput, latency and memory of ``stages`` (which must tile ``[0, n)``)."""
        stages = tuple(stages)
        expected = 0
        for s in stages:
            if s.start != expected or s.end <= s.start or not s.workers:
                raise PlanError(f"stages do not tile the layers contiguously at {s}")
            expected = s.end
        if expected != self.num_layers:
            raise PlanError(f"stages cover {expected} of {self.num_layers} layers")
        stage_fps = []
        worker_ms = []
        path = 0.0
        memory = 0.0
        for s in stages:
            rate, times = self.stage_rate(s.workers, tuple(self.worker_ms(w, s.start, s.end) for w in s.workers))
            worker_ms.append(times)
            stage_fps.append(rate)
            path += max(t + self.jitter_ms(w) for t, w in zip(times, s.workers))
            memory += len(s.workers) * (self.stage_weight_bytes(s.start, s.end) + self.worker_bytes)
        fps = min(stage_fps)
        workers = sum(len(s.workers) for s in stages)
        jitter = max(self.jitter_ms(w) for s in stages for w in s.workers)
        return Candidate(
            stages=stages,
            fps=fps,
            latency_ms=max(path, self.queue_ms(workers, fps, jitter)),
            memory_bytes=memory,
            stage_fps=tuple(stage_fps),
            worker_ms=tuple(worker_ms),
        )


def charged_hop(times: LayerTimes, hop: Optional[HopModel] = None) -> HopModel:
    """The hop a plan charges at each cut: ``hop`` when given, else the one measured with ``times``
    (a profile's hop rows, :attr:`LayerTimes.hop`), else the development host's default."""
    if hop is not None:
        return hop
    return times.hop if times.hop is not None else DEFAULT_HOP


def cost_model_for(times: LayerTimes, platform: Platform, hop: Optional[HopModel] = None, worker_bytes: int = 0,
                   overhead: Optional[ExecutorOverhead] = DEFAULT_OVERHEAD, admission: str = "window") -> CostModel:
    """The cost model plans are made with: jitter, device copies, and the executor's own cost.

    ``hop=None`` charges the hop measured with ``times`` (a profile's hop
    rows), else :data:`~pipeit.transfer.DEFAULT_HOP`; a given one wins
    (``pipeit plan --transfer``).
    ``overhead=None`` leaves the executor's cost out (layers and hops only).
    ``admission``: how the frames will be streamed (:data:`ADMISSIONS`).
    One place, so that ``pipeit plan``, ``bench``, the Pareto front and the
    daemon judge plans alike.
    """
    return CostModel(times, hop, worker_bytes, throttle_jitter_ms(platform), device_copies(platform, times),
                     overhead=overhead, coordinator=None if overhead is None else coordinator_placement(platform),
                     admission=admission)
