"""Devices, the CLI, the tuner's strategies and cost model, and the tuning file."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from pipeit.cli import main
from pipeit.gpu import kernels as K
from pipeit.gpu.space import config_key, gemm_space
from pipeit.gpu.tuner import (
    BoostedTrees,
    ModelSearch,
    RandomSearch,
    RecordedMeasurer,
    Trial,
    TrialStatus,
    TuningError,
    TuningFile,
    best_trial,
    make_strategy,
    tune,
)


def _recorded_space(seed=0):
    """A synthetic but structured cost surface over the real GEMM space (simulation mode)."""
    space = gemm_space(256, 32768)
    rng = np.random.default_rng(seed)
    trials = []
    for c in space:
        ms = (1.0 + abs(math.log2(c["TM"] / 32)) + abs(math.log2(c["TN"] / 16))
              + 2.0 * abs(math.log2(c["WM"] * c["WN"] / 8)) + (0.5 if c["LOCAL"] else 0.0))
        ms *= 1.0 + 0.02 * rng.standard_normal()
        status = TrialStatus.BUILD_ERROR if c["TK"] == 16 and c["TM"] == 64 else TrialStatus.OK
        trials.append(Trial(tuple(sorted(c.items())), status, ms if status is TrialStatus.OK else None))
    return space, trials


class TestStrategies:
    def test_random_search_spends_exactly_its_budget_without_repeats(self):
        space, trials = _recorded_space()
        search = RandomSearch(space, budget=40, batch_size=8, seed=1)
        done = tune(search, RecordedMeasurer(trials))
        assert len(done) == 40
        assert len({config_key(t.config_dict) for t in done}) == 40

    def test_failed_trials_are_recorded_not_raised(self):
        space, trials = _recorded_space()
        failing = [c for c in space if c["TK"] == 16 and c["TM"] == 64]
        done = tune(RandomSearch(failing, budget=5, seed=0), RecordedMeasurer(trials))
        assert [t.status for t in done] == [TrialStatus.BUILD_ERROR] * 5
        assert best_trial(done) is None

    def test_model_search_beats_random_on_a_structured_surface(self):
        space, trials = _recorded_space()
        optimum = min(t.ms for t in trials if t.ok)
        model_best, random_best = [], []
        for seed in range(7):
            m = tune(ModelSearch(space, budget=32, batch_size=4, seed=seed), RecordedMeasurer(trials))
            r = tune(RandomSearch(space, budget=32, batch_size=8, seed=seed), RecordedMeasurer(trials))
            model_best.append(best_trial(m).ms / optimum)
            random_best.append(best_trial(r).ms / optimum)
        assert np.median(model_best) <= 1.05
        assert np.median(model_best) < np.median(random_best)

    def test_ridge_cost_model_variant_also_finds_the_optimum(self):
        space, trials = _recorded_space()
        optimum = min(t.ms for t in trials if t.ok)
        found = [best_trial(tune(ModelSearch(space, budget=32, batch_size=4, seed=seed, cost_model="ridge"),
                                 RecordedMeasurer(trials))).ms / optimum for seed in range(5)]
        assert np.median(found) <= 1.05

    def test_unknown_strategy_is_refused(self):
        with pytest.raises(Exception, match="random, model"):
            make_strategy("annealing", [{"WG": 0}], 4)


class TestCostModels:
    def test_ridge_recovers_additive_effects(self):
        from pipeit.gpu.tuner import Ridge, onehot_features

        space = [{"algo": "im2col", "TM": tm, "TN": tn} for tm in (8, 16, 32) for tn in (8, 16, 32)]
        x = onehot_features(space)
        y = np.array([(c["TM"] == 16) * 1.0 + (c["TN"] == 32) * 2.0 for c in space])
        model = Ridge(alpha=1e-6).fit(x, y)
        assert np.abs(model.predict(x) - y).max() < 1e-3

    def test_layer_features_see_tile_waste(self):
        from pipeit.gpu.lowering import LayerSpec
        from pipeit.gpu.tuner import layer_features

        spec = LayerSpec(0, "FULLY_CONNECTED", "gemm", (0,), (1,), ((1, 64),), (1, 16),
                         geometry={"M": 1, "N": 16, "K": 64})
        tight = layer_features(spec, {"TM": 8, "TN": 16, "TK": 4, "WM": 1, "WN": 1, "LOCAL": 1})
        wide = layer_features(spec, {"TM": 8, "TN": 64, "TK": 4, "WM": 1, "WN": 1, "LOCAL": 1})
        assert tight[-2] == 1.0 and wide[-2] == 4.0


class TestBoostedTrees:
    def test_fits_a_step_function(self):
        x = np.linspace(0, 4, 40)[:, None]
        y = np.where(x[:, 0] > 2, 3.0, 1.0)
        model = BoostedTrees(n_trees=20).fit(x, y)
        assert np.abs(model.predict(x) - y).max() < 0.05

    def test_predict_before_fit_is_refused(self):
        with pytest.raises(ValueError, match="not fitted"):
            BoostedTrees().predict(np.zeros((1, 2)))


class TestTuningFile:
    def _file(self, tmp_path):
        from pipeit.descriptor import LayerDescriptor, TensorInfo
        from pipeit.gpu.device import DeviceInfo

        device = DeviceInfo(0, "P", "dev", "v", "gpu", "OpenCL 3.0", "1", 4, 256, 32768, 1 << 30, False)
        desc = LayerDescriptor("CONV_2D", (TensorInfo("x", (1, 8, 8, 8), "float32"),),
                               (TensorInfo("y", (1, 8, 8, 8), "float32"),), kernel=(3, 3))
        tuning = TuningFile()
        tuning.record(device, desc, "fp32", {"algo": "direct", "CO": 4, "VEC": 4, "WG": 0}, 1.5, "model",
                      32, untuned_ms=6.0)
        path = tmp_path / "tuning.json"
        tuning.save(path)
        return device, desc, path

    def test_round_trip_and_lookup(self, tmp_path):
        device, desc, path = self._file(tmp_path)
        loaded = TuningFile.load(path)
        assert loaded.config_for(device, desc) == {"algo": "direct", "CO": 4, "VEC": 4, "WG": 0}
        assert loaded.config_for(device, desc, "fp16-storage") is None

    @pytest.mark.parametrize("corrupt", [
        lambda d: d.update(version=99),
        lambda d: d["entries"][0].update(ms="fast"),
        lambda d: d["entries"][0]["config"].update(TM=-1),
        lambda d: d["entries"][0]["config"].update(algo="fft"),
        lambda d: d["entries"][0].update(device="elsewhere"),
        lambda d: d.pop("entries"),
    ])
    def test_corrupt_file_is_refused_whole(self, tmp_path, corrupt):
        _, _, path = self._file(tmp_path)
        doc = json.loads(path.read_text())
        corrupt(doc)
        path.write_text(json.dumps(doc))
        with pytest.raises(TuningError):
            TuningFile.load(path)

    def test_not_json_is_refused(self, tmp_path):
        path = tmp_path / "t.json"
        path.write_text("{ not json")
        with pytest.raises(TuningError, match="not valid JSON"):
            TuningFile.load(path)


def test_kernel_templates_are_parameterised():
    shape = dict(M=10, N=12, K=7)
    a = K.gemm(shape["M"], shape["N"], shape["K"], {"TM": 8, "TN": 8, "TK": 4, "WM": 2, "WN": 2},
               "RELU6", K.FP32)
    b = K.gemm(10, 12, 7, {"TM": 16, "TN": 8, "TK": 4, "WM": 2, "WN": 2}, "RELU6", K.FP16)
    assert "#define TM 8" in a and "#define TM 16" in b
    assert "cl_khr_fp16" in b and "cl_khr_fp16" not in a
    assert "vload_half" in K.header(K.FP16_STORAGE)


# ---- with a real OpenCL device ------------------------------------------------------------

cl = pytest.importorskip("pyopencl")


def test_list_devices_and_cli(capsys):
    from pipeit.gpu.device import list_devices

    devices = list_devices()
    assert devices and all(d.compute_units >= 1 for d in devices)
    assert main(["gpu", "--list", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["devices"][0]["name"] == devices[0].name
    assert set(doc["devices"][0]) >= {"compute_units", "fp16", "local_mem_bytes", "global_mem_bytes"}


def test_device_selection_errors(monkeypatch, capsys):
    monkeypatch.setenv("PIPEIT_OPENCL_DEVICE", "no-such-device-xyz")
    assert main(["gpu", "check", "missing.tflite"]) == 2  # the model is checked first
    capsys.readouterr()
    from pipeit.gpu.device import GpuError, select_device

    with pytest.raises(GpuError, match="no OpenCL device matches"):
        select_device()
    with pytest.raises(GpuError, match="does not exist"):
        select_device("99")
    assert select_device("0").index == 0


def test_pocl_cache_dir_is_per_process():
    import os

    from pipeit.gpu.device import make_context

    make_context()
    assert f"pipeit-pocl-{os.getpid()}-" in os.environ["POCL_CACHE_DIR"]


def test_a_gpu_command_removes_the_pocl_folders_of_killed_processes(tmp_path):
    """Only a pipeline with a GPU stage removed them: a SIGKILLed `gpu tune` left its folder for good."""
    import subprocess
    import sys
    import tempfile

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    orphan = Path(tempfile.gettempdir()) / f"pipeit-pocl-{dead}-x"
    orphan.mkdir()
    (orphan / "kernel.bin").write_bytes(b"0" * 1024)
    done = subprocess.run([sys.executable, "-m", "pipeit", "gpu", "--list"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert not orphan.exists()


def test_tune_cli_writes_and_reuses_a_tuning_file(tmp_path, capsys):
    from pipeit.tflite_builder import single_layer_model

    model = tmp_path / "conv.tflite"
    model.write_bytes(single_layer_model("conv", (1, 12, 12, 8), out_channels=16, kernel=1))
    out = tmp_path / "tuning.json"
    assert main(["gpu", "tune", str(model), "--trials", "4", "--strategy", "random", "-o", str(out),
                 "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["layers"][0]["trials"] == 5  # 4 searched + the untuned baseline
    assert doc["layers"][0]["best_ms"] > 0
    tuning = json.loads(out.read_text())
    assert len(tuning["entries"]) == 1
    assert main(["gpu", "tune", str(model), "--trials", "4", "-o", str(out), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["layers"][0]["skipped"] == "already tuned"
    assert main(["gpu", "check", str(model), "--tuning", str(out), "--json"]) == 0
    checked = json.loads(capsys.readouterr().out)
    assert checked["failed"] == [] and checked["layers"][0]["config"] == tuning["entries"][0]["config"]
    # the table's trials are the search's, as --trials counts them (the JSON's also count the baseline)
    out.unlink()
    assert main(["gpu", "tune", str(model), "--trials", "4", "--strategy", "random", "-o", str(out)]) == 0
    row = capsys.readouterr().out.splitlines()[2].split()
    assert row[:2] == ["0", "CONV_2D"] and row[5] == "4", row
    out.write_text("[]")
    assert main(["gpu", "tune", str(model), "-o", str(out)]) == 2
    assert "not a JSON object" in capsys.readouterr().err


def test_tune_without_output_writes_the_file_plan_and_check_read(tmp_path, capsys, monkeypatch):
    from pipeit.tflite_builder import single_layer_model

    model = tmp_path / "conv.tflite"
    model.write_bytes(single_layer_model("conv", (1, 12, 12, 8), out_channels=16, kernel=1))
    state = tmp_path / "state"
    monkeypatch.setenv("PIPEIT_STATE_DIR", str(state))
    monkeypatch.chdir(tmp_path)
    assert main(["gpu", "check", str(model), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tuning_file"] is None  # nothing tuned yet: heuristic configs
    assert main(["gpu", "tune", str(model), "--trials", "2", "--strategy", "random", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["tuning_file"] == str(state / "tuning.json") and (state / "tuning.json").is_file()
    assert not (tmp_path / "tuning.json").exists()  # not the working directory
    entry = json.loads((state / "tuning.json").read_text())["entries"][0]
    assert main(["gpu", "check", str(model), "--json"]) == 0
    checked = json.loads(capsys.readouterr().out)
    assert checked["tuning_file"] == str(state / "tuning.json")
    assert checked["layers"][0]["config"] == entry["config"]
    assert main(["gpu", "check", str(model)]) == 0
    assert capsys.readouterr().out.rstrip().endswith(f"configs: {state / 'tuning.json'} (for every layer checked)")


def test_a_tuning_file_from_another_device_is_named_as_unused(tmp_path, capsys):
    """gpu check printed "configs: FILE" while it ran the heuristic configs, the file holding none for
    this device; plan, profile and run used such a file silently."""
    import warnings

    from pipeit.gpu.device import select_device
    from pipeit.gpu.tuner import TuningFile
    from pipeit.tflite_builder import single_layer_model

    model = tmp_path / "conv.tflite"
    model.write_bytes(single_layer_model("conv", (1, 12, 12, 8), out_channels=16, kernel=1))
    mine = tmp_path / "mine.json"
    assert main(["gpu", "tune", str(model), "--trials", "2", "--strategy", "random", "-o", str(mine)]) == 0
    capsys.readouterr()
    assert main(["gpu", "check", str(model), "--tuning", str(mine)]) == 0
    assert capsys.readouterr().out.rstrip().endswith(f"configs: {mine} (for every layer checked)")
    doc = json.loads(mine.read_text())
    (fp, device), = doc["devices"].items()
    doc["devices"] = {"0123456789abcdef": dict(device, name="Mali-G52")}
    for entry in doc["entries"]:
        entry["device"] = "0123456789abcdef"
    other = tmp_path / "other.json"
    other.write_text(json.dumps(doc))
    assert main(["gpu", "check", str(model), "--tuning", str(other), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tuned_layers"] == []
    assert main(["gpu", "check", str(model), "--tuning", str(other)]) == 0
    last = capsys.readouterr().out.rstrip().splitlines()[-1]
    assert last.startswith(f"configs: heuristic ({other} has none for these layers on ")
    here = select_device(None)
    assert TuningFile.load(mine).not_for_device(here, str(mine)) is None
    note = TuningFile.load(other).not_for_device(here, str(other))
    assert note and "Mali-G52" in note and here.name in note
    with warnings.catch_warnings(record=True) as caught:  # what plan and profile time the GPU with
        warnings.simplefilter("always")
        from cores.model import Cluster
        from pipeit.gpu.measure import measure_gpu_times

        measure_gpu_times(model, Cluster("gpu", here.name, (0,), kind="gpu", device=str(here.index)), other)
    assert any("has no configs for" in str(w.message) for w in caught), [str(w.message) for w in caught]
