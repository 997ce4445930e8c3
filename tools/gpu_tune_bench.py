#!/usr/bin/env python3
"""Figures for the GPU tuner on this machine's OpenCL device (pocl in CI).

For a sample of the zoo's convolution layers (distinct descriptors, at most
``--per-model`` per model, MACs in a band so one run stays in minutes):

1. record: measure the untuned direct kernel and ``--space`` configs drawn
   at random from the layer's full search space (the heuristic configs
   included), with OpenCL profiling events;
2. simulate (Kernel Tuner's "simulation mode"): replay random search and
   the cost-model search on that recording with the same budget, several
   seeds; no timing noise enters the comparison;
3. report per layer: untuned ms, best ms found by the model search within
   ``--budget`` trials, speedup; and the trials the model search needed to
   come within 5 % of the best config either strategy found, against the
   random search's budget.

    .venv/bin/python tools/gpu_tune_bench.py [--space 80] [--budget 48] [--seeds 5] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np

from pipeit import zoo
from pipeit.gpu.device import make_context
from pipeit.gpu.lowering import lower_layer
from pipeit.gpu.space import default_config, heuristic_config, search_space, config_key
from pipeit.gpu.tuner import Measurer, ModelSearch, RandomSearch, RecordedMeasurer, Trial, TrialStatus, tune
from pipeit.graph import graph_from_model
from pipeit.modelfile import read_model


def pick_layers(per_model: int, lo: float, hi: float):
    out = []
    for name in zoo.list_models():
        model = read_model(zoo.build(name))
        graph = graph_from_model(model, sha256="")
        seen, taken = set(), 0
        for layer in graph.layers:
            d = layer.descriptor
            if d.op != "CONV_2D" or d.key() in seen or not lo <= d.macs <= hi:
                continue
            seen.add(d.key())
            out.append((name, model, layer))
            taken += 1
            if taken >= per_model:
                break
    return out


def trials_to_reach(trials, target):
    best = float("inf")
    for k, t in enumerate(trials, 1):
        if t.ok:
            best = min(best, t.ms)
        if best <= target:
            return k
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", type=int, default=80, help="configs recorded per layer")
    ap.add_argument("--budget", type=int, default=48, help="trials per strategy in simulation")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--per-model", type=int, default=2)
    ap.add_argument("--macs", default="5e6,1.2e8", help="MAC band of the layers sampled")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--record", help="write every recorded trial here (JSON), for replays")
    ap.add_argument("--replay", help="replay a --record file instead of measuring")
    ap.add_argument("--model-batch", type=int, default=4, help="batch size of the model search")
    args = ap.parse_args()
    lo, hi = (float(v) for v in args.macs.split(","))
    rows, raw, records = [], [], []
    if args.replay:
        with open(args.replay) as fh:
            saved = json.load(fh)
        device = saved["device"]
        work = [(r, None, None) for r in saved["layers"]]
    else:
        ctx = make_context()
        device = ctx.info.name
        work = [(None, (name, model, layer), ctx) for name, model, layer in pick_layers(args.per_model, lo, hi)]
    for saved_layer, picked, ctx in work:
        t0 = time.time()
        if saved_layer is not None:
            name, index, macs, kernel = (saved_layer[k] for k in ("model", "layer", "macs", "kernel"))
            untuned = Trial(tuple(sorted(saved_layer["untuned"]["config"].items())), TrialStatus.OK,
                            saved_layer["untuned"]["ms"])
            recorded = [Trial(tuple(sorted(t["config"].items())), TrialStatus(t["status"]), t["ms"])
                        for t in saved_layer["trials"]]
            sample = [t.config_dict for t in recorded]
        else:
            name, model, layer = picked
            index, macs = layer.index, layer.descriptor.macs
            kernel = f"{layer.descriptor.kernel[0]}x{layer.descriptor.kernel[1]}/s{layer.descriptor.stride[0]}"
            spec = lower_layer(model, layer)
            space = search_space(spec, ctx.info.max_work_group_size, ctx.info.local_mem_bytes)
            rng = np.random.default_rng(layer.index)
            sample = [space[i] for i in rng.choice(len(space), size=min(args.space, len(space)), replace=False)]
            keys = {config_key(c) for c in sample}
            if config_key(heuristic_config(spec)) not in keys:
                sample.append(heuristic_config(spec))
            measurer = Measurer(ctx, spec, repeats=3)
            untuned = measurer.measure(default_config(spec))
            recorded = [measurer.measure(c) for c in sample]
            records.append(dict(model=name, layer=index, macs=macs, kernel=kernel,
                                untuned={"config": untuned.config_dict, "ms": untuned.ms},
                                trials=[{"config": t.config_dict, "status": t.status.value, "ms": t.ms}
                                        for t in recorded]))
            if args.record:
                with open(args.record, "w") as fh:
                    json.dump({"device": device, "layers": records}, fh)
        replay = RecordedMeasurer(recorded)
        runs = {"random": [], "model": []}
        for seed in range(args.seeds):
            runs["random"].append(tune(RandomSearch(sample, args.budget, 8, seed), replay))
            runs["model"].append(tune(ModelSearch(sample, args.budget, args.model_batch, seed), replay))
        best_either = min(t.ms for rs in runs.values() for r in rs for t in r if t.ok)
        model_best = statistics.median(min(t.ms for t in r if t.ok) for r in runs["model"])
        need = [trials_to_reach(r, 1.05 * best_either) or args.budget + 1 for r in runs["model"]]
        need_random = [trials_to_reach(r, 1.05 * best_either) or args.budget + 1 for r in runs["random"]]
        failed = sum(1 for t in recorded if not t.ok)
        row = dict(model=name, layer=index, macs=macs, kernel=kernel, untuned_ms=untuned.ms, tuned_ms=model_best, speedup=untuned.ms / model_best,
                   best_config=dict(min((t for t in recorded if t.ok), key=lambda t: t.ms).config),
                   model_trials_to_5pct=statistics.median(need),
                   random_trials_to_5pct=statistics.median(need_random), recorded=len(recorded),
                   failed=failed, seconds=time.time() - t0)
        rows.append(row)
        print(json.dumps(row), flush=True)
        raw.append(row)
    speedups = [r["speedup"] for r in rows]
    fractions = [r["model_trials_to_5pct"] / args.budget for r in rows]
    summary = dict(device=device, layers=len(rows), budget=args.budget,
                   space=statistics.median(r["recorded"] for r in rows),
                   seeds=args.seeds, median_speedup=statistics.median(speedups),
                   median_model_trials_to_5pct=statistics.median(r["model_trials_to_5pct"] for r in rows),
                   median_random_trials_to_5pct=statistics.median(r["random_trials_to_5pct"] for r in rows),
                   median_fraction_of_random_budget=statistics.median(fractions))
    print(json.dumps(summary))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"summary": summary, "layers": raw}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
