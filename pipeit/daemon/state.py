"""Where the daemon keeps what it learned, and how it gets a plan at start.

The state directory is ``$PIPEIT_STATE_DIR``, else ``~/.local/state/pipeit``
(the XDG state location: it survives reboots, unlike a cache). Inside, one
folder per platform fingerprint and model hash::

    <state>/<fingerprint>/<model sha256[:16]>/profile.csv   per-layer times measured here
    <state>/<fingerprint>/<model sha256[:16]>/times.json    the layer-times table planned from
    <state>/<fingerprint>/<model sha256[:16]>/plan.json     the last plan made

so a second start on the same board with the same model plans in
milliseconds, and a new runtime version or a different board (another
fingerprint) profiles again instead of trusting stale numbers. Times
profiled for a reload (SIGHUP to a new model) are measured while the old
pipeline still serves on the same cores: they plan that reload, and are
not cached, so the next start measures on idle cores.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from cores.filewrite import owner_gone
from cores.model import Platform
from pipeit.errors import PipeitError, PlanError
from pipeit.layer_times import LayerTimes
from pipeit.plan import Plan, file_sha256, load_plan

__all__ = ["ENV_STATE_DIR", "state_dir", "check_state_dir", "cache_folder", "PlanSource", "Planned", "obtain_plan",
           "preview_plan", "make_plan"]

ENV_STATE_DIR = "PIPEIT_STATE_DIR"
_log = logging.getLogger("pipeit.daemon")


def state_dir() -> Path:
    """``$PIPEIT_STATE_DIR`` or ``~/.local/state/pipeit`` (not created here)."""
    given = os.environ.get(ENV_STATE_DIR)
    if given:
        return Path(given)
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "pipeit"


def check_state_dir(root: Optional[Path] = None) -> Path:
    """Refuse a state directory that other users could fill: the daemon plans from what it finds there.

    Layer times and plans are read back from it on every start, so a
    world-writable one (``PIPEIT_STATE_DIR=/tmp`` say) would let anyone
    choose the daemon's plan, and one inside a world-writable folder without
    the sticky bit could be swapped whole. A folder not made yet is checked
    through the folders above it (the daemon makes it, as its own).
    """
    import stat

    from pipeit.daemon.sockets import swappable_ancestor

    root = root or state_dir()
    try:
        info = root.stat()
    except FileNotFoundError:
        info = None
    except OSError as err:
        raise PlanError(f"cannot inspect the state directory {root}: {err.strerror or err}") from err
    if info is not None:
        if not stat.S_ISDIR(info.st_mode):
            raise PlanError(f"the state directory {root} is not a directory (set ${ENV_STATE_DIR})")
        if info.st_mode & stat.S_IWOTH:
            raise PlanError(f"the state directory {root} is world-writable (mode {stat.S_IMODE(info.st_mode):o}): "
                            "anyone could plant the times the daemon plans from; use a folder only its user "
                            f"can write (set ${ENV_STATE_DIR})")
    swappable = swappable_ancestor(root)
    if swappable is not None:
        above, mode = swappable
        raise PlanError(f"the state directory {root} lies inside {above}, which anyone may write (mode {mode:o}, "
                        f"no sticky bit), so anyone could swap it for their own; set ${ENV_STATE_DIR}")
    return root


def cache_folder(platform: Platform, model_sha256: str, root: Optional[Path] = None) -> Path:
    """The folder for this platform fingerprint and model (see the module docstring)."""
    from pipeit.profiler import platform_fingerprint_for

    # with the GPUs: a platform with one must not plan from times cached for its CPUs alone
    return (root or state_dir()) / platform_fingerprint_for(platform, with_gpus=True) / model_sha256[:16]


@dataclass(frozen=True)
class PlanSource:
    """How the user asked the daemon to plan: exactly one of these, or none (profile here)."""

    plan: Optional[str] = None
    predictor: Optional[str] = None
    profile: Optional[str] = None
    times: Optional[str] = None
    strategy: str = "pipeit"
    latency_ms: Optional[float] = None
    memory_mb: Optional[float] = None
    profile_repeats: int = 30

    def describe(self) -> str:
        for name in ("plan", "predictor", "profile", "times"):
            value = getattr(self, name)
            if value:
                return f"{name} {value}"
        return "profile on first start (state directory)"


@dataclass(frozen=True)
class Planned:
    """A plan, and the per-layer times it came from (None when a plan file was given without any)."""

    plan: Plan
    times: Optional[LayerTimes]
    source: str


def make_plan(times: LayerTimes, platform: Platform, model: Union[str, Path], model_sha256: str,
              source: PlanSource) -> Plan:
    """Run the DSE on ``times``."""
    from pipeit.dse import plan_pipeline

    return plan_pipeline(times, platform, strategy=source.strategy, latency_ms=source.latency_ms,
                         memory_mb=source.memory_mb, model=str(model), model_sha256=model_sha256)


def _times_for(model: Path, graph: Any, platform: Platform, source: PlanSource, sha: str,
               stop: Optional[threading.Event] = None, serving: bool = False) -> tuple:
    """``(times, how, contended)``; ``serving``: a pipeline runs on these cores meanwhile (a reload), so
    times profiled now are contended (1.8x in one run): used for this plan, not cached for every later
    start (``contended`` is then True)."""
    from pipeit.layer_times import layer_times_for

    if source.times:
        times = LayerTimes.load(source.times)
        times.check_model(graph, source.times, str(model))
        return times, f"times {source.times}", False
    if source.predictor:
        return (layer_times_for(graph, platform, predictor=source.predictor, model=model),
                f"predictor {source.predictor}", False)
    if source.profile:
        return (layer_times_for(graph, platform, profile=source.profile, model=model),
                f"profile {source.profile}", False)
    folder = cache_folder(platform, sha, check_state_dir())
    cached = folder / "times.json"
    if cached.is_file():
        try:
            times = LayerTimes.load(cached)
            times.check_model(graph, str(cached), str(model))  # copied in by hand, or layers counted otherwise now
            return times, f"cached times {cached}", False
        except PipeitError as err:
            _log.warning("ignoring unreadable cached times (%s); profiling again", err)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PlanError(f"cannot create the state directory {folder}: {err.strerror or err} "
                        f"(set ${ENV_STATE_DIR})") from err
    from pipeit.profiler import TimingSpec, profile_models

    csv = folder / "profile.csv"
    if serving:
        _log.info("no plan, predictor or profile given: profiling %s on %s while the old pipeline serves "
                  "(times used for this reload only, not cached: the next start measures again)",
                  model.name, platform.source)
    else:
        _log.info("no plan, predictor or profile given: profiling %s on %s into %s", model.name, platform.source,
                  csv)
    spec = TimingSpec(max_repeats=max(source.profile_repeats, 9), max_seconds=1.0)
    # Measured into a file of this process's own, put in place whole: a profile cut short (a full disk,
    # a kill, another daemon on the same state directory) never becomes the cache every later start reads.
    # One measured while serving is read from there, and never put in place.
    partial = folder / f".profile.csv.{os.getpid()}"
    _remove_dead_partials(folder)
    try:
        try:
            partial.unlink(missing_ok=True)
            profile_models([model], platform, partial, spec=spec, stages=0, progress=_log.info, stop=stop)
            if not serving:
                os.replace(partial, csv)
        except OSError as err:
            raise PlanError(f"cannot write the profile in the state directory {folder}: {err.strerror or err}"
                            ) from err
        times = layer_times_for(graph, platform, profile=str(partial if serving else csv), model=model)
    finally:
        partial.unlink(missing_ok=True)
    if serving:
        return times, "profiled here while serving (not cached)", True
    try:
        times.save(cached)
    except OSError as err:  # the cache is a convenience: serve anyway, and say why the next start profiles again
        _log.warning("cannot cache the layer times in %s (%s); the next start profiles again", cached,
                     err.strerror or err)
    return times, f"profiled here, cached in {folder}", False


def _remove_dead_partials(folder: Path) -> None:
    """Partial profiles (``.profile.csv.<pid>``) of daemons killed while they profiled: no one else removes
    them."""
    for path in folder.glob(".profile.csv.*"):
        if owner_gone(path.name.rsplit(".", 1)[-1]):
            path.unlink(missing_ok=True)


def _check_same_cluster(plan_path: Union[str, Path], theirs: Any, mine: Any) -> None:
    """Refuse a plan whose cluster is not the daemon's: the pipeline runs the plan's CPUs and speeds while
    the daemon throttles, monitors and re-plans its own, and ``status`` would contradict itself."""
    if (theirs.cpus, theirs.speed, theirs.kind) != (mine.cpus, mine.speed, mine.kind):
        def shown(c: Any) -> str:
            return f"{c.kind} CPUs {','.join(map(str, c.cpus))} at speed {c.speed:g}"

        raise PlanError(f"{plan_path} was made for another platform: its cluster {mine.name!r} is "
                        f"{shown(theirs)}, this daemon's is {shown(mine)}; re-plan for this --platform")


def preview_plan(model: Union[str, Path], platform: Platform, source: PlanSource) -> Optional[Planned]:
    """What :func:`obtain_plan` would give, every file checked, where that needs no profiling; None where a
    first start would profile (no plan source given: checked are the model and the platform only)."""
    if source.plan or source.predictor or source.profile or source.times:
        return obtain_plan(model, platform, source)
    _checked_model(Path(model))
    return None


def _checked_model(model: Path) -> Any:
    """The model's graph, once the user's file is found to load in the runtime.

    Checked before any plan is made or read: a pipeline would only load the
    daemon's private copy, after a log line saying it planned, and name
    that copy in its error.
    """
    from pipeit.graph import load_graph
    from pipeit.runtime import check_loads

    if not model.is_file():
        raise PlanError(f"{model}: no such model file")
    graph = load_graph(str(model))
    check_loads(model)
    return graph


def obtain_plan(model: Union[str, Path], platform: Platform, source: PlanSource,
                stop: Optional[threading.Event] = None, serving: bool = False) -> Planned:
    """The plan to serve: the given file, or one made by the DSE from given, cached or fresh times.

    With a plan file, layer times for later re-plans come from the state
    directory if it holds some for this platform and model (None otherwise).
    ``stop``: set, it ends a profiling run early (a ProfileError).
    ``serving``: a pipeline serves on these cores meanwhile (a reload): times profiled now, and the plan
    made from them, are not cached (see :func:`_times_for`).
    """
    model = Path(model)
    graph = _checked_model(model)
    sha = file_sha256(model)
    if source.plan:
        plan = load_plan(source.plan)
        if plan.model_sha256 != sha:
            raise PlanError(f"{source.plan} was made for another model (sha256 {plan.model_sha256[:12]}..., "
                            f"{model} is {sha[:12]}...); re-plan for this model")
        for stage in plan.stages:
            for worker in stage.workers:
                for name in worker.cluster.split("+"):
                    _check_same_cluster(source.plan, plan.platform.cluster(name), platform.cluster(name))
        cached = cache_folder(platform, sha, check_state_dir()) / "times.json"
        times = None
        if cached.is_file():
            try:
                times = LayerTimes.load(cached)
            except PipeitError:
                times = None
        return Planned(plan, times, f"plan {source.plan}")
    times, how, contended = _times_for(model, graph, platform, source, sha, stop, serving)
    plan = make_plan(times, platform, model, sha, source)
    if not (source.predictor or source.profile or source.times or contended):
        try:
            plan.save(cache_folder(platform, sha) / "plan.json")
        except OSError:
            pass  # the cache is a convenience
    return Planned(plan, times, how)
