"""SqueezeNet 1.0 (Iandola et al., 2016), the paper's architecture.

Eight fire modules (1x1 squeeze, then 1x1 and 3x3 expand joined by a
CONCATENATION: the concat branches the splitter's tests rely on), max pools
after conv1, fire4 and fire8, and a 1x1 conv10 to 1000 classes followed by
global average pooling (no FC). conv1 is 7x7/2 VALID (109x109 on 224);
pools use SAME padding (the reference uses ceil mode).
"""

from __future__ import annotations

from pipeit.tflite_builder import ModelBuilder, Tensor

__all__ = ["squeezenet", "FIRES"]

#: fire module -> (squeeze 1x1, expand 1x1, expand 3x3)
FIRES = {
    "fire2": (16, 64, 64), "fire3": (16, 64, 64), "fire4": (32, 128, 128),
    "fire5": (32, 128, 128), "fire6": (48, 192, 192), "fire7": (48, 192, 192),
    "fire8": (64, 256, 256), "fire9": (64, 256, 256),
}


def _fire(b: ModelBuilder, x: Tensor, name: str) -> Tensor:
    s, e1, e3 = FIRES[name]
    sq = b.conv2d(x, s, 1, name=f"{name}/squeeze1x1")
    return b.concatenation([b.conv2d(sq, e1, 1, name=f"{name}/expand1x1"),
                            b.conv2d(sq, e3, 3, name=f"{name}/expand3x3")], name=f"{name}/concat")


def squeezenet(b: ModelBuilder, x: Tensor) -> Tensor:
    """Class scores of SqueezeNet 1.0 (conv10 -> global average pool -> flatten)."""
    y = b.conv2d(x, 96, 7, 2, "VALID", name="conv1")
    y = b.max_pool(y, 3, 2, "SAME", name="pool1")
    for name in ("fire2", "fire3", "fire4"):
        y = _fire(b, y, name)
    y = b.max_pool(y, 3, 2, "SAME", name="pool4")
    for name in ("fire5", "fire6", "fire7", "fire8"):
        y = _fire(b, y, name)
    y = b.max_pool(y, 3, 2, "SAME", name="pool8")
    y = _fire(b, y, "fire9")
    y = b.conv2d(y, 1000, 1, name="conv10")
    y = b.avg_pool(y, y.shape[1], 1, "VALID", name="pool10")
    return b.reshape(y, (1, -1), name="flatten")
