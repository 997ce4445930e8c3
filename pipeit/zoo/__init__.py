"""The reference zoo: the CNNs of the Pipe-it line of work as real ``.tflite`` files.

Why generated: the repository carries no model files; every test, demo and
benchmark builds what it needs here, deterministically from a seed. The
architectures follow the original papers' layer shapes (see each module's
docstring for the variant and what is omitted); weights are seeded random
(He-style), so the files time and split like the real networks but do not
classify anything.

Input is ``1x224x224x3`` float32 (int8 with ``int8=True``), values in [-1, 1].
Output is a 1000-way softmax. After building, the layer that produces the
logits is rescaled so the logits have a standard deviation of
:data:`LOGIT_STD` on a seeded input: random weights otherwise give a nearly
flat softmax, which int8's 1/256 output step would turn into zeros.

Example
-------
>>> from pipeit import zoo
>>> data = zoo.build("mobilenet_v2", seed=0)       # bytes of a real .tflite
>>> zoo.list_models()[:2]
['alexnet', 'googlenet']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Tuple

import numpy as np

from pipeit.errors import InputError
from pipeit.tflite_builder import ModelBuilder, Tensor
from pipeit.zoo.alexnet import alexnet
from pipeit.zoo.googlenet import googlenet
from pipeit.zoo.mobilenet import mobilenet_v1, mobilenet_v2
from pipeit.zoo.resnet import resnet50
from pipeit.zoo.squeezenet import squeezenet

__all__ = ["ZooEntry", "ZOO", "INPUT_SHAPE", "LOGIT_STD", "list_models", "describe", "builder", "build"]

INPUT_SHAPE = (1, 224, 224, 3)
#: target standard deviation of the logits (gives a softmax with a clear top class)
LOGIT_STD = 3.0


@dataclass(frozen=True)
class ZooEntry:
    """One architecture: its graph function and a one-line description."""

    name: str
    description: str
    graph: Callable[[ModelBuilder, Tensor], Tensor]


ZOO: Dict[str, ZooEntry] = {
    e.name: e
    for e in (
        ZooEntry("alexnet", "AlexNet (2012), original grouped two-tower shapes, LRN omitted, ~0.72 G MACs",
                 alexnet),
        ZooEntry("googlenet", "GoogLeNet / Inception v1 (2015), 9 inception modules (concat), ~1.6 G MACs",
                 googlenet),
        ZooEntry("mobilenet_v1", "MobileNet v1 1.0/224 (2017), depthwise separable, ~0.57 G MACs",
                 mobilenet_v1),
        ZooEntry("mobilenet_v2", "MobileNet v2 1.0/224 (2018), inverted residuals (add), ~0.30 G MACs",
                 mobilenet_v2),
        ZooEntry("resnet50", "ResNet-50 v1.5 (2016), bottleneck residuals (add), ~4.1 G MACs", resnet50),
        ZooEntry("squeezenet", "SqueezeNet 1.0 (2016), 8 fire modules (concat), ~0.8 G MACs", squeezenet),
    )
}


def list_models() -> List[str]:
    """Names of the zoo's architectures, sorted."""
    return sorted(ZOO)


def describe(name: str) -> str:
    """The one-line description of ``name``."""
    return _entry(name).description


def _entry(name: str) -> ZooEntry:
    if name not in ZOO:
        raise InputError(f"unknown zoo model {name!r}; choose one of {', '.join(list_models())}")
    return ZOO[name]


_LINEAR_PASSTHROUGH = ("RESHAPE", "AVERAGE_POOL_2D", "MEAN")
_LAYERS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def _logit_layer(b: ModelBuilder, logits: Tensor) -> Tensor:
    """The conv/FC whose weights scale the logits linearly (through pools/reshapes)."""
    producers = {outs[0]: (op, ins) for op, ins, outs in b.ops()}
    index = logits.index
    while True:
        op, ins = producers[index]
        if op in _LAYERS:
            return b._handle(index)  # noqa: SLF001 - same package, read-only handle
        if op not in _LINEAR_PASSTHROUGH:
            raise InputError(f"logits reach a {op} before any conv/FC layer")
        index = ins[0]


def _normalise_logits(b: ModelBuilder, logits: Tensor, seed: int) -> None:
    from pipeit.quantize import activation_values, calibration_inputs

    feed = calibration_inputs(b, 1, seed)
    values = next(activation_values(b, feed))[logits.index]
    std = float(np.std(values))
    if std > 0 and np.isfinite(std):
        b.scale_layer(_logit_layer(b, logits), LOGIT_STD / std)


def builder(name: str, seed: int = 0) -> Tuple[ModelBuilder, Tensor]:
    """The recorded graph of ``name`` (logits normalised) and its logits tensor."""
    entry = _entry(name)
    b = ModelBuilder(seed, description=f"pipeit zoo: {name} (seed {seed})")
    x = b.input("input", INPUT_SHAPE)
    logits = entry.graph(b, x)
    b.output(b.softmax(logits, name="probabilities"))
    _normalise_logits(b, logits, seed)
    return b, logits


def build(name: str, int8: bool = False, seed: int = 0, fp16_weights: bool = False,
          sparse_weights: float = 0.0) -> bytes:
    """``.tflite`` bytes of zoo model ``name`` (float32, fp16 weights, or full int8); ``sparse_weights``
    prunes that fraction of each filter and stores the rest sparse behind ``DENSIFY`` (float32 or
    fp16 weights)."""
    if int8 and (fp16_weights or sparse_weights):
        raise InputError("--int8 takes neither --fp16-weights nor --sparse-weights")
    b, _ = builder(name, seed)
    return b.to_bytes(int8=int8, fp16_weights=fp16_weights, calibration_seed=seed, sparse_weights=sparse_weights)
