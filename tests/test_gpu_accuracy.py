"""Accuracy tuning: the fastest variants within a tolerance of float32 TFLite, or an honest fallback."""

from __future__ import annotations

import pytest

pytest.importorskip("pyopencl")

from pipeit.gpu.accuracy import evaluate, tune_accuracy  # noqa: E402
from pipeit.gpu.check import random_inputs  # noqa: E402
from pipeit.gpu.device import make_context  # noqa: E402
from pipeit.modelfile import read_model  # noqa: E402
from pipeit.tflite_builder import ModelBuilder  # noqa: E402


@pytest.fixture(scope="module")
def setup():
    b = ModelBuilder(seed=0)
    x = b.input("input", (1, 16, 16, 8))
    y = b.conv2d(x, 16, kernel=3, activation="RELU")  # layer 0: Winograd-eligible
    y = b.conv2d(y, 16, kernel=3, stride=2, activation="RELU")  # layer 1: not (stride 2)
    b.output(b.softmax(b.fully_connected(b.mean(y, (1, 2)), 10)))
    model = read_model(b.to_bytes())
    tensor = type("T", (), {"name": "input", "shape": (1, 16, 16, 8)})
    calibration = [random_inputs([tensor], seed=s) for s in range(2)]
    return model, make_context(), calibration


def test_impossible_tolerance_falls_back_to_fp32_and_says_so(setup):
    model, ctx, calibration = setup
    plan = tune_accuracy(model, 0, 4, ctx, calibration, tolerance=1e-15, repeats=1)
    assert plan.storage == "fp32" and plan.fast_layers == ()
    assert "no variant meets tolerance" in plan.note


def test_loose_tolerance_plan_meets_it_and_only_uses_eligible_layers(setup):
    model, ctx, calibration = setup
    plan = tune_accuracy(model, 0, 4, ctx, calibration, tolerance=1e-3, repeats=1)
    assert plan.note == ""
    assert plan.meets(1e-3)
    assert set(plan.fast_layers) <= {0} or plan.storage == "fp16-storage"
    _, error, top1 = evaluate(model, 0, 4, ctx, calibration, plan.storage, plan.configs,
                              plan.precisions, repeats=1)
    assert error <= 1e-3 and top1 == 1.0
