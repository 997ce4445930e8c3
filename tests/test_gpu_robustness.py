"""The GPU path against what TFLite does and against bad files, odd layers and odd devices.

Each test is about one defect found by fuzzing the GPU stage: fused
activations TFLite ignores, kernel configs in tuning and tables files that
do not fit their layer, malformed tuning histories, layers too big for the
device, fp16 on a device without it, and pocl cache folders left behind.
References are the real runtime (ai_edge_litert) and the real OpenCL device
(pocl's CPU device in CI).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict

import numpy as np
import pytest

from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter
from pipeit.cli import main
from pipeit.modelfile import read_model
from pipeit.tflite_builder import ModelBuilder
from tests.host_helpers import needs_opencl

pytestmark = needs_opencl

SHAPE = (1, 4, 4, 8)


@pytest.fixture(scope="module")
def ctx():
    from pipeit.gpu.device import make_context

    return make_context()


def _frame(seed: int = 0, scale: float = 3.0) -> np.ndarray:
    """Inputs large enough that a wrongly applied tanh (|y| < 1) shows."""
    return (np.random.default_rng(seed).uniform(-1, 1, SHAPE) * scale).astype(np.float32)


def _tflite(model_bytes: bytes, x: np.ndarray) -> np.ndarray:
    it = Interpreter(model_content=model_bytes)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"]).copy()


def _with_activation(model_bytes: bytes, activation: int) -> bytes:
    """The model with every op's fused activation set to ``activation`` (the builder names only some)."""
    import flatbuffers

    model = read_model(model_bytes)
    for op in model.subgraphs[0].operators:
        if hasattr(op.builtinOptions, "fusedActivationFunction"):
            op.builtinOptions.fusedActivationFunction = activation
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


FUSED_OPS = {
    "conv": lambda m, x: m.conv2d(x, 8, kernel=3, activation="NONE", gain=3),
    "depthwise": lambda m, x: m.depthwise_conv2d(x, activation="NONE", gain=3),
    "add": lambda m, x: m.add(x, x),
    "mul": lambda m, x: m.mul(x, x),
    "avg_pool": lambda m, x: m.avg_pool(x, 2),
    "transpose_conv": lambda m, x: m.transpose_conv(x, 4, gain=3),
}


class TestFusedActivationsAsTflite:
    """TFLite's float kernels clamp for RELU, RELU6, RELU_N1_TO_1 only; a fused TANH or SIGN_BIT is ignored."""

    @pytest.mark.parametrize("activation", [schema.ActivationFunctionType.TANH,
                                            schema.ActivationFunctionType.SIGN_BIT])
    @pytest.mark.parametrize("op", sorted(FUSED_OPS))
    def test_gpu_output_is_tflites_output(self, ctx, op, activation):
        from pipeit.gpu.stage import GpuStage

        m = ModelBuilder(seed=1)
        m.output(FUSED_OPS[op](m, m.input("x", SHAPE)))
        plain = m.to_bytes()
        fused = _with_activation(plain, activation)
        x = _frame()
        want = _tflite(fused, x)
        # what TFLite does, checked here rather than assumed: the fused activation changes nothing
        np.testing.assert_allclose(want, _tflite(plain, x), rtol=0, atol=1e-5 * np.abs(want).max())
        assert np.abs(want).max() > 1.5  # a tanh would have squashed this below 1
        got = GpuStage(read_model(fused), 0, 1, ctx=ctx).run({"x": x})
        (value,) = got.values()
        assert np.abs(value - want).max() <= 1e-4 * np.abs(want).max()

    def test_the_clamping_activations_are_still_applied(self, ctx):
        from pipeit.gpu.stage import GpuStage

        m = ModelBuilder(seed=1)
        m.output(m.conv2d(m.input("x", SHAPE), 8, kernel=3, activation="RELU_N1_TO_1", gain=3))
        data = m.to_bytes()
        x = _frame()
        (value,) = GpuStage(read_model(data), 0, 1, ctx=ctx).run({"x": x}).values()
        want = _tflite(data, x)
        assert want.min() == -1.0 and want.max() == 1.0
        assert np.abs(value - want).max() <= 1e-4


class TestLastRungFallsBackToTheCpu:
    """A GPU worker whose most precise table fails a CPU check answers every later frame from TFLite."""

    def _runner(self, tmp_path: Path, on_cpu: bool = False):
        from pipeit.executor.gpu_worker import GpuWorkerSpec, GpuRunner
        from pipeit.executor.worker import WorkerConfig
        from pipeit.gpu.calibration import CalibrationPolicy
        from pipeit.split import extract_layers

        m = ModelBuilder(seed=2)
        m.output(m.conv2d(m.input("x", (1, 8, 8, 16)), 16, kernel=3, activation="NONE"))
        whole = tmp_path / "conv.tflite"
        whole.write_bytes(m.to_bytes())
        sub = tmp_path / "stage.tflite"
        sub.write_bytes(extract_layers(read_model(whole), 0, 1).model_bytes)
        # tolerance 0: the fp32 kernels sum in another order than TFLite, so the first check fails
        policy = CalibrationPolicy(tolerance=0.0, every=1, check_every=1).to_json()
        spec = GpuWorkerSpec(model_path=str(whole), layers=(0, 1), policy=policy, on_cpu=on_cpu)
        config = WorkerConfig(stage=0, worker=0, cpus=(0,), threads=1, model_path=str(sub), route=None,
                              ring_in=None, ring_out=None, gpu=spec)
        return GpuRunner(config)

    def test_every_frame_after_the_last_table_degrades_is_tflites(self, tmp_path):
        from pipeit.gpu.calibration import outputs_equal

        runner = self._runner(tmp_path)
        rng = np.random.default_rng(5)
        frames = [{"x": rng.uniform(-1, 1, (1, 8, 8, 16)).astype(np.float32)} for _ in range(4)]
        cpu = [runner._cpu(f) for f in frames]
        gpu = [runner.stage.run(f) for f in frames]
        assert not all(outputs_equal(g, c) for g, c in zip(gpu[1:], cpu[1:]))  # the GPU is not exact here
        assert outputs_equal(runner.run(frames[0]), cpu[0])  # the failing checked frame: the CPU's result
        (note,) = runner.take_notes()
        assert note["from_level"] == note["to_level"] == 0 and note["fallback"] == "cpu"
        assert "no more precise table" in note["message"] and "on the CPU" in note["message"]
        assert runner.on_cpu
        for frame, want in zip(frames[1:], cpu[1:]):
            assert outputs_equal(runner.run(frame), want)
        assert runner.take_notes() == ()

    def test_a_worker_restarted_after_the_fallback_starts_on_the_cpu(self, tmp_path):
        """The pipeline restarts a dead worker from its spec, which records the fallback: without it the
        new worker served the GPU's known-wrong outputs again until its first check."""
        from pipeit.gpu.calibration import outputs_equal

        runner = self._runner(tmp_path, on_cpu=True)
        assert runner.on_cpu
        rng = np.random.default_rng(6)
        for _ in range(3):
            frame = {"x": rng.uniform(-1, 1, (1, 8, 8, 16)).astype(np.float32)}
            assert outputs_equal(runner.run(frame), runner._cpu(frame))
        assert runner.take_notes() == ()  # no check ran, nothing degraded again


# ---- kernel configs from files, checked against their layer and the device ------------------------

CONV1X1_SHAPE = (1, 8, 8, 16)
GOOD_GEMM = {"algo": "gemm", "TM": 8, "TN": 8, "TK": 4, "WM": 1, "WN": 1, "LOCAL": 0}
BAD_CONFIGS = [
    # (layer, config, what the one line must say)
    (0, {"algo": "direct", "CO": 0, "VEC": 1, "WG": 0}, "CO=0 is not an integer in [1,"),
    (0, {"algo": "direct", "CO": 5, "VEC": 1, "WG": 0}, "CO=5 does not divide the 16 output channels"),
    (0, {"algo": "direct", "CO": 1, "VEC": 3, "WG": 0}, "VEC=3 is not one of 1, 4"),
    (0, {"algo": "direct"}, "lacks CO, VEC"),
    (0, {"algo": "gemm"}, "lacks TK, TM, TN, WM, WN"),
    (0, {**GOOD_GEMM, "TM": 0}, "TM=0 is not an integer"),
    (0, {**GOOD_GEMM, "WM": 0}, "WM=0 is not an integer"),
    (0, {**GOOD_GEMM, "TM": 7, "WM": 2}, "TM must be a multiple of WM"),
    (0, {**GOOD_GEMM, "algo": "winograd"}, "algorithm 'winograd' does not fit this layer"),
    (0, {"WG": 0}, "names no 'algo'"),
    (0, {"algo": "direct", "CO": 1, "VEC": 1, "WG": 100_000}, "is over the device's limit of"),
    (0, {**GOOD_GEMM, "TM": 4096, "TN": 4096, "TK": 4096, "LOCAL": 1}, "is over the device's limit of"),
    (0, {**GOOD_GEMM, "TM": "x"}, "TM='x' is not an integer"),
    (0, {**GOOD_GEMM, "TM": 256, "TN": 256, "WM": 256, "WN": 256, "LOCAL": 0}, "WM*WN=65536 accumulators"),
    (0, {"algo": "direct", "CO": 4096, "VEC": 1, "WG": 0}, "CO=4096 accumulators"),
    (1, {"WG": 1 << 20}, "is over the device's limit of"),
    (1, {"algo": "gemm", "TM": 8}, "has TM, algo, which this layer's kernels do not take"),
]


@pytest.fixture(scope="module")
def conv_pool(tmp_path_factory) -> Path:
    """A 1x1 conv (layer 0: direct, gemm and im2col fit) then a max pool (layer 1)."""
    m = ModelBuilder(seed=4)
    m.output(m.max_pool(m.conv2d(m.input("x", CONV1X1_SHAPE), 16, kernel=1, activation="RELU"), 2))
    path = tmp_path_factory.mktemp("cfg") / "conv_pool.tflite"
    path.write_bytes(m.to_bytes())
    return path


def _tuning_file(path: Path, model: Path, ctx, layer: int, config: Dict[str, object]) -> Path:
    """A tuning file whose entry for ``layer`` of ``model`` on this device holds ``config``."""
    from pipeit.gpu.tuner import TuningFile
    from pipeit.graph import load_graph

    tuning = TuningFile()
    tuning.record(ctx.info, load_graph(str(model)).layers[layer].descriptor, "fp32", config, 1.0, "random", 1)
    tuning.save(path)
    return path


class TestConfigsFromFiles:
    @pytest.mark.parametrize("layer,config,says", BAD_CONFIGS)
    def test_a_config_that_does_not_fit_its_layer_or_device_is_named(self, ctx, conv_pool, layer, config, says):
        from pipeit.gpu.configcheck import config_problem
        from pipeit.gpu.lowering import lower_layer
        from pipeit.graph import graph_from_model

        model = read_model(conv_pool)
        spec = lower_layer(model, graph_from_model(model, sha256="").layers[layer])
        problem = config_problem(spec, config, ctx.info.max_work_group_size, ctx.info.local_mem_bytes)
        assert problem is not None and says in problem

    def test_configs_that_fit_pass(self, ctx, conv_pool):
        from pipeit.gpu.configcheck import config_problem
        from pipeit.gpu.lowering import lower_layer
        from pipeit.gpu.space import heuristic_config, search_space
        from pipeit.graph import graph_from_model

        model = read_model(conv_pool)
        info = ctx.info
        for layer in graph_from_model(model, sha256="").layers:
            spec = lower_layer(model, layer)
            for config in search_space(spec, info.max_work_group_size, info.local_mem_bytes) + [heuristic_config(spec)]:
                assert config_problem(spec, config, info.max_work_group_size, info.local_mem_bytes) is None, config
        # WG and LOCAL may be left out: the builders default them
        spec = lower_layer(model, graph_from_model(model, sha256="").layers[0])
        assert config_problem(spec, {"algo": "direct", "CO": 2, "VEC": 4}, 256, 32768) is None

    @pytest.mark.parametrize("layer,config,says", [BAD_CONFIGS[0], BAD_CONFIGS[4], BAD_CONFIGS[10], BAD_CONFIGS[13]])
    def test_gpu_check_refuses_the_tuning_file_in_one_line(self, ctx, conv_pool, tmp_path, capsys, layer, config,
                                                           says):
        bad = _tuning_file(tmp_path / "bad.json", conv_pool, ctx, layer, config)
        assert main(["gpu", "check", str(conv_pool), "--layers", "0,1", "--tuning", str(bad)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(bad) in err[0] and f"layer {layer} (" in err[0] and says in err[0]

    def test_gpu_tune_refuses_a_bad_config_in_its_output_file(self, ctx, conv_pool, tmp_path, capsys):
        bad = _tuning_file(tmp_path / "bad.json", conv_pool, ctx, 0, BAD_CONFIGS[0][1])
        assert main(["gpu", "tune", str(conv_pool), "--layers", "1", "--trials", "1", "-o", str(bad)]) == 2
        err = capsys.readouterr().err
        assert str(bad) in err and "layer 0 (CONV_2D)" in err and "CO=0" in err

    def test_a_pipeline_refuses_a_bad_tuning_file_before_any_worker_starts(self, ctx, conv_pool, tmp_path):
        from pipeit.executor import Pipeline
        from pipeit.executor.gpu_worker import GpuOptions
        from pipeit.gpu.tuner import TuningError
        from tests.test_gpu_pipeline import make_plan

        bad = _tuning_file(tmp_path / "bad.json", conv_pool, ctx, 0, BAD_CONFIGS[0][1])
        plan = make_plan(conv_pool, [((0, 1), "gpu"), ((1, 2), "big")])
        pipe = Pipeline(plan, conv_pool, gpu=GpuOptions(tuning=str(bad)))
        with pytest.raises(TuningError, match=r"bad\.json: layer 0 \(CONV_2D\), fp32 config .*CO=0"):
            pipe.start()
        assert pipe.worker_pids() == {} or not any(pipe.worker_pids().values())

    @pytest.mark.parametrize("rung", [0, 1])
    def test_a_bad_table_config_is_refused_naming_the_file_table_and_layer(self, ctx, conv_pool, tmp_path, rung):
        from pipeit.executor.gpu_worker import GpuOptions
        from pipeit.gpu.calibration import load_tables
        from pipeit.gpu.device import GpuError

        good = {"name": "good", "storage": "fp32", "configs": {"0": GOOD_GEMM}}
        bad = {"name": "bad", "storage": "fp32", "configs": {"0": {"algo": "direct", "CO": 0}}}
        path = tmp_path / "tables.json"
        path.write_text(json.dumps({"version": 1, "kind": "pipeit-gpu-tables", "stages": [
            {"layers": [0, 2], "tables": [bad, good] if rung == 0 else [good, bad]}]}))
        options = GpuOptions(tables=load_tables(path))
        with pytest.raises(GpuError) as err:
            options.spec_for(str(conv_pool), (0, 2), None)
        text = str(err.value)
        assert f"{path}: stages[0].tables[{rung}] ('bad')" in text and "layer 0 (CONV_2D)" in text and "CO=0" in text

    def test_a_table_config_for_a_layer_outside_the_stage_is_refused(self, conv_pool, tmp_path):
        from pipeit.executor.gpu_worker import GpuOptions
        from pipeit.gpu.calibration import Table
        from pipeit.gpu.device import GpuError

        options = GpuOptions(tables={(0, 1): (Table("t", configs={1: {"WG": 0}}, origin="t.json"),)})
        with pytest.raises(GpuError, match=r"t\.json \('t'\): configs for layer 1, outside the stage's layers \[0, 1\)"):
            options.spec_for(str(conv_pool), (0, 1), None)

    def test_a_stage_given_a_bad_config_in_code_refuses_it(self, ctx, conv_pool):
        from pipeit.gpu.device import GpuError
        from pipeit.gpu.stage import GpuStage

        with pytest.raises(GpuError, match=r"layer 0 \(CONV_2D\): config .*CO=0 is not an integer"):
            GpuStage(read_model(conv_pool), 0, 2, ctx=ctx, configs={0: {"algo": "direct", "CO": 0, "VEC": 1, "WG": 0}})


# ---- tuning histories (transfer priors) and untuned times, checked when the file is read -----------

@pytest.fixture(scope="module")
def tuned_doc(conv_pool, tmp_path_factory) -> dict:
    """A real tuning file (with history) of the conv layer, as JSON."""
    path = tmp_path_factory.mktemp("tuned") / "tuning.json"
    assert main(["gpu", "tune", str(conv_pool), "--layers", "0", "--trials", "2", "--strategy", "random",
                 "-o", str(path), "--json"]) == 0
    return json.loads(path.read_text())


def _mutated(doc: dict, change) -> dict:
    copy = json.loads(json.dumps(doc))
    change(copy["entries"][0])
    return copy


class TestTuningHistoryAndTimes:
    @pytest.mark.parametrize("change,says", [
        (lambda e: e["history"].__setitem__("geometry", {}), "a conv geometry needs N, H, W"),
        (lambda e: e["history"]["geometry"].__setitem__("GROUPS", 0), "geometry GROUPS=0 must be an integer >= 1"),
        (lambda e: e["history"]["geometry"].pop("KH"), "(missing KH)"),
        (lambda e: e["history"].__setitem__("kind", "bogus"), "unknown layer kind 'bogus'"),
        (lambda e: e["history"]["trials"][0].__setitem__("config", {"algo": "gemm"}), "lacks TK, TM, TN, WM, WN"),
        (lambda e: e.__setitem__("untuned_ms", "x"), "invalid untuned_ms 'x'"),
        (lambda e: e.__setitem__("untuned_ms", -3.0), "invalid untuned_ms -3.0"),
    ])
    def test_gpu_tune_refuses_the_file_in_one_line(self, conv_pool, tuned_doc, tmp_path, capsys, change, says):
        path = tmp_path / "w.json"
        path.write_text(json.dumps(_mutated(tuned_doc, change)))
        assert main(["gpu", "tune", str(conv_pool), "--layers", "1", "--trials", "2", "-o", str(path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(path) in err[0] and says in err[0]

    def test_the_recorded_geometry_is_the_lowered_one(self, conv_pool, tuned_doc):
        """GEOMETRY_KEYS (what a history must hold) is what lowering really produces."""
        from pipeit.gpu.lowering import GEOMETRY_KEYS, lower_layer
        from pipeit.graph import graph_from_model

        assert sorted(tuned_doc["entries"][0]["history"]["geometry"]) == sorted(GEOMETRY_KEYS["conv"])
        model = read_model(conv_pool)
        for layer in graph_from_model(model, sha256="").layers:
            spec = lower_layer(model, layer)
            assert sorted(spec.geometry) == sorted(GEOMETRY_KEYS[spec.kind])


# ---- devices: fp16 without cl_khr_fp16, layers too big for 32-bit indices ---------------------------

def test_gpu_tune_in_fp16_without_cl_khr_fp16_is_refused_up_front(ctx, conv_pool, tmp_path, capsys):
    if ctx.info.fp16:
        pytest.skip("this OpenCL device has cl_khr_fp16")
    out = tmp_path / "t16.json"
    assert main(["gpu", "tune", str(conv_pool), "--layers", "0", "--trials", "2", "--precision", "fp16",
                 "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lacks cl_khr_fp16" in err[0] and not out.exists()
    assert main(["gpu", "check", str(conv_pool), "--precision", "fp16"]) == 2
    assert "lacks cl_khr_fp16" in capsys.readouterr().err


class TestTooBigForIntIndices:
    """Nothing this big is run: the checks refuse it from the shapes alone."""

    def test_gpu_check_reports_a_layer_whose_scratch_overflows_int(self, tmp_path, capsys):
        # im2col (the heuristic for a 7x7 conv) would unfold 65536 pixels x 49 taps x 1024 channels
        m = ModelBuilder(seed=3)
        m.output(m.conv2d(m.input("x", (1, 256, 256, 1024)), 8, kernel=7, activation="NONE"))
        path = tmp_path / "big.tflite"
        path.write_bytes(m.to_bytes())
        assert main(["gpu", "check", str(path), "--json"]) == 0
        (row,) = json.loads(capsys.readouterr().out)["layers"]
        assert row["error"] is None and "32-bit int" in row["unsupported"] and "'col' buffer" in row["unsupported"]

    def test_a_tensor_past_int_indices_has_no_gpu_kernel(self):
        from pipeit.gpu.lowering import Unsupported, lower_layer
        from pipeit.graph import graph_from_model

        m = ModelBuilder(seed=0)
        m.output(m.add(*(2 * [m.input("x", (1, 2**16, 2**15 + 1, 1))])))
        model = read_model(m.to_bytes())
        with pytest.raises(Unsupported, match="32-bit int"):
            lower_layer(model, graph_from_model(model, sha256="").layers[0])

    def test_launches_past_int_ids_are_invalid_configs(self):
        from pipeit.gpu.program import LayerProgram
        from pipeit.gpu.lowering import lower_layer
        from pipeit.graph import graph_from_model

        m = ModelBuilder(seed=3)
        m.output(m.conv2d(m.input("x", (1, 256, 256, 1024)), 8, kernel=7, activation="NONE"))
        model = read_model(m.to_bytes())
        spec = lower_layer(model, graph_from_model(model, sha256="").layers[0])
        with pytest.raises(ValueError, match="32-bit int"):
            LayerProgram.launch_geometry(spec, {"algo": "im2col", **GOOD_GEMM, "algo": "im2col"})
        assert LayerProgram.launch_geometry(spec, {"algo": "direct", "CO": 8, "VEC": 4, "WG": 0})  # direct fits


def test_a_pipeline_start_removes_pocl_folders_of_dead_workers(conv_pool, tmp_path):
    """A killed GPU worker never runs its atexit cleanup; the next pipeline with a GPU stage clears its folder."""
    import os
    import subprocess
    import sys
    import tempfile

    from pipeit.executor.gpu_worker import check_gpu_devices
    from tests.test_gpu_pipeline import make_plan

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead = tempfile.mkdtemp(prefix=f"pipeit-pocl-{int(gone.stdout)}-")
    live = tempfile.mkdtemp(prefix=f"pipeit-pocl-{os.getpid()}-")
    try:
        check_gpu_devices(make_plan(conv_pool, [((0, 1), "big")]))  # no GPU stage: nothing touched
        assert os.path.isdir(dead)
        check_gpu_devices(make_plan(conv_pool, [((0, 1), "gpu"), ((1, 2), "big")]))
        assert not os.path.exists(dead) and os.path.isdir(live)
    finally:
        for path in (dead, live):
            if os.path.isdir(path):
                os.rmdir(path)


def test_a_home_that_cannot_hold_a_cache_still_compiles_kernels(conv_pool, tmp_path):
    """pyopencl's kernel cache under ~/.cache: with HOME a file (or read-only, as for a service user), every
    GPU command ended in a traceback from the cache; the process now caches in a private folder."""
    import os
    import subprocess
    import sys

    home = tmp_path / "home"
    home.write_text("not a folder")
    env = {k: v for k, v in os.environ.items() if k != "XDG_CACHE_HOME"}
    env["HOME"] = str(home)
    done = subprocess.run([sys.executable, "-m", "pipeit", "gpu", "check", str(conv_pool), "--layers", "0"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "ok" in done.stdout


def test_a_gpu_stage_hands_tensors_over_by_the_names_the_split_gives(ctx):
    """An inner tensor with no name or a shared one is renamed ``pipeit:tensorN`` in the stage files; the GPU
    stage kept the raw name, so a plan with a GPU stage next to a CPU one failed at its first worker ("stage
    has no input 'pipeit:tensor9'"), and `gpu check`/`gpu accuracy` raised a KeyError."""
    from pipeit.gpu.check import check_layer
    from pipeit.gpu.stage import GpuStage
    from pipeit.graph import load_graph
    from pipeit.modelfile import serialize_model
    from pipeit.split import split_model
    from tests.test_split import two_branch_builder

    model = read_model(two_branch_builder().to_bytes())
    tensors = model.subgraphs[0].tensors
    index = {t.name: i for i, t in enumerate(tensors)}
    tensors[index[b"b"]].name = b"a"  # shared
    tensors[index[b"sum"]].name = b""  # none
    data = serialize_model(model)
    n = len(load_graph(data).layers)
    for cut in range(1, n):
        stages = split_model(data, [cut])
        head, tail = GpuStage(data, 0, cut, ctx=ctx), GpuStage(data, cut, n, ctx=ctx)
        assert sorted(t.name for t in head.outputs) == sorted(t.name for t in stages[0].outputs), cut
        assert sorted(t.name for t in tail.inputs) == sorted(t.name for t in stages[1].inputs), cut
    for layer in range(n):
        result = check_layer(read_model(data), layer, ctx)
        assert result.error is None or result.error <= 1e-4, result
