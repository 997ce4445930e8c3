"""Predictors: fitting, JSON round trip, refusal of bad input, and one contract run over every kind.

Rows are synthetic but built from real :class:`LayerDescriptor` objects,
with times from a known stepped law (channels padded to 16, pixels to 7,
two threads splitting tiles), so the tests can check that ``mech`` finds the
mechanism and the baselines do not.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from cores.model import CoreSetup
from pipeit.descriptor import LayerDescriptor, TensorInfo
from pipeit.errors import PredictorError
from pipeit.profile_table import ProfileRow
from predictors import PREDICTORS, load_predictor, make_predictor, predict_graph, predictor_from_json
from predictors.fitting import nnls

S1, S2 = CoreSetup("big", 1), CoreSetup("big", 2)


def conv(size: int, cin: int, cout: int, k: int = 3, stride: int = 1) -> LayerDescriptor:
    out = math.ceil(size / stride)
    ins = (TensorInfo("x", (1, size, size, cin), "float32"),)
    outs = (TensorInfo("y", (1, out, out, cout), "float32"),)
    return LayerDescriptor(
        "CONV_2D", ins, outs, kernel=(k, k), stride=(stride, stride), padding="SAME",
        dilation=(1, 1), macs=out * out * cout * k * k * cin, weight_bytes=4 * k * k * cin * cout,
        activation_bytes=4 * (size * size * cin + out * out * cout),
    )


def dwconv(size: int, c: int, k: int = 3) -> LayerDescriptor:
    ins = (TensorInfo("x", (1, size, size, c), "float32"),)
    outs = (TensorInfo("y", (1, size, size, c), "float32"),)
    return LayerDescriptor(
        "DEPTHWISE_CONV_2D", ins, outs, kernel=(k, k), stride=(1, 1), padding="SAME",
        dilation=(1, 1), depth_multiplier=1, macs=size * size * c * k * k,
        weight_bytes=4 * k * k * c, activation_bytes=8 * size * size * c,
    )


def add(size: int, c: int) -> LayerDescriptor:
    t = TensorInfo("x", (1, size, size, c), "float32")
    return LayerDescriptor("ADD", (t, t), (t,), macs=size * size * c, activation_bytes=12 * size * size * c)


def law(d: LayerDescriptor, setup: CoreSetup) -> float:
    """The 'hardware': XNNPACK-like steps (NR=16, MR=7, CT=16), tiles dealt to threads."""
    k = setup.cores
    if d.op == "CONV_2D":
        m = d.output_shape[1] * d.output_shape[2]
        tiles = math.ceil(m / 7) * math.ceil(d.out_channels / 16)
        kk = d.kernel[0] * d.kernel[1] * d.in_channels
        return 0.01 + math.ceil(tiles / k) * 7 * 16 * kk * 2e-8
    if d.op == "DEPTHWISE_CONV_2D":
        rows = math.ceil(d.output_shape[1] / k)
        return 0.005 + rows * d.output_shape[2] * math.ceil(d.out_channels / 16) * 16 * 9 * 3e-8
    return 0.003 + d.activation_bytes / k * 1e-7


def make_rows(descs, setups=(S1, S2), model="m", noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i, d in enumerate(descs):
        for s in setups:
            ms = law(d, s) * (1 + noise * rng.standard_normal())
            rows.append(ProfileRow("layer", model, i, i + 1, s, d.key_string(), ms, 0.01, 10, "fp0",
                                   descriptor=d))
    return rows


def model_row(descs, setup, model, factor=1.07):
    total = sum(law(d, setup) for d in descs) * factor
    return ProfileRow("model", model, 0, len(descs), setup, "", total, 0.01, 10, "fp0",
                      layer_keys=tuple(d.key_string() for d in descs))


def training_descs(seed=1):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(60):
        out.append(conv(int(rng.choice([7, 14, 28, 56])), int(rng.integers(3, 200)),
                        int(rng.integers(4, 200)), int(rng.choice([1, 3]))))
    for _ in range(20):
        out.append(dwconv(int(rng.choice([7, 14, 28, 56, 112])), int(rng.integers(8, 300))))
    for _ in range(15):
        out.append(add(int(rng.choice([7, 14, 28, 56])), int(rng.integers(8, 300))))
    return out


@pytest.fixture(scope="module")
def train_rows():
    return make_rows(training_descs())


class TestNNLS:
    def test_recovers_non_negative_solution(self):
        rng = np.random.default_rng(0)
        a = rng.random((40, 4))
        x = np.array([1.0, 0.0, 2.0, 0.5])
        np.testing.assert_allclose(nnls(a, a @ x), x, atol=1e-8)

    def test_never_negative(self):
        rng = np.random.default_rng(1)
        a = rng.random((40, 4))
        x = nnls(a, a @ np.array([1.0, -3.0, 2.0, 0.5]))
        assert (x >= 0).all()


# ---- the contract every predictor satisfies -----------------------------------------------

@pytest.mark.parametrize("kind", sorted(PREDICTORS))
class TestContract:
    def test_init_only_stores_params(self, kind):
        p = make_predictor(kind)
        assert not any(name.endswith("_") and not name.startswith("_") for name in vars(p))
        assert isinstance(p.get_params(), dict)

    def test_unfitted_predict_refused(self, kind):
        with pytest.raises(PredictorError, match="not fitted"):
            make_predictor(kind).predict(conv(14, 8, 8), S1)

    def test_fit_predict_positive_finite(self, kind, train_rows):
        p = make_predictor(kind).fit(train_rows)
        for d in training_descs(seed=7)[:20]:
            for s in (S1, S2):
                ms = p.predict(d, s)
                assert math.isfinite(ms) and ms > 0

    def test_round_trip_identical(self, kind, train_rows, tmp_path):
        p = make_predictor(kind).fit(train_rows)
        path = tmp_path / "p.json"
        p.save(path)
        q = load_predictor(path)
        assert type(q) is type(p)
        for d in training_descs(seed=3)[:30]:
            for s in (S1, S2):
                assert q.predict(d, s) == p.predict(d, s)
        assert json.loads(path.read_text())["kind"] == kind

    def test_unknown_setup_refused(self, kind, train_rows):
        p = make_predictor(kind).fit(train_rows)
        with pytest.raises(PredictorError, match="no data for setup little:1"):
            p.predict(conv(14, 8, 8), CoreSetup("little", 1))

    def test_bad_inputs_refused(self, kind, train_rows):
        with pytest.raises(PredictorError, match="no successful layer"):
            make_predictor(kind).fit([])
        with pytest.raises(PredictorError, match="expects profile rows"):
            make_predictor(kind).fit([{"median_ms": 1.0}])
        p = make_predictor(kind).fit(train_rows)
        with pytest.raises(PredictorError, match="LayerDescriptor"):
            p.predict("CONV_2D", S1)
        with pytest.raises(PredictorError):
            p.predict(conv(14, 8, 8), "big")

    def test_corrupt_and_other_version_files_refused(self, kind, train_rows, tmp_path):
        p = make_predictor(kind).fit(train_rows)
        doc = p.to_json()
        bad = tmp_path / "bad.json"
        bad.write_text('{"format": "pipeit-predictor", "version": 1, "ki')
        with pytest.raises(PredictorError, match="corrupt"):
            load_predictor(bad)
        with pytest.raises(PredictorError, match="version 99"):
            predictor_from_json(dict(doc, version=99))
        with pytest.raises(PredictorError, match="malformed"):
            predictor_from_json(dict(doc, state={"coef": 3}))
        with pytest.raises(PredictorError, match="not a pipeit predictor"):
            predictor_from_json({"kind": kind})
        # calibration coefficients once went in unchecked: NaN or negative predictions, "total: nan ms"
        for coef in (["nan", 0, 0], [float("inf"), 0, 0], [-1, 0, 0], [1, -1, 0], [True, False, False], [1, 0]):
            with pytest.raises(PredictorError, match="calibration of 'big:1'"):
                predictor_from_json(dict(doc, calibration={"big:1": coef}))
        with pytest.raises(PredictorError, match="no such"):
            load_predictor(tmp_path / "missing.json")

    def test_fit_is_deterministic(self, kind, train_rows):
        a = make_predictor(kind).fit(train_rows).to_json()
        b = make_predictor(kind).fit(list(reversed(train_rows))).to_json()
        assert a["setups"] == b["setups"]
        d = conv(28, 40, 72)
        pa, pb = predictor_from_json(a), predictor_from_json(b)
        assert pa.predict(d, S2) == pytest.approx(pb.predict(d, S2), rel=1e-6)


# ---- what distinguishes the models ---------------------------------------------------------

def _mape(p, descs, setup):
    return float(np.mean([abs(p.predict(d, setup) / law(d, setup) - 1) for d in descs]))


def test_mech_finds_the_tile_width_and_the_steps(train_rows):
    mech = make_predictor("mech").fit(train_rows)
    assert mech.tiles_["igemm"]["nr"] == 16
    # the step: 17 output channels cost as much as 32, and twice 16
    t16, t17, t32 = (mech.predict(conv(28, 64, c), S1) for c in (16, 17, 32))
    assert t17 == pytest.approx(t32, rel=1e-9)
    assert t17 > 1.6 * t16


def test_mech_beats_baselines_on_unseen_layers(train_rows):
    unseen = [conv(int(s), int(ci), int(co), 3) for s, ci, co in
              zip([14, 28, 56, 28, 14, 56, 28], [17, 33, 65, 100, 150, 24, 48], [9, 40, 31, 130, 66, 17, 100])]
    fitted = {k: make_predictor(k).fit(train_rows) for k in PREDICTORS}
    for s in (S1, S2):
        errs = {k: _mape(p, unseen, s) for k, p in fitted.items()}
        assert errs["mech"] < 0.05, errs
        assert errs["mech"] < errs["flops"] and errs["mech"] < errs["pipe-it"], errs


def test_thread_chunking_has_ceil_effect(train_rows):
    mech = make_predictor("mech").fit(train_rows)
    # 7x7 output = 7 row tiles of 7 pixels x 1 column tile -> 2 threads do 4 and 3 tiles
    d = conv(7, 64, 16, 1)
    ratio = mech.predict(d, S1) / mech.predict(d, S2)
    assert ratio < 1.9


def test_calibration_fitted_from_model_rows_and_applied_per_layer(train_rows):
    rng = np.random.default_rng(5)
    descs = training_descs(seed=11)
    models = []
    for j in range(6):
        idx = rng.choice(len(descs), size=12, replace=False)
        chosen = [descs[i] for i in idx]
        models += [model_row(chosen, S1, f"net{j}"), model_row(chosen, S2, f"net{j}")]
    mech = make_predictor("mech").fit(train_rows + make_rows(descs) + models)
    coef = mech.calibration_[str(S1)]
    net = [conv(28, 32, 64), dwconv(28, 64), add(28, 64), conv(14, 64, 128, 3, 2)]
    total = mech.predict_total(net, S1)
    raw = sum(mech.predict(d, S1) for d in net)
    assert total == pytest.approx(sum(mech.predict_layers(net, S1)), rel=1e-12)
    assert 1.03 < total / raw < 1.12, coef
    flops = make_predictor("flops").fit(train_rows + models)
    assert flops.predict_total(net, S1) == pytest.approx(sum(flops.predict(d, S1) for d in net))


def test_predict_graph_uses_graph_layers(train_rows):
    from pipeit.graph import load_graph
    from pipeit.tflite_builder import ModelBuilder

    b = ModelBuilder(seed=0)
    x = b.input("input", (1, 28, 28, 8))
    y = b.conv2d(x, 16, kernel=3)
    b.output(b.depthwise_conv2d(y, 3))
    graph = load_graph(b.to_bytes())
    mech = make_predictor("mech").fit(train_rows)
    times = predict_graph(mech, graph, "big:2")
    assert len(times) == len(graph.layers) == 2
    assert times == mech.predict_layers([l.descriptor for l in graph.layers], S2)
    raw = predict_graph(mech, graph, S2, calibrated=False)
    assert raw == [mech.predict(l.descriptor, S2) for l in graph.layers]


def test_unknown_kind_refused():
    with pytest.raises(PredictorError, match="unknown predictor kind 'magic'"):
        make_predictor("magic")


# ---- mechanisms added for the zoo profile (narrow kernel, cold weights, fused clamp...) -----

from predictors.base import Calibration  # noqa: E402
from predictors.fitting import robust_relative_nnls  # noqa: E402
from predictors.mech import L1_BYTES, MechPredictor, column_tiles, mech_features, moved_bytes  # noqa: E402


def maxpool(size: int, c: int, stride: int) -> LayerDescriptor:
    out = math.ceil(size / stride)
    ins = (TensorInfo("x", (1, size, size, c), "float32"),)
    outs = (TensorInfo("y", (1, out, out, c), "float32"),)
    return LayerDescriptor(
        "MAX_POOL_2D", ins, outs, kernel=(3, 3), stride=(stride, stride), padding="SAME",
        activation_bytes=4 * (size * size * c + out * out * c),
    )


def test_column_tiles_narrow_kernel_then_wide_steps():
    # nr=32 with a 16-wide kernel for <= 16 columns: the steps measured on the dev host
    assert [column_tiles(n, 32, 16) for n in (8, 16, 17, 32, 33, 64, 65)] == [
        (16, 1), (16, 1), (32, 1), (32, 1), (32, 2), (32, 2), (32, 3)]
    assert column_tiles(17, 16, 0) == (16, 2)


def test_mech_finds_a_narrow_kernel_when_the_hardware_has_one():
    def wide_law(d, setup):
        m = d.output_shape[1] * d.output_shape[2]
        width, cols = column_tiles(d.out_channels, 32, 16)
        kk = d.kernel[0] * d.kernel[1] * d.in_channels
        return 0.01 + math.ceil(m / 7) * cols * 7 * width * kk * 2e-8

    rng = np.random.default_rng(4)
    descs = [conv(int(rng.choice([14, 28, 56])), int(rng.integers(8, 128)), int(rng.integers(4, 140)), 3)
             for _ in range(60)]
    rows = [ProfileRow("layer", "m", i, i + 1, S1, d.key_string(), wide_law(d, S1), 0.01, 10, "fp0",
                       descriptor=d) for i, d in enumerate(descs)]
    mech = make_predictor("mech").fit(rows)
    assert (mech.tiles_["igemm"]["nr"], mech.tiles_["igemm"]["ns"]) == (32, 16)
    for cout in (12, 24, 40, 100):
        d = conv(28, 64, cout)
        assert mech.predict(d, S1) == pytest.approx(wide_law(d, S1), rel=0.02)


def test_fused_activation_costs_an_extra_pass_over_the_output():
    plain, relu = add(28, 64), LayerDescriptor(**{**add(28, 64).__dict__, "activation": "RELU"})
    out_bytes = 4 * 28 * 28 * 64
    assert moved_bytes(relu) - moved_bytes(plain) == 2 * out_bytes
    assert mech_features(relu, S1, 7, 16, 16)[1][1] > mech_features(plain, S1, 7, 16, 16)[1][1]


def test_dwconv_l1_excess_only_for_many_channels():
    few = mech_features(dwconv(14, 128), S1, 1, 16, 16)[1]
    many = mech_features(dwconv(14, 1024), S1, 1, 16, 16)[1]
    assert few[2] == 0.0  # 128 channels x 19 floats fit L1
    assert 1024 * 19 * 4 > L1_BYTES and many[2] > 0.0


def test_stride1_pool_learned_from_stride2_pools():
    """A pool's cost is its window work; a bytes term would make stride-1 pools (input = output)
    look half as expensive as stride-2 ones (input = 4x output) of the same work."""
    def pool_law(d):
        out = d.output_shape
        return 0.002 + out[1] * out[2] * out[3] * 9 * 4e-8

    descs = [maxpool(int(s), int(c), 2) for s, c in zip([112, 56, 28, 56, 28, 14, 112, 28, 14, 56],
                                                        [64, 128, 256, 96, 192, 512, 32, 480, 832, 64])]
    descs += training_descs()[:30]
    rows = []
    for i, d in enumerate(descs):
        ms = pool_law(d) if d.op == "MAX_POOL_2D" else law(d, S1)
        rows.append(ProfileRow("layer", "m", i, i + 1, S1, d.key_string(), ms, 0.01, 10, "fp0", descriptor=d))
    mech = make_predictor("mech").fit(rows)
    for d in (maxpool(28, 192, 1), maxpool(14, 480, 1), maxpool(7, 832, 1)):
        assert mech.predict(d, S1) == pytest.approx(pool_law(d), rel=0.1)


def test_sweep_rows_count_less_than_model_rows(train_rows):
    descs = training_descs(seed=21)[:40]
    # the sweep measured the same kind of layers 40 % slower (say, another day, a hot host)
    sweep = [ProfileRow("layer", "sweep", 0, 1, r.setup, r.key, r.median_ms * 1.4, 0.01, 10, "fp0",
                        descriptor=r.descriptor) for r in make_rows(descs)]
    probe = [conv(28, 48, 40), dwconv(28, 96), add(14, 64)]

    def mape(p):
        return float(np.mean([abs(p.predict(d, S1) / law(d, S1) - 1) for d in probe]))

    light = MechPredictor(sweep_weight=0.1).fit(train_rows + sweep)
    full = MechPredictor(sweep_weight=1.0).fit(train_rows + sweep)
    assert mape(light) < 0.5 * mape(full)
    for bad in (0, 1.5, "x"):
        with pytest.raises(PredictorError, match="sweep_weight"):
            MechPredictor(sweep_weight=bad).fit(train_rows)


def test_robust_fit_ignores_one_disturbed_row():
    rng = np.random.default_rng(2)
    x = rng.random((12, 2)) + 0.5
    y = x @ np.array([1.05, 0.2])
    y[3] *= 1.4  # one stage measured while another process ran
    coef = robust_relative_nnls(x, y)
    assert coef == pytest.approx([1.05, 0.2], rel=0.02)


def test_calibration_is_scale_plus_cold_weights():
    d = conv(14, 64, 128)
    assert Calibration.apply((1.04, 0.01, 0.0), 2.0, d) == pytest.approx(
        1.04 * 2.0 + 0.01 * d.weight_bytes / 1e6)
    # whole-model rows 4 % over their layers plus 0.01 ms per weight MB, one row disturbed
    samples = [(s, w, n, 1.04 * s + 0.01 * w) for s, w, n in
               [(10, 5, 20), (30, 40, 60), (5, 1, 10), (20, 80, 50), (8, 3, 30), (50, 100, 70),
                (12, 30, 25), (40, 10, 80), (25, 60, 40), (6, 20, 15)]]
    samples[1] = samples[1][:3] + (samples[1][3] * 1.2,)
    scale, per_mb, per_layer = Calibration.fit(samples)
    assert scale == pytest.approx(1.04, rel=0.01)
    assert per_mb == pytest.approx(0.01, rel=0.2)
    assert per_layer == 0.0


def test_old_tile_records_without_narrow_kernel_load(train_rows):
    doc = make_predictor("mech").fit(train_rows).to_json()
    for t in doc["state"]["tiles"].values():
        t.pop("ns")
    p = predictor_from_json(doc)
    assert all(t["ns"] == 0 for t in p.tiles_.values())
    with pytest.raises(PredictorError, match="malformed"):
        bad = json.loads(json.dumps(doc))
        next(iter(bad["state"]["tiles"].values()))["ns"] = -1
        predictor_from_json(bad)


# ---- mechanisms added for the quiet 2-core profile (pool wake-up, contaminated rows) ---------

def test_calibration_on_two_cores_subtracts_a_wake_up_per_layer():
    """Summed single layers on k>1 each paid the thread pool's wake-up; a whole model pays it
    ~once. The fit recovers the subtracted per-layer term on cpu:2 and keeps it 0 on cpu:1."""
    wake = 0.03
    sizes = [(10, 5, 20), (30, 40, 60), (5, 1, 10), (20, 80, 50), (8, 3, 30), (50, 100, 70),
             (12, 30, 25), (40, 10, 80), (25, 60, 40), (6, 20, 15)]
    samples = [(s, w, n, 1.0 * s + 0.01 * w - wake * n) for s, w, n in sizes]
    scale, per_mb, per_layer = Calibration.fit(samples, cores=2)
    assert scale == pytest.approx(1.0, rel=0.02)
    assert per_layer == pytest.approx(-wake, rel=0.05)
    assert Calibration.fit(samples, cores=1)[2] == 0.0
    # a tiny layer keeps a share of its time instead of going negative
    assert Calibration.apply((1.0, 0.0, -wake), 0.004, add(7, 16)) == pytest.approx(
        Calibration.FLOOR * 0.004)
    assert Calibration.apply((1.0, 0.0, -wake), 1.0, add(7, 16)) == pytest.approx(1.0 - wake)


def test_mech_calibration_removes_per_layer_wake_up_on_two_cores(train_rows):
    descs = training_descs(seed=11)
    rng = np.random.default_rng(7)
    models = []
    for j in range(6):
        chosen = [descs[i] for i in rng.choice(len(descs), size=12, replace=False)]
        models.append(model_row(chosen, S1, f"net{j}", factor=1.0))
        # the whole model on 2 cores does not pay the 0.02 ms wake-up each single layer paid
        row = model_row(chosen, S2, f"net{j}", factor=1.0)
        models.append(ProfileRow("model", row.model, 0, 12, S2, "", row.median_ms - 0.02 * 12, 0.01, 10,
                                 "fp0", layer_keys=row.layer_keys))
    mech = make_predictor("mech").fit(train_rows + make_rows(descs) + models)
    assert mech.calibration_[str(S1)][2] == 0.0
    assert mech.calibration_[str(S2)][2] == pytest.approx(-0.02, abs=0.006)
    net = [conv(28, 32, 64), conv(14, 64, 128, 3, 2), conv(56, 16, 32, 1)]
    truth = sum(law(d, S2) for d in net) - 0.02 * len(net)
    assert mech.predict_total(net, S2) == pytest.approx(truth, rel=0.03)


def test_mech_layer_fit_shrugs_off_rows_measured_under_contention(train_rows):
    """Ten single layers on cpu:2 ran with one thread stalled (as slow as on one core): the
    robust fit keeps predicting the other layers from the mechanism."""
    rows = list(train_rows)
    hit = [i for i, r in enumerate(rows) if r.setup == S2 and r.descriptor.op == "CONV_2D"][:10]
    for i in hit:
        r = rows[i]
        rows[i] = ProfileRow("layer", r.model, r.start, r.end, S2, r.key, law(r.descriptor, S1), 0.01, 10,
                             "fp0", descriptor=r.descriptor)
    mech = make_predictor("mech").fit(rows)
    unseen = [conv(int(s), int(ci), int(co), 3) for s, ci, co in
              zip([14, 28, 56, 28, 14, 56, 28], [17, 33, 65, 100, 150, 24, 48], [9, 40, 31, 130, 66, 17, 100])]
    assert _mape(mech, unseen, S2) < 0.01  # a plain (non-robust) relative fit: ~4.5 %


def test_dwconv_features_are_work_and_l1_excess_only():
    """Nine-odd depthwise layers per held-out fold cannot carry seven coefficients: the dwconv
    model is a fixed cost, padded MACs on the busiest thread and the L1 excess."""
    fam, feat = mech_features(dwconv(28, 100), S2, 1, 16, 16)
    assert fam == "dwconv" and len(feat) == 3
    # rows split across two threads: 28 rows -> 14 per thread, channels padded 100 -> 112
    assert feat[1] == pytest.approx(14 * 28 * 112 * 9 / 1e6)
