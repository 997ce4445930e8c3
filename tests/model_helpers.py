"""Small models more than one test module builds (generated here, never committed)."""

from __future__ import annotations

from pipeit.tflite_builder import ModelBuilder


def dead_branch_builder(seed: int = 20) -> ModelBuilder:
    """stem -> (a 1x1 conv whose output nobody reads); stem -> c2 -> add(stem, c2) -> mean -> fc.

    LiteRT runs it; pipeit leaves the dead conv out of its layers (``LayerGraph.pruned_ops``).
    """
    b = ModelBuilder(seed=seed)
    x = b.input("input", (1, 12, 12, 3))
    a = b.conv2d(x, 8, 3, stride=2, name="stem")
    b.conv2d(a, 4, 1, name="dead")
    c = b.conv2d(a, 8, 3, name="c2")
    b.output(b.fully_connected(b.mean(b.add(a, c, name="res")), 5, name="fc"))
    return b
