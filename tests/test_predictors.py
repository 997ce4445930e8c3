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
