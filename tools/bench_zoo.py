#!/usr/bin/env python3
"""Run `pipeit bench` over the zoo on one platform and print the Markdown table for docs/BENCHMARKS.md.

    .venv/bin/python tools/bench_zoo.py --platform auto [--models a,b] [--frames 100] [--rounds 5]
    .venv/bin/python tools/bench_zoo.py --platform emulate:big=0@1.0,little=1@0.4 --latency-x 2

Each model is one `pipeit bench` invocation (its strategies interleaved in
rounds; medians); the ratios in a row therefore come from one run. The
issue's targets are checked per row and summarised:

- without a limit: pipeit fps >= 0.97 x the best other strategy;
- auto (equal cores): efficiency >= 0.90;
- emulated big.LITTLE: pipeit >= 1.15 x all-cores;
- with a latency limit: pipeit meets it at p99, and its fps >= 1.1 x the best of
  all-cores, fastest-cluster and replicas that meet it, and >= pipe-it's (read
  two ways, both reported: against pipe-it's fps always, and only where
  pipe-it's own plan meets the limit).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
ZOO = ("squeezenet", "mobilenet_v1", "mobilenet_v2", "googlenet", "alexnet", "resnet50")
#: frames per round, scaled down for the slow models so a run stays within minutes
FRAMES = {"resnet50": 0.3, "alexnet": 0.5, "googlenet": 0.6}


def bench(model: Path, platform: str, frames: int, rounds: int, latency_x: Optional[float], cache: Path,
          profile: Optional[str] = None, trial: bool = True, anchor: bool = True) -> dict:
    args = [sys.executable, "-m", "pipeit", "bench", str(model), "--platform", platform, "--frames", str(frames),
            "--rounds", str(rounds), "--cache-dir", str(cache), "--json"]
    if profile:
        args += ["--profile", profile]
    if latency_x:
        args += ["--latency-x", str(latency_x)]
    if not trial:
        args.append("--no-trial")
    if not anchor:
        args.append("--as-profiled")
    result = subprocess.run(args, stdout=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise SystemExit(f"bench failed on {model.name} (status {result.returncode})")
    return json.loads(result.stdout)


def stages_line(stages: List[dict], sep: str = " | ") -> str:
    """A bench strategy's ``stages`` in one line, as ``Plan.describe`` writes a plan: ``[a,b) w+w | ...``."""
    return sep.join(f"[{s['layers'][0]},{s['layers'][1]}) " + "+".join(w.split("@")[0] for w in s["workers"])
                    for s in stages)


def _shape(result: dict) -> str:
    """pipeit's stages as ``[a,b) w+w | ...``, and which strategy had the same pipeline."""
    stages = stages_line(result["stages"], " \\| ")
    return stages + (f" (= {result['same_plan_as']})" if result.get("same_plan_as") else "")


def _scale(doc: dict) -> str:
    """The factor each cluster's layer times were scaled by to the whole-model time measured in the run."""
    scale = doc.get("time_scale") or {}
    return ", ".join(f"{c} {f:.2f}" for c, f in sorted(scale.items())) or "-"


def _trial(doc: dict) -> str:
    """Which candidate the measured trial gave pipeit, and what the DSE alone had picked."""
    trial = doc.get("trial")
    if not trial:
        return "-"
    proposed = doc.get("proposed") or {}
    return f"{trial['chosen']} ({proposed.get('stages', '?')})".replace("|", "\\|")


def checks(doc: dict, platform: str) -> Dict[str, bool]:
    by = {s["name"]: s for s in doc["strategies"]}
    ours = by["pipeit"]
    others = [s for n, s in by.items() if n != "pipeit"]
    out = {}
    if doc["latency_limit_ms"] is None:
        out["pipeit >= 0.97 x best other"] = ours["fps"] >= 0.97 * max(s["fps"] for s in others)
    if doc["latency_limit_ms"] is not None:
        plain = [by[n] for n in ("all-cores", "fastest-cluster", "replicas") if n in by and by[n]["meets_limit"]]
        best_plain = max((s["fps"] for s in plain), default=0.0)
        out["pipeit meets limit at p99"] = bool(ours["meets_limit"])
        out["pipeit >= 1.1 x best plain meeting it"] = ours["fps"] >= 1.1 * best_plain
        out["pipeit >= pipe-it"] = ours["fps"] >= by["pipe-it"]["fps"]
        # Pipe-it plans for throughput alone: where its pipeline breaks the limit, the strict reading
        # above compares a plan that meets it with one that does not; both readings are reported.
        out["pipeit >= pipe-it where pipe-it meets it"] = (ours["fps"] >= by["pipe-it"]["fps"]
                                                           or not by["pipe-it"]["meets_limit"])
    elif platform.startswith("emulate:"):
        out["pipeit >= 1.15 x all-cores"] = ours["fps"] >= 1.15 * by["all-cores"]["fps"]
    else:
        out["efficiency >= 0.90"] = ours["efficiency"] >= 0.90
    out["measured within 10 % of predicted"] = abs(ours["fps"] / ours["predicted_fps"] - 1) <= 0.10
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--platform", default="auto")
    parser.add_argument("--models", default=",".join(ZOO))
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--latency-x", type=float)
    parser.add_argument("--profile", help="a profile of the zoo on this platform (else each bench profiles its model)")
    parser.add_argument("--workdir", default=str(ROOT / "build" / "bench"))
    parser.add_argument("--json", metavar="FILE", help="also write every bench document here")
    parser.add_argument("--no-trial", action="store_true", help="pipeit keeps the DSE's pick (no measured trial)")
    parser.add_argument("--as-profiled", action="store_true",
                        help="plan with the profile's times as they are (no scaling to the run's own measurement)")
    args = parser.parse_args()

    work = Path(args.workdir)
    (work / "zoo").mkdir(parents=True, exist_ok=True)
    docs: List[dict] = []
    for name in args.models.split(","):
        model = work / "zoo" / f"{name}.tflite"
        if not model.exists():
            subprocess.run([sys.executable, "-m", "pipeit", "zoo", name, "-o", str(model)], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        frames = max(20, int(args.frames * FRAMES.get(name, 1.0)))
        print(f"[bench_zoo] {name}: {frames} frames x {args.rounds} rounds on {args.platform}", file=sys.stderr)
        docs.append(bench(model, args.platform, frames, args.rounds, args.latency_x, work / "cache", args.profile,
                          not args.no_trial, not args.as_profiled))
    if args.json:
        Path(args.json).write_text(json.dumps(docs, indent=1))

    names = ["all-cores", "fastest-cluster", "replicas", "pipe-it", "pipeit"]
    limit = docs[0]["latency_limit_ms"] is not None
    head = ("| model | ideal fps | " + " | ".join(names)
            + " | pipeit / best other | pipeit eff | pipeit pred fps | times x | pipeit's plan"
            " | trial chose (DSE alone) |")
    if limit:
        head = head.replace(" | pipeit / best other", " | limit ms | p99 ms (pipeit) | pipeit / best plain meeting it")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    failures: Dict[str, List[str]] = {}
    for doc in docs:
        by = {s["name"]: s for s in doc["strategies"]}
        cells = []
        for n in names:
            s = by[n]
            mark = "" if s["meets_limit"] is None else (" ✓" if s["meets_limit"] else " ✗")
            cells.append(f"{s['fps']:.1f}{mark}")
        if limit:  # against the plain strategies that meet the limit, as the target is stated
            best_other = max((by[n]["fps"] for n in ("all-cores", "fastest-cluster", "replicas")
                              if by[n]["meets_limit"]), default=float("nan"))
        else:
            best_other = max(by[n]["fps"] for n in names if n != "pipeit")
        extra = ""
        if limit:
            extra = f" {doc['latency_limit_ms']:.1f} | {by['pipeit']['latency_ms']['p99']:.1f} |"
        print(f"| {doc['model'].removesuffix('.tflite')} | {doc['ideal_fps']:.1f} | " + " | ".join(cells)
              + f" |{extra} {by['pipeit']['fps'] / best_other:.2f} | {by['pipeit']['efficiency']:.2f} | "
              f"{by['pipeit']['predicted_fps']:.1f} | {_scale(doc)} | {_shape(by['pipeit'])} | {_trial(doc)} |")
        for check, ok in checks(doc, args.platform).items():
            if not ok:
                failures.setdefault(check, []).append(doc["model"].removesuffix(".tflite"))
    print()
    for check in checks(docs[0], args.platform):
        missed = failures.get(check, [])
        print(f"- {check}: {'all models' if not missed else 'missed on ' + ', '.join(missed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
