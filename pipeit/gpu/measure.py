"""The GPU cluster's per-layer times and host<->device copy cost, measured where the GPU worker runs.

The DSE sees the GPU as one more cluster with one setup, ``gpu:1``
(docs/DSE.md). Its layer times come from the tuned kernels
(:func:`~pipeit.gpu.autotune.gpu_layer_times`: the tuning file's time where
the descriptor was tuned on this device, one measured heuristic config
elsewhere, ``math.inf`` where the GPU has no kernel). Its *copy model* is the
cost of moving a cut's tensors between host and device memory, which a GPU
stage pays at both of its ends on top of the shared-memory hop every stage
pays: one line ``fixed_ms + ms_per_byte * bytes`` per direction, fitted
through timed uploads and downloads (see :func:`measure_copy`).

A layer's time is its kernels' device time plus its share of the stage's
*launch overhead*: what a frame through a real GPU stage costs beyond its
kernels and its copies (the host enqueueing each launch, the driver
dispatching it, the wait at the end). On the H100 that was 2.43 ms a frame
for mobilenet_v2 against 0.5 ms of tuned kernels; kernel times alone had
the DSE predict plans with the GPU at 1.4-1.8x the rate they ran at.
:func:`measure_launch_overhead` times the longest contiguous run of layers
the GPU can take as one :class:`~pipeit.gpu.stage.GpuStage`, frame by frame
as the GPU worker runs it, and spreads what the wall time has beyond the
kernels and the copy model over the stage's launches; every layer is then
charged its launch count times that (``GpuTimes.launch_ms``).

Both are measured in a spawned process pinned to the GPU cluster's host CPU,
as the executor's GPU worker is: the host work (launches, and on pocl the
kernels themselves) runs where it will run in the pipeline, and the calling
process -- the CLI, the daemon, a benchmark -- keeps its own affinity and
never loads an OpenCL context.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import statistics
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

from cores.errors import first_line
from cores.model import Cluster
from pipeit.children import start_shielded
from pipeit.dse.cost import DEFAULT_DEVICE_COPY
from pipeit.errors import PipeitError
from pipeit.gpu.device import GpuError
from pipeit.transfer import HopModel, fit_hop_model

__all__ = [
    "COPY_SIZES",
    "DEFAULT_DEVICE_COPY",
    "TUNING_NAME",
    "GpuTimes",
    "default_tuning_path",
    "find_tuning",
    "measure_copy",
    "measure_gpu_times",
    "measure_launch_overhead",
]

#: bytes per timed copy: a small activation, a typical mid-network cut, a large early cut
COPY_SIZES: Tuple[int, ...] = (64 * 1024, 1024 * 1024, 4 * 1024 * 1024)

#: the tuning file looked up in the state directory when none is given
TUNING_NAME = "tuning.json"


@dataclass(frozen=True)
class GpuTimes:
    """What the DSE needs from one device: per-layer ms (inf = no kernel), the copy model, which device."""

    times: Tuple[float, ...]
    copy: HopModel
    device: str
    tuning: str = ""  # the tuning file used ("" = heuristic configs only)
    launch_ms: float = 0.0  # launch overhead per kernel launch, already in ``times``

    @property
    def supported(self) -> int:
        return sum(1 for t in self.times if math.isfinite(t))


def default_tuning_path() -> Path:
    """``$PIPEIT_STATE_DIR/tuning.json`` (``~/.local/state/pipeit/tuning.json``)."""
    from pipeit.daemon.state import state_dir

    return state_dir() / TUNING_NAME


def find_tuning(explicit: Optional[Union[str, Path]] = None) -> Optional[Path]:
    """The tuning file to use: ``explicit`` (which must exist), else the state directory's, else None."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise GpuError(f"tuning file {path} does not exist (make one with pipeit gpu tune MODEL -o {path})")
        return path
    path = default_tuning_path()
    return path if path.is_file() else None


def measure_copy(ctx: Any, sizes: Sequence[int] = COPY_SIZES, repeats: int = 7) -> HopModel:
    """One direction's copy line on ``ctx``'s device: the mean of upload and download, per size.

    Wall time of a blocking ``enqueue_copy`` (what the GPU worker waits for,
    driver overhead included), median of ``repeats`` after one warm-up; the
    line is :func:`pipeit.transfer.fit_hop_model` through the points.
    """
    import numpy as np

    cl = ctx.cl
    points = []
    for size in sizes:
        host = np.ones(max(int(size) // 4, 1), dtype=np.float32)
        back = np.empty_like(host)
        buf = cl.Buffer(ctx.context, cl.mem_flags.READ_WRITE, size=host.nbytes)
        up, down = [], []
        for k in range(repeats + 1):
            t0 = time.perf_counter()
            cl.enqueue_copy(ctx.queue, buf, host, is_blocking=True)
            t1 = time.perf_counter()
            cl.enqueue_copy(ctx.queue, back, buf, is_blocking=True)
            t2 = time.perf_counter()
            if k:
                up.append((t1 - t0) * 1e3)
                down.append((t2 - t1) * 1e3)
        buf.release()
        points.append((host.nbytes, 0.5 * (statistics.median(up) + statistics.median(down))))
    return fit_hop_model(points, source=f"measured on {ctx.info.name}")


#: frames of the timed stage, after warm-up frames (pocl finishes its builds at the first launch),
#: and the most seconds spent on them
OVERHEAD_WARMUP = 3
OVERHEAD_FRAMES = 21
OVERHEAD_MAX_S = 5.0


def _supported_runs(times: Sequence[float]) -> List[Tuple[int, int]]:
    """``[start, end)`` of every maximal run of layers with a kernel (``times`` finite), longest first."""
    runs, start = [], None
    for i, ms in enumerate(list(times) + [math.inf]):
        if math.isfinite(ms):
            start = i if start is None else start
        elif start is not None:
            runs.append((start, i))
            start = None
    return sorted(runs, key=lambda r: (r[0] - r[1], r[0]))


def measure_launch_overhead(model: Any, ctx: Any, table: Any, times: Sequence[float], copy: HopModel,
                            precision: str = "fp32") -> Tuple[float, Tuple[int, ...]]:
    """Per-launch overhead (ms) of a real GPU stage on ``ctx``, and each layer's launch count.

    Every maximal run of layers with a kernel (``times`` finite) is built as
    a :class:`~pipeit.gpu.stage.GpuStage` with the configs the GPU worker
    will use (``table``, else the heuristic), which gives each layer's
    launch count (0 where the GPU has no kernel, and for a RESHAPE, which
    aliases its input). The longest run is timed: the median wall time per
    frame of :meth:`GpuStage.run` (upload, launches, download, as the worker
    runs a frame) less the kernels' device time (``times``) and the copy
    model's price of its inputs and outputs, divided by its launches,
    floored at 0 (pocl's CPU device overlaps some of what its events count).
    """
    import numpy as np

    from pipeit.gpu.stage import GpuStage

    launches = [0] * len(times)
    stages = []
    for start, end in _supported_runs(times):
        try:
            stage = GpuStage(model, start, end, ctx=ctx, tuning=table, precision=precision)
        except (PipeitError, ValueError):  # a layer timed alone that a stage cannot hold: one launch
            launches[start:end] = [1] * (end - start)
            continue
        for spec, program in zip(stage.specs, stage.programs):
            launches[spec.layer] = len(program.launches)
        stages.append(stage)
    if not stages or not sum(launches[stages[0].start:stages[0].end]):
        return 0.0, tuple(launches)
    stage = stages[0]  # the longest run that built
    rng = np.random.default_rng(0)
    inputs = {t.name: rng.uniform(-1, 1, t.shape).astype(np.float32) for t in stage.inputs}
    walls: List[float] = []
    try:
        for _ in range(OVERHEAD_WARMUP):  # pocl finishes its builds at the first launch
            stage.run(inputs)
        deadline = time.perf_counter() + OVERHEAD_MAX_S
        while len(walls) < OVERHEAD_FRAMES and (len(walls) < 2 or time.perf_counter() < deadline):
            t0 = time.perf_counter()
            stage.run(inputs)
            walls.append((time.perf_counter() - t0) * 1e3)
    except (ctx.cl.Error, RuntimeError, PipeitError):  # the layers ran alone; the DSE keeps their kernel times
        return 0.0, tuple(launches)
    copies = sum(copy.hop_ms(int(np.prod(t.shape)) * stage.storage.itemsize) for t in stage.inputs + stage.outputs)
    kernels = sum(times[stage.start:stage.end])
    count = sum(launches[stage.start:stage.end])
    return max(0.0, (statistics.median(walls) - kernels - copies) / count), tuple(launches)


def _child(conn, model_bytes: bytes, device: Optional[str], cpus: Tuple[int, ...],
           tuning: Optional[str], precision: str) -> None:
    """Pin, open the device, time every layer and the copies, send the result (or the error line)."""
    try:
        if cpus:
            from cores.pinning import pin_all_threads

            pin_all_threads(cpus)
        from pipeit.gpu.autotune import gpu_layer_times
        from pipeit.gpu.device import make_context
        from pipeit.gpu.tuner import TuningFile

        ctx = make_context(device)
        table = TuningFile.load(tuning) if tuning else None
        from pipeit.modelfile import read_model

        model = read_model(model_bytes)
        times = gpu_layer_times(model, ctx, table, precision=precision)
        copy = measure_copy(ctx)
        launch_ms, launches = measure_launch_overhead(model, ctx, table, times, copy, precision)
        charged = tuple(float(t) + n * launch_ms if math.isfinite(t) else float(t) for t, n in zip(times, launches))
        warning = table.not_for_device(ctx.info, str(tuning)) if table is not None else None
        conn.send(("ok", (charged, copy.to_json(), ctx.info.name, launch_ms, warning)))
    except Exception as err:  # one clear line travels back; the parent raises it
        text = first_line(err)
        conn.send(("error", text))
    finally:
        conn.close()


def measure_gpu_times(model: Union[str, Path, bytes], cluster: Cluster, tuning: Optional[Union[str, Path]] = None,
                      precision: str = "fp32", pin: bool = True, timeout_s: float = 900.0) -> GpuTimes:
    """Per-layer GPU ms and the copy model of ``model`` on ``cluster``'s device, in a pinned process.

    ``tuning`` is a tuning file path (see :func:`find_tuning`). A device that
    does not exist, a missing pyopencl, or a corrupt tuning file is a
    :class:`GpuError` with the child's one-line reason.
    """
    if cluster.kind != "gpu":
        raise GpuError(f"cluster {cluster.name!r} is not a GPU cluster")
    data = model if isinstance(model, bytes) else Path(model).read_bytes()
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    cpus = tuple(cluster.cpus) if pin else ()
    proc = ctx.Process(target=_child, args=(child, data, cluster.device, cpus,
                                            None if tuning is None else str(tuning), precision),
                       daemon=True, name=f"pipeit-gpu-times-{cluster.name}")
    start_shielded(proc)
    child.close()
    try:
        if not parent.poll(timeout_s):
            raise GpuError(f"measuring GPU layer times on {cluster.core_type} took over {timeout_s:.0f} s")
        try:
            kind, value = parent.recv()
        except EOFError:
            raise GpuError(f"the GPU timing process for {cluster.name!r} died (exit {proc.exitcode})") from None
    finally:
        proc.join(5)
        if proc.is_alive():
            proc.terminate()
            proc.join(5)
        parent.close()
    if kind != "ok":
        raise GpuError(f"GPU cluster {cluster.name!r} ({cluster.core_type}): {value}")
    times, copy_doc, name, launch_ms, warning = value
    if warning:
        warnings.warn(warning, stacklevel=2)
    return GpuTimes(times=tuple(times), copy=HopModel.from_json(copy_doc), device=name,
                    tuning="" if tuning is None else str(tuning), launch_ms=float(launch_ms))
