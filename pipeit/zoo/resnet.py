"""ResNet-50 v1.5 (He et al., 2016; the torchvision/NVIDIA variant).

v1.5 puts the stride of a downsampling bottleneck on its 3x3 conv instead
of its first 1x1 (v1): ~4.1 G MACs instead of ~3.9 G. Every bottleneck ends
in an ADD with a fused RELU, with a 1x1 projection shortcut where the shape
changes: the residual branches the splitter's tests rely on. Batch norm is
folded into the convs.
"""

from __future__ import annotations

from pipeit.tflite_builder import ModelBuilder, Tensor

__all__ = ["resnet50", "RESNET50_STAGES"]

#: (bottleneck width, blocks, first stride) per stage
RESNET50_STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))


def _bottleneck(b: ModelBuilder, x: Tensor, width: int, stride: int, name: str) -> Tensor:
    out = 4 * width
    h = b.conv2d(x, width, 1, name=f"{name}/conv1")
    h = b.conv2d(h, width, 3, stride, name=f"{name}/conv2")
    # a small last-layer gain keeps the residual sum from growing block by block
    h = b.conv2d(h, out, 1, activation="NONE", gain=0.5, name=f"{name}/conv3")
    if stride != 1 or x.channels != out:
        x = b.conv2d(x, out, 1, stride, activation="NONE", name=f"{name}/shortcut")
    return b.add(x, h, activation="RELU", name=f"{name}/add")


def resnet50(b: ModelBuilder, x: Tensor) -> Tensor:
    """Logits of ResNet-50 v1.5 (global MEAN, then FC)."""
    y = b.conv2d(x, 64, 7, 2, name="conv1")
    y = b.max_pool(y, 3, 2, "SAME", name="pool1")
    for s, (width, blocks, stride) in enumerate(RESNET50_STAGES, start=2):
        for i in range(blocks):
            y = _bottleneck(b, y, width, stride if i == 0 else 1, f"conv{s}_block{i + 1}")
    y = b.mean(y, (1, 2), name="global_pool")
    return b.fully_connected(y, 1000, name="fc1000")
