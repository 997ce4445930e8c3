"""mech's k-core and DRAM mechanisms: memory-bound loops keep their one-core traffic fit on k
cores (plus a fitted fixed cost), layers beyond the last-level cache pay a DRAM rate per weight
MB, and both survive the JSON round trip. Rows are synthetic, from real descriptors and a known
law, so each test can fail in one precise way."""

from __future__ import annotations

import json

import pytest

from cores.model import CoreSetup
from pipeit.descriptor import LayerDescriptor, TensorInfo
from pipeit.errors import PredictorError
from pipeit.profile_table import ProfileRow
from predictors import make_predictor, predictor_from_json

from tests.test_predictors import S1, S2, add, conv, law, make_rows, training_descs

SYNC = 0.012  # fixed cost of an element-wise op on two cores (waking the pool)


def fc(cin: int, cout: int) -> LayerDescriptor:
    ins = (TensorInfo("x", (1, cin), "float32"),)
    outs = (TensorInfo("y", (1, cout), "float32"),)
    return LayerDescriptor("FULLY_CONNECTED", ins, outs, macs=cin * cout, weight_bytes=4 * cin * cout,
                           activation_bytes=4 * (cin + cout))


def rows_with_sync(descs):
    rows = make_rows(descs)
    out = []
    for r in rows:
        ms = r.median_ms + (SYNC if r.setup == S2 and r.descriptor.op == "ADD" else 0.0)
        out.append(ProfileRow("layer", r.model, r.start, r.end, r.setup, r.key, ms, 0.01, 10, "fp0",
                              descriptor=r.descriptor))
    return out


def test_eltwise_on_two_cores_is_one_core_traffic_halved_plus_a_fixed_cost():
    # two-core ADD rows only from small tensors: a free two-core fit would extrapolate anywhere;
    # the shared traffic fit prices a 16x bigger ADD from the one-core rows
    descs = training_descs()
    rows = [r for r in rows_with_sync(descs)
            if not (r.setup == S2 and r.descriptor.op == "ADD" and r.descriptor.activation_bytes > 4e5)]
    mech = make_predictor("mech").fit(rows)
    big = add(112, 256)
    truth = law(big, S2) + SYNC
    assert mech.predict(big, S2) == pytest.approx(truth, rel=0.02)
    sync, eff = mech.coef_[f"eltwise|{S2}"]
    assert eff == 1.0 and sync == pytest.approx(0.003 + SYNC, rel=0.1)  # + the law's per-invoke 0.003


def _fc_rows(llc_mb: float, dram_ms_per_mb: float):
    """FC 'hardware': in cache 0.002 ms + 0.02 ms per weight MB per thread; beyond ``llc_mb``
    the weights also pay ``dram_ms_per_mb`` (shared by the threads, not divided)."""
    def t(d, s):
        mb = d.weight_bytes / 1e6
        ms = 0.002 + 0.02 * mb / s.cores
        if (d.weight_bytes + d.activation_bytes) / 1e6 > llc_mb:
            ms += dram_ms_per_mb * mb
        return ms
    descs = [fc(ci, co) for ci, co in [(64, 10), (128, 100), (256, 64), (300, 200), (512, 128), (640, 320),
                                       (700, 500), (1024, 256), (800, 700), (1500, 900), (2048, 800),
                                       (1800, 1000), (3000, 1200)]]
    rows = []
    for i, d in enumerate(descs):
        for s in (S1, S2):
            rows.append(ProfileRow("layer", "sweep" if i >= 11 else "m", i, i + 1, s, d.key_string(),
                                   t(d, s), 0.01, 10, "fp0", descriptor=d))
    return rows, t


def test_layers_beyond_the_llc_pay_a_dram_rate_learned_from_such_rows():
    rows, t = _fc_rows(llc_mb=4.0, dram_ms_per_mb=0.03)
    base = make_rows(training_descs())
    mech = make_predictor("mech")
    mech.llc_mb = 4.0
    mech.fit(base + rows)
    unseen = fc(2500, 1100)   # 11 MB > 4 MB
    assert mech.beyond_llc(unseen)
    for s in (S1, S2):
        assert mech.predict(unseen, s) == pytest.approx(t(unseen, s), rel=0.05)
    # inside a model its weights are already paid for: the calibration adds nothing for them
    assert mech._cold_weight_bytes(unseen) == 0
    assert mech._cold_weight_bytes(fc(256, 64)) == 4 * 256 * 64
    # without the mechanism (a cache as large as the layer) the prediction is far too low
    plain = make_predictor("mech")
    plain.llc_mb = 1e3
    plain.fit(base + rows)
    assert plain.predict(unseen, S1) < 0.8 * t(unseen, S1)


def test_round_trip_keeps_derived_setups_and_dram_rates(tmp_path):
    rows, _ = _fc_rows(llc_mb=4.0, dram_ms_per_mb=0.03)
    mech = make_predictor("mech")
    mech.llc_mb = 4.0
    mech.fit(rows_with_sync(training_descs()) + rows)
    path = tmp_path / "mech.json"
    mech.save(path)
    doc = json.loads(path.read_text())
    assert doc["state"]["derived"] == {str(S2): str(S1)}
    assert doc["state"]["dram"][str(S1)] > 0 and doc["params"]["llc_mb"] == 4.0
    again = predictor_from_json(doc)
    for d in (add(56, 100), fc(2500, 1100), conv(28, 32, 64)):
        for s in (S1, S2):
            assert again.predict(d, s) == mech.predict(d, s)
    # a file without DRAM state (written before that mechanism) still loads
    old = json.loads(path.read_text())
    del old["state"]["dram"]
    assert predictor_from_json(old).predict(conv(28, 32, 64), S1) > 0
    # one from before k-core setups were derived has free 2-term element-wise models on big:2,
    # which the current 3-term element-wise model cannot use: refused, not silently degraded
    older = json.loads(json.dumps(old))
    del older["state"]["derived"]
    with pytest.raises(PredictorError, match="re-fit"):
        predictor_from_json(older)
    # a negative DRAM rate is a corrupt file
    old["state"]["dram"] = {str(S1): -1.0}
    with pytest.raises(PredictorError, match="DRAM"):
        predictor_from_json(old)


@pytest.mark.parametrize("bad", [0, -3.0, "big"])
def test_bad_llc_size_refused(bad):
    mech = make_predictor("mech")
    mech.llc_mb = bad
    with pytest.raises(PredictorError, match="llc_mb"):
        mech.fit(make_rows(training_descs()[:30]))


def _eltwise_hw(d: LayerDescriptor, setup: CoreSetup) -> float:
    """Element-wise 'hardware': 0.1 ms per GB per core from L2, and bytes past the cores'
    caches (1 MB each) cost 0.15 ms per GB more, from an L3 the threads share."""
    k = setup.cores
    moved = d.activation_bytes / 1e6
    beyond = moved * max(0.0, 1.0 - k / moved)
    return 0.003 + moved / k * 1e-4 + beyond * 1.5e-4


def test_eltwise_bytes_beyond_the_caches_cost_more_and_do_not_split_over_threads():
    """Small ADDs (all in L2) and a few big ones: the fit prices an unseen big ADD on one core
    and on two (the shared L3 part does not halve), where bytes alone under-priced it."""
    from predictors.mech import mech_features

    small = [add(s, c) for s, c in ((7, 32), (14, 24), (14, 64), (28, 16), (10, 40))]
    big = [add(s, c) for s, c in ((56, 64), (40, 256), (112, 32))]
    rows = []
    for i, d in enumerate(small + big):
        for s in (S1, S2):
            rows.append(ProfileRow("layer", "m", i, i + 1, s, d.key_string(), _eltwise_hw(d, s), 0.01, 10, "fp0",
                                   descriptor=d))
    mech = make_predictor("mech").fit(rows)
    unseen = add(56, 256)  # 9.6 MB of traffic, none of it in the training rows' sizes
    for s in (S1, S2):
        assert mech.predict(unseen, s) == pytest.approx(_eltwise_hw(unseen, s), rel=0.05)
    # the feature itself: nothing beyond the caches for a small tensor, most of a big one's bytes
    assert mech_features(small[0], S1, 7, 16, 16)[1][2] == 0.0
    _, (_, per_thread, beyond) = mech_features(unseen, S2, 7, 16, 16)
    assert per_thread == pytest.approx(9.6336 / 2, rel=1e-3) and beyond == pytest.approx(9.6336 - 2.0, rel=1e-3)


def test_a_file_with_the_older_two_term_eltwise_model_is_refused_not_silently_degraded():
    mech = make_predictor("mech").fit(make_rows(training_descs()))
    doc = mech.to_json()
    key = f"eltwise|{S1}"
    assert len(doc["state"]["coef"][key]) == 3
    assert predictor_from_json(json.loads(json.dumps(doc))).predict(add(56, 64), S1) == pytest.approx(
        mech.predict(add(56, 64), S1))
    doc["state"]["coef"][key] = doc["state"]["coef"][key][:2]
    with pytest.raises(PredictorError, match="re-fit"):
        predictor_from_json(doc)
