"""MobileNet v1 (Howard et al., 2017) and v2 (Sandler et al., 2018), width 1.0, 224.

Batch norm is folded into each conv (a bias); activations are RELU6 as in
the TensorFlow reference models. v2's inverted residual blocks with stride 1
and equal widths end in an ADD: the residual branches the splitter's tests
rely on. v2's projection convs are linear (no activation), as in the paper.
"""

from __future__ import annotations

from pipeit.tflite_builder import ModelBuilder, Tensor

__all__ = ["mobilenet_v1", "mobilenet_v2", "V1_LAYERS", "V2_BLOCKS"]

#: (pointwise output channels, depthwise stride) per separable block, from the paper's table 1
V1_LAYERS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
             (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))
#: (expansion t, output channels c, repeats n, first stride s), from the paper's table 2
V2_BLOCKS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
             (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def mobilenet_v1(b: ModelBuilder, x: Tensor) -> Tensor:
    """Logits of MobileNet v1 1.0/224 (global 7x7 average pool, then FC)."""
    y = b.conv2d(x, 32, 3, 2, activation="RELU6", name="conv_0")
    for i, (channels, stride) in enumerate(V1_LAYERS, start=1):
        y = b.depthwise_conv2d(y, 3, stride, activation="RELU6", name=f"conv_dw_{i}")
        y = b.conv2d(y, channels, 1, activation="RELU6", name=f"conv_pw_{i}")
    y = b.avg_pool(y, 7, 1, "VALID", name="avg_pool")
    y = b.reshape(y, (1, -1), name="flatten")
    return b.fully_connected(y, 1000, name="logits")


def mobilenet_v2(b: ModelBuilder, x: Tensor) -> Tensor:
    """Logits of MobileNet v2 1.0/224 (global MEAN, then FC)."""
    y = b.conv2d(x, 32, 3, 2, activation="RELU6", name="conv_0")
    block = 0
    for t, c, n, s in V2_BLOCKS:
        for r in range(n):
            stride = s if r == 0 else 1
            name = f"block_{block}"
            cin = y.channels
            h = y
            if t != 1:
                h = b.conv2d(h, cin * t, 1, activation="RELU6", name=f"{name}/expand")
            h = b.depthwise_conv2d(h, 3, stride, activation="RELU6", name=f"{name}/depthwise")
            residual = stride == 1 and cin == c
            h = b.conv2d(h, c, 1, activation="NONE", gain=0.5 if residual else 1.0, name=f"{name}/project")
            y = b.add(y, h, name=f"{name}/add") if residual else h
            block += 1
    y = b.conv2d(y, 1280, 1, activation="RELU6", name="conv_last")
    y = b.mean(y, (1, 2), name="global_pool")
    return b.fully_connected(y, 1000, name="logits")
