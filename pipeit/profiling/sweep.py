"""``pipeit profile --sweep N``: generated single layers over the descriptor space.

Zoo models cover only the shapes their authors chose; a predictor fitted on
them alone learns those shapes. The sweep samples conv k x k, 1x1 and
strided conv, depthwise, FC, pooling and add layers with odd and even
channel counts and spatial sizes from 7 to 224, then *adapts*: after each
round the current ``mech`` predictor is fitted on everything measured so far
and half of the next round perturbs the configurations it fits worst
(channel counts across tile boundaries, neighbouring sizes), so the
samples go where the model is wrong.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import List, Sequence

import numpy as np

from pipeit.profile_table import ProfileRow
from pipeit.progress import Progress

__all__ = ["LayerConfig", "random_config", "perturb", "config_job", "run_sweep"]

_SIZES = (7, 14, 28, 56, 112, 224)
_MAX_MACS = 4e8  # keep one layer under ~30 ms on a slow core


@dataclass(frozen=True)
class LayerConfig:
    """One generated layer (arguments of :func:`pipeit.tflite_builder.single_layer_model`)."""

    op: str
    size: int
    cin: int
    cout: int
    kernel: int = 1
    stride: int = 1

    def shape(self):
        return (1, self.cin) if self.op == "fc" else (1, self.size, self.size, self.cin)

    def macs(self) -> float:
        out = math.ceil(self.size / self.stride) ** 2
        if self.op == "conv":
            return out * self.cout * self.cin * self.kernel ** 2
        if self.op == "depthwise":
            return out * self.cin * self.kernel ** 2
        if self.op == "fc":
            return self.cin * self.cout
        return out * self.cin * max(self.kernel, 1) ** 2


def _channels(rng: np.random.Generator, lo: int = 3, hi: int = 512) -> int:
    c = int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))
    if rng.random() < 0.5:
        c += int(rng.integers(-1, 2))  # odd and even counts around every value
    return max(c, 1)


def random_config(rng: np.random.Generator) -> LayerConfig:
    kind = rng.choice(["conv3", "conv1", "convk", "dw", "fc", "pool", "add"],
                      p=[0.24, 0.2, 0.08, 0.2, 0.08, 0.1, 0.1])
    size = int(rng.choice(_SIZES)) if rng.random() < 0.6 else int(rng.integers(7, 225))
    for _ in range(50):
        if kind == "conv3":
            cfg = LayerConfig("conv", size, _channels(rng), _channels(rng), 3, int(rng.choice([1, 1, 2])))
        elif kind == "conv1":
            cfg = LayerConfig("conv", size, _channels(rng, 8), _channels(rng), 1, 1)
        elif kind == "convk":
            cfg = LayerConfig("conv", size, _channels(rng, 3, 128), _channels(rng, 8, 256),
                              int(rng.choice([5, 7])), int(rng.choice([1, 2])))
        elif kind == "dw":
            cfg = LayerConfig("depthwise", size, _channels(rng, 8, 1024), 0, int(rng.choice([3, 3, 5])),
                              int(rng.choice([1, 2])))
        elif kind == "fc":
            cfg = LayerConfig("fc", 1, _channels(rng, 64, 4096), _channels(rng, 10, 4096))
        elif kind == "pool":
            cfg = LayerConfig(str(rng.choice(["max_pool", "avg_pool"])), size, _channels(rng, 8, 1024), 0,
                              int(rng.choice([2, 3])), 2)
        else:
            cfg = LayerConfig("add", size, _channels(rng, 8, 1024), 0, 1, 1)
        if cfg.macs() <= _MAX_MACS:
            return cfg
        size = max(7, size // 2)
    return cfg


def perturb(cfg: LayerConfig, rng: np.random.Generator) -> LayerConfig:
    """A neighbour: channel counts moved across tile boundaries, or a nearby size."""
    step = int(rng.choice([1, 2, 4, 8, 16]))
    sign = int(rng.choice([-1, 1]))
    which = rng.integers(3)
    if which == 0 and cfg.op in ("conv", "fc"):
        new = replace(cfg, cout=max(1, cfg.cout + sign * step))
    elif which == 1:
        new = replace(cfg, cin=max(1, cfg.cin + sign * step))
    else:
        new = replace(cfg, size=int(min(224, max(7, cfg.size + sign * step))))
    return new if new.macs() <= _MAX_MACS else cfg


def config_job(cfg: LayerConfig, seed: int = 0):
    """A profiler :class:`~pipeit.profiler.Job` for one generated layer, or None if it is not one layer."""
    from pipeit.graph import load_graph
    from pipeit.profiler import Job
    from pipeit.tflite_builder import single_layer_model

    data = single_layer_model(cfg.op, cfg.shape(), cfg.cout or None, kernel=cfg.kernel,
                              stride=cfg.stride, seed=seed)
    graph = load_graph(data)
    if len(graph.layers) != 1:
        return None
    d = graph.layers[0].descriptor
    return Job("layer", "sweep", 0, 1, d.key_string(), d, (), data)


def run_sweep(
    n: int,
    pool,
    setups,
    writer,
    fingerprint: str,
    spec,
    done: set,
    base_rows: Sequence[ProfileRow] = (),
    seed: int = 0,
    rounds: int = 3,
    progress: Progress = True,
) -> List[ProfileRow]:
    """Measure ``n`` generated layers on every setup, in adaptive rounds."""
    from predictors.mech import MechPredictor
    from pipeit.profiler import run_jobs

    rng = np.random.default_rng(seed)
    rows: List[ProfileRow] = []
    measured = {}  # descriptor key -> config
    per_round = [n // 2] + [0] * (rounds - 1)
    rest = n - per_round[0]
    for i in range(1, rounds):
        per_round[i] = rest // (rounds - 1) + (1 if i <= rest % (rounds - 1) else 0)
    for r, count in enumerate(per_round):
        if count <= 0:
            continue
        configs: List[LayerConfig] = []
        if r > 0 and rows:
            fitted = [x for x in list(base_rows) + rows if x.kind == "layer" and x.ok]
            model = MechPredictor().fit(fitted)
            errs = []
            for cfg_row in rows:
                if cfg_row.ok:
                    e = abs(model.predict(cfg_row.descriptor, cfg_row.setup) / cfg_row.median_ms - 1)
                    errs.append((e, cfg_row.key))
            errs.sort(reverse=True)
            worst_keys = [k for _, k in errs[: max(1, len(errs) // 4)]]
            worst = [measured[k] for k in worst_keys if k in measured]
            while len(configs) < count // 2 and worst:
                configs.append(perturb(worst[int(rng.integers(len(worst)))], rng))
        while len(configs) < count:
            configs.append(random_config(rng))
        jobs = []
        for cfg in configs:
            job = config_job(cfg, seed)
            if job is not None:
                jobs.append(job)
                measured[job.key] = cfg
        rows.extend(run_jobs(jobs, pool, setups, writer, fingerprint, spec, done, progress))
    return rows

