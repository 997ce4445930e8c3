"""The throughput benchmark: every strategy planned and streamed, interleaved, in one run.

``pipeit bench`` answers one question for a model on a board: how many
frames per second does each way of running it give, at what latency, and
how close is that to what the cores could give? It

1. gets per-layer times for every core setup (a given predictor or
   profile, else it profiles the model now, cached per platform and model),
2. measures the *ideal*: the sum over cores of each core's measured
   single-thread whole-model throughput (measured, not declared: emulated
   factors and turbo make declared speeds wrong), once through the profiler
   (``ideal_fps``, the best case: clean runs only, quiet CPUs) and again in
   every round the way the strategies are measured
   (``ideal_interleaved_fps``, :func:`measure_ideal_solo`; median round);
   the first measurement also re-anchors each cluster's layer times to the
   board as it is now (:func:`anchor_to_measured`, ``time_scale`` in the
   report; ``--as-profiled`` keeps them as they were),
3. plans each strategy (``all-cores``, ``fastest-cluster``, ``replicas``,
   ``pipe-it``, ``pipeit``) with the DSE,
4. starts every strategy's pipeline and streams ``frames`` frames through
   each in turn, ``rounds`` times, interleaved so that host noise hits all
   strategies alike; the median round counts.

Frames are submitted with a window of as many frames in flight as the plan
has workers: enough to keep every worker busy, few enough that latency is
the frame's path through the stages rather than time spent queueing behind
frames the benchmark itself pushed in. Without a latency limit the window
holds one frame more, so the worker that finishes first has its next frame
queued while its answer travels back (throughput is what is asked for);
under a limit it does not (every strategy is judged by its latency).

Each strategy is also scored for a task (``--task``, default
``interactive``; :mod:`pipeit.satisfaction`): its median round's p99
latency against the task's deadline, its accuracy against the tolerance,
and its energy per frame from the board's power model
(:mod:`cores.power`) and the round's per-worker busy times.
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from cores.model import CoreSetup, Platform
from pipeit.errors import PipeitError, PlanError
from pipeit.plan import Plan, file_sha256
from pipeit.satisfaction import Accuracy, Satisfaction, Task
from pipeit.streaming import frames_in_flight, stream_frames
from pipeit.strategies import STRATEGIES

__all__ = [
    "STRATEGIES",
    "StrategyResult",
    "BenchReport",
    "obtain_layer_times",
    "measure_ideal",
    "measure_ideal_solo",
    "anchor_to_measured",
    "run_bench",
    "default_cache_dir",
]



def default_cache_dir() -> Path:
    """Where profiles made by ``bench``/``serve`` are kept (``$PIPEIT_CACHE_DIR`` or XDG cache)."""
    env = os.environ.get("PIPEIT_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pipeit"


#: what each stage of a strategy's JSON carries from its median round (pipeit.executor.stats.StageStats)
STAGE_KEYS = ("measured_ms", "predicted_ms", "busy", "handoff_ms", "starved", "worker_ms", "restarts")


@dataclass(frozen=True)
class StrategyResult:
    """One strategy's plan and what streaming through it measured (median round)."""

    name: str
    plan: Plan
    fps: float
    fps_rounds: Tuple[float, ...]
    latency_p50_ms: float
    latency_p99_ms: float
    meets_limit: Optional[bool]
    rss_bytes: int
    efficiency: float
    predicted_fps: float
    predicted_latency_ms: float
    #: another strategy whose plan is the same pipeline: run once, reported for both
    same_plan_as: Optional[str] = None
    #: the task's score of this strategy and its parts (energy from the median round)
    satisfaction: Optional[Satisfaction] = None
    #: fps over the ideal measured in the rounds themselves (``BenchReport.ideal_interleaved_fps``)
    efficiency_interleaved: Optional[float] = None
    #: the median round's per-stage figures (service ms against the plan's, busy share, hand-off and
    #: starved time): where a strategy lost fps or latency, stage by stage
    stage_stats: Tuple[Any, ...] = ()

    def to_json(self) -> dict:
        measured = {st.index: st.to_json() for st in self.stage_stats}
        return {
            "name": self.name,
            "same_plan_as": self.same_plan_as,
            "fps": self.fps,
            "fps_rounds": list(self.fps_rounds),
            "latency_ms": {"p50": self.latency_p50_ms, "p99": self.latency_p99_ms},
            "meets_limit": self.meets_limit,
            "rss_bytes": self.rss_bytes,
            "efficiency": self.efficiency,
            "efficiency_interleaved": self.efficiency_interleaved,
            "predicted_fps": self.predicted_fps,
            "predicted_latency_ms": self.predicted_latency_ms,
            "stages": [
                {
                    "layers": list(s.layers),
                    "workers": [f"{w.cluster}:{len(w.cpus)}@{','.join(map(str, w.cpus))}" for w in s.workers],
                    **({key: measured[i][key] for key in STAGE_KEYS} if i in measured else {}),
                }
                for i, s in enumerate(self.plan.stages)
            ],
            **({"satisfaction": self.satisfaction.to_json()} if self.satisfaction is not None else {}),
        }


@dataclass(frozen=True)
class BenchReport:
    model: str
    platform: str
    ideal_fps: float
    single_thread_ms: Tuple[Tuple[str, float], ...]
    latency_limit_ms: Optional[float]
    frames: int
    rounds: int
    times_source: str
    strategies: Tuple[StrategyResult, ...]
    #: the ideal measured again in every round, like the strategies (see :func:`measure_ideal_solo`):
    #: the median round's figure (None where it could not be measured)
    ideal_interleaved_fps: Optional[float] = None
    #: the task the satisfaction scores are for, whether it was the default, and the power model used
    task: Optional[Task] = None
    task_is_default: bool = False
    power: Optional[dict] = None
    #: the measured choice of pipeit's plan among candidates (:mod:`pipeit.trial`), None without one
    trial: Optional[dict] = None
    #: what the DSE alone picked for pipeit before the trial (its shape and predicted fps)
    proposed: Optional[dict] = None
    #: per CPU cluster, the factor its layer times were scaled by to match the whole-model time
    #: measured at the start of the run (:func:`anchor_to_measured`); empty when not anchored
    time_scale: Tuple[Tuple[str, float], ...] = ()

    def to_json(self) -> dict:
        extra = {}
        if self.trial is not None:
            extra["trial"] = self.trial
        if self.proposed is not None:
            extra["proposed"] = self.proposed
        if self.task is not None:
            extra["task"] = {**self.task.to_json(), "default": self.task_is_default}
        if self.power is not None:
            extra["power"] = self.power
        return {
            "model": self.model,
            "platform": self.platform,
            "ideal_fps": self.ideal_fps,
            "ideal_interleaved_fps": self.ideal_interleaved_fps,
            "single_thread_ms": dict(self.single_thread_ms),
            "latency_limit_ms": self.latency_limit_ms,
            "frames": self.frames,
            "rounds": self.rounds,
            "times_source": self.times_source,
            "time_scale": dict(self.time_scale),
            "strategies": [s.to_json() for s in self.strategies],
            **extra,
        }

    def best_other(self, name: str = "pipeit") -> Optional[StrategyResult]:
        others = [s for s in self.strategies if s.name != name]
        return max(others, key=lambda s: s.fps) if others else None


def _say(progress: bool, text: str) -> None:
    if progress:
        print(f"[bench] {text}", file=sys.stderr, flush=True)


def obtain_layer_times(
    graph,
    platform: Platform,
    model_path: Path,
    profile: Optional[Path] = None,
    predictor: Optional[Path] = None,
    cache_dir: Optional[Path] = None,
    progress: bool = True,
):
    """Per-layer times for every CPU setup: from the predictor, the profile, or a fresh cached profile."""
    from pipeit.layer_times import layer_times_for, warn_if_measured_elsewhere

    if predictor is not None:
        from predictors import load_predictor

        fitted = load_predictor(predictor)
        warn_if_measured_elsewhere(fitted, None, str(predictor), platform)
        return layer_times_for(graph, platform, predictor=fitted, model=model_path)
    if profile is not None:
        from pipeit.profile_table import read_profile

        table = read_profile(profile, force=True)
        warn_if_measured_elsewhere(None, table, str(profile), platform)
        return layer_times_for(graph, platform, profile=table, model=model_path)
    from pipeit.profiler import platform_fingerprint_for, profile_models

    folder = (cache_dir or default_cache_dir()) / "profiles"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # /proc/x, a read-only or immutable folder: the user's path, one line
        from pipeit.errors import ProfileError

        raise ProfileError(f"cannot create the profile cache folder {folder}: {err.strerror or err} "
                           "(give --cache-dir a folder you can write)") from None
    fingerprint = platform_fingerprint_for(platform)
    profile = folder / f"{fingerprint}-{graph.sha256[:16]}.csv"
    _say(progress, f"profiling {model_path.name} on {platform.source} (cached in {profile})")
    profile_models([model_path], platform, profile, progress=progress)
    return layer_times_for(graph, platform, profile=profile, model=model_path)


#: the single-thread time is measured this many times per cluster, interleaved, and the least kept ...
IDEAL_PASSES = 2
#: ... each pass timing for at most this long (the profiler's own method, its clean-run filter included)
IDEAL_PASS_S = 2.0


def measure_ideal(
    model_path: Path, platform: Platform, progress: bool = True
) -> Tuple[float, Dict[str, float]]:
    """Sum over cores of single-thread whole-model throughput, each cluster measured on one of its cores.

    Each cluster is timed :data:`IDEAL_PASSES` times, the clusters taking
    turns, and its least median kept: the profiler drops runs that waited
    for a CPU inside this machine, but not a spell in which a shared host
    (a VM's neighbours) slows everything, and one such spell here made a
    core look 2x slower than it ran a minute later (emulated squeezenet:
    ideal 41 fps against 71 measured alike in the rounds), which skewed the
    ideal, the anchoring of the layer times and every predicted fps. Noise
    only ever slows a run, so the faster pass is the machine's speed.
    """
    from pipeit.profiler import TimingSpec, WorkerPool

    setups = [CoreSetup(c.name, 1) for c in platform.cpu_clusters]
    model_bytes = Path(model_path).read_bytes()
    single: Dict[str, float] = {}
    with WorkerPool(platform, setups) as pool:
        for _ in range(IDEAL_PASSES):
            for setup in setups:
                timing = pool.measure(setup, model_bytes, TimingSpec(max_seconds=IDEAL_PASS_S))
                if timing.status != "ok" and not timing.median_ms:
                    raise PipeitError(f"could not time {model_path.name} on {setup}: {timing.status}")
                single[setup.cluster] = min(single.get(setup.cluster, math.inf), timing.median_ms)
    ideal = sum(platform.cluster(name).size * 1000.0 / ms for name, ms in single.items())
    _say(progress, "single-thread ms: " + ", ".join(f"{k} {v:.2f}" for k, v in single.items())
         + f" -> ideal {ideal:.1f} fps")
    return ideal, single


#: a profile whose whole-model time is off the one measured now by more than this ratio (either way)
#: is probably stale (another governor, a throttled board): said on stderr, used all the same
STALE_PROFILE_RATIO = 1.25


def anchor_to_measured(times, single: Dict[str, float]) -> Tuple[object, Dict[str, float]]:
    """Rescale each CPU cluster's layer times so that the whole model takes what was measured just now.

    ``single``: cluster name -> single-thread whole-model ms measured at the
    start of this run (:func:`measure_ideal`, the profiler's own method).
    The profile or predictor says how the time splits between layers; the
    board says how fast it is today (temperature, governor, neighbours), and
    both the plans and their predicted fps should be for today's board. A
    cluster whose ``cluster:1`` setup has no times, or which was not
    measured, keeps its times. Returns the rescaled times and the factor
    per cluster (1.0 = the profile was right).
    """
    factors: Dict[str, float] = {}
    for cluster, measured_ms in single.items():
        setup = CoreSetup(cluster, 1)
        if setup not in times.times or not (measured_ms > 0):
            continue
        predicted_ms = times.calibration.scale * math.fsum(times.times[setup])
        if math.isfinite(predicted_ms) and predicted_ms > 0:
            factors[cluster] = measured_ms / predicted_ms
    if not factors:
        return times, factors
    note = " (x " + ", ".join(f"{c} {f:.3f}" for c, f in sorted(factors.items())) + " to measured whole-model ms)"
    return times.rescaled(factors, note), factors


def measure_ideal_solo(model_path: Path, platform: Platform, seconds: float, throttles=None) -> float:
    """The ideal measured the way the strategies are: one pass, the whole frame path, every run counted.

    :func:`measure_ideal` times ``invoke`` alone through the profiler, once,
    before the rounds, keeping only runs no one preempted, after waiting for
    the CPUs to go quiet: on a shared host that is the best case, while each
    strategy's round takes whatever the host gives it. This runs one pinned
    single-thread interpreter on one CPU of each cluster in turn (the others
    idle, as the definition has it) for ``seconds``, copying the input in and
    the output out as a worker does (:func:`pipeit.executor.bare.run_bare`),
    so that it can be repeated inside every round and the median taken.
    On an emulated platform a slowed cluster's interpreter pads its invokes
    as the workers there do (speed read from ``throttles`` when given).
    """
    from cores.emulation import slow_core_for
    from pipeit.executor.bare import run_bare

    total = 0.0
    for cluster in platform.cpu_clusters:
        slow = slow_core_for(platform, cluster.name, throttles)
        run = run_bare(model_path, cluster.cpus[:1], seconds, slow=slow)
        total += cluster.size * run.fps
    return total


def _rss_bytes(pipeline) -> int:
    import psutil

    total = 0
    for pid in pipeline.worker_pids().values():
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.Error:
            pass
    return total


def make_frames(model_path: Path, count: int, seed: int = 0) -> List[Dict[str, "object"]]:
    """Seeded random frames matching the model's inputs (a few distinct ones, reused)."""
    from pipeit.executor.pipeline import model_io
    from pipeit.frames import random_frames

    inputs, _ = model_io(model_path)
    distinct = random_frames(inputs, min(count, 8), seed)
    return [distinct[i % len(distinct)] for i in range(count)]


def run_bench(
    model_path: Path,
    platform: Platform,
    frames: int = 200,
    rounds: int = 3,
    latency_ms: Optional[float] = None,
    latency_factor: Optional[float] = None,
    memory_mb: Optional[float] = None,
    profile: Optional[Path] = None,
    predictor: Optional[Path] = None,
    strategies: Sequence[str] = STRATEGIES,
    cache_dir: Optional[Path] = None,
    progress: bool = True,
    task: Optional[Task] = None,
    gpu_accuracy: Optional[Accuracy] = None,
    power_file: Optional[Path] = None,
    trial: bool = True,
    anchor: bool = True,
    trial_seconds: Optional[float] = None,
) -> BenchReport:
    """Plan, start and stream every strategy; see the module docstring for the method.

    ``anchor``: every CPU cluster's layer times are rescaled so that the
    whole model takes the single-thread time measured at the start of this
    run (:func:`anchor_to_measured`); ``False`` plans with the times as
    profiled or predicted.

    ``trial``: pipeit's plan is chosen by a short measured trial among the
    DSE's pick, its throughput/latency front near the limit and the other
    strategies' plans (:mod:`pipeit.trial`); ``False`` keeps the DSE's pick.
    ``trial_seconds`` (default :data:`TRIAL_ROUND_S`) is how long each
    candidate streams per trial round, at the DSE pick's predicted rate:
    shorter makes a quicker bench and a noisier choice.

    ``latency_factor`` sets the limit to that multiple of the fastest
    cluster's measured single-thread frame time (the issue's "twice the big
    core's single-frame latency"), when ``latency_ms`` is not given.
    ``task`` (default: :data:`pipeit.satisfaction.DEFAULT_TASK`'s defaults)
    is what each strategy's satisfaction is scored for; ``gpu_accuracy`` is
    the accuracy-table entry of a plan's GPU stage, where one has it;
    ``power_file`` a power file (``cores/power`` layout) to use instead of
    the board's own or the placeholder.
    """
    from cores.power import load_power_file, power_for_platform
    from pipeit.dse import plan_pipeline
    from pipeit.executor import Pipeline
    from pipeit.executor.pipeline import coordinator_cpus
    from pipeit.executor.stats import percentile
    from pipeit.graph import load_graph
    from pipeit.profiler import check_measurable
    from pipeit.runtime import check_loads
    from pipeit.satisfaction import energy_per_frame_mj, make_task, plan_accuracy, score_runs

    task_is_default = task is None
    task = task if task is not None else make_task()
    power = power_for_platform(platform, table=load_power_file(power_file) if power_file is not None else None)
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise PlanError(f"unknown strategy {unknown[0]!r}; choose from {', '.join(STRATEGIES)}")
    if frames < 1 or rounds < 1:
        raise PipeitError("--frames and --rounds must be >= 1")
    trial_seconds = TRIAL_ROUND_S if trial_seconds is None else trial_seconds
    if not 0 < trial_seconds <= TRIAL_MAX_SECONDS:
        raise PipeitError(f"--trial-seconds must be > 0 and at most {TRIAL_MAX_SECONDS:g}, got {trial_seconds:g}")
    model_path = Path(model_path)
    graph = load_graph(model_path)
    check_loads(model_path)  # before any profiling: what only the runtime can judge (op versions, options)
    check_measurable(platform, "bench runs every strategy on this machine")  # a board's CPUs this host lacks
    sha = file_sha256(model_path)
    times = obtain_layer_times(graph, platform, model_path, profile, predictor, cache_dir, progress)
    ideal, single = measure_ideal(model_path, platform, progress)
    time_scale: Dict[str, float] = {}
    if anchor:
        times, time_scale = anchor_to_measured(times, single)
        if time_scale:
            _say(progress, "layer times scaled to the whole-model times just measured: " + ", ".join(
                f"{c} x{f:.3f}" for c, f in sorted(time_scale.items())))
        for cluster, factor in sorted(time_scale.items()):
            if max(factor, 1.0 / factor) > STALE_PROFILE_RATIO:
                _say(progress, f"warning: {cluster}'s layer times were {factor:.2f}x off the model measured now; "
                     "the profile may be stale (re-profile, or check the governor and temperature)")
    if latency_ms is None and latency_factor is not None:
        latency_ms = latency_factor * single[platform.fastest.name]
        _say(progress, f"latency limit {latency_ms:.2f} ms ({latency_factor} x {platform.fastest.name}'s single-frame time)")

    plans: Dict[str, Plan] = {}
    for name in strategies:
        limit = latency_ms if name == "pipeit" else None
        plans[name] = plan_pipeline(
            times, platform, strategy=name, latency_ms=limit, memory_mb=memory_mb,
            model=model_path.name, model_sha256=sha,
        )
        _say(progress, f"{name}: {plans[name].describe()}  predicted {plans[name].predicted_fps:.1f} fps")

    proposed_doc = None
    trial_doc = None
    if trial and "pipeit" in plans:
        proposed_doc = {"stages": plans["pipeit"].describe(), "predicted_fps": plans["pipeit"].predicted_fps}
        chosen, trial_doc = _trial(plans, times, platform, model_path, sha, frames, latency_ms, memory_mb, progress,
                                   trial_seconds)
        plans["pipeit"] = chosen

    shapes: Dict[tuple, str] = {}
    same_as: Dict[str, str] = {}
    for name, plan in plans.items():
        first = shapes.setdefault(plan.shape, name)
        if first != name:
            same_as[name] = first
            _say(progress, f"{name}: the same pipeline as {first}; measured once for both")
    measured = {name: plan for name, plan in plans.items() if name not in same_as}
    # Without a latency limit the bench asks for throughput: one frame more than the workers hold keeps
    # the worker that finishes first busy while its answer travels back and the next frame comes in
    # (otherwise every worker idles a round trip per frame). Under a limit every strategy is judged by
    # its latency, so none gets a frame queued in front of its own, and every strategy's frames are
    # admitted gated: each enters only when it can pass every stage without waiting (pipeit.admission).
    spare = 1 if latency_ms is None else 0
    gated = latency_ms is not None
    inflight = {name: frames_in_flight(plan) + spare for name, plan in measured.items()}

    stream = make_frames(model_path, frames)
    warm = make_frames(model_path, max(8, frames // 10))
    fps_runs: Dict[str, List[float]] = {n: [] for n in measured}
    lat_runs: Dict[str, List[List[float]]] = {n: [] for n in measured}
    stat_runs: Dict[str, list] = {n: [] for n in measured}
    solo_runs: List[float] = []
    rss: Dict[str, int] = {}
    pipelines = {}
    host: Tuple[int, ...] = ()
    feeder = os.sched_getaffinity(0)
    try:
        host = coordinator_cpus(platform)
        for name, plan in measured.items():
            slots = max(4, inflight[name] + 1)
            pipelines[name] = Pipeline(plan, model_path, slots=slots).start()
            if host:
                pipelines[name].pin_dispatcher(host)
        if host:
            os.sched_setaffinity(0, set(host))
            _say(progress, f"dispatchers and the frame feed pinned to CPUs {list(host)} (the slowest cluster)")
        for name, pipe in pipelines.items():
            stream_frames(pipe, warm, inflight[name], gated=gated)
            rss[name] = _rss_bytes(pipe)
        for r in range(rounds):
            order = list(pipelines) if r % 2 == 0 else list(reversed(list(pipelines)))
            for name in order:
                pipelines[name].reset_stats()
                fps, lat = stream_frames(pipelines[name], stream, inflight[name], gated=gated)
                fps_runs[name].append(fps)
                lat_runs[name].append(lat)
                stat_runs[name].append(pipelines[name].stats())
            throttles = next((p.throttles for p in pipelines.values() if p.throttles is not None), None)
            solo = measure_ideal_solo(model_path, platform, min(5.0, max(0.5, frames / max(ideal, 1e-9))), throttles)
            solo_runs.append(solo)
            _say(progress, f"round {r + 1}/{rounds}: " + ", ".join(
                f"{n} {fps_runs[n][-1]:.1f}" for n in measured) + f" fps; ideal measured alike {solo:.1f} fps")
        for name, pipe in pipelines.items():
            rss[name] = max(rss.get(name, 0), _rss_bytes(pipe))
    finally:
        for pipe in pipelines.values():
            pipe.close()
        if host:
            os.sched_setaffinity(0, feeder)

    picks: Dict[str, int] = {}
    runs_for_score = {}
    for name, plan in plans.items():
        source = same_as.get(name, name)
        runs = fps_runs[source]
        # the round whose fps is the median one gives the latencies and the energy
        picks[name] = sorted(range(len(runs)), key=lambda i: runs[i])[len(runs) // 2]
        mj, watts = energy_per_frame_mj(plan, power, stat_runs[source][picks[name]],
                                        wall_s=frames / runs[picks[name]], frames=frames)
        runs_for_score[name] = (percentile(lat_runs[source][picks[name]], 99), mj, watts,
                                plan_accuracy(plan, gpu_accuracy))
    scores = score_runs(task, runs_for_score)
    ideal_alike = statistics.median(solo_runs) if solo_runs else None

    results = []
    for name, plan in plans.items():
        source = same_as.get(name, name)
        runs = fps_runs[source]
        median_fps = statistics.median(runs)
        pick = picks[name]
        lat = lat_runs[source][pick]
        p99 = percentile(lat, 99)
        results.append(StrategyResult(
            name=name, plan=plan, fps=median_fps, fps_rounds=tuple(runs),
            latency_p50_ms=percentile(lat, 50), latency_p99_ms=p99,
            meets_limit=None if latency_ms is None else p99 <= latency_ms,
            rss_bytes=rss.get(source, 0), efficiency=median_fps / ideal if ideal else 0.0,
            predicted_fps=plan.predicted_fps, predicted_latency_ms=plan.predicted_latency_ms,
            same_plan_as=same_as.get(name), satisfaction=scores[name],
            efficiency_interleaved=median_fps / ideal_alike if ideal_alike else None,
            stage_stats=tuple(stat_runs[source][pick].stages),
        ))
    return BenchReport(
        model=model_path.name, platform=platform.source, ideal_fps=ideal,
        single_thread_ms=tuple(sorted(single.items())), latency_limit_ms=latency_ms,
        frames=frames, rounds=rounds, times_source=getattr(times, "source", "profile"),
        strategies=tuple(results), task=task, task_is_default=task_is_default, power=power.to_json(),
        ideal_interleaved_fps=ideal_alike, trial=trial_doc, proposed=proposed_doc,
        time_scale=tuple(sorted(time_scale.items())),
    )


#: seconds of frames (at the DSE pick's predicted rate) each trial candidate streams per round, by default
TRIAL_ROUND_S = 1.5
#: the most a user may ask for (``--trial-seconds``): 3 rounds x every candidate of this each
TRIAL_MAX_SECONDS = 60.0
#: and at most this many frames per round, whatever the rate
TRIAL_MAX_FRAMES = 2000


def _trial(plans: Dict[str, Plan], times, platform: Platform, model_path: Path, sha: str, frames: int,
           latency_ms: Optional[float], memory_mb: Optional[float], progress: bool,
           trial_seconds: float = TRIAL_ROUND_S) -> Tuple[Plan, Optional[dict]]:
    """pipeit's plan after a measured trial among candidates (pipeit.trial); the trial's record for the report."""
    from pipeit.dse import admission_for, pareto_front, to_plan
    from pipeit.dse.cost import Limits
    from pipeit.executor import Pipeline
    from pipeit.executor.pipeline import coordinator_cpus
    from pipeit.trial import choose_by_trial, trial_candidates

    front: List[Plan] = []
    if latency_ms is not None:
        front = [to_plan(c, platform, strategy="pipeit", model=model_path.name, model_sha256=sha,
                         limits=Limits(None, memory_mb))
                 for c in pareto_front(times, platform, memory_mb=memory_mb, admission=admission_for(latency_ms))]
    others = {n: p for n, p in plans.items() if n != "pipeit"}
    candidates = trial_candidates(plans["pipeit"], others, front, latency_ms, baseline="pipe-it")
    if len(candidates) < 2:
        return plans["pipeit"], None
    spare = 1 if latency_ms is None else 0
    host = coordinator_cpus(platform)

    feeder = os.sched_getaffinity(0)

    def start(plan: Plan) -> Pipeline:
        # workers are started from the whole affinity (a worker may only be pinned where its parent may
        # run); the frame feed goes back to the coordinator's CPUs, as in the measured rounds
        os.sched_setaffinity(0, feeder)
        try:
            pipe = Pipeline(plan, model_path, slots=max(4, frames_in_flight(plan) + spare + 1)).start()
        finally:
            if host:
                os.sched_setaffinity(0, set(host))
        if host:
            pipe.pin_dispatcher(host)
        return pipe

    _say(progress, f"trial of {len(candidates)} candidate plans for pipeit: " + ", ".join(c[0] for c in candidates))
    try:
        if host:
            os.sched_setaffinity(0, set(host))
        # ~1.5 s per candidate and round by default (a few frames of a 50 ms model say nothing on a shared host)
        rate = plans["pipeit"].predicted_fps if math.isfinite(plans["pipeit"].predicted_fps) else 0.0
        count = min(TRIAL_MAX_FRAMES, max(20, frames // 2, int(math.ceil(trial_seconds * rate))))
        pool = make_frames(model_path, min(count, 16))  # a few distinct frames, cycled: no 1.5 s of frames in memory
        result = choose_by_trial(candidates, model_path, [pool[i % len(pool)] for i in range(count)], latency_ms,
                                 rounds=3, spare_in_flight=spare, start=start,
                                 progress=(lambda text: _say(progress, text)))
    finally:
        if host:
            os.sched_setaffinity(0, feeder)
    _say(progress, f"pipeit plays {result.label}: {result.reason}")
    chosen = dataclasses.replace(result.chosen, strategy="pipeit", latency_limit_ms=latency_ms)
    return chosen, dict(result.to_json(), seconds_per_round=trial_seconds, frames_per_round=count)


def format_report(report: BenchReport) -> str:
    """The table people read: one row per strategy, plus the ideal and the limit."""
    from pipeit.cli.output import format_table

    rows = []
    for s in report.strategies:
        rows.append([
            s.name, f"{s.fps:.1f}", f"{s.predicted_fps:.1f}", f"{s.latency_p50_ms:.1f}",
            f"{s.latency_p99_ms:.1f}", "-" if s.meets_limit is None else ("yes" if s.meets_limit else "no"),
            f"{s.rss_bytes / 2**20:.0f}", f"{s.efficiency:.2f}",
            "-" if s.satisfaction is None else f"{s.satisfaction.energy_mj:.1f}",
            "-" if s.satisfaction is None else f"{s.satisfaction.score:.2f}",
            " | ".join("+".join(f"{w.cluster}:{len(w.cpus)}" for w in st.workers) for st in s.plan.stages)
            + (f"  (= {s.same_plan_as}, measured once)" if s.same_plan_as else ""),
        ])
    head = (f"model {report.model} on {report.platform}: ideal {report.ideal_fps:.1f} fps "
            f"(single-thread ms: " + ", ".join(f"{k} {v:.2f}" for k, v in report.single_thread_ms) + ")")
    if report.ideal_interleaved_fps is not None:
        head += f"; measured like the strategies, in every round: {report.ideal_interleaved_fps:.1f} fps"
    if report.latency_limit_ms is not None:
        head += f"; latency limit {report.latency_limit_ms:.1f} ms (p99)"
    if report.time_scale:
        head += ("\npredicted with layer times scaled to the whole-model time measured now: "
                 + ", ".join(f"{c} x{f:.3f}" for c, f in report.time_scale))
    table = format_table(
        ["strategy", "fps", "pred fps", "p50 ms", "p99 ms", "meets", "RSS MiB", "eff", "mJ/frame", "satisf",
         "stages (workers)"], rows)
    text = head + f"\n{report.frames} frames x {report.rounds} interleaved rounds, median round\n" + table
    if report.trial is not None:
        text += (f"\npipeit's plan chosen by a measured trial: {report.trial['chosen']} ({report.trial['reason']})"
                 + (f"; the DSE alone picked {report.proposed['stages']}" if report.proposed else ""))
    if report.task is not None:
        text += "\nsatisfaction for " + report.task.describe() + (
            " (the default task; choose one with --task)" if report.task_is_default else "")
        if report.power is not None:
            text += "\nenergy: " + ("board power file " + report.power["board"] if report.power.get("board")
                                    else "no power file for this platform") + (
                "; placeholder figures, see docs/SATISFACTION.md" if report.power.get("placeholder")
                else "; estimates, see docs/SATISFACTION.md" if report.power.get("estimate", True)
                else "; measured figures")
    return text
