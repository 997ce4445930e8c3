"""The daemon's pipeline holder: one warm pipeline at a time, swapped without losing a frame.

:meth:`Engine.submit` hands a frame to the current pipeline and counts it
against that pipeline. :meth:`Engine.switch` starts the next pipeline while
the current one keeps serving, then swaps them between two submissions
(under a lock the submitter also takes), waits for the old one to finish
every frame it was given, and only then closes it. A frame is therefore
given to exactly one pipeline and answered exactly once.

On an emulated platform the engine owns the cgroup throttles for its whole
life, and every pipeline's workers follow them (a worker wholly on a slowed
cluster pads its jobs to the speed its cluster's quota says, re-read every
0.1 s; the threads of an interpreter spanning clusters sit in the cgroup
itself): a quota changed from outside
(the tests' stand-in for a board that heats up) then survives a switch, as
a real board's slowdown would. The throttles also tell the daemon's
monitor each emulated cluster's speed now (:attr:`Engine.speed_source`),
the emulated board's frequency cap; setting ``PIPEIT_HIDE_EMULATED_SPEED=1``
in the daemon's environment withholds it, so a quota cut is seen only
through the measured times, as a co-runner taking cores would be (the
drift path, measured by ``tools/replan_bench.py --hide-speed``).

The model a pipeline runs is the engine's private copy of the file, taken
when a plan for it was first launched (:meth:`Engine._model_for`): a restart
after a worker died, or a re-plan, keeps running the model the daemon
loaded even if the file on disk was replaced or deleted meanwhile (as a
deployment does just before ``systemctl reload``). SIGHUP is what reads the
file again.

Switch timing: each :class:`Generation` records how long its pipeline took
to start (split, spawn, model load, first ready) and the engine logs it with
the drain time of the old one, so the cost of a switch shows in the log.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

from cores.model import Platform
from pipeit.errors import ExecutorError, PipeitError, PlanError
from pipeit.plan import Plan
from pipeit.tempdirs import make_private_dir, remove_orphans

__all__ = ["Engine", "Generation", "HIDE_SPEED_ENV"]

#: set to 1 in the daemon's environment to keep emulated clusters' current speeds from its monitor
HIDE_SPEED_ENV = "PIPEIT_HIDE_EMULATED_SPEED"

#: the start of the folder holding the engine's copies of the model (then the pid: pipeit.tempdirs)
MODEL_DIR_PREFIX = "pipeit-model-"

_log = logging.getLogger("pipeit.daemon")


@dataclass
class Generation:
    """One pipeline the engine started: its number, plan and frames still inside it."""

    number: int
    plan: Plan
    pipeline: Any
    started: float
    inflight: int = 0
    submitted: int = 0
    #: seconds :meth:`Pipeline.start` took (split, spawn, model load, every worker ready)
    start_s: float = 0.0
    #: clients' frame areas its pipeline reads in place: id(area) -> (area, the pipeline's area id, or None
    #: where the pipeline cannot read that area in place and its frames are copied into ring 0)
    areas: Dict[int, Tuple[Any, Optional[int]]] = field(default_factory=dict)


class Engine:
    """Owns the running :class:`pipeit.executor.Pipeline` (and the emulation throttles)."""

    def __init__(self, model_path: Union[str, Path], platform: Platform, *, slots: int = 4,
                 max_restarts: int = 3, drain_timeout_s: float = 60.0):
        self.model_path = Path(model_path)
        self.platform = platform
        self.slots = int(slots)
        self.max_restarts = int(max_restarts)
        self.drain_timeout_s = float(drain_timeout_s)
        self._mutex = threading.RLock()
        self._lock = threading.Condition(self._mutex)
        self._waiters = 0  # threads in wait_idle() or switch()'s drain (guarded by _lock)
        self._current: Optional[Generation] = None
        self._retired: Dict[int, Generation] = {}
        self._numbers = 0
        self._throttles: Any = None
        self._switching = threading.Lock()
        self._closed = False
        self._hide_speed = os.environ.get(HIDE_SPEED_ENV, "") not in ("", "0")
        self._copies: Dict[str, Path] = {}  # model sha256 -> the engine's copy of that model
        self._copy_dir: Optional[Path] = None

    # ---- life cycle ------------------------------------------------------------------
    def start(self, plan: Plan) -> Generation:
        """Enter the throttles (emulated platforms) and start the first pipeline."""
        if any(c.speed < 1.0 for c in self.platform.cpu_clusters):
            from cores.emulation import Throttles

            throttles = Throttles(self.platform)
            throttles.__enter__()
            self._throttles = throttles
        try:
            generation = self._launch(plan)
        except BaseException:
            self.close()
            raise
        with self._lock:
            self._current = generation
        return generation

    def _launch(self, plan: Plan) -> Generation:
        from pipeit.executor.pipeline import Pipeline

        # Given throttles are shared, not owned: the pipeline attaches every worker it spawns (restarts
        # and spread threads too) and leaves them in place on close; the engine closes them, once, at the end.
        began = time.monotonic()
        pipeline = Pipeline(plan, self._model_for(plan), slots=self.slots, max_restarts=self.max_restarts,
                            throttle=False, throttles=self._throttles)
        pipeline.start()
        self._numbers += 1
        now = time.monotonic()
        return Generation(self._numbers, plan, pipeline, now, start_s=now - began)

    def _model_for(self, plan: Plan) -> Path:
        """The engine's copy of the model ``plan`` was made for, copied from :attr:`model_path` the first
        time (and refused if that file is no longer the model the plan names)."""
        copy = self._copies.get(plan.model_sha256)
        if copy is not None and copy.is_file():
            return copy
        try:
            data = self.model_path.read_bytes()
        except OSError as err:
            raise PlanError(f"{self.model_path}: cannot read the model ({err.strerror or err})") from None
        if hashlib.sha256(data).hexdigest() != plan.model_sha256:
            raise PlanError(f"{self.model_path}: the file changed since it was planned for (sha256 "
                            f"{plan.model_sha256[:12]}...); send SIGHUP to load it again")
        if self._copy_dir is None:
            remove_orphans(MODEL_DIR_PREFIX)  # copies of daemons that were killed
            self._copy_dir = make_private_dir(MODEL_DIR_PREFIX)
        folder = self._copy_dir / plan.model_sha256[:16]
        folder.mkdir(exist_ok=True)
        copy = folder / self.model_path.name  # the same name as the user's file, in messages too
        copy.write_bytes(data)
        self._copies[plan.model_sha256] = copy
        return copy

    def _drop_copies_but(self, keep: Tuple[str, ...]) -> None:
        """Remove the copies of models no running pipeline was made for (after a switch)."""
        for sha in [s for s in self._copies if s not in keep]:
            shutil.rmtree(self._copies.pop(sha).parent, ignore_errors=True)

    def close(self) -> None:
        """Close every pipeline (their in-flight frames fail) and remove the throttles."""
        with self._lock:
            self._closed = True
            generations = ([self._current] if self._current else []) + list(self._retired.values())
            self._current = None
            self._retired.clear()
        for generation in generations:
            generation.pipeline.close()
        if self._copy_dir is not None:
            shutil.rmtree(self._copy_dir, ignore_errors=True)
            self._copy_dir, self._copies = None, {}
        if self._throttles is not None:
            throttles, self._throttles = self._throttles, None
            throttles.close()

    @property
    def throttles(self) -> Any:
        """The emulation throttles (None on real hardware): status shows their cgroups."""
        return self._throttles

    @property
    def speed_source(self) -> Any:
        """What reports each emulated cluster's speed now, for the monitor (see the module docstring);
        None on real hardware or where ``PIPEIT_HIDE_EMULATED_SPEED`` hides it."""
        return None if self._hide_speed else self._throttles

    # ---- frames ----------------------------------------------------------------------
    @property
    def current(self) -> Optional[Generation]:
        return self._current

    @property
    def inputs(self) -> Tuple[Any, ...]:
        generation = self._current
        if generation is None:
            raise ExecutorError("the daemon has no pipeline running")
        return tuple(generation.pipeline.inputs)

    def submit(self, inputs: Dict[str, Any]) -> Future:
        """Give one frame to the current pipeline (blocks while its first ring is full)."""
        generation = self._enter()
        try:
            future = generation.pipeline.submit(inputs)
        except BaseException:
            self._done(generation)
            raise
        future.add_done_callback(lambda _f, g=generation: self._done(g))
        return future

    def submit_into(self, fill: Any, on_done: Any = None) -> Future:
        """Like :meth:`submit`, the frame's inputs written by ``fill(views)`` straight into the ring slot.

        See :meth:`pipeit.executor.Pipeline.submit_into`; an error ``fill``
        raises propagates. ``on_done(future)`` is called once the frame is
        done, after the engine has counted it out (one callback per frame,
        not two: each costs a lock and several Python calls on the
        dispatcher's thread).
        """
        generation = self._enter()
        try:
            future = generation.pipeline.submit_into(fill)
        except BaseException:
            self._done(generation)
            raise
        return self._track(generation, future, on_done)

    def submit_area(self, area: Any, slot: int, on_done: Any = None) -> Optional[Future]:
        """A frame whose inputs are in slot ``slot`` of a client's frame area, read there by stage 0 (no copy).

        ``area`` is a :class:`pipeit.daemon.shm.FrameArea` the daemon made
        (it holds the segment's descriptor); each pipeline registers it on
        its first frame (:meth:`pipeit.executor.Pipeline.add_input_area`) and
        forgets it in :meth:`forget_area` or when it closes; the pipeline
        writes the outputs into the slot's output part. Returns None where
        the pipeline cannot read the area in place (its layout differs): the
        caller then copies the frame in (:meth:`submit_into`).
        """
        generation = self._enter()
        try:
            known = generation.areas.get(id(area))
            if known is None or known[0] is not area:
                known = (area, self._register(generation, area))
                with self._mutex:
                    generation.areas[id(area)] = known
            if known[1] is None:
                self._done(generation)
                return None
            future = generation.pipeline.submit_area(known[1], slot)
        except BaseException:
            self._done(generation)
            raise
        return self._track(generation, future, on_done)

    @staticmethod
    def _register(generation: Generation, area: Any) -> Optional[int]:
        layout = area.layout
        if area.fd is None:
            return None
        try:
            return generation.pipeline.add_input_area(area.fd, layout.slots, layout.slot_bytes,
                                                      {t.name: t.offset for t in layout.inputs}, area.outputs)
        except PipeitError as err:
            _log.info("pipeline %d copies frames from clients' areas: %s", generation.number, err)
            return None

    def forget_area(self, area: Any) -> None:
        """Every pipeline stops reading ``area`` (once its frames in flight are past stage 0)."""
        with self._mutex:
            gens = ([self._current] if self._current else []) + list(self._retired.values())
            found = [(g, g.areas.pop(id(area), None)) for g in gens]
        for generation, known in found:
            if known is not None and known[0] is area and known[1] is not None:
                generation.pipeline.remove_input_area(known[1])

    def _track(self, generation: Generation, future: Future, on_done: Any) -> Future:
        """Count the frame out of ``generation`` when done, then call ``on_done(future)`` (one callback)."""
        def done(f: Future, g: Generation = generation) -> None:
            self._done(g)
            if on_done is not None:
                on_done(f)

        future.add_done_callback(done)
        return future

    def _enter(self) -> Generation:
        """The current generation, with one more frame counted in (:meth:`_done` counts it out)."""
        with self._mutex:
            generation = self._current
            if generation is None:
                raise ExecutorError("the daemon has no pipeline running")
            generation.inflight += 1
            generation.submitted += 1
        return generation

    def _done(self, generation: Generation) -> None:
        with self._mutex:
            generation.inflight -= 1
            if self._waiters:  # only wait_idle() and switch() wait: no notify per frame otherwise
                self._lock.notify_all()

    def inflight(self) -> int:
        with self._lock:
            gens = ([self._current] if self._current else []) + list(self._retired.values())
            return sum(g.inflight for g in gens)

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no pipeline holds a frame; False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while True:
                gens = ([self._current] if self._current else []) + list(self._retired.values())
                if all(g.inflight == 0 for g in gens):
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._waiters += 1
                try:
                    self._lock.wait(min(left, 0.1))
                finally:
                    self._waiters -= 1

    # ---- switching -------------------------------------------------------------------
    def switch(self, plan: Plan) -> Tuple[Generation, Generation]:
        """Start a pipeline for ``plan``, swap it in, drain and close the old one; ``(old, new)``.

        Only one switch runs at a time. If the new pipeline cannot start,
        the old one keeps serving and the error propagates.
        """
        with self._switching:
            if self._closed:
                raise ExecutorError("the daemon is shutting down")
            _log.info("switch: starting pipeline %d while pipeline %d serves", self._numbers + 1,
                      self._current.number if self._current else 0)
            new = self._launch(plan)
            with self._lock:
                old = self._current
                refused = self._closed or old is None
                if not refused:
                    self._current = new
                    self._retired[old.number] = old
            if refused:
                new.pipeline.close()
                raise ExecutorError("the daemon is shutting down")
            _log.info("pipeline %d now serves (started in %.2f s while pipeline %d served); draining pipeline "
                      "%d (%d frame(s) in flight)", new.number, new.start_s, old.number, old.number, old.inflight)
            drain_began = time.monotonic()
            deadline = time.monotonic() + self.drain_timeout_s
            with self._lock:
                while old.inflight > 0 and time.monotonic() < deadline and old.pipeline.failed is None:
                    self._waiters += 1
                    try:
                        self._lock.wait(0.1)
                    finally:
                        self._waiters -= 1
                left = old.inflight
                self._retired.pop(old.number, None)
            if left:
                _log.warning("pipeline %d still held %d frame(s) after %.0f s; they fail", old.number, left,
                             self.drain_timeout_s)
            old.pipeline.close()
            _log.info("pipeline %d drained and closed in %.2f s", old.number, time.monotonic() - drain_began)
            with self._lock:
                running = [g for g in (self._current, *self._retired.values()) if g is not None]
            self._drop_copies_but(tuple(g.plan.model_sha256 for g in running))
            return old, new

    def restart_if_failed(self) -> Optional[str]:
        """A pipeline that gave up (a worker died too often) is replaced by a fresh one; the reason, or None."""
        generation = self._current
        if generation is None or generation.pipeline.failed is None:
            return None
        reason = f"pipeline {generation.number} failed: {generation.pipeline.failed}"
        _log.error("%s; starting a fresh one", reason)
        self.switch(generation.plan)
        return reason
