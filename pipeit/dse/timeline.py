"""A predicted timeline of frames through a plan's stages, and its plot.

Frames enter back to back (a camera faster than the pipeline); at each
stage a frame goes to whichever of the stage's workers is free first, and
it can start only when the previous stage has finished it. This is how the
executor deals frames, so the picture shows where a plan waits: the
bottleneck stage's workers are busy all the time, the others idle.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Tuple, Union

from pipeit.errors import PlanError
from pipeit.plan import Plan

__all__ = ["Slot", "simulate", "stage_loads", "plot_timeline"]


@dataclass(frozen=True)
class Slot:
    """Frame ``frame`` on worker ``worker`` of stage ``stage`` from ``start_ms`` to ``end_ms``."""

    frame: int
    stage: int
    worker: int
    start_ms: float
    end_ms: float


def simulate(plan: Plan, frames: int = 6) -> List[Slot]:
    """Predicted slots of the first ``frames`` frames (worker times from the plan)."""
    if frames < 1:
        raise PlanError(f"a timeline needs at least one frame, got {frames}")
    free = [[0.0] * len(stage.workers) for stage in plan.stages]
    slots: List[Slot] = []
    for frame in range(frames):
        ready = 0.0
        for s, stage in enumerate(plan.stages):
            w = min(range(len(stage.workers)), key=lambda i: (max(free[s][i], ready), i))
            start = max(free[s][w], ready)
            end = start + stage.workers[w].predicted_ms
            free[s][w] = end
            slots.append(Slot(frame, s, w, start, end))
            ready = end
    return slots


def stage_loads(plan: Plan) -> Tuple[float, ...]:
    """Fraction of each stage's capacity the plan's throughput uses (1.0 = the bottleneck)."""
    return tuple(
        plan.predicted_fps / stage.predicted_fps if stage.predicted_fps > 0 else 0.0 for stage in plan.stages
    )


def plot_timeline(plan: Plan, path: Union[str, Path], frames: int = 6) -> None:
    """Write a PNG: one lane per worker, one colour per frame, each stage's load in its label."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlanError("--plot needs matplotlib (pip install 'pipeit[plot]')") from None
    slots = simulate(plan, frames)
    loads = stage_loads(plan)
    lanes = [(s, w) for s, stage in enumerate(plan.stages) for w in range(len(stage.workers))]
    lane_of = {lane: i for i, lane in enumerate(lanes)}
    fig, ax = plt.subplots(figsize=(10, 1.0 + 0.45 * len(lanes)))
    colours = plt.get_cmap("tab10")
    for slot in slots:
        y = lane_of[(slot.stage, slot.worker)]
        ax.barh(y, slot.end_ms - slot.start_ms, left=slot.start_ms, color=colours(slot.frame % 10),
                edgecolor="black", linewidth=0.4)
        ax.text((slot.start_ms + slot.end_ms) / 2, y, str(slot.frame), ha="center", va="center", fontsize=7)
    labels = []
    for s, w in lanes:
        stage = plan.stages[s]
        worker = stage.workers[w]
        labels.append(f"S{s} [{stage.layers[0]},{stage.layers[1]}) {worker.cluster}:{worker.threads}"
                      f"  load {100 * loads[s]:.0f}%")
    ax.set_yticks(range(len(lanes)))
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ms")
    ax.set_title(f"{plan.model}: {plan.strategy}, {plan.predicted_fps:.1f} fps predicted, "
                 f"{plan.predicted_latency_ms:.1f} ms latency")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    except OSError as err:
        raise PlanError(f"{path}: cannot write the plot ({err})") from err
    finally:
        plt.close(fig)
