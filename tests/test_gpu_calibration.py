"""Run-time calibration of GPU stages (pipeit.gpu.calibration): ladders, tables files, signals, decisions.

The decisions are driven by real GpuStage outputs on pocl and the real
TFLite result of the same layers; the signal functions are also checked on
arrays whose answer is known in closed form.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pipeit.errors import InputError
from pipeit.gpu.calibration import (
    FP32,
    CalibrationPolicy,
    Calibrator,
    Table,
    choose_ladder,
    load_tables,
    max_relative_error,
    outputs_equal,
    output_entropy,
    save_tables,
    tables_from_accuracy,
    top1_agreement,
)
from pipeit.gpu.device import GpuError
from tests.host_helpers import needs_opencl


class TestChooseLadder:
    def test_the_fastest_table_within_the_tolerance_starts_and_finer_ones_follow_to_fp32(self):
        half = Table("half", "fp16-storage", error=2e-3, ms=1.0)
        wino = Table("wino", "fp32", {3: {"algo": "winograd"}}, error=3e-6, ms=2.0)
        slow = Table("slowfine", "fp32", {3: {"algo": "direct"}}, error=1e-6, ms=5.0)
        # slowfine is plain float32 (direct kernels): it closes the ladder itself
        assert choose_ladder([slow, half, wino], 1e-2) == (half, wino, slow)
        assert choose_ladder([slow, half, wino], 1e-4) == (wino, slow)
        assert choose_ladder([half, wino], 1e-2) == (half, wino, FP32)
        assert choose_ladder([half], 1e-4) == (FP32,)  # nothing meets it: fp32, as accuracy tuning says
        assert choose_ladder([], 1e-4) == (FP32,)

    def test_unmeasured_tables_are_a_hand_made_ladder_in_the_given_order(self):
        a, b = Table("a", "fp16-storage"), Table("b", "fp32", {1: {"algo": "winograd"}})
        assert choose_ladder([a, b], 1e-4) == (a, b, FP32)
        assert choose_ladder([a, FP32], 1e-4) == (a, FP32)  # already ends at fp32
        assert not b.is_fp32 and FP32.is_fp32 and not a.is_fp32


class TestTablesFile:
    def test_round_trip_keeps_every_field(self, tmp_path):
        tables = {(3, 7): (Table("half", "fp16-storage", {4: {"algo": "gemm", "TM": 32}}, {4: "fp16-storage"}, 1e-3, 2.5),
                           FP32)}
        path = tmp_path / "tables.json"
        save_tables(path, tables, model_sha256="abc")
        back = load_tables(path, "abc")
        assert list(back) == [(3, 7)]
        got = back[(3, 7)]
        assert got[0].configs == {4: {"algo": "gemm", "TM": 32}} and got[0].precisions == {4: "fp16-storage"}
        assert (got[0].error, got[0].ms, got[0].storage) == (1e-3, 2.5, "fp16-storage")
        assert got[1].name == "fp32" and math.isnan(got[1].error)

    @pytest.mark.parametrize("mutate,message", [
        (lambda d: d.update(version=2), "version 2"),
        (lambda d: d.update(kind="other"), "not a pipeit GPU tables file"),
        (lambda d: d["stages"][0].update(layers=[5, 5]), "start < end"),
        (lambda d: d["stages"][0]["tables"][0].update(storage="fp8"), "storage must be"),
        (lambda d: d["stages"][0]["tables"][0].update(precisions={"4": "fp8"}), "unknown precisions"),
        (lambda d: d["stages"][0]["tables"][0].update(precisions={"4": "fp32"}), "layer 4's precision fp32 stores float"),
        (lambda d: d.update(version=True), "version True"),
        (lambda d: d["stages"][0]["tables"][0].update(error=-1), "'error' must be"),
        (lambda d: d["stages"][0]["tables"][0].update(colour="red"), "unknown table fields"),
        (lambda d: d["stages"][0]["tables"][0]["configs"].update({"x": {}}), "layer keys must be integers"),
        (lambda d: d.update(model_sha256="other"), "not this model"),
    ])
    def test_a_bad_file_is_refused_whole(self, tmp_path, mutate, message):
        path = tmp_path / "tables.json"
        save_tables(path, {(3, 7): (Table("half", "fp16-storage", {4: {"algo": "gemm"}}),)}, model_sha256="abc")
        doc = json.loads(path.read_text())
        mutate(doc)
        path.write_text(json.dumps(doc))
        with pytest.raises(GpuError, match=message):
            load_tables(path, "abc")

    def test_unreadable_or_not_json_is_a_gpu_error(self, tmp_path):
        with pytest.raises(GpuError, match="cannot read"):
            load_tables(tmp_path / "missing.json")
        (tmp_path / "bad.json").write_text("{")
        with pytest.raises(GpuError, match="not a JSON"):
            load_tables(tmp_path / "bad.json")


class TestPolicy:
    @pytest.mark.parametrize("kwargs", [dict(tolerance=-1.0), dict(tolerance=math.inf), dict(every=0),
                                        dict(check_every=1.5), dict(min_top1=2.0), dict(entropy_k=0.0),
                                        dict(patience=True)])
    def test_bad_settings_are_input_errors(self, kwargs):
        with pytest.raises(InputError):
            CalibrationPolicy(**kwargs)

    def test_json_round_trip_and_unknown_keys(self):
        policy = CalibrationPolicy(tolerance=1e-3, every=4)
        assert CalibrationPolicy.from_json(policy.to_json()) == policy
        with pytest.raises(InputError, match="unknown calibration settings"):
            CalibrationPolicy.from_json({"evry": 3})


class TestSignals:
    def test_entropy_of_known_distributions(self):
        k = 10
        assert output_entropy({"p": np.full((1, k), 1.0 / k, np.float32)}) == pytest.approx(math.log(k), rel=1e-6)
        assert output_entropy({"p": np.eye(k, dtype=np.float32)[:1]}) == pytest.approx(0.0, abs=1e-9)
        # logits are softmax-ed: equal logits are uniform, and adding a constant changes nothing
        logits = np.random.default_rng(0).normal(size=(2, 3, 7)).astype(np.float32)
        assert output_entropy({"x": logits}) == pytest.approx(output_entropy({"x": logits + 5.0}), rel=1e-6)
        assert output_entropy({"x": np.zeros((4, 7), np.float32)}) == pytest.approx(math.log(7), rel=1e-6)

    def test_top1_agreement_counts_ties_within_the_tolerance(self):
        want = np.array([[1.0, 1.0 - 1e-7, 0.0], [0.0, 0.5, 1.0]])
        got = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # row 0 picks a near-tie, row 1 is wrong
        assert top1_agreement(got, want, 1e-6) == 0.5
        assert top1_agreement(got, want, 0.0) == 0.0
        assert max_relative_error({"a": got}, {"a": want}) == pytest.approx(1.0)

    def test_a_nan_or_an_infinity_is_never_a_small_error(self):
        want = {"y": np.array([1.0, 2.0, 3.0], np.float32)}
        assert max_relative_error({"y": np.array([np.nan, 200.0, -7.0], np.float32)}, want) == math.inf
        assert max_relative_error({"y": np.array([1.0, 2.0, np.inf], np.float32)}, want) == math.inf
        assert max_relative_error({"y": np.array([1.0, 2.0, 3.3], np.float32)}, want) == pytest.approx(0.1, rel=1e-6)
        odd = {"y": np.array([np.nan, -np.inf, 3.0], np.float32)}
        assert max_relative_error(odd, odd) == 0.0 and outputs_equal(odd, odd)
        assert not outputs_equal({"y": np.array([np.nan, 1.0, 3.0], np.float32)}, odd)
        assert not outputs_equal({"y": want["y"].astype(np.float64)}, want)  # the same values, other bits
        assert not outputs_equal({"z": want["y"]}, want)


@pytest.fixture(scope="module")
def stage_case(zoo_models):
    """mobilenet_v2 layer 6 (1x1 conv to 144 channels, ReLU6) as fp32 and fp16-storage GPU stages,
    with frames and the TFLite result of the same layer."""
    from pipeit.gpu.check import reference_outputs
    from pipeit.gpu.device import make_context
    from pipeit.gpu.stage import GpuStage
    from pipeit.modelfile import read_model
    from pipeit.split import extract_layers

    model = read_model(zoo_models("mobilenet_v2"))
    ctx = make_context(None)
    fp32 = GpuStage(model, 6, 7, ctx=ctx)
    half = GpuStage(model, 6, 7, ctx=ctx, precision="fp16-storage")
    sub = extract_layers(model, 6, 7).model_bytes
    rng = np.random.default_rng(3)
    frames = [{t.name: rng.uniform(-1, 1, size=t.shape).astype(np.float32) for t in fp32.inputs} for _ in range(12)]
    refs = [reference_outputs(sub, f) for f in frames]
    return fp32, half, frames, refs


@needs_opencl
class TestCalibratorOnARealStage:
    def test_a_too_loose_table_is_switched_away_on_the_first_checked_frame(self, stage_case):
        _, half, frames, refs = stage_case
        cal = Calibrator((Table("half", "fp16-storage"), FP32), CalibrationPolicy(tolerance=1e-5))
        assert cal.sample(0) == "check"
        switch = cal.observe(0, half.run(frames[0]), refs[0])
        assert switch is not None and (switch.reason, switch.from_table, switch.to_table) == ("cpu-error", "half", "fp32")
        assert 1e-5 < switch.value < 1e-2  # half storage: about 1e-3 relative error
        assert cal.level == 1 and cal.table is FP32 and "-> 'fp32'" in switch.describe()

    def test_a_good_table_never_switches(self, stage_case):
        fp32, _, frames, refs = stage_case
        cal = Calibrator((FP32,), CalibrationPolicy(tolerance=1e-4, every=1, check_every=2, baseline=3))
        kinds = []
        for n, (frame, ref) in enumerate(zip(frames, refs)):
            kind = cal.sample(n)
            kinds.append(kind)
            out = fp32.run(frame)
            assert cal.observe(n, out, ref if kind == "check" else None) is None
        assert kinds[:3] == ["check"] * 3 and "entropy" in kinds  # baseline checked, then both signals
        assert cal.switches == [] and cal.baseline is not None and cal.baseline[0] > 0

    def test_an_entropy_shift_switches_after_patience_without_a_cpu_check(self, stage_case):
        fp32, _, frames, _ = stage_case
        policy = CalibrationPolicy(tolerance=1e-4, every=1, check_every=1000, baseline=4, patience=2)
        cal = Calibrator((Table("first", "fp32"), FP32), policy)
        for n in range(4):  # learn the baseline (these samples would be CPU-checked; skip the reference)
            assert cal.observe(n, fp32.run(frames[n])) is None
        mean, std = cal.baseline
        # the same frames again: inside the baseline, no alarm
        assert cal.observe(4, fp32.run(frames[5])) is None
        # inputs from another distribution (x40: the ReLU6 saturates) move the entropy far away
        shifted = [{k: v * 40.0 for k, v in frames[n].items()} for n in (6, 7)]
        assert abs(output_entropy(fp32.run(shifted[0])) - mean) > policy.entropy_k * max(std, 1e-3 * mean)
        assert cal.observe(5, fp32.run(shifted[0])) is None  # one alarm is not yet a switch
        switch = cal.observe(6, fp32.run(shifted[1]))
        assert switch is not None and switch.reason == "entropy" and switch.value > policy.entropy_k
        assert cal.level == 1 and cal.baseline is None  # the new table learns its own baseline

    def test_inputs_that_move_the_entropy_raise_nothing_on_the_last_table(self, stage_case):
        """At fp32 there is nothing to step up to: the entropy shift is the inputs, not the kernels."""
        fp32, _, frames, _ = stage_case
        cal = Calibrator((FP32,), CalibrationPolicy(tolerance=1e-4, every=1, check_every=1000, baseline=4,
                                                    patience=2))
        for n in range(4):
            assert cal.observe(n, fp32.run(frames[n])) is None
        shifted = [{k: v * 40.0 for k, v in frames[n].items()} for n in (6, 7, 6, 7)]
        mean, std = cal.baseline
        assert abs(output_entropy(fp32.run(shifted[0])) - mean) > 6.0 * max(std, 1e-3 * mean)
        assert all(cal.observe(4 + n, fp32.run(x)) is None for n, x in enumerate(shifted))
        assert cal.switches == []

    def test_the_last_table_failing_is_said_once(self, stage_case):
        fp32, _, frames, refs = stage_case
        cal = Calibrator((FP32,), CalibrationPolicy(tolerance=0.0, every=1, check_every=1))
        first = cal.observe(0, fp32.run(frames[0]), refs[0])
        assert first is not None and first.from_level == first.to_level == 0
        assert "no more precise table" in first.describe()
        assert cal.observe(1, fp32.run(frames[1]), refs[1]) is None
        assert len(cal.switches) == 1


def test_tables_from_accuracy_tuning_feed_the_ladder():
    """accuracy_table rows become tables; the ladder for a loose tolerance starts on the fastest."""
    from pipeit.gpu.accuracy import AccuracyPlan

    plans = [(1e-2, AccuracyPlan("fp16-storage", (), 1.0, 8e-4, 1.0)),
             (1e-4, AccuracyPlan("fp32", (), 2.0, 5e-7, 1.0)),
             (1e-5, AccuracyPlan("fp32", (), 2.0, 5e-7, 1.0))]  # same plan twice: one table
    tables = tables_from_accuracy(plans)
    assert [t.name for t in tables] == ["fp16-storage@0.01", "fp32@0.0001"]
    ladder = choose_ladder(tables, 1e-2)
    assert [t.name for t in ladder] == ["fp16-storage@0.01", "fp32@0.0001"]  # the fp32 plan closes it
    assert [t.name for t in choose_ladder(tables, 1e-4)] == ["fp32@0.0001"]
