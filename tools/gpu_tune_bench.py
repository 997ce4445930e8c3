#!/usr/bin/env python3
"""Figures for the GPU tuner: record a large slice of each layer's config space, then replay searches.

Two steps, so pocl's timing noise on a busy host cannot decide the
comparison between the strategies:

``record``  measures, for each sampled zoo conv layer, the untuned direct
            kernel and ``--space`` configs drawn uniformly (seeded) from the
            layer's full search space (all of it when the space is smaller),
            each the median of ``--repeats`` runs timed by OpenCL profiling
            events. Written layer by layer to a JSON cache (default
            ``build/gpu_tune_record.json``); a rerun skips layers already there.
``replay``  replays random search and the cost-model search against the
            recorded times (simulation mode, :class:`RecordedMeasurer`), same
            budget, many seeds. The model search of a layer is seeded with a
            transfer model trained on the *other* layers' recordings only
            (leave-one-layer-out; ``--no-transfer`` turns it off).

The figure, per layer: target = 1.05 x the best time that either strategy
found in any seed; per strategy and seed, the number of trials until its
best-so-far reaches the target (``budget + 1`` when it never does). Layer
ratio = median over seeds of the model search's count / median over seeds
of random's count; the headline is the median of the layer ratios. Per seed,
the median over layers of model/random shows the spread.

    .venv/bin/python tools/gpu_tune_bench.py record [--space 250] [--repeats 5] [--out FILE]
    .venv/bin/python tools/gpu_tune_bench.py replay [--record FILE] [--budget 64] [--seeds 20]
                                                    [--no-transfer | --prior-trials N | --sequential]
                                                    [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from cores.filewrite import write_file
from pipeit import zoo
from pipeit.gpu.lowering import LayerSpec, lower_layer
from pipeit.gpu.space import config_key, default_config, heuristic_config, search_space
from pipeit.gpu import tuner as T
from pipeit.gpu.tuner import ModelSearch, RandomSearch, RecordedMeasurer, Trial, TrialStatus, tune
from pipeit.graph import graph_from_model
from pipeit.modelfile import read_model

#: distinct zoo conv layers of 1-35 MMAC: 1x1, 3x3 (s1 and s2), 5x5, so each recording stays minutes
DEFAULT_LAYERS = ("mobilenet_v2:12", "googlenet:26", "googlenet:24", "squeezenet:6", "mobilenet_v1:0",
                  "googlenet:65", "mobilenet_v2:2", "squeezenet:16", "googlenet:9", "squeezenet:4",
                  "mobilenet_v1:2", "googlenet:2")
DEFAULT_RECORD = Path("build/gpu_tune_record.json")


def load_layer(name: str, index: int, cache: Dict[str, object]) -> Tuple[object, LayerSpec]:
    """The zoo layer ``name:index`` and its GPU spec (models parsed once per run)."""
    if name not in cache:
        model = read_model(zoo.build(name))
        cache[name] = (model, graph_from_model(model, sha256=""))
    model, graph = cache[name]
    layer = next(l for l in graph.layers if l.index == index)
    return layer, lower_layer(model, layer)


def _trial_json(t: Trial) -> dict:
    return {"config": t.config_dict, "status": t.status.value, "ms": t.ms}


def _trial(doc: dict) -> Trial:
    return Trial(tuple(sorted(doc["config"].items())), TrialStatus(doc["status"]), doc["ms"])


def record(args: argparse.Namespace) -> int:
    from pipeit.gpu.device import make_context
    from pipeit.gpu.tuner import Measurer

    out = Path(args.out)
    doc = json.loads(out.read_text()) if out.exists() else {"version": 1, "layers": []}
    done = {(r["model"], r["layer"]) for r in doc["layers"]}
    ctx = make_context()
    doc["device"] = ctx.info.name
    doc["fingerprint"] = ctx.info.fingerprint()
    models: Dict[str, object] = {}
    for item in args.layers.split(","):
        name, index = item.split(":")[0], int(item.split(":")[1])
        if (name, index) in done:
            continue
        t0 = time.time()
        layer, spec = load_layer(name, index, models)
        space = search_space(spec, ctx.info.max_work_group_size, ctx.info.local_mem_bytes)
        rng = np.random.default_rng(1000 + index)
        picks = sorted(rng.choice(len(space), size=min(args.space, len(space)), replace=False))
        sample = [space[i] for i in picks]
        if config_key(heuristic_config(spec)) not in {config_key(c) for c in sample}:
            sample.append(heuristic_config(spec))
        measurer = Measurer(ctx, spec, repeats=args.repeats)
        untuned = measurer.measure(default_config(spec))
        trials = []
        for c in sample:
            trials.append(measurer.measure(c))
            if len(trials) % 50 == 0:
                print(f"  {name}:{index} {len(trials)}/{len(sample)} ({time.time() - t0:.0f} s)", flush=True)
        d = layer.descriptor
        doc["layers"].append(dict(
            model=name, layer=index, descriptor=d.key_string(), macs=d.macs,
            kernel=f"{d.kernel[0]}x{d.kernel[1]}/s{d.stride[0]}", space=len(space),
            repeats=args.repeats, untuned=_trial_json(untuned), trials=[_trial_json(t) for t in trials]))
        out.parent.mkdir(parents=True, exist_ok=True)
        write_file(out, json.dumps(doc) + "\n")
        ok = [t.ms for t in trials if t.ok]
        print(f"{name}:{index} {len(trials)}/{len(space)} configs, best {min(ok):.3f} ms, "
              f"untuned {untuned.ms:.3f} ms, {time.time() - t0:.0f} s", flush=True)
    return 0


def trials_to_reach(trials: Sequence[Trial], target: float) -> Optional[int]:
    """1-based count of trials until the best-so-far is <= target (None: never)."""
    best = float("inf")
    for k, t in enumerate(trials, 1):
        if t.ok:
            best = min(best, t.ms)
        if best <= target:
            return k
    return None


def replay(args: argparse.Namespace) -> int:
    doc = json.loads(Path(args.record).read_text())
    models: Dict[str, object] = {}
    layers = []
    for r in doc["layers"]:
        layer, spec = load_layer(r["model"], r["layer"], models)
        layers.append((r, spec, [_trial(t) for t in r["trials"]], layer.descriptor.key_string()))
    rows = []
    per_seed: Dict[str, List[List[float]]] = {"model": [], "random": []}
    history: List[list] = [[] for _ in range(args.seeds)]
    for r, spec, recorded, key in layers:
        t0 = time.time()
        prior = None
        if not args.no_transfer and not args.sequential:
            # leave this layer out, and any other recording of the same descriptor (same kernels)
            others = [(s, tr) for _, s, tr, k in layers if k != key]
            if args.prior_trials:  # as a tuning file would hold: a few dozen trials per layer
                pick = np.random.default_rng(0)
                others = [(s, [tr[i] for i in pick.choice(len(tr), min(args.prior_trials, len(tr)),
                                                          replace=False)]) for s, tr in others]
            prior = T.TransferModel.fit(others)
        sample = [t.config_dict for t in recorded]
        replayer = RecordedMeasurer(recorded)
        runs = {"random": [], "model": []}
        for seed in range(args.seeds):
            runs["random"].append(tune(RandomSearch(sample, args.budget, 8, seed), replayer))
            if args.sequential:  # as `pipeit gpu tune`: the prior holds the earlier layers' searches
                prior = T.transfer_prior([(s, tr) for s, tr, k in history[seed] if k != key], seed)
            run = tune(ModelSearch(sample, args.budget, args.model_batch, seed, spec=spec, prior=prior),
                       replayer)
            runs["model"].append(run)
            history[seed].append((spec, run, key))
        best_either = min(t.ms for rs in runs.values() for run in rs for t in run if t.ok)
        optimum = min(t.ms for t in recorded if t.ok)
        target = 1.05 * best_either
        need = {k: [trials_to_reach(run, target) or args.budget + 1 for run in rs] for k, rs in runs.items()}
        per_seed["model"].append(need["model"])
        per_seed["random"].append(need["random"])
        near = sum(1 for t in recorded if t.ok and t.ms <= target)
        to_opt = {k: statistics.median(trials_to_reach(run, 1.05 * min(t.ms for t in recorded if t.ok))
                                       or args.budget + 1 for run in rs) for k, rs in runs.items()}
        model_best = statistics.median(min(t.ms for t in run if t.ok) for run in runs["model"])
        untuned = r["untuned"]["ms"]
        row = dict(model=r["model"], layer=r["layer"], kernel=r["kernel"], macs=r["macs"],
                   recorded=len(recorded), space=r.get("space"), within_5pct=near,
                   failed=sum(1 for t in recorded if not t.ok),
                   untuned_ms=untuned, optimum_ms=optimum, best_either_ms=best_either,
                   tuned_ms=model_best, speedup=untuned / model_best if untuned else None,
                   best_algo=min((t for t in recorded if t.ok), key=lambda t: t.ms).config_dict.get("algo"),
                   model_trials=statistics.median(need["model"]),
                   random_trials=statistics.median(need["random"]),
                   ratio=statistics.median(need["model"]) / statistics.median(need["random"]),
                   model_trials_to_optimum=to_opt["model"], random_trials_to_optimum=to_opt["random"],
                   seconds=round(time.time() - t0, 1))
        rows.append(row)
        print(json.dumps(row), flush=True)
    seed_ratios = [statistics.median(m / rnd for m, rnd in zip(ms, rs))
                   for ms, rs in zip(zip(*per_seed["model"]), zip(*per_seed["random"]))]
    summary = dict(device=doc.get("device"), layers=len(rows), budget=args.budget, seeds=args.seeds,
                   transfer=not args.no_transfer, prior_trials=args.prior_trials or "all",
                   sequential=args.sequential,
                   model_batch=args.model_batch,
                   recorded_per_layer=statistics.median(r["recorded"] for r in rows),
                   median_model_trials=statistics.median(r["model_trials"] for r in rows),
                   median_random_trials=statistics.median(r["random_trials"] for r in rows),
                   median_ratio=statistics.median(r["ratio"] for r in rows),
                   median_ratio_to_recorded_optimum=statistics.median(
                       r["model_trials_to_optimum"] / r["random_trials_to_optimum"] for r in rows),
                   per_seed_ratio_min=min(seed_ratios), per_seed_ratio_median=statistics.median(seed_ratios),
                   per_seed_ratio_max=max(seed_ratios),
                   median_speedup=statistics.median(r["speedup"] for r in rows if r["speedup"]))
    print(json.dumps(summary))
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "per_seed_ratio": seed_ratios,
                                               "layers": rows}, indent=1) + "\n")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    rec = sub.add_parser("record", help="measure each layer's configs on this machine's OpenCL device")
    rec.add_argument("--layers", default=",".join(DEFAULT_LAYERS), help="zoo layers, MODEL:INDEX,...")
    rec.add_argument("--space", type=int, default=250, help="configs recorded per layer (at most the space)")
    rec.add_argument("--repeats", type=int, default=5, help="runs per config; the median is kept")
    rec.add_argument("--out", default=str(DEFAULT_RECORD))
    rep = sub.add_parser("replay", help="replay random vs model search on a recording")
    rep.add_argument("--record", default=str(DEFAULT_RECORD))
    rep.add_argument("--budget", type=int, default=64, help="trials per strategy")
    rep.add_argument("--seeds", type=int, default=20)
    rep.add_argument("--model-batch", type=int, default=4, help="batch size of the model search")
    rep.add_argument("--no-transfer", action="store_true", help="no model pre-trained on other layers")
    rep.add_argument("--prior-trials", type=int, default=0,
                     help="train the transfer prior on only this many random trials per other layer")
    rep.add_argument("--sequential", action="store_true",
                     help="as the CLI: each layer's prior holds only the earlier layers' model searches")
    rep.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    return record(args) if args.cmd == "record" else replay(args)


if __name__ == "__main__":
    sys.exit(main())
