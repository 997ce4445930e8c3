"""The measured choice of pipeit's plan among planned candidates (pipeit.trial), on real pipelines."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from cores.platform import load_platform
from pipeit.dse import pareto_front, plan_pipeline, to_plan
from pipeit.errors import PlanError
from pipeit.layer_times import LayerTimes
from pipeit.trial import LATENCY_HEADROOM, LATENCY_SLACK, TrialRun, _pick, choose_by_trial, trial_candidates
from tests.daemon_helpers import write_times
from tests.host_helpers import needs_cgroups


@pytest.fixture(scope="module")
def tiny(bench_model):
    return bench_model


@pytest.fixture(scope="module")
def plans(tiny, tmp_path_factory):
    """Every strategy's plan for the tiny model on two equal clusters, from synthetic times."""
    platform = load_platform("auto")
    path = write_times(tiny, "auto", tmp_path_factory.mktemp("times") / "t.json", ms=0.4)
    times = LayerTimes.load(path)
    from pipeit.plan import file_sha256

    sha = file_sha256(tiny)
    out = {name: plan_pipeline(times, platform, strategy=name, model=tiny.name, model_sha256=sha)
           for name in ("pipeit", "all-cores", "fastest-cluster", "replicas", "pipe-it")}
    return platform, times, out


def test_candidates_start_with_the_dse_pick_and_are_distinct_pipelines(plans):
    _platform, _times, by = plans
    others = {n: p for n, p in by.items() if n != "pipeit"}
    found = trial_candidates(by["pipeit"], others)
    assert found[0] == ("pipeit", by["pipeit"])
    shapes = [tuple((s.layers, tuple((w.cluster, w.cpus, w.threads) for w in s.workers)) for s in p.stages)
              for _l, p in found]
    assert len(shapes) == len(set(shapes))  # all-cores == fastest-cluster on one cluster: tried once
    assert len(found) < 1 + len(others)
    assert len(trial_candidates(by["pipeit"], others, limit=2)) == 2
    with pytest.raises(PlanError):
        trial_candidates(by["pipeit"], others, limit=0)


def test_front_plans_beyond_the_slack_are_left_out(plans, tiny):
    platform, times, by = plans
    front = [to_plan(c, platform, strategy="pipeit", model=tiny.name, model_sha256="")
             for c in pareto_front(times, platform)]
    assert front
    fastest = min(p.predicted_latency_ms for p in front)
    tight = fastest / LATENCY_SLACK * 0.999  # every front plan is predicted beyond the slack of this limit
    assert [label for label, _p in trial_candidates(by["pipeit"], {}, front, latency_ms=tight)] == ["pipeit"]
    loose = [label for label, _p in trial_candidates(by["pipeit"], {}, front, latency_ms=10 * fastest)]
    assert len(loose) >= 1 and all(label == "pipeit" or label.startswith("front") for label in loose)


def _run(plan, label, fps, p99, limit=None, rounds=()):
    return TrialRun(label, plan, fps, p99, None if limit is None else p99 <= limit, fps_rounds=tuple(rounds))


def test_the_dse_pick_stays_unless_beaten_by_the_margin_and_the_limit_decides_first(plans):
    _platform, _times, by = plans
    a, b = by["pipeit"], by["all-cores"]
    # within the margin: the DSE's pick stays (noise must not swap plans)
    assert _pick((_run(a, "pipeit", 100.0, 10.0), _run(b, "all-cores", 102.0, 9.0)), None, 0.03).label == "pipeit"
    # clearly faster: the other is taken, and the reason says so
    chosen = _pick((_run(a, "pipeit", 100.0, 10.0), _run(b, "all-cores", 110.0, 9.0)), None, 0.03)
    assert chosen.label == "all-cores" and chosen.chosen is b and "110.0" in chosen.reason
    # under a limit, a faster plan that missed it is never taken while one meets it
    runs = (_run(a, "pipeit", 100.0, 12.0, limit=11.0), _run(b, "all-cores", 80.0, 10.0, limit=11.0))
    chosen = _pick(runs, 11.0, 0.03)
    assert chosen.label == "all-cores" and "missed the limit" in chosen.reason
    # none meets it: the one closest to the limit
    runs = (_run(a, "pipeit", 100.0, 14.0, limit=11.0), _run(b, "all-cores", 80.0, 12.0, limit=11.0))
    assert _pick(runs, 11.0, 0.03).label == "all-cores"


def test_under_a_limit_a_plan_met_with_room_wins_over_one_that_met_it_by_a_hair(plans):
    _platform, _times, by = plans
    a, b, c = by["pipeit"], by["all-cores"], by["replicas"]
    limit = 100.0
    edge = (1.0 - LATENCY_HEADROOM) * limit
    # the DSE's pick met the limit with room; a faster one only just: the pick stays
    runs = (_run(a, "pipeit", 14.5, 90.0, limit=limit), _run(b, "front 4", 14.8 * 1.1, edge + 1.0, limit=limit))
    assert _pick(runs, limit, 0.01).label == "pipeit"
    # the DSE's pick met it by a hair, another with room: that one, and the reason says why
    runs = (_run(a, "pipeit", 15.0, edge + 1.0, limit=limit), _run(b, "all-cores", 12.0, 60.0, limit=limit))
    chosen = _pick(runs, limit, 0.01)
    assert chosen.label == "all-cores" and "to spare" in chosen.reason
    # none with room: the fastest that met it, as before
    runs = (_run(a, "pipeit", 15.0, edge + 1.0, limit=limit), _run(c, "replicas", 17.0, edge + 2.0, limit=limit))
    assert _pick(runs, limit, 0.01).label == "replicas"
    # without a limit there is no headroom to keep
    runs = (_run(a, "pipeit", 15.0, 500.0), _run(b, "all-cores", 17.0, 900.0))
    assert _pick(runs, None, 0.01).label == "all-cores"


def test_under_a_limit_the_plain_plan_with_the_lowest_predicted_latency_is_always_tried(plans, tiny):
    """Even when the count is used up by the DSE's pick and the front, the plain strategy predicted to have
    the lowest latency is tried (as itself or as a plan of its shape) when it is predicted to meet the limit."""
    platform, times, by = plans
    front = [to_plan(cand, platform, strategy="pipeit", model=tiny.name, model_sha256="")
             for cand in pareto_front(times, platform)]
    others = {n: p for n, p in by.items() if n != "pipeit"}
    net = min(others.values(), key=lambda p: (p.predicted_latency_ms, -p.predicted_fps))
    for limit in (net.predicted_latency_ms * 1.0001, 10 * max(p.predicted_latency_ms for p in others.values())):
        found = trial_candidates(by["pipeit"], others, front, latency_ms=limit, limit=1)
        assert found[0] == ("pipeit", by["pipeit"])
        assert net.shape in {p.shape for _label, p in found}
        assert len(found) <= 2
    # nothing predicted to meet the limit: no safety net, the count holds
    found = trial_candidates(by["pipeit"], others, front, latency_ms=net.predicted_latency_ms / 2, limit=1)
    assert [label for label, _p in found] == ["pipeit"]
    # no limit: the count holds
    assert len(trial_candidates(by["pipeit"], others, front, limit=1)) == 1


def test_trial_runs_real_pipelines_and_closes_them(plans, tiny):
    from pipeit.bench import make_frames

    _platform, _times, by = plans
    candidates = trial_candidates(by["pipeit"], {n: p for n, p in by.items() if n != "pipeit"})
    started = []

    def start(plan):
        from pipeit.executor import Pipeline

        pipe = Pipeline(plan, tiny, slots=4).start()
        started.append(pipe)
        return pipe

    result = choose_by_trial(candidates, tiny, make_frames(tiny, 12), rounds=2, start=start)
    assert len(result.runs) == len(candidates) == len(started)
    assert all(r.fps > 0 and r.p99_ms > 0 and r.meets_limit is None for r in result.runs)
    # each round's fps is kept (the report shows whether a median came from steady rounds)
    assert all(len(r.fps_rounds) == 2 and r.fps == pytest.approx(sum(r.fps_rounds) / 2) for r in result.runs)
    assert result.label in [label for label, _p in candidates]
    assert any(result.chosen is p for _l, p in candidates)
    # every pipeline was closed: its workers are gone
    for pipe in started:
        assert all(not pid or not _alive(pid) for pid in pipe.worker_pids().values())
    assert json.loads(json.dumps(result.to_json()))["chosen"] == result.label


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_bench_reports_the_trial_and_the_dse_pick(tiny, bench_cache):
    result = subprocess.run(
        [sys.executable, "-m", "pipeit", "bench", str(tiny), "--platform", "auto", "--frames", "16", "--rounds", "1",
         "--cache-dir", str(bench_cache), "--trial-seconds", "0.25", "--json"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    # each candidate streamed a quarter second of frames at the DSE pick's predicted rate per round
    rate = doc["proposed"]["predicted_fps"]
    assert doc["trial"]["seconds_per_round"] == 0.25
    assert doc["trial"]["frames_per_round"] == min(2000, max(20, 16 // 2, math.ceil(0.25 * rate)))
    assert doc["trial"]["chosen"] in {"pipeit", "all-cores", "fastest-cluster", "replicas", "pipe-it"} or \
        doc["trial"]["chosen"].startswith("front")
    assert len(doc["trial"]["runs"]) >= 2 and doc["proposed"]["predicted_fps"] > 0
    ours = next(s for s in doc["strategies"] if s["name"] == "pipeit")
    chosen = next(r for r in doc["trial"]["runs"] if r["label"] == doc["trial"]["chosen"])
    # the plan pipeit streamed in the rounds is the one the trial chose
    assert " | ".join(f"[{s['layers'][0]},{s['layers'][1]}) " + "+".join(w.split("@")[0] for w in s["workers"])
                      for s in ours["stages"]) == chosen["stages"]


@needs_cgroups
def test_trial_under_a_latency_limit_on_two_clusters_keeps_a_plan_that_met_it_when_one_did(tiny, bench_cache):
    """Two clusters: the frame feed is pinned to the slower one, the trial's workers to theirs."""
    result = subprocess.run(
        [sys.executable, "-m", "pipeit", "bench", str(tiny), "--platform", "emulate:big=0@1.0,little=1@0.5",
         "--frames", "16", "--rounds", "1", "--latency-x", "3", "--cache-dir", str(bench_cache), "--trial-seconds", "0.3",
         "--strategies", "fastest-cluster,replicas,pipeit", "--json"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    runs = doc["trial"]["runs"]
    chosen = next(r for r in runs if r["label"] == doc["trial"]["chosen"])
    if any(r["meets_limit"] for r in runs):
        assert chosen["meets_limit"] is True
    else:
        assert chosen["p99_ms"] == min(r["p99_ms"] for r in runs)
    ours = next(s for s in doc["strategies"] if s["name"] == "pipeit")
    assert ours["meets_limit"] is not None


def test_the_baseline_is_tried_whatever_the_count_unless_predicted_beyond_the_slack(plans):
    _platform, _times, by = plans
    base = next(p for n, p in by.items() if n != "pipeit" and p.shape != by["pipeit"].shape)
    others = {"all-cores": by["all-cores"], "pipe-it": base}
    loose = 10 * base.predicted_latency_ms
    found = trial_candidates(by["pipeit"], others, latency_ms=loose, limit=1, baseline="pipe-it")
    assert found[0][0] == "pipeit" and base.shape in {p.shape for _label, p in found}
    found = trial_candidates(by["pipeit"], others, limit=1, baseline="pipe-it")  # no limit: tried as well
    assert [label for label, _p in found] == ["pipeit", "pipe-it"]
    beyond = base.predicted_latency_ms / LATENCY_SLACK * 0.999
    found = trial_candidates(by["pipeit"], others, latency_ms=beyond, limit=1, baseline="pipe-it")
    assert "pipe-it" not in [label for label, _p in found]
