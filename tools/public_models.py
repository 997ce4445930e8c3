#!/usr/bin/env python3
"""Public models pipeit was not built with, read, split and lowered: a check for the general case.

    .venv/bin/python tools/public_models.py [--cache DIR] [--frames 3] [--seed 7] [--no-gpu]

Fetches the MediaPipe 0.10.14 wheel from the package index (``pip download``;
nothing is kept in the repository), takes the ``.tflite`` files out of it
(face, hand, pose, iris, palm and selfie models: fp16 weights behind
DEQUANTIZE, sparse weights behind DENSIFY, PRELU, RESIZE_BILINEAR,
DEPTH_TO_SPACE, STRIDED_SLICE, custom ops, two to five outputs) and, per model:

* reads it into a layer graph (a model the runtime cannot load must be
  refused with one line, as ``pipeit`` refuses it);
* cuts it at random into 2, 3 and 5 stages and streams ``--frames`` frames
  through the pinned pipeline (:class:`pipeit.executor.Pipeline`): every
  output must equal the whole model's bit for bit;
* with pyopencl (unless ``--no-gpu``): how many layers the GPU stage lowers
  and, where it lowers them all, the whole model as one GPU stage against
  the runtime (max relative error over the outputs).

Prints a Markdown table; exits 1 if a split output differs or a model is
refused with anything but a clear error.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

WHEEL = "mediapipe==0.10.14"


def fetch_models(cache: Path) -> List[Path]:
    """The wheel's ``.tflite`` files, extracted under ``cache/models`` (downloaded once)."""
    wheels = sorted(cache.glob("mediapipe-0.10.14-*.whl"))
    if not wheels:
        print(f"downloading {WHEEL} into {cache} ...", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "pip", "download", WHEEL, "--no-deps", "--quiet", "-d", str(cache)],
                       check=True)
        wheels = sorted(cache.glob("mediapipe-0.10.14-*.whl"))
    if not wheels:
        raise SystemExit(f"no {WHEEL} wheel for this Python and machine in {cache}")
    out = cache / "models"
    out.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheels[0]) as wheel:
        for member in wheel.namelist():
            if member.endswith(".tflite"):
                target = out / Path(member).name
                if not target.exists():
                    target.write_bytes(wheel.read(member))
    return sorted(out.glob("*.tflite"))


def split_check(path: Path, layers: int, cuts: List[int], frames, want, cpus) -> Optional[str]:
    """None when ``cuts`` give the whole model's outputs bit for bit, else what differed."""
    from cores.model import Cluster, Platform
    from pipeit.executor import Pipeline
    from pipeit.plan import Plan, StageSpec, WorkerSpec, file_sha256

    clusters = tuple(Cluster(f"c{k}", "host", (cpu,)) for k, cpu in enumerate(cpus))
    bounds = [0] + cuts + [layers]
    stages = tuple(StageSpec((bounds[i], bounds[i + 1]),
                             (WorkerSpec(f"c{i % len(cpus)}", (cpus[i % len(cpus)],), 1, 1.0),), 100.0)
                   for i in range(len(bounds) - 1))
    plan = Plan(path.name, file_sha256(path), Platform(clusters, source="public-models"), "check", stages, 100.0, 10.0)
    with Pipeline(plan, path) as pipe:
        got = list(pipe.map(frames))
    for i, (g, w) in enumerate(zip(got, want)):
        for name, value in w.items():
            if name not in g or g[name].shape != value.shape or not np.array_equal(g[name], value):
                return f"frame {i} output {name!r} differs"
    return None


def gpu_check(path: Path, layers: int) -> str:
    """``lowered/total`` and, when all are, the whole model's max relative error as one GPU stage."""
    from pipeit.gpu.check import random_inputs, reference_outputs, relative_error
    from pipeit.gpu.lowering import support_table
    from pipeit.gpu.stage import GpuStage
    from pipeit.graph import load_graph
    from pipeit.modelfile import read_model

    model = read_model(path)
    table = support_table(model, load_graph(str(path)))
    lowered = sum(1 for reason in table if reason is None)
    missing = sorted({reason.split(" has no")[0] for reason in table if reason is not None})
    text = f"{lowered}/{layers}" + (f" (not: {', '.join(missing)})" if missing else "")
    if lowered == layers:
        stage = GpuStage(model, 0, layers)
        x = random_inputs(stage.inputs, seed=3)
        want = reference_outputs(path.read_bytes(), x)
        got = stage.run(x)
        text += f"; whole model {max(relative_error(got[k], v) for k, v in want.items()):.1e}"
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("build/public-models"), help="where the wheel goes")
    parser.add_argument("--frames", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7, help="seed of the random cuts")
    parser.add_argument("--no-gpu", action="store_true", help="skip the OpenCL part")
    args = parser.parse_args()
    from pipeit.errors import PipeitError
    from pipeit.frames import random_frames
    from pipeit.graph import load_graph
    from pipeit.runtime import check_loads, invoke_frames, make_interpreter

    args.cache.mkdir(parents=True, exist_ok=True)
    models = fetch_models(args.cache)
    gpu = not args.no_gpu
    if gpu:
        try:
            import pyopencl  # noqa: F401
        except ImportError:
            gpu = False
    cpus = sorted(os.sched_getaffinity(0))[:2]
    rng = random.Random(args.seed)
    failures = 0
    print("| model | layers | outputs | split 2 / 3 / 5 stages | GPU stage lowers | s |\n"
          "| --- | ---: | ---: | --- | --- | ---: |")
    for path in models:
        start = time.time()
        try:
            graph = load_graph(str(path))
            check_loads(path)
        except PipeitError as err:
            print(f"| {path.stem} | - | - | refused: {str(err).split(': ', 1)[-1][:120]} | - | - |", flush=True)
            continue
        except Exception as err:  # noqa: BLE001 -- a traceback where one line was due is the failure looked for
            failures += 1
            print(f"| {path.stem} | - | - | **crashed: {err!r}** | - | - |", flush=True)
            continue
        n = len(graph.layers)
        frames = random_frames(graph.inputs, args.frames)
        want = invoke_frames(make_interpreter(path), frames)
        verdicts = []
        for k in (2, 3, 5):
            cuts = sorted(rng.sample(range(1, n), k - 1))
            problem = split_check(path, n, cuts, frames, want, cpus)
            failures += problem is not None
            verdicts.append("identical" if problem is None else f"**{problem}** (cuts {cuts})")
        gpu_text = gpu_check(path, n) if gpu else "-"
        print(f"| {path.stem} | {n} | {len(graph.outputs)} | {' / '.join(verdicts)} | {gpu_text} | "
              f"{time.time() - start:.0f} |", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
