"""AlexNet (Krizhevsky et al., 2012), the original two-tower layer shapes.

conv2, conv4 and conv5 are grouped (groups=2) as in the paper's two-GPU
split, which is what gives the paper's ~0.72 G MACs. LRN is omitted (TFLite
has it, but no modern deployment keeps it) and dropout is an inference
no-op. conv1 uses SAME padding on the 224x224 input (56x56 out; the paper's
227 input gives 55x55), after which every shape matches the paper.
"""

from __future__ import annotations

from pipeit.tflite_builder import ModelBuilder, Tensor

__all__ = ["alexnet"]


def alexnet(b: ModelBuilder, x: Tensor) -> Tensor:
    """Logits (pre-softmax, output of the last FC) of AlexNet."""
    y = b.conv2d(x, 96, 11, 4, "SAME", "RELU", name="conv1")
    y = b.max_pool(y, 3, 2, "VALID", name="pool1")
    y = b.conv2d(y, 256, 5, 1, "SAME", "RELU", groups=2, name="conv2")
    y = b.max_pool(y, 3, 2, "VALID", name="pool2")
    y = b.conv2d(y, 384, 3, 1, "SAME", "RELU", name="conv3")
    y = b.conv2d(y, 384, 3, 1, "SAME", "RELU", groups=2, name="conv4")
    y = b.conv2d(y, 256, 3, 1, "SAME", "RELU", groups=2, name="conv5")
    y = b.max_pool(y, 3, 2, "VALID", name="pool5")
    y = b.reshape(y, (1, -1), name="flatten")
    y = b.fully_connected(y, 4096, "RELU", name="fc6")
    y = b.fully_connected(y, 4096, "RELU", name="fc7")
    return b.fully_connected(y, 1000, "NONE", name="fc8")
