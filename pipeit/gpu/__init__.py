"""The OpenCL GPU stage (the P-CNN path): kernels, tuning, and a stage that runs a layer range.

pyopencl is optional: importing this package never needs it; asking for a
device without it raises :class:`~pipeit.gpu.device.GpuError` with the
install hint. Modules:

* :mod:`~pipeit.gpu.device` -- list/select OpenCL devices, a context with a program cache;
* :mod:`~pipeit.gpu.kernels` -- OpenCL C templates (conv direct/GEMM/im2col/Winograd, ...);
* :mod:`~pipeit.gpu.lowering` -- a TFLite layer to a kernel spec, or why it stays on the CPU;
* :mod:`~pipeit.gpu.space` -- each kernel's tunable parameters;
* :mod:`~pipeit.gpu.program` -- one layer's kernels built and launched;
* :mod:`~pipeit.gpu.stage` -- :class:`GpuStage`, a contiguous layer range on the device;
* :mod:`~pipeit.gpu.tuner` -- ask/tell search (random, cost-model guided) and the tuning file.
* :mod:`~pipeit.gpu.costmodel` -- the search's cost models (boosted trees, a transfer prior).
"""

from __future__ import annotations

from pipeit.gpu.device import (
    ENV_DEVICE,
    DeviceInfo,
    GpuContext,
    GpuError,
    list_devices,
    make_context,
    opencl_available,
    require_opencl,
    select_device,
)
from pipeit.gpu.lowering import LayerSpec, Unsupported, lower_layer, support_table

__all__ = [
    "ENV_DEVICE",
    "DeviceInfo",
    "GpuContext",
    "GpuError",
    "LayerSpec",
    "Unsupported",
    "list_devices",
    "lower_layer",
    "make_context",
    "opencl_available",
    "require_opencl",
    "select_device",
    "support_table",
]
