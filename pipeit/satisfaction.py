"""User satisfaction (P-CNN): one score for time against the deadline, accuracy against the tolerance, and energy.

P-CNN's point is that the fastest plan is not always the one a user wants:
a camera app needs every frame before the next arrives, a photo search in
the background cares about the battery, and both have an accuracy below
which the answer is worthless. A :class:`Task` states those needs; a run's
measurements (p99 latency, the plan's output error and top-1 agreement
against the exact model, energy per frame from the board's power model)
turn into three terms in [0, 1] and one score::

    latency   L = 1                                  if p99 <= D
                  exp(-(p99 - D) / (softness * D))   beyond (a frame softness*D late loses a factor e)
    accuracy  A = a_err * a_top1
                  a_err  = 1 if error <= tol  else tol / error
                  a_top1 = 1 if top1 >= m     else exp(-(m - top1) / 0.05)
    energy    E = min(1, E_ref / energy_mj)           E_ref: the lowest energy per frame in the run
    score     S = L * A * E ** w                      w: the task's energy weight in [0, 1]

Time and accuracy are requirements, so they multiply (a plan that misses
either is worth little however frugal it is); energy is a preference whose
pull is the task's weight (``w = 0``: ignored; ``w = 1``: a plan using twice
the best energy scores half). S is in [0, 1] and is non-increasing in p99,
error and energy, non-decreasing in top-1, the deadline and the tolerance.

Only p99 latency is judged, not throughput: with frames streamed, latency
is at least the frame period (Little's law, at least one frame in flight),
so a p99 within the deadline also keeps up with a stream at that rate.

Energy per frame (:func:`energy_per_frame_mj`) comes from the run's own
stats: each worker's busy time is its frames times its median service time
(copy in, invoke, copy out); its CPUs draw active power for that share of
the run and idle power for the rest, every CPU the plan does not use draws
idle power, and a GPU worker's busy share draws the GPU's active power (its
host CPU is counted busy for the same share, an upper bound). The
dispatcher's own CPU time is not counted (the stats do not measure it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence, Tuple

from pipeit.errors import PipeitError

__all__ = [
    "TaskError",
    "Task",
    "TASKS",
    "DEFAULT_TASK",
    "make_task",
    "parse_tolerance",
    "Accuracy",
    "EXACT",
    "GPU_FP32_ERROR",
    "plan_accuracy",
    "latency_term",
    "accuracy_term",
    "energy_term",
    "combine",
    "worker_busy_s",
    "energy_per_frame_mj",
    "Satisfaction",
    "score_runs",
]

#: how fast the top-1 term decays per point of agreement below the task's minimum (5 points: a factor e)
TOP1_DECAY = 0.05
#: the float32 GPU kernels' checked bound against TFLite (docs/GPU.md): a GPU plan's error with no accuracy table
GPU_FP32_ERROR = 1e-4


class TaskError(PipeitError):
    """A task name or task parameter that cannot describe a task."""


@dataclass(frozen=True)
class Task:
    """What a user needs from one inference task (see docs/SATISFACTION.md for the defaults' reasons)."""

    name: str
    deadline_ms: float  # p99 latency within which a frame fully satisfies
    tolerance: float  # max relative error of the output against the exact model
    min_top1: float  # min share of frames whose top-1 class agrees with the exact model
    energy_weight: float  # exponent of the energy term in [0, 1]
    softness: float  # latency decay scale, in deadlines

    def __post_init__(self) -> None:
        checks = (
            (self.deadline_ms > 0 and math.isfinite(self.deadline_ms), "deadline must be a positive number of ms"),
            (self.tolerance > 0 and math.isfinite(self.tolerance), "tolerance must be a positive relative error"),
            (0.0 <= self.min_top1 <= 1.0, "top-1 agreement must be in [0, 1]"),
            (0.0 <= self.energy_weight <= 1.0, "energy weight must be in [0, 1]"),
            (self.softness > 0 and math.isfinite(self.softness), "softness must be positive"),
        )
        for ok, message in checks:
            if not ok:
                raise TaskError(f"task {self.name!r}: {message}")

    def to_json(self) -> dict:
        return {"name": self.name, "deadline_ms": self.deadline_ms, "tolerance": self.tolerance,
                "min_top1": self.min_top1, "energy_weight": self.energy_weight, "softness": self.softness}

    def describe(self) -> str:
        return (f"task {self.name}: deadline {self.deadline_ms:g} ms (p99), tolerance {self.tolerance:g} rel. "
                f"error / top-1 >= {self.min_top1:g}, energy weight {self.energy_weight:g}")


#: the documented defaults (docs/SATISFACTION.md says why each value)
TASKS: Dict[str, Task] = {
    "realtime": Task("realtime", deadline_ms=33.3, tolerance=1e-3, min_top1=0.99, energy_weight=0.1, softness=0.25),
    "interactive": Task("interactive", deadline_ms=100.0, tolerance=1e-2, min_top1=0.98, energy_weight=0.3,
                        softness=1.0),
    "background": Task("background", deadline_ms=1000.0, tolerance=5e-2, min_top1=0.95, energy_weight=1.0,
                       softness=4.0),
}
DEFAULT_TASK = "interactive"


def parse_tolerance(text: str) -> Tuple[float, Optional[float]]:
    """``REL`` or ``REL,TOP1`` (as given to ``--tolerance``) -> (relative error, top-1 or None)."""
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) not in (1, 2) or not all(parts):
        raise TaskError(f"--tolerance {text!r} is not REL or REL,TOP1 (e.g. 1e-3 or 1e-3,0.99)")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise TaskError(f"--tolerance {text!r}: not a number") from None
    return values[0], (values[1] if len(values) == 2 else None)


def make_task(name: Optional[str] = None, deadline_ms: Optional[float] = None, tolerance: Optional[float] = None,
              min_top1: Optional[float] = None, energy_weight: Optional[float] = None) -> Task:
    """A default task (``name``, default :data:`DEFAULT_TASK`) with any parameter overridden."""
    key = name or DEFAULT_TASK
    if key not in TASKS:
        raise TaskError(f"unknown task {key!r}; choose from {', '.join(TASKS)}")
    base = TASKS[key]
    return Task(
        name=key,
        deadline_ms=base.deadline_ms if deadline_ms is None else float(deadline_ms),
        tolerance=base.tolerance if tolerance is None else float(tolerance),
        min_top1=base.min_top1 if min_top1 is None else float(min_top1),
        energy_weight=base.energy_weight if energy_weight is None else float(energy_weight),
        softness=base.softness,
    )


@dataclass(frozen=True)
class Accuracy:
    """A plan's output against the exact model: max relative error, top-1 agreement, and how it is known."""

    error: float
    top1: float
    source: str

    @classmethod
    def of_gpu_plan(cls, chosen) -> "Accuracy":
        """From a :class:`pipeit.gpu.accuracy.AccuracyPlan` (the accuracy table's choice for a stage)."""
        return cls(float(chosen.error), float(chosen.top1),
                   f"gpu accuracy table: {chosen.storage} storage, fast layers {list(chosen.fast_layers)}")


EXACT = Accuracy(0.0, 1.0, "exact: CPU stages run the model's own TFLite kernels")


def plan_accuracy(plan, gpu: Optional[Accuracy] = None) -> Accuracy:
    """CPU-only plans are exact; a plan with a GPU worker takes ``gpu`` (its accuracy-table entry).

    Without one, a GPU plan is taken at the fp32 kernels' checked bound
    (:data:`GPU_FP32_ERROR`, top-1 kept), which is what it runs when no
    accuracy tuning chose faster variants.
    """
    kinds = {c.name: c.kind for c in plan.platform.clusters}
    if not any(kinds.get(w.cluster) == "gpu" for s in plan.stages for w in s.workers):
        return EXACT
    if gpu is not None:
        return gpu
    return Accuracy(GPU_FP32_ERROR, 1.0, "assumed: fp32 GPU kernels (checked within 1e-4 of TFLite per layer)")


def latency_term(p99_ms: float, task: Task) -> float:
    """1 within the deadline, then exp(-(p99 - D) / (softness * D)); 0 for an unknown (NaN/inf) latency."""
    if p99_ms is None or not math.isfinite(p99_ms):
        return 0.0
    if p99_ms <= task.deadline_ms:
        return 1.0
    return math.exp(-(p99_ms - task.deadline_ms) / (task.softness * task.deadline_ms))


def accuracy_term(error: float, top1: float, task: Task) -> float:
    """1 within the tolerance; tol/error beyond it, times exp(-shortfall/0.05) for top-1 below the minimum."""
    if not math.isfinite(error):
        return 0.0
    a_err = 1.0 if error <= task.tolerance else task.tolerance / error
    short = task.min_top1 - top1
    a_top1 = 1.0 if short <= 0 else math.exp(-short / TOP1_DECAY)
    return a_err * a_top1


def energy_term(energy_mj: float, reference_mj: float) -> float:
    """reference / energy, at most 1 (a plan at or below the reference scores 1)."""
    if not (energy_mj > 0 and math.isfinite(energy_mj)):
        return 0.0 if energy_mj != 0 else 1.0
    return min(1.0, max(0.0, reference_mj) / energy_mj)


def combine(latency: float, accuracy: float, energy: float, energy_weight: float) -> float:
    """S = L * A * E ** w, each term clipped to [0, 1]."""
    def clip(x: float) -> float:
        return min(1.0, max(0.0, x))

    return clip(latency) * clip(accuracy) * clip(energy) ** energy_weight


def worker_busy_s(plan, stats) -> Dict[Tuple[int, int], float]:
    """Seconds each (stage, worker) was busy in a run: its frames x its median service ms."""
    busy: Dict[Tuple[int, int], float] = {}
    for k, stage in enumerate(plan.stages):
        row = stats.stages[k] if k < len(stats.stages) else None
        for j in range(len(stage.workers)):
            frames = row.worker_frames[j] if row is not None and j < len(row.worker_frames) else 0
            ms = row.worker_ms[j] if row is not None and j < len(row.worker_ms) else None
            busy[(k, j)] = frames * (ms or 0.0) / 1000.0
    return busy


def energy_per_frame_mj(plan, power, stats, wall_s: float, frames: int) -> Tuple[float, float]:
    """(mJ per frame, average W) of a run of ``frames`` frames over ``wall_s`` seconds.

    ``power`` is a :class:`cores.power.PlatformPower` for ``plan.platform``;
    ``stats`` the pipeline's :class:`~pipeit.executor.stats.PipelineStats`
    for that run (per-worker frames and median service times).
    """
    from cores.power import average_power_w

    if frames < 1 or not wall_s > 0:
        raise PipeitError("energy needs at least one frame and a positive run time")
    kinds = {c.name: c.kind for c in plan.platform.clusters}
    cpu_busy: Dict[int, float] = {}
    gpu_busy: Dict[str, float] = {}
    for (k, j), seconds in worker_busy_s(plan, stats).items():
        worker = plan.stages[k].workers[j]
        share = seconds / wall_s
        if kinds.get(worker.cluster) == "gpu":
            gpu_busy[worker.cluster] = gpu_busy.get(worker.cluster, 0.0) + share
        for cpu in worker.cpus:
            cpu_busy[cpu] = cpu_busy.get(cpu, 0.0) + share
    watts = average_power_w(power, plan.platform, cpu_busy, gpu_busy)
    return watts * wall_s * 1000.0 / frames, watts


@dataclass(frozen=True)
class Satisfaction:
    """One strategy's score under a task, and its parts."""

    task: str
    score: float
    latency: float  # the latency term
    accuracy: float  # the accuracy term
    energy: float  # the energy term (against the run's reference)
    energy_mj: float  # per frame
    power_w: float
    latency_p99_ms: float
    error: float
    top1: float
    accuracy_source: str

    def to_json(self) -> dict:
        return {"task": self.task, "score": self.score, "latency": self.latency, "accuracy": self.accuracy,
                "energy": self.energy, "energy_mj": self.energy_mj, "power_w": self.power_w,
                "latency_p99_ms": self.latency_p99_ms, "error": self.error, "top1": self.top1,
                "accuracy_source": self.accuracy_source}


def score_runs(task: Task, runs: Mapping[str, Tuple[float, float, float, Accuracy]],
               reference_mj: Optional[float] = None) -> Dict[str, Satisfaction]:
    """Score each run ``name -> (p99 ms, mJ per frame, W, accuracy)``.

    Energy is normalised against ``reference_mj``, by default the lowest
    energy per frame among ``runs`` (so the most frugal strategy scores 1).
    """
    energies: Sequence[float] = [r[1] for r in runs.values() if r[1] > 0 and math.isfinite(r[1])]
    ref = reference_mj if reference_mj is not None else (min(energies) if energies else 0.0)
    out: Dict[str, Satisfaction] = {}
    for name, (p99, energy_mj, watts, acc) in runs.items():
        lat, accu, en = latency_term(p99, task), accuracy_term(acc.error, acc.top1, task), energy_term(energy_mj, ref)
        out[name] = Satisfaction(
            task=task.name, score=combine(lat, accu, en, task.energy_weight), latency=lat, accuracy=accu,
            energy=en, energy_mj=energy_mj, power_w=watts, latency_p99_ms=p99, error=acc.error, top1=acc.top1,
            accuracy_source=acc.source,
        )
    return out
