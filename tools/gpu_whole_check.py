#!/usr/bin/env python3
"""Whole models as one GPU stage against TFLite: max relative error and top-1 on random frames.

    .venv/bin/python tools/gpu_whole_check.py build/bench/zoo/*.tflite [--frames 2] [--tolerance 1e-4]

Every layer of each model runs in one :class:`~pipeit.gpu.stage.GpuStage`
(float32 kernels, heuristic configs); the reference is the whole model in
the TFLite runtime. Exits 1 if any model is outside the tolerance.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from pipeit.gpu.check import reference_outputs, relative_error  # noqa: E402
from pipeit.gpu.stage import GpuStage  # noqa: E402
from pipeit.graph import load_graph  # noqa: E402
from pipeit.modelfile import read_model  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--frames", type=int, default=2)
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args()
    worst = 0.0
    print("| model | layers | max rel. error | top-1 agreement | s |\n| --- | --- | ---: | ---: | ---: |")
    for path in args.models:
        start = time.time()
        model = read_model(path)
        layers = len(load_graph(str(path)).layers)
        stage = GpuStage(model, 0, layers)
        rng = np.random.default_rng(0)
        errors, agree = [], 0
        for _ in range(args.frames):
            frame = {t.name: rng.uniform(-1, 1, t.shape).astype(np.float32) for t in stage.inputs}
            got, want = stage.run(frame), reference_outputs(path.read_bytes(), frame)
            errors.append(max(relative_error(got[k], v) for k, v in want.items()))
            agree += all(np.argmax(got[k]) == np.argmax(v) for k, v in want.items())
        worst = max(worst, max(errors))
        print(f"| {path.stem} | [0,{layers}) | {max(errors):.2e} | {agree}/{args.frames} | {time.time() - start:.0f} |")
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
