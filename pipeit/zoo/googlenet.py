"""GoogLeNet / Inception v1 (Szegedy et al., 2015), the paper's table 1.

Nine inception modules whose four branches (1x1; 1x1->3x3; 1x1->5x5;
3x3 max pool->1x1) join in a CONCATENATION: the concat branches the
splitter's tests rely on. LRN and the two auxiliary classifiers (training
only) are omitted; the global 7x7 average pool and the FC follow the paper.
"""

from __future__ import annotations

from pipeit.tflite_builder import ModelBuilder, Tensor

__all__ = ["googlenet", "INCEPTION_TABLE"]

#: name -> (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj), from the paper
INCEPTION_TABLE = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}


def _inception(b: ModelBuilder, x: Tensor, name: str) -> Tensor:
    c1, c3r, c3, c5r, c5, pp = INCEPTION_TABLE[name]
    s = f"inception_{name}"
    b1 = b.conv2d(x, c1, 1, name=f"{s}/1x1")
    b2 = b.conv2d(b.conv2d(x, c3r, 1, name=f"{s}/3x3_reduce"), c3, 3, name=f"{s}/3x3")
    b3 = b.conv2d(b.conv2d(x, c5r, 1, name=f"{s}/5x5_reduce"), c5, 5, name=f"{s}/5x5")
    b4 = b.conv2d(b.max_pool(x, 3, 1, "SAME", name=f"{s}/pool"), pp, 1, name=f"{s}/pool_proj")
    return b.concatenation([b1, b2, b3, b4], name=f"{s}/output")


def googlenet(b: ModelBuilder, x: Tensor) -> Tensor:
    """Logits (pre-softmax, output of the FC) of GoogLeNet."""
    y = b.conv2d(x, 64, 7, 2, name="conv1/7x7_s2")
    y = b.max_pool(y, 3, 2, "SAME", name="pool1/3x3_s2")
    y = b.conv2d(y, 64, 1, name="conv2/3x3_reduce")
    y = b.conv2d(y, 192, 3, name="conv2/3x3")
    y = b.max_pool(y, 3, 2, "SAME", name="pool2/3x3_s2")
    for name in ("3a", "3b"):
        y = _inception(b, y, name)
    y = b.max_pool(y, 3, 2, "SAME", name="pool3/3x3_s2")
    for name in ("4a", "4b", "4c", "4d", "4e"):
        y = _inception(b, y, name)
    y = b.max_pool(y, 3, 2, "SAME", name="pool4/3x3_s2")
    for name in ("5a", "5b"):
        y = _inception(b, y, name)
    y = b.avg_pool(y, 7, 1, "VALID", name="pool5/7x7_s1")
    y = b.reshape(y, (1, -1), name="flatten")
    return b.fully_connected(y, 1000, name="loss3/classifier")
