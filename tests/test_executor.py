"""The pipelined executor on real zoo models, real spawned processes, real pinning and shared memory.

Every output is compared bit for bit with the whole model run by one
interpreter: pipelines must not change a single bit. CPUs 0 and 1 are this
host's two cores; a 2-stage plan puts one stage on each.
"""

from __future__ import annotations

import glob
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import pytest

from cores.model import Cluster, Platform
from pipeit.errors import ExecutorError, InputError, PlanError
from pipeit.executor import Pipeline
from pipeit.executor.pipeline import WORKER_DEPTH
from pipeit.graph import load_graph
from pipeit.plan import Plan, StageSpec, WorkerSpec, file_sha256
from pipeit.runtime import invoke_frames, make_interpreter
from tests.fork_helpers import refused_in_a_fork

CPUS = tuple(sorted(os.sched_getaffinity(0)))
TWO = (CPUS[0], CPUS[-1])
pytestmark = pytest.mark.skipif(len(CPUS) < 2, reason="needs two CPUs")

BIG_LITTLE = Platform((Cluster("big", "host", (TWO[0],)), Cluster("little", "host", (TWO[1],))), source="test")
ONE_CLUSTER = Platform((Cluster("cpu", "host", TWO),), source="test")


def make_plan(model: Path, stages: Sequence[Tuple[Tuple[int, int], Sequence[Tuple[str, Tuple[int, ...]]]]],
              platform: Platform = BIG_LITTLE) -> Plan:
    specs = tuple(
        StageSpec(tuple(layers), tuple(WorkerSpec(c, tuple(cpus), len(cpus), 1.0) for c, cpus in workers), 100.0)
        for layers, workers in stages
    )
    # Not validated: a 3-stage plan on a 2-CPU host gives one CPU to two stages, which
    # plan validation refuses but the executor runs fine (the stages then share the core).
    return Plan(model.name, file_sha256(model), platform, "test", specs, 100.0, 10.0)


def small_two_stage(tmp_path: Path) -> Tuple[Path, Plan]:
    """A small conv model (16x16x8 input "image") split in two stages, one on each of two CPUs."""
    from tests.daemon_helpers import build_model

    model = build_model(tmp_path / "small.tflite", layers=2, size=16, channels=8)
    n = len(load_graph(model).layers)
    return model, make_plan(model, [((0, n // 2), [("big", (TWO[0],))]), ((n // 2, n), [("little", (TWO[1],))])])


def frames_for(model: Path, count: int, seed: int = 0) -> List[Dict[str, np.ndarray]]:
    detail = make_interpreter(model).get_input_details()[0]
    rng = np.random.default_rng(seed)
    dtype = np.dtype(detail["dtype"])
    out = []
    for _ in range(count):
        if dtype.kind == "f":
            value = rng.uniform(-1, 1, size=detail["shape"]).astype(dtype)
        else:
            value = rng.integers(-128, 128, size=detail["shape"]).astype(dtype)
        out.append({detail["name"]: value})
    return out


def reference(model: Path, frames: List[Dict[str, np.ndarray]]) -> List[Dict[str, np.ndarray]]:
    return invoke_frames(make_interpreter(model), frames)


def assert_identical(got: List[Dict[str, np.ndarray]], want: List[Dict[str, np.ndarray]]) -> None:
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert set(g) == set(w), f"frame {i}: output names differ"
        for name in w:
            assert g[name].dtype == w[name].dtype and g[name].shape == w[name].shape
            assert np.array_equal(g[name], w[name]), f"frame {i}: output {name!r} differs"


def residual_cuts(model: Path) -> Tuple[int, int]:
    """Cuts (c1, c2) such that a tensor made before c1 is read after c2: stage [c1, c2) must forward it."""
    graph = load_graph(model)
    cuts = {c.before: {t.name for t in c.tensors} for c in graph.cuts}
    for c1 in sorted(cuts):
        for c2 in range(c1 + 1, c1 + 3):
            if c2 in cuts and cuts[c1] & cuts[c2]:
                return c1, c2
    raise AssertionError("no residual crosses two cuts in this model")


@pytest.fixture(scope="module")
def v2(zoo_models) -> Path:
    return zoo_models("mobilenet_v2")


@pytest.fixture(scope="module")
def v2_frames(v2) -> Tuple[List[Dict[str, np.ndarray]], List[Dict[str, np.ndarray]]]:
    frames = frames_for(v2, 6)
    return frames, reference(v2, frames)


class TestPipelineOutputs:
    def test_three_stages_with_a_forwarded_residual_are_bit_identical_and_ordered(self, v2, v2_frames):
        from cores.pinning import thread_affinities

        frames, want = v2_frames
        n = len(load_graph(v2).layers)
        c1, c2 = residual_cuts(v2)
        plan = make_plan(v2, [((0, c1), [("big", (TWO[0],))]), ((c1, c2), [("little", (TWO[1],))]),
                              ((c2, n), [("big", (TWO[0],))])])
        order = [i % len(frames) for i in range(15)]
        with Pipeline(plan, v2) as pipe:
            assert pipe.routes[1].forwards, "the middle stage should forward the residual"
            got = list(pipe.map(frames[i] for i in order))
            # pinned before anything heavy was imported, and every thread stays on its CPUs
            assert all(not heavy for heavy in pipe.heavy_before_pin().values())
            for (stage, _), pid in pipe.worker_pids().items():
                expected = (TWO[0],) if stage != 1 else (TWO[1],)
                affinities = thread_affinities(pid)
                assert affinities and set(affinities.values()) == {expected}
            stats = pipe.stats()
        assert_identical(got, [want[i] for i in order])
        assert stats.frames == 15 and stats.fps > 0
        assert [s.frames for s in stats.stages] == [15, 15, 15]
        assert all(s.measured_ms and s.measured_ms > 0 for s in stats.stages)
        assert stats.latency_p50_ms <= stats.latency_p99_ms

    def test_tensors_named_alike_are_handed_over_under_their_new_names(self, tmp_path):
        """Two activations named "a", the first forwarded past a stage: the plan was made, and `run`
        refused it (stages exchange tensors by name); the split now renames them for the hand-over."""
        from pipeit.modelfile import read_model, serialize_model
        from tests.test_split import two_branch_builder

        model = read_model(two_branch_builder().to_bytes())
        for tensor in model.subgraphs[0].tensors:
            if tensor.name == b"b":
                tensor.name = b"a"
        path = tmp_path / "alike.tflite"
        path.write_bytes(serialize_model(model))
        n = len(load_graph(path).layers)
        plan = make_plan(path, [((0, 2), [("big", (TWO[0],))]), ((2, 3), [("little", (TWO[1],))]),
                                ((3, n), [("big", (TWO[0],))])])
        frames = frames_for(path, 4)
        with Pipeline(plan, path) as pipe:
            assert pipe.routes[1].forwards, "the middle stage should forward the first 'a'"
            got = list(pipe.map(frames))
        assert_identical(got, reference(path, frames))

    def test_int8_two_stages_are_bit_identical(self, zoo_models):
        model = zoo_models("mobilenet_v2", int8=True)
        frames = frames_for(model, 4, seed=1)
        n = len(load_graph(model).layers)
        plan = make_plan(model, [((0, n // 2), [("big", (TWO[0],))]), ((n // 2, n), [("little", (TWO[1],))])])
        with Pipeline(plan, model) as pipe:
            got = list(pipe.map(frames + frames, inflight=2))
            with pytest.raises(ExecutorError, match="inflight"):
                list(pipe.map(frames, inflight=0))
        assert_identical(got, reference(model, frames + frames))

    def test_two_workers_on_one_stage_share_frames_and_keep_order(self, v2, v2_frames):
        frames, want = v2_frames
        n = len(load_graph(v2).layers)
        plan = make_plan(v2, [((0, n), [("cpu", (TWO[0],)), ("cpu", (TWO[1],))])], ONE_CLUSTER)
        order = [i % len(frames) for i in range(24)]
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        stale = Path(tempfile.gettempdir()) / f"pipeit-stages-{dead.pid}-test"
        stale.mkdir(exist_ok=True)
        mine = f"{tempfile.gettempdir()}/pipeit-stages-{os.getpid()}-*"
        with Pipeline(plan, v2) as pipe:
            assert not stale.exists()  # left by a killed run: removed on start
            assert len(glob.glob(mine)) == 1
            futures = [pipe.submit(frames[i]) for i in order]
            got = [f.result(60) for f in futures]
            stats = pipe.stats()
        assert glob.glob(mine) == []
        assert_identical(got, [want[i] for i in order])
        assert sum(stats.stages[0].worker_frames) == 24
        assert all(count > 0 for count in stats.stages[0].worker_frames), stats.stages[0].worker_frames


class TestFutures:
    """What a Python caller may do with the Futures: cancel one, chain work in a done-callback."""

    def test_a_cancelled_future_drops_its_output_and_every_other_frame_completes(self, v2, v2_frames):
        """set_result on the cancelled Future raised in the dispatcher: the pipeline failed, and the frames
        done in the same batch were never resolved."""
        frames, want = v2_frames
        n = len(load_graph(v2).layers)
        plan = make_plan(v2, [((0, n), [("cpu", (TWO[0],)), ("cpu", (TWO[1],))])], ONE_CLUSTER)
        with Pipeline(plan, v2, slots=8) as pipe:
            # the workers are stopped while the frames go in, so none is done before it is cancelled (a
            # clean-clone run once finished frame 3 before the loop ended); 8 slots: no submit waits on them
            pids = list(pipe.worker_pids().values())
            for pid in pids:
                os.kill(pid, signal.SIGSTOP)
            try:
                futures = [pipe.submit(frames[i % len(frames)]) for i in range(8)]
                assert futures[-1].cancel() and futures[3].cancel()
            finally:
                for pid in pids:
                    os.kill(pid, signal.SIGCONT)
            kept = [i for i in range(8) if i not in (3, 7)]
            got = [futures[i].result(60) for i in kept]
            after = pipe.run(frames[0], timeout=60)  # the pipeline goes on
        assert_identical(got + [after], [want[i % len(frames)] for i in kept] + [want[0]])

    def test_a_done_callback_may_submit_but_never_waits_on_the_pipeline(self, v2, v2_frames):
        """Callbacks run on the dispatcher's thread: a submit there that waited for a slot waited for that
        very thread, and the pipeline stopped for good."""
        frames, want = v2_frames
        n = len(load_graph(v2).layers)
        plan = make_plan(v2, [((0, n), [("cpu", (TWO[0],))])], ONE_CLUSTER)
        outcomes: List[object] = []
        chained: List = []

        def chain(_future) -> None:
            for _ in range(12):  # more than the first ring's free slots: the later ones are refused, not waited for
                try:
                    chained.append(pipe.submit(frames[1]))
                    outcomes.append("queued")
                except ExecutorError as err:
                    outcomes.append(str(err))
            try:
                pipe.run(frames[1])
            except ExecutorError as err:
                outcomes.append(str(err))

        with Pipeline(plan, v2, slots=1) as pipe:
            first = pipe.submit(frames[0])
            first.add_done_callback(chain)
            assert_identical([first.result(60)], [want[0]])
            deadline = time.monotonic() + 60
            while len(outcomes) < 13 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert outcomes[0] == "queued", outcomes
            assert any("done-callback found every slot" in str(o) for o in outcomes[1:12]), outcomes
            assert "run() from a Future's done-callback" in str(outcomes[12]), outcomes
            assert_identical([f.result(60) for f in chained] + [pipe.run(frames[2], timeout=60)],
                             [want[1]] * len(chained) + [want[2]])


class TestFaults:
    def test_kill_9_of_a_stage_worker_mid_stream_loses_no_frame(self, v2, v2_frames):
        frames, want = v2_frames
        n = len(load_graph(v2).layers)
        plan = make_plan(v2, [((0, 10), [("big", (TWO[0],))]), ((10, n), [("little", (TWO[1],))])])
        order = [i % len(frames) for i in range(30)]
        with Pipeline(plan, v2) as pipe:
            victim = pipe.worker_pids()[(1, 0)]
            futures = [pipe.submit(frames[i]) for i in order[:8]]
            _kill_while_busy(pipe, (1, 0))
            futures += [pipe.submit(frames[i]) for i in order[8:]]
            got = [f.result(120) for f in futures]
            stats = pipe.stats()
            assert pipe.worker_pids()[(1, 0)] != victim
        assert_identical(got, [want[i] for i in order])
        assert stats.stages[1].restarts == 1 and stats.stages[0].restarts == 0
        # the frames it held (the one it served and the one queued behind it) went to its successor
        assert 1 <= stats.stages[1].redispatched <= WORKER_DEPTH

    def test_a_worker_that_keeps_dying_stops_the_pipeline_with_a_clear_error(self, v2, v2_frames):
        frames, _ = v2_frames
        n = len(load_graph(v2).layers)
        plan = make_plan(v2, [((0, 10), [("big", (TWO[0],))]), ((10, n), [("little", (TWO[1],))])])
        with Pipeline(plan, v2, max_restarts=1) as pipe:
            futures = [pipe.submit(frames[0]) for _ in range(3)]
            futures[-1].result(60)
            victim = pipe.worker_pids()[(1, 0)]
            os.kill(victim, signal.SIGKILL)
            futures = [pipe.submit(frames[0]) for _ in range(3)]
            deadline = time.monotonic() + 60
            while pipe.worker_pids().get((1, 0), victim) == victim and time.monotonic() < deadline:
                time.sleep(0.02)
            os.kill(pipe.worker_pids()[(1, 0)], signal.SIGKILL)
            with pytest.raises(ExecutorError, match=r"stage 1 worker 0 .* died 2 times.* not done: 3-5"):
                futures[-1].result(60)
            with pytest.raises(ExecutorError):
                pipe.submit(frames[0])
            pids = list(pipe.worker_pids().values())
        for pid in pids:  # closing still ends every worker
            assert not _alive(pid)


def _kill_while_busy(pipe: Pipeline, key: Tuple[int, int]) -> None:
    """SIGKILL a worker that certainly holds a frame: stop it, let pending replies land, check, kill."""
    pid = pipe.worker_pids()[key]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        os.kill(pid, signal.SIGSTOP)
        time.sleep(0.1)  # a reply sent before the stop reaches the dispatcher meanwhile
        if pipe.worker_states()[key] == "busy":
            os.kill(pid, signal.SIGKILL)
            return
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.01)
    raise AssertionError("the worker never held a frame")


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class TestRefusals:
    def test_wrong_shape_or_dtype_is_an_input_error(self, v2, v2_frames):
        frames, _ = v2_frames
        (name, value), = frames[0].items()
        n = len(load_graph(v2).layers)
        plan = make_plan(v2, [((0, n), [("big", (TWO[0],))])])
        with Pipeline(plan, v2) as pipe:
            with pytest.raises(InputError, match="takes"):
                pipe.submit({name: value[:, :100]})
            with pytest.raises(InputError, match="float32"):
                pipe.submit({name: value.astype(np.float64)})
            with pytest.raises(InputError, match="do not match"):
                pipe.submit({"nope": value})
            with pytest.raises(InputError, match="do not match"):  # a key that is no name at all
                pipe.submit({name: value, 1: value})
            assert_identical([pipe.run(frames[0], 60)], reference(v2, frames[:1]))  # still usable
        with pytest.raises(ExecutorError, match="not running"):
            next(pipe.map(frames))
        with pytest.raises(ExecutorError, match="closed"):
            pipe.start()

    def test_a_pipeline_never_closed_is_closed_at_exit(self, v2, tmp_path):
        """A script that forgets close(): workers stop, rings and stage files go, nothing restarts."""
        n = len(load_graph(v2).layers)
        plan_path = tmp_path / "plan.json"
        make_plan(v2, [((0, n // 2), [("big", (TWO[0],))]), ((n // 2, n), [("little", (TWO[1],))])]).save(plan_path)
        script = (
            "import sys, numpy as np\n"
            "from pipeit.executor import Pipeline\n"
            "from pipeit.plan import load_plan\n"
            f"p = Pipeline(load_plan({str(plan_path)!r}), {str(v2)!r}).start()\n"
            "x = np.zeros(p.inputs[0].shape, np.float32)\n"
            "p.run({p.inputs[0].name: x}, 60)\n"
            "print(*(w.process.pid for w in p._all_workers()))\n"
        )
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert "Traceback" not in err and "leaked" not in err, err
        workers = [int(pid) for pid in out.split()]
        assert len(workers) == 2
        time.sleep(0.5)
        assert not [pid for pid in workers if _alive(pid)]
        assert not glob.glob(f"/dev/shm/pipeit_{proc.pid}_*")
        assert not glob.glob(os.path.join(tempfile.gettempdir(), f"pipeit-stages-{proc.pid}-*"))

    def test_a_model_whose_hash_differs_from_the_plan_is_refused(self, v2, tmp_path):
        n = len(load_graph(v2).layers)
        plan = make_plan(v2, [((0, n), [("big", (TWO[0],))])])
        other = tmp_path / v2.name
        data = bytearray(v2.read_bytes())
        data[-1] ^= 0xFF
        other.write_bytes(bytes(data))
        with pytest.raises(PlanError, match="sha256"):
            Pipeline(plan, other).start()

    def test_cpus_this_host_lacks_are_refused_before_anything_starts(self, v2):
        n = len(load_graph(v2).layers)
        far = Platform((Cluster("big", "host", (4096,)),), source="test")
        plan = make_plan(v2, [((0, n), [("big", (4096,))])], far)
        with pytest.raises(ExecutorError, match="4096"):
            Pipeline(plan, v2).start()


class TestEmulatedPlatform:
    def test_a_worker_on_a_slowed_cluster_is_slow_even_after_idling_and_needs_no_cgroup(self, tmp_path):
        """A slow core is slow whether or not it idled: each frame sent alone, after a pause, takes
        1/f of the big core's time on the half-speed cluster. The job (~1 ms) is shorter than a 5 ms
        period's quota at 0.5, so under the old CPU quota it ran at full speed after each pause (measured:
        ratio 1.03); padded, 1.8 here and 1.65 on the CI machine: the copies in and out of the rings are
        not padded, and their share of a 1 ms service differs between hosts. The bound sits between the two
        behaviours, not at the ideal 2."""
        from tests.daemon_helpers import build_model

        model = build_model(tmp_path / "one_ms.tflite", layers=4, size=32, channels=32)
        frame = {"image": np.random.default_rng(1).standard_normal((1, 32, 32, 32)).astype(np.float32)}
        want = reference(model, [frame])[0]
        slow = Platform((Cluster("big", "host", (TWO[0],)), Cluster("little", "host", (TWO[1],), speed=0.5)),
                        source="emulate:test")
        n = len(load_graph(model).layers)
        pipes = {cluster: Pipeline(make_plan(model, [((0, n), [(cluster, (cpu,))])], slow), model)
                 for cluster, cpu in (("big", TWO[0]), ("little", TWO[1]))}
        service = {cluster: [] for cluster in pipes}
        try:
            for pipe in pipes.values():
                pipe.start()
                assert pipe.throttles is None  # padding alone: no cgroup made, no privilege needed
            for _ in range(5):  # alternating rounds: a burst of host noise spoils a round or two, not the ratio
                for cluster, pipe in pipes.items():
                    pipe.submit(frame).result(timeout=30)
                    pipe.reset_stats()
                    for _ in range(12):
                        time.sleep(0.02)  # the worker idles between frames
                        assert_identical([pipe.submit(frame).result(timeout=30)], [want])
                    service[cluster].append(pipe.stats().stages[0].measured_ms)
        finally:
            for pipe in pipes.values():
                pipe.close()
        # the median round of each: two rounds spoiled either way (a burst of host noise, or a round run while
        # the host's other load paused: a big-core round of 0.84 ms among 1.55s once broke the bound; with three
        # rounds, big 0.94, 1.52, 1.35 against little 1.65-1.75 did too) move neither side
        ratio = statistics.median(service["little"]) / statistics.median(service["big"])
        print(f"little/big service ratio {ratio:.2f} ({service})")
        assert 1.5 <= ratio <= 2.3, service

    def test_an_interpreter_over_both_clusters_has_only_its_slow_cpu_threads_throttled(self, v2, v2_frames):
        """All-cores on an emulated board: threads are spread one per CPU, and only those
        on the slowed cluster's CPU join its cgroup, so the layer waits for its slow thread."""
        from cores.emulation import find_cgroup_root
        from cores.errors import EmulationError

        try:
            root = find_cgroup_root()
        except EmulationError as err:
            pytest.skip(f"cgroups cannot be written here: {err}")
        if root.version != 1:
            pytest.skip("per-thread throttling needs cgroup v1")
        frames, want = v2_frames
        slow = Platform((Cluster("big", "host", (TWO[0],)), Cluster("little", "host", (TWO[1],), speed=0.5)),
                        source="emulate:test")
        n = len(load_graph(v2).layers)
        spec = StageSpec((0, n), (WorkerSpec("big+little", TWO, 2, 1.0),), 100.0)
        plan = Plan(v2.name, file_sha256(v2), slow, "all-cores", (spec,), 100.0, 10.0)
        with Pipeline(plan, v2) as pipe:
            group = os.path.basename(pipe.throttles.cgroup_path("little"))
            pid = pipe.worker_pids()[(0, 0)]
            placed = {}
            for task in Path(f"/proc/{pid}/task").iterdir():
                status = (task / "status").read_text()
                allowed = next(l.split(":")[1].strip() for l in status.splitlines() if l.startswith("Cpus_allowed_list"))
                placed[int(task.name)] = (allowed, group in (task / "cgroup").read_text())
            got = list(pipe.map(frames))
        on_little = [throttled for allowed, throttled in placed.values() if allowed == str(TWO[1])]
        on_big = [throttled for allowed, throttled in placed.values() if allowed == str(TWO[0])]
        assert on_little and all(on_little), placed
        assert on_big and not any(on_big), placed
        assert_identical(got, want)


def test_stats_count_every_frame_but_keep_only_the_recent_samples(tmp_path):
    """A run of 10**9 frames must not keep a float per frame: the percentiles come from the last
    ``stats_window`` frames, while the counts and the fps cover the whole run."""
    model, plan = small_two_stage(tmp_path)
    frame = np.random.default_rng(0).standard_normal((1, 16, 16, 8)).astype(np.float32)
    with pytest.raises(ExecutorError, match="stats_window"):
        Pipeline(plan, model, stats_window=0)
    with Pipeline(plan, model, stats_window=40) as pipe:
        outs = list(pipe.map(frame for _ in range(150)))
        stats = pipe.stats()
        kept = len(pipe._latencies), [len(s) for s in pipe._service]  # noqa: SLF001 -- the bound itself
    assert len(outs) == 150
    assert stats.frames == 150 and [s.frames for s in stats.stages] == [150, 150]
    assert [sum(s.worker_frames) for s in stats.stages] == [150, 150]
    assert kept == (40, [40, 40])
    assert stats.latency_p50_ms is not None and stats.latency_p50_ms > 0
    assert all(s.measured_ms is not None and s.measured_ms > 0 for s in stats.stages)


def test_arguments_a_pipeline_cannot_use_are_refused_and_it_stays_usable(tmp_path):
    """A negative lead_ms left a gated frame at the door for good, and every frame after it behind it;
    a string one failed the whole pipeline from inside the dispatcher. slots=0 was taken silently."""
    import pickle

    model, plan = small_two_stage(tmp_path)
    frame = {"image": np.random.default_rng(1).standard_normal((1, 16, 16, 8)).astype(np.float32)}
    for bad in ({"slots": 0}, {"slots": 2.5}, {"start_timeout_s": float("nan")}, {"start_timeout_s": -1}):
        with pytest.raises(ExecutorError, match=next(iter(bad))):
            Pipeline(plan, model, **bad)
    with Pipeline(plan, model) as pipe:
        want = pipe.run(frame, timeout=60)
        for lead in (-5, float("nan"), float("inf"), "x", None):
            with pytest.raises(ExecutorError, match="lead_ms"):
                pipe.submit(frame, gated=True, lead_ms=lead)
            with pytest.raises(ExecutorError, match="lead_ms"):
                pipe.stream([frame] * 3, 2, gated=True, lead_ms=lead)
        assert pipe.failed is None
        np.testing.assert_array_equal(pipe.submit(frame, gated=True, lead_ms=0).result(60)["fc"], want["fc"])
        with pytest.raises(TypeError, match="cannot be pickled"):
            pickle.dumps(pipe)


def test_a_forked_child_neither_drives_nor_stops_the_parents_pipeline(tmp_path):
    """The child shares the workers' sockets: its close() stopped the parent's workers, and its submit()
    sent them a frame whose answer reached the parent ("answered frame 1 it was not given")."""
    model, plan = small_two_stage(tmp_path)
    frame = {"image": np.random.default_rng(2).standard_normal((1, 16, 16, 8)).astype(np.float32)}
    with Pipeline(plan, model) as pipe:
        want = pipe.run(frame, timeout=60)
        # the child: refused, then closes what it thinks is its pipeline, and leaves
        assert refused_in_a_fork(lambda: pipe.submit(frame), pipe.close) == 0
        for _ in range(5):
            np.testing.assert_array_equal(pipe.run(frame, timeout=60)["fc"], want["fc"])
        assert pipe.failed is None and all(s.restarts == 0 for s in pipe.stats().stages)


def test_an_input_area_past_the_descriptor_limit_is_an_executor_error(tmp_path):
    """os.dup's OSError went past the daemon, which answers only PipeitError: the frame got no reply and
    its connection hung for the drain timeout."""
    import resource

    from tests.daemon_helpers import build_model

    model = build_model(tmp_path / "small.tflite", layers=2, size=16, channels=8)
    n = len(load_graph(model).layers)
    plan = make_plan(model, [((0, n), [("big", (TWO[0],))])])
    with Pipeline(plan, model) as pipe:
        stride = pipe.edges[0].slot_bytes
        fd = os.memfd_create("area")
        try:
            os.ftruncate(fd, 2 * stride)
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (3, hard))  # every descriptor number is past it
            try:
                with pytest.raises(ExecutorError, match="cannot keep the input area: Too many open files"):
                    pipe.add_input_area(fd, 2, stride, pipe.input_offsets())
            finally:
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        finally:
            os.close(fd)
        assert pipe.failed is None
