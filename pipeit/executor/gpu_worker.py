"""The runner of a stage worker placed on a GPU cluster: a layer range on an OpenCL device.

The worker process is the same as a CPU worker's (:mod:`pipeit.executor.worker`:
pinned first, same rings, same protocol); only its runner differs. A
:class:`GpuRunner` pins nothing itself: the worker has already pinned the
process to the GPU cluster's host CPU, so the OpenCL driver's threads (pocl
starts its own) inherit that one core.

It runs a :class:`~pipeit.gpu.stage.GpuStage` over the stage's layers of the
*whole* model (the stage's TFLite sub-model file, ``WorkerConfig.model_path``,
is kept as the CPU reference that calibration compares with), with the
calibration ladder of :mod:`pipeit.gpu.calibration`.

Nothing heavy is imported at module level: a :class:`GpuWorkerSpec` travels
inside the pickled :class:`~pipeit.executor.worker.WorkerConfig`, and the
spawned child unpickles it before it has pinned itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

__all__ = ["GpuWorkerSpec", "GpuOptions", "GpuRunner", "gpu_stages", "check_gpu_devices"]


def gpu_stages(plan: Any) -> Tuple[int, ...]:
    """Indices of the plan's stages that have a worker on a cluster of kind ``"gpu"``."""
    found = []
    for k, stage in enumerate(plan.stages):
        for worker in stage.workers:
            names = worker.cluster.split("+")
            if len(names) == 1 and getattr(plan.platform.cluster(names[0]), "kind", "cpu") == "gpu":
                found.append(k)
                break
    return tuple(found)


def check_gpu_devices(plan: Any) -> None:
    """Refuse, in one line, a plan whose GPU clusters have no OpenCL device here (before any process starts).

    A plan with GPU stages also clears the pocl cache folders that killed GPU workers of earlier
    pipelines left behind (:func:`~pipeit.gpu.device.remove_stale_pocl_dirs`).
    """
    from pipeit.errors import ExecutorError, PipeitError

    stages = gpu_stages(plan)
    if stages:
        from pipeit.gpu.device import remove_stale_pocl_dirs

        remove_stale_pocl_dirs()
    for k in stages:
        for worker in plan.stages[k].workers:
            cluster = plan.platform.cluster(worker.cluster)
            if getattr(cluster, "kind", "cpu") != "gpu":
                continue
            from pipeit.gpu.device import select_device

            try:
                select_device(cluster.device)
            except PipeitError as err:
                raise ExecutorError(f"stage {k} runs on GPU cluster {cluster.name!r}, but {err}") from err


@dataclass(frozen=True)
class GpuWorkerSpec:
    """What a GPU worker runs; plain data (tables and policy as JSON dicts) so it pickles without numpy."""

    model_path: str  # the whole model: GpuStage runs layers [start, end) of it
    layers: Tuple[int, int]
    device: Optional[str] = None  # the cluster's OpenCL device selector
    tuning_path: Optional[str] = None
    ladder: Tuple[dict, ...] = ()  # Table.to_json() per rung, loosest first; () = fp32 only
    policy: Optional[dict] = None  # CalibrationPolicy.to_json(); None = no run-time calibration
    start_level: int = 0  # the rung to start on (a restarted worker keeps the rung it had reached)
    #: the worker's GPU outputs failed a CPU check on the last rung: a restarted worker answers from TFLite
    #: at once, rather than serving wrong outputs again until its first check
    on_cpu: bool = False


@dataclass(frozen=True)
class GpuOptions:
    """How a :class:`~pipeit.executor.pipeline.Pipeline` runs its GPU stages.

    ``tables`` maps a layer range ``(start, end)`` to its candidate
    :class:`~pipeit.gpu.calibration.Table` s (from accuracy tuning or by hand);
    :func:`~pipeit.gpu.calibration.choose_ladder` turns them into the ladder
    for ``tolerance``. ``policy`` defaults to ``CalibrationPolicy(tolerance)``;
    ``calibrate=False`` runs the first rung and never checks it.
    """

    tuning: Optional[str] = None
    tables: Mapping[Tuple[int, int], Tuple[Any, ...]] = field(default_factory=dict)
    tolerance: float = 1e-4
    policy: Any = None
    calibrate: bool = True

    def spec_for(self, model_path: str, layers: Tuple[int, int], device: Optional[str]) -> GpuWorkerSpec:
        """The worker spec of one GPU stage (call in the main process: it imports numpy)."""
        from pipeit.gpu.calibration import CalibrationPolicy, choose_ladder

        ladder = choose_ladder(tuple(self.tables.get(tuple(layers), ())), self.tolerance)
        _check_stage_configs(model_path, (int(layers[0]), int(layers[1])), device, self.tuning, ladder)
        policy = None
        if self.calibrate:
            policy = (self.policy or CalibrationPolicy(tolerance=self.tolerance)).to_json()
        return GpuWorkerSpec(
            model_path=str(model_path), layers=(int(layers[0]), int(layers[1])), device=device,
            tuning_path=str(self.tuning) if self.tuning else None,
            ladder=tuple(t.to_json() for t in ladder), policy=policy,
        )


def _check_stage_configs(model_path: str, layers: Tuple[int, int], device: Optional[str],
                         tuning_path: Optional[str], ladder: Tuple[Any, ...]) -> None:
    """Refuse, in the main process before any worker starts, a tuning file or a table with a kernel config
    that does not fit one of the stage's layers on its device (one line naming the file and the layer),
    instead of a worker failing its start with a bare ``ZeroDivisionError`` or an OpenCL error."""
    from pipeit.gpu.configcheck import check_table_configs, check_tuning_configs
    from pipeit.gpu.device import select_device
    from pipeit.modelfile import read_model

    if not tuning_path and not any(t.configs for t in ladder):
        return
    info = select_device(device)
    model = read_model(model_path)
    start, end = layers
    if tuning_path:
        from pipeit.gpu.tuner import TuningFile

        check_tuning_configs(TuningFile.load(tuning_path), str(tuning_path), model, info, range(start, end))
    check_table_configs(ladder, model, start, end, info)


class GpuRunner:
    """A stage's layers on an OpenCL device, calibrated on sampled frames (the runner interface).

    ``run`` returns fresh arrays. On a sampled frame whose CPU check fails,
    the frame's result is the CPU's (exact) one, and the next frame runs on
    the next more precise table, built then (its kernels compile on that
    frame: seconds on pocl, tens of milliseconds on a GPU driver with a
    binary cache). When the last table fails, there is none left: every
    later frame runs on the CPU reference (:attr:`on_cpu`).
    """

    def __init__(self, config: Any) -> None:
        import numpy as np

        from pipeit.gpu.calibration import FP32, CalibrationPolicy, Calibrator, Table
        from pipeit.gpu.device import make_context
        from pipeit.modelfile import read_model

        spec: GpuWorkerSpec = config.gpu
        self._config = config
        self._spec = spec
        self._model = read_model(spec.model_path)
        self._ctx = make_context(spec.device)
        self._tuning = None
        if spec.tuning_path:
            from pipeit.gpu.tuner import TuningFile

            self._tuning = TuningFile.load(spec.tuning_path)
        self.ladder = tuple(Table.from_json(d) for d in spec.ladder) or (FP32,)
        level = min(max(int(spec.start_level), 0), len(self.ladder) - 1)
        self.calibrator: Optional[Calibrator] = None
        if spec.policy is not None:
            self.calibrator = Calibrator(self.ladder, CalibrationPolicy.from_json(spec.policy), level)
        self.level = level
        self.stage = self._build(level)
        self._reference: Any = None
        if self.calibrator is not None or spec.on_cpu:
            from pipeit.executor.worker import TfliteRunner

            self._reference = TfliteRunner(config)
        self._frames = 0
        self._notes: List[dict] = []
        #: set once the ladder's last (most precise) table failed a CPU check: from then on the stage's
        #: TFLite sub-model answers every frame, as the GPU's outputs are known to be wrong (a restarted
        #: worker inherits it through its spec)
        self.on_cpu = bool(spec.on_cpu)
        # the first launch compiles the work-group functions (pocl): do it before "ready"
        self.stage.run({t.name: np.zeros(t.shape, np.float32) for t in self.stage.inputs})

    def _build(self, level: int) -> Any:
        from pipeit.gpu.stage import GpuStage

        table = self.ladder[level]
        start, end = self._spec.layers
        return GpuStage(self._model, int(start), int(end), ctx=self._ctx,
                        configs=dict(table.configs) or None, tuning=self._tuning,
                        precision=table.storage, precisions=dict(table.precisions) or None)

    def io(self) -> Tuple[Dict[str, Tuple[Tuple[int, ...], str]], Tuple[str, ...]]:
        """(input name -> (shape, dtype name), output names), as the serving loop checks them."""
        return ({t.name: (tuple(t.shape), t.dtype) for t in self.stage.inputs},
                tuple(t.name for t in self.stage.outputs))

    @property
    def table(self) -> str:
        return self.ladder[self.level].name

    def _cpu(self, inputs: Mapping[str, Any]) -> Dict[str, Any]:
        return {k: v.copy() for k, v in self._reference.run(inputs).items()}

    def run(self, inputs: Mapping[str, Any]) -> Dict[str, Any]:
        frame = self._frames
        self._frames += 1
        if self.on_cpu:
            return self._cpu(inputs)
        outputs = self.stage.run(inputs)
        calibrator = self.calibrator
        kind = calibrator.sample(frame) if calibrator is not None else None
        if kind is None:
            return outputs
        reference = self._cpu(inputs) if kind == "check" else None
        switch = calibrator.observe(frame, outputs, reference)
        if switch is None:
            return outputs
        note = switch.to_json()
        note["message"] = switch.describe()
        self._notes.append(note)
        if switch.to_level != self.level:
            self.level = switch.to_level
            self.stage = self._build(self.level)
        else:
            self._fall_back_to_cpu(note)
        return reference if reference is not None else outputs

    def _fall_back_to_cpu(self, note: dict) -> None:
        """The most precise table degraded: serve every later frame from the TFLite sub-model.

        Keeping the GPU stage would serve outputs the worker knows to be wrong
        on every frame between two checks; the reference interpreter exists
        already (a degradation needs calibration, and calibration has it), so
        the stage stays correct, at the CPU's speed.
        """
        start, end = self._spec.layers
        self.on_cpu = True
        note["fallback"] = "cpu"
        note["message"] = (f"{note['message']}: layers [{start}, {end}) run on the CPU (TFLite) "
                           f"from now on")

    def take_notes(self) -> Tuple[dict, ...]:
        """Calibration switches since the last call (the worker sends them to the main process)."""
        if not self._notes:
            return ()
        notes, self._notes = tuple(self._notes), []
        return notes
