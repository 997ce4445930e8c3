#!/usr/bin/env python3
"""`make demo`: the main job on a reference model, on this machine, step by step.

1. the platform pipeit sees here (`pipeit topology`);
2. a reference model from the zoo (`pipeit zoo`), its layers (`pipeit inspect`);
3. an exact split into three stage sub-models (`pipeit split`), chained and
   compared with the whole model, and the whole model's latency;
4. the benchmark (`pipeit bench`): every strategy planned and streamed,
   interleaved, against the ideal.

Each step prints the command it runs, so a reader can repeat any of them.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path


def pipeit(*args: str, capture: bool = False) -> str:
    """Run one `pipeit` command as a user would, echoing it; stop the demo if it fails."""
    print(f"\n$ pipeit {' '.join(shlex.quote(a) for a in args)}", flush=True)
    result = subprocess.run(
        [sys.executable, "-m", "pipeit", *args],
        stdout=subprocess.PIPE if capture else None, text=True,
    )
    if result.returncode != 0:
        sys.exit(f"demo: `pipeit {args[0]}` failed with status {result.returncode}")
    return result.stdout if capture else ""


def chain_check(model: Path, split_dir: Path) -> None:
    """Chain the stage sub-models, compare with the whole model, time the whole model."""
    import numpy as np

    from pipeit.runtime import make_interpreter, native_stderr_silenced
    from pipeit.split import split_model, run_chain

    manifest = json.loads((split_dir / "manifest.json").read_text())
    cuts = [stage["layers"][0] for stage in manifest["stages"][1:]]
    stages = split_model(model, cuts)
    with native_stderr_silenced():  # the runtime's "INFO: Created ... delegate" line, printed once per process
        whole = make_interpreter(model, num_threads=1)
    detail = whole.get_input_details()[0]
    frame = np.random.default_rng(0).uniform(-1, 1, size=detail["shape"]).astype(np.float32)
    whole.set_tensor(detail["index"], frame)
    times = []
    for _ in range(20):
        t0 = time.perf_counter()
        whole.invoke()
        times.append((time.perf_counter() - t0) * 1000.0)
    expected = {d["name"]: whole.get_tensor(d["index"]) for d in whole.get_output_details()}
    chained = run_chain(stages, {detail["name"]: frame})
    same = all(np.array_equal(expected[name], chained[name]) for name in expected)
    print(f"demo: chained {len(stages)} stage sub-models: outputs match the whole model: "
          f"{'yes, bit-identical' if same else 'NO'}")
    print(f"demo: whole model, 1 thread: median {statistics.median(times):.2f} ms over {len(times)} runs")
    if not same:
        sys.exit("demo: the split is not exact")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenet_v1", help="zoo model (default mobilenet_v1)")
    parser.add_argument("--workdir", default="build/demo", help="where files go")
    parser.add_argument("--platform", default="auto", help="platform spec for the benchmark")
    parser.add_argument("--frames", default="100", help="frames per benchmark round")
    parser.add_argument("--rounds", default="3", help="interleaved benchmark rounds")
    args = parser.parse_args()

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    model = work / f"{args.model}.tflite"

    pipeit("topology", "--platform", args.platform)
    pipeit("zoo", args.model, "-o", str(model))
    doc = json.loads(pipeit("inspect", str(model), "--json", capture=True))
    layers = len(doc["layers"])
    print(f"demo, from the JSON: {layers} layers, {doc['total_macs'] / 1e9:.3f} G MACs; "
          f"first layers: " + ", ".join(l["op"] for l in doc["layers"][:4]) + ", ...")
    cuts = f"{layers // 3},{2 * layers // 3}"
    split_dir = work / "split"
    pipeit("split", str(model), "--at", cuts, "-o", str(split_dir))
    chain_check(model, split_dir)
    pipeit("bench", str(model), "--platform", args.platform, "--frames", args.frames,
           "--rounds", args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
