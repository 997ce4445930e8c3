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


BW1, BW_MAX = 25.0, 40.0  # GB/s (= MB/ms): one thread from DRAM, and the cluster's ceiling
S3 = CoreSetup("big", 3)


def _fc_rows(llc_mb: float, setups=(S1, S2)):
    """FC 'hardware': in cache 0.002 ms + 0.02 ms per weight MB per thread; beyond ``llc_mb``
    the weights stream from DRAM at min(k * BW1, BW_MAX), overlapped with the arithmetic."""
    def t(d, s):
        mb = d.weight_bytes / 1e6
        ms = 0.002 + 0.02 * mb / s.cores
        if d.weight_bytes / 1e6 > llc_mb:
            ms = max(ms, mb / min(s.cores * BW1, BW_MAX))
        return ms
    descs = [fc(ci, co) for ci, co in [(64, 10), (128, 100), (256, 64), (300, 200), (512, 128), (640, 320),
                                       (700, 500), (1024, 256), (800, 700), (1500, 900), (2048, 800),
                                       (1800, 1000), (3000, 1200)]]
    rows = []
    for i, d in enumerate(descs):
        for s in setups:
            rows.append(ProfileRow("layer", "sweep" if i >= 11 else "m", i, i + 1, s, d.key_string(),
                                   t(d, s), 0.01, 10, "fp0", descriptor=d))
    return rows, t


def test_layers_beyond_the_llc_stream_at_a_saturating_bandwidth_learned_from_such_rows():
    rows, t = _fc_rows(llc_mb=4.0)
    base = make_rows(training_descs())
    mech = make_predictor("mech")
    mech.llc_mb = 4.0
    mech.fit(base + rows)
    unseen = fc(2500, 1100)   # 11 MB > 4 MB
    assert mech.beyond_llc(unseen)
    bw = mech.stream_["big"]
    assert bw.bw1 == pytest.approx(BW1, rel=0.02) and bw.bw_max == pytest.approx(BW_MAX, rel=0.02)
    for s in (S1, S2):
        assert mech.predict(unseen, s) == pytest.approx(t(unseen, s), rel=0.05)
    terms = mech.explain(unseen, S2)
    assert terms.stream_ms == pytest.approx(11.0 / BW_MAX, rel=0.02) and terms.total_ms == max(
        terms.in_cache_ms, terms.stream_ms)
    # inside a model its weights are already paid for: the calibration adds nothing for them
    assert mech._cold_weight_bytes(unseen) == 0
    assert mech._cold_weight_bytes(fc(256, 64)) == 4 * 256 * 64
    # without the mechanism (a cache as large as the layer) the prediction is far too low
    plain = make_predictor("mech")
    plain.llc_mb = 1e3
    plain.fit(base + rows)
    assert plain.predict(unseen, S1) < 0.8 * t(unseen, S1)


def test_a_setup_without_dram_rows_follows_the_saturating_curve():
    # big:3 was profiled (in-cache layers) but no layer beyond the LLC ran on it: its bandwidth
    # is min(3 * bw1, bw_max) = bw_max, not 3x one thread and not 2 threads' figure scaled
    rows, t = _fc_rows(llc_mb=4.0)
    small, _ = _fc_rows(llc_mb=1e9, setups=(S3,))
    mech = make_predictor("mech")
    mech.llc_mb = 4.0
    mech.fit(make_rows(training_descs(), setups=(S1, S2, S3)) + rows
             + [r for r in small if r.descriptor.weight_bytes <= 4e6])
    unseen = fc(2500, 1100)
    assert mech.predict(unseen, S3) == pytest.approx(t(unseen, S3), rel=0.05)
    assert mech.predict(unseen, S3) == pytest.approx(11.0 / BW_MAX, rel=0.05)


def test_bandwidth_fit_saturates_ignores_an_outlier_and_round_trips():
    import math

    from predictors.bandwidth import StreamBandwidth, fit_stream_bandwidth

    samples = [(1, mb, mb / 27.0) for mb in (40, 70, 100, 150)] + [(2, mb, mb / 45.0) for mb in (40, 70, 150)]
    samples.append((2, 100.0, 100.0 / 12.0))  # measured while another process streamed
    bw = fit_stream_bandwidth(samples)
    assert bw.bw1 == pytest.approx(27.0) and bw.bw_max == pytest.approx(45.0)
    assert bw.at(1) == pytest.approx(27.0) and bw.at(2) == bw.at(4) == pytest.approx(45.0)
    assert StreamBandwidth.from_json(json.loads(json.dumps(bw.to_json()))) == bw
    # one-thread rows only: no ceiling known, k threads get k times one (null in JSON)
    one = fit_stream_bandwidth([(1, 50.0, 2.0)])
    assert math.isinf(one.bw_max) and one.at(3) == pytest.approx(75.0)
    assert one.to_json()["bw_max_gbs"] is None and StreamBandwidth.from_json(one.to_json()) == one
    # more than k times one thread is noise: capped
    assert fit_stream_bandwidth([(1, 10.0, 1.0), (2, 30.0, 1.0)]).bw_max == pytest.approx(20.0)
    for bad in ({"bw1_gbs": 0.0, "bw_max_gbs": 1.0}, {"bw1_gbs": 5.0, "bw_max_gbs": 2.0}, {"bw1_gbs": 5.0}):
        with pytest.raises((ValueError, KeyError)):
            StreamBandwidth.from_json(bad)
    with pytest.raises(ValueError):
        fit_stream_bandwidth([])


def test_round_trip_keeps_derived_setups_and_stream_bandwidth(tmp_path):
    rows, _ = _fc_rows(llc_mb=4.0)
    mech = make_predictor("mech")
    mech.llc_mb = 4.0
    mech.fit(rows_with_sync(training_descs()) + rows)
    path = tmp_path / "mech.json"
    mech.save(path)
    doc = json.loads(path.read_text())
    assert doc["state"]["derived"] == {str(S2): str(S1)}
    assert doc["state"]["stream"]["big"]["bw1_gbs"] == pytest.approx(BW1, rel=0.02)
    assert doc["params"]["llc_mb"] == 4.0
    again = predictor_from_json(doc)
    for d in (add(56, 100), fc(2500, 1100), conv(28, 32, 64)):
        for s in (S1, S2):
            assert again.predict(d, s) == mech.predict(d, s)
    # a file from before the streaming bandwidth prices beyond-LLC layers by its DRAM rate per MB
    old = json.loads(path.read_text())
    del old["state"]["stream"]
    old["state"]["dram"] = {str(S1): 0.03, str(S2): 0.03}
    older_fc = predictor_from_json(old)
    assert older_fc.predict(fc(2500, 1100), S1) == pytest.approx(
        older_fc._in_cache_ms(fc(2500, 1100), S1) + 0.03 * 11.0)
    # and one without DRAM state (written before that mechanism) still loads
    del old["state"]["dram"]
    assert predictor_from_json(old).predict(conv(28, 32, 64), S1) > 0
    # one from before k-core setups were derived has free 2-term element-wise models on big:2,
    # which the current 3-term element-wise model cannot use: refused, not silently degraded
    older = json.loads(json.dumps(old))
    del older["state"]["derived"]
    with pytest.raises(PredictorError, match="re-fit"):
        predictor_from_json(older)
    # a negative DRAM rate or a bandwidth ceiling below one thread is a corrupt file
    old["state"]["dram"] = {str(S1): -1.0}
    with pytest.raises(PredictorError, match="DRAM"):
        predictor_from_json(old)
    bad = json.loads(path.read_text())
    bad["state"]["stream"]["big"] = {"bw1_gbs": 30.0, "bw_max_gbs": 10.0}
    with pytest.raises(PredictorError, match="bandwidth"):
        predictor_from_json(bad)


def test_explain_terms_add_up_to_the_prediction():
    mech = make_predictor("mech").fit(rows_with_sync(training_descs()))
    for d in (conv(28, 32, 64), add(56, 100)):
        for s in (S1, S2):
            terms = mech.explain(d, s)
            assert terms.stream_ms is None and terms.dram_excess_ms == 0.0
            assert sum(v for _, v in terms.terms) == pytest.approx(terms.in_cache_ms, rel=1e-6)
            assert terms.total_ms == pytest.approx(mech.predict(d, s))
            assert terms.group in terms.describe()


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


# ---- residency of a stand-alone stream, and the full stream inside a model ------------------
SPAN = 3.0  # a stand-alone stream stays partly resident up to 3x the LLC (the law below)


def _resident_law(llc_mb: float):
    """Stand-alone FC time: the resident part at the in-cache rate, the rest from DRAM."""
    from predictors.bandwidth import resident_mb

    def t(d, s):
        mb = d.weight_bytes / 1e6
        hot = 0.002 + 0.02 * mb / s.cores
        if mb <= llc_mb:
            return hot
        res = resident_mb(mb, llc_mb, SPAN)
        return max(hot, hot * res / mb + (mb - res) / min(s.cores * BW1, BW_MAX))
    return t


def _sweep_fc_rows(shapes, law):
    """Sweep rows of FC layers ``(in, out)`` on one and two cores, timed by ``law(descriptor, setup)``."""
    rows = []
    for ci, co in shapes:
        d = fc(ci, co)
        for s in (S1, S2):
            rows.append(ProfileRow("layer", "sweep", 0, 1, s, d.key_string(), law(d, s), 0.01, 10, "fp0",
                                   descriptor=d))
    return rows


def test_a_stream_partly_resident_when_timed_alone_does_not_inflate_the_dram_bandwidth():
    from predictors.bandwidth import resident_mb

    llc = 4.0
    t = _resident_law(llc)
    shapes = [(64, 10), (128, 100), (256, 64), (300, 200), (512, 128), (640, 320), (700, 500),
              (1024, 256), (800, 700), (1500, 900),                            # in the LLC
              (1100, 1000), (1300, 1000), (1600, 1000), (2000, 1000),          # 4.4-8 MB: partly resident
              (3200, 1000), (3500, 1000), (4000, 1000)]                        # >= 3x LLC: streaming
    rows = _sweep_fc_rows(shapes, t)
    mech = make_predictor("mech")
    mech.llc_mb = llc
    mech.fit(make_rows(training_descs()) + rows)
    bw = mech.stream_["big"]
    assert dict(bw.spans) == {1: SPAN, 2: SPAN}
    assert bw.bw1 == pytest.approx(BW1, rel=0.03) and bw.bw_max == pytest.approx(BW_MAX, rel=0.03)
    unseen = fc(1800, 1000)  # 7.2 MB: 2.4 MB still resident when timed alone
    assert resident_mb(7.2, llc, SPAN) == pytest.approx(2.4)
    for s in (S1, S2):
        assert mech.predict(unseen, s) == pytest.approx(t(unseen, s), rel=0.05)
        # inside a model the rest of the frame evicted it: all 7.2 MB stream, slower than alone
        in_model = mech._in_model_ms(unseen, s, mech.predict(unseen, s))
        assert in_model == pytest.approx(7.2 / min(s.cores * BW1, BW_MAX), rel=0.05)
        assert in_model > 1.1 * mech.predict(unseen, s)
    # the old model (every byte beyond the LLC from DRAM, bandwidth from all such rows) learns a
    # DRAM bandwidth inflated by the resident rows
    from predictors.bandwidth import fit_stream_bandwidth

    big = [r for r in rows if r.descriptor.weight_bytes / 1e6 > llc]
    old = fit_stream_bandwidth([(r.setup.cores, r.descriptor.weight_bytes / 1e6, r.median_ms) for r in big])
    assert old.bw_max > 1.1 * BW_MAX and not old.spans


def test_calibration_prices_the_full_stream_of_a_beyond_llc_layer_inside_a_model(tmp_path):
    llc = 4.0
    t = _resident_law(llc)
    rows = _sweep_fc_rows([(1100, 1000), (1600, 1000), (2000, 1000), (3200, 1000), (4000, 1000)], t)
    mech = make_predictor("mech")
    mech.llc_mb = llc
    mech.fit(make_rows(training_descs()) + rows)
    d = fc(1500, 1000)  # 6 MB
    for s in (S1, S2):
        alone = mech.predict(d, s)
        assert mech.calibrate(d, s, alone) == pytest.approx(
            mech.calibrate(d, s, mech._in_model_ms(d, s, alone)))
        assert mech.predict_total([d], s) > 1.1 * alone
    # the span survives the JSON round trip; a file without it (older pipeit) loads with none
    path = tmp_path / "m.json"
    mech.save(path)
    doc = json.loads(path.read_text())
    assert doc["state"]["stream"]["big"]["span"] == {"1": SPAN, "2": SPAN}
    again = predictor_from_json(doc)
    assert again.predict(d, S2) == mech.predict(d, S2)
    del doc["state"]["stream"]["big"]["span"]
    older = predictor_from_json(doc)
    assert older.stream_["big"].span_at(2) == 1.0
    assert older.predict(d, S1) == pytest.approx(max(older._in_cache_ms(d, S1), 6.0 / older.stream_["big"].bw1))
    doc["state"]["stream"]["big"]["span"] = {"1": 0.5}
    with pytest.raises(PredictorError, match="span"):
        predictor_from_json(doc)
