"""``pipeit plan`` end to end on a real zoo model: plan file, limits, errors (exit 2), plot."""

from __future__ import annotations

import json

import pytest

from cores.platform import load_platform
from pipeit.graph import load_graph
from pipeit.layer_times import LayerTimes
from pipeit.plan import file_sha256, load_plan

SPEC = "emulate:big=0@1.0,little=1@0.4"


@pytest.fixture(scope="module")
def model_and_times(zoo_models, tmp_path_factory):
    model = zoo_models("squeezenet")
    graph = load_graph(model)
    platform = load_platform(SPEC)
    times = LayerTimes.from_graph(
        graph, platform.setups(),
        lambda i, s: graph.layers[i].descriptor.macs / (3e8 * platform.cluster(s.cluster).speed) + 0.02,
    )
    path = tmp_path_factory.mktemp("plan") / "times.json"
    times.save(path)
    return model, path


@pytest.fixture
def pipeit(pipeit_in_process):
    """``pipeit plan`` in this process: planning starts no worker, and the entry point is tested elsewhere."""
    return pipeit_in_process


def test_plan_writes_a_valid_plan(pipeit, model_and_times, tmp_path):
    model, times = model_and_times
    out = tmp_path / "plan.json"
    done = pipeit("plan", model, "--platform", SPEC, "--times", times, "-o", out, "--json", "--pareto")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    plan = load_plan(out)
    assert doc["predicted"]["fps"] == pytest.approx(plan.predicted_fps)
    assert plan.model_sha256 == file_sha256(model)
    assert plan.strategy == "pipeit" and plan.stages[-1].layers[1] == len(load_graph(model).layers)
    front = doc["pareto"]
    assert front[0]["fps"] == pytest.approx(plan.predicted_fps)
    assert all(a["latency_ms"] > b["latency_ms"] for a, b in zip(front, front[1:]))


def test_latency_limit_and_plot(pipeit, model_and_times, tmp_path):
    model, times = model_and_times
    out = tmp_path / "plan.json"
    png = tmp_path / "timeline.png"
    free = pipeit("plan", model, "--platform", SPEC, "--times", times, "-o", out, "--json")
    limit = json.loads(free.stdout)["predicted"]["latency_ms"] * 0.7
    done = pipeit("plan", model, "--platform", SPEC, "--times", times, "-o", out,
                  "--latency-ms", limit, "--plot", png)
    assert done.returncode == 0, done.stderr
    assert load_plan(out).predicted_latency_ms <= limit
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("extra, message", [
    (["--latency-ms", "0.001"], "lowest latency achievable is"),
    (["--strategy", "best"], "choose one of pipeit, pipe-it, all-cores, fastest-cluster, replicas"),
    (["--memory-mb", "0.01"], "weights alone need"),
    (["--latency-ms", "-4"], "must be a positive number"),
])
def test_bad_input_is_one_line_and_exit_2(pipeit, model_and_times, tmp_path, extra, message):
    model, times = model_and_times
    done = pipeit("plan", model, "--platform", SPEC, "--times", times, "-o", tmp_path / "p.json", *extra)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("outputs, message", [
    (("-o", "same.png", "--plot", "same.png"), "-o and --plot name the same file"),  # the PNG replaced the plan
    (("-o", "p.json", "--save-times", "t.json", "--plot", "t.json"), "--save-times and --plot name the same file"),
    (("-o", "p.json", "--save-times", "p.json"), "-o and --save-times name the same file"),
])
def test_two_outputs_in_one_file_are_refused(pipeit, model_and_times, tmp_path, outputs, message):
    model, times = model_and_times
    done = pipeit("plan", model, "--platform", SPEC, "--times", times,
                  *[tmp_path / a if not a.startswith("-") else a for a in outputs])
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_platform_file_is_an_input_too(pipeit, model_and_times, tmp_path):
    """``-o`` naming the ``--platform`` file wrote a plan over it, exit 0."""
    model, times = model_and_times
    board = tmp_path / "board.json"
    board.write_text(json.dumps(load_platform(SPEC).to_json()))
    before = board.read_bytes()
    done = pipeit("plan", model, "--platform", board, "--times", times, "-o", board)
    assert done.returncode == 2 and f"-o {board} is also the input {board}" in done.stderr, done.stderr
    assert board.read_bytes() == before


def test_times_for_another_model_is_refused(pipeit, model_and_times, zoo_models, tmp_path):
    _, times = model_and_times
    done = pipeit("plan", zoo_models("mobilenet_v1"), "--platform", SPEC, "--times", times, "-o", tmp_path / "p.json")
    assert done.returncode == 2 and "layers" in done.stderr


def test_times_for_a_model_of_other_shapes_but_as_many_layers_are_refused(pipeit, tmp_path):
    """Layer count alone let a table from another model plan silently with its times and cut sizes; the file's
    cut and weight sizes tell. The same network with other weights (a new hash) keeps its times."""
    from tests.daemon_helpers import build_model, write_times

    spec = "emulate:big=0@1.0,little=1@1.0"
    small = build_model(tmp_path / "small.tflite", size=16)
    times = write_times(build_model(tmp_path / "large.tflite", size=32), spec, tmp_path / "times.json")
    done = pipeit("plan", small, "--platform", spec, "--times", times, "-o", tmp_path / "p.json")
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1, done.stderr
    assert "was made for another model: the tensors crossing cut 0 take 65536 bytes there, 16384 in" in done.stderr
    more_classes = build_model(tmp_path / "classes.tflite", classes=20)  # the same but for its last layer
    done = pipeit("plan", more_classes, "--platform", spec, "--times", times, "-o", tmp_path / "p.json")
    assert done.returncode == 2 and "was made for another model: the tensors crossing cut 8 take 40 bytes there, " \
        "80 in" in done.stderr, done.stderr
    retrained = tmp_path / "retrained.tflite"
    retrained.write_bytes((tmp_path / "large.tflite").read_bytes() + b"\0" * 16)  # other bytes, same network
    assert pipeit("plan", retrained, "--platform", spec, "--times", times, "-o", tmp_path / "p.json").returncode == 0


def _edited_times(path, tmp_path, value, setups="all"):
    """A copy of the layer-times file with layer 3's time set to ``value`` (None: cannot run) on some setups."""
    doc = json.loads(path.read_text())
    names = sorted(doc["times"]) if setups == "all" else setups
    for name in names:
        doc["times"][name][3] = value
    out = tmp_path / "times_edited.json"
    out.write_text(json.dumps(doc))
    return out


@pytest.mark.parametrize("strategy", ["all-cores", "replicas", "fastest-cluster", "pipe-it"])
def test_a_layer_no_setup_can_run_is_one_line_and_exit_2(pipeit, model_and_times, tmp_path, strategy):
    model, times = model_and_times
    edited = _edited_times(times, tmp_path, None)
    out = tmp_path / "p.json"
    done = pipeit("plan", model, "--platform", SPEC, "--times", edited, "--strategy", strategy, "-o", out)
    assert done.returncode == 2, done.stdout
    assert done.stderr.splitlines() == [done.stderr.strip()] and "Traceback" not in done.stderr
    assert "pipeit: error:" in done.stderr and "no core setup can run layer 3" in done.stderr
    assert not out.exists()


@pytest.mark.parametrize("strategy", ["pipeit", "pipe-it"])
def test_a_setup_that_cannot_run_a_layer_is_planned_around(pipeit, model_and_times, tmp_path, strategy):
    model, times = model_and_times
    edited = _edited_times(times, tmp_path, None, setups=["little:1"])
    out = tmp_path / "p.json"
    done = pipeit("plan", model, "--platform", SPEC, "--times", edited, "--strategy", strategy, "-o", out)
    assert done.returncode == 0, done.stderr
    plan = load_plan(out)
    assert plan.predicted_fps > 0
    assert not any(w.cluster == "little" and s.layers[0] <= 3 < s.layers[1] for s in plan.stages for w in s.workers)


def test_absurd_finite_layer_times_are_one_line_and_exit_2(pipeit, model_and_times, tmp_path):
    model, times = model_and_times
    edited = _edited_times(times, tmp_path, 1e308)
    done = pipeit("plan", model, "--platform", SPEC, "--times", edited, "-o", tmp_path / "p.json")
    assert done.returncode == 2
    assert "a layer may take" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.splitlines()) == 1


def test_a_profile_from_another_platform_is_used_but_said(pipeit, model_and_times, tmp_path):
    """predict and fit refuse another platform's file without --force; plan uses it (planning for a
    board from this host's times is a use) but says so in one warning line."""
    from pipeit.profile_table import ProfileRow, ProfileWriter

    model, _ = model_and_times
    graph = load_graph(model)
    platform = load_platform(SPEC)
    path = tmp_path / "elsewhere.csv"
    writer = ProfileWriter(path)
    seen = set()
    for layer in graph.layers:
        key = layer.descriptor.key_string()
        for setup in platform.setups():
            if (key, setup) not in seen:
                seen.add((key, setup))
                writer.write(ProfileRow("layer", model.stem, layer.index, layer.index + 1, setup, key, 1.0, 0.01, 5,
                                        "0" * 16, descriptor=layer.descriptor))
    done = pipeit("plan", model, "--platform", SPEC, "--profile", path, "-o", tmp_path / "plan.json")
    assert done.returncode == 0, done.stderr
    warning, = [line for line in done.stderr.splitlines() if line.startswith("pipeit: warning:")]
    assert "measured on another platform" in warning and str(path) in warning


def test_a_cluster_the_profile_has_no_times_for_is_said_to_be_left_out(pipeit, model_and_times, tmp_path):
    """plan used to leave the little core out without a word: one big:1 replica on a two-core board."""
    from pipeit.profile_table import ProfileRow, ProfileWriter
    from pipeit.profiler import platform_fingerprint_for

    model, _ = model_and_times
    graph = load_graph(model)
    platform = load_platform(SPEC)
    path = tmp_path / "big-only.csv"
    writer = ProfileWriter(path)
    big = platform.setups()[0]
    for key, layer in {layer.descriptor.key_string(): layer for layer in graph.layers}.items():
        writer.write(ProfileRow("layer", model.stem, layer.index, layer.index + 1, big, key, 1.0, 0.01, 5,
                                platform_fingerprint_for(platform), descriptor=layer.descriptor))
    writer.close()
    done = pipeit("plan", model, "--platform", SPEC, "--profile", path, "-o", tmp_path / "plan.json")
    assert done.returncode == 0, done.stderr
    warning, = [line for line in done.stderr.splitlines() if line.startswith("pipeit: warning:")]
    assert "no layer times for cluster(s) little (little:1)" in warning and "leave those cores out" in warning



def _noisy_profile(path, model, graph, platform, inflated, one_core_for_inflated=True):
    """A profile of ``platform``'s two setups: 0.1 ms a layer on one core, 0.06 on two, except the layer
    kinds ``inflated``, timed noisy at 10 ms on two cores; the whole model ok on one core, noisy on two.
    Returns the setups and the model's layer keys."""
    from pipeit.profile_table import ProfileRow, ProfileWriter
    from pipeit.profiler import platform_fingerprint_for

    one, two = platform.setups()
    fingerprint = platform_fingerprint_for(platform)
    writer = ProfileWriter(path)
    for key, layer in {layer.descriptor.key_string(): layer for layer in graph.layers}.items():
        if one_core_for_inflated or key not in inflated:
            writer.write(ProfileRow("layer", model.stem, layer.index, layer.index + 1, one, key, 0.1, 0.01, 5,
                                    fingerprint, descriptor=layer.descriptor))
        noisy = key in inflated
        writer.write(ProfileRow("layer", model.stem, layer.index, layer.index + 1, two, key,
                                10.0 if noisy else 0.06, 0.01, 5, fingerprint,
                                "noisy: 0 of 3 windows had all 2 cores" if noisy else "ok",
                                descriptor=layer.descriptor))
    keys = tuple(layer.descriptor.key_string() for layer in graph.layers)
    n = len(keys)
    writer.write(ProfileRow("model", model.stem, 0, n, one, "", 0.1 * n, 0.01, 5, fingerprint, layer_keys=keys))
    writer.write(ProfileRow("model", model.stem, 0, n, two, "", 0.09 * n, 0.01, 5, fingerprint,
                            "noisy: 0 of 3 windows had all 2 cores", layer_keys=keys))
    writer.close()
    return one, two, keys


@pytest.mark.parametrize("one_core_for_inflated", [True, False])
def test_noisy_profile_rows_are_held_to_clean_ones_and_said(pipeit, model_and_times, tmp_path,
                                                            one_core_for_inflated):
    """A shared host's profile: on two cores a few layers were timed while a thread was preempted (noisy,
    100x their one-core time), and so was the whole model. Used as they were, such rows made a model's
    two-core layers sum to 12x its two-core whole-model time, and plan predicted all-cores 10x too slow
    without a word. Each noisy row is held to its clean one-core time where there is one, the setup to
    its noisy whole-model time, and the plan says which rows it doubted."""
    model, _ = model_and_times
    graph = load_graph(model)
    spec = "emulate:big=0-1@1.0"
    kinds = sorted({layer.descriptor.key_string() for layer in graph.layers})
    inflated = kinds[:3]
    one, two, keys = _noisy_profile(tmp_path / "noisy.csv", model, graph, load_platform(spec), inflated,
                                    one_core_for_inflated)
    times_path = tmp_path / "times.json"
    done = pipeit("plan", model, "--platform", spec, "--profile", tmp_path / "noisy.csv",
                  "-o", tmp_path / "plan.json", "--save-times", times_path)
    assert done.returncode == 0, done.stderr
    warning, = [line for line in done.stderr.splitlines() if line.startswith("pipeit: warning:")]
    assert "busy cores (noisy)" in warning and f"{two} ({len(inflated)} of {len(kinds)})" in warning, warning
    on_two = LayerTimes.load(times_path).times[two]
    held = [i for i, key in enumerate(keys) if key in inflated]
    if one_core_for_inflated:
        # the clean two-core rows keep their 0.06 ms; the noisy ones fall to their clean one-core 0.1 ms
        # (which leaves the sum under the noisy whole-model time, so nothing is scaled)
        assert all(on_two[i] == pytest.approx(0.1) for i in held)
        assert all(on_two[i] == pytest.approx(0.06) for i in range(len(keys)) if i not in held)
    else:
        # no one-core row to hold them to (and no one-core setup at all): the whole model's time bounds
        # the setup, and the layers keep their proportions
        assert sum(on_two) == pytest.approx(0.09 * len(keys))
        assert on_two[held[0]] / on_two[next(i for i in range(len(keys)) if i not in held)] == pytest.approx(
            10.0 / 0.06)
