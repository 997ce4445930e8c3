"""Where does a predictor's leave-one-out error come from? Per setup, family, op and size.

``pipeit eval`` reports per op type; this breaks the same leave-one-model-out
results down by (setup, kernel family), (setup, op) and layer size, counts
the layers outside +-10 % (flagging k-core rows that barely beat their own
one-core time: a measurement, not the model), lists the worst layers with
what each term of the fold's fitted model says for them (``mech``), and
checks the whole-model calibration per setup (summed stand-alone layers,
calibrated sum, measured), so a fix goes to the group that carries the
error, not to one model. It also reports,
per op, the measured two-core speed-up of the profile's layer rows next to
the speed-up of its stage and whole-model rows: layer rows that scale much
less than the stages covering them point at the measurement, not the model.

Usage::

    .venv/bin/python tools/eval_breakdown.py PROFILE.csv... [--kind mech] [--min-ms 0.05] [--worst 30]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeit.profile_table import ProfileTable, read_profile  # noqa: E402
from predictors.evaluate import LayerResult, leave_one_out  # noqa: E402
from predictors.features import family_of  # noqa: E402

__all__ = ["breakdown", "by_key", "size_bucket", "suspect_rows", "suspect_multi_rows", "write_retime_list",
           "speedups", "main"]

#: a k-core layer row faster than its one-core row by less than this is suspect (see PREDICTORS.md)
SUSPECT_SPEEDUP = 1.3
#: layer size buckets (measured ms) for the breakdown by size
SIZE_EDGES = (0.1, 0.3, 1.0, 3.0)


def breakdown(results: List[LayerResult], table: ProfileTable, min_ms: float) -> Dict[Tuple[str, str], dict]:
    """(setup, family) -> n, MAPE %, share within 10 %, signed mean error %, share of all abs error."""
    catalog = table.catalog()
    kept = [r for r in results if r.measured_ms >= min_ms and r.key in catalog]
    total = sum(abs(r.rel_error) for r in kept) or 1.0
    groups: Dict[Tuple[str, str], List[float]] = {}
    for r in kept:
        groups.setdefault((r.setup, family_of(catalog[r.key])), []).append(r.rel_error)
    out = {}
    for g, errs in sorted(groups.items()):
        e = np.array(errs)
        out[g] = {"n": len(e), "mape": float(np.mean(np.abs(e)) * 100),
                  "within10": float(np.mean(np.abs(e) <= 0.1) * 100), "bias": float(np.mean(e) * 100),
                  "share": float(np.sum(np.abs(e)) / total * 100)}
    return out


def size_bucket(ms: float) -> str:
    """The size bucket of a layer's measured time (``"0.1-0.3"``...)."""
    lo = 0.0
    for hi in SIZE_EDGES:
        if ms < hi:
            return f"{lo:g}-{hi:g} ms"
        lo = hi
    return f">={lo:g} ms"


def by_key(results: List[LayerResult], key, min_ms: float) -> Dict[tuple, dict]:
    """Group layer results by ``key(result)``: n, MAPE %, share within 10 %, bias %."""
    groups: Dict[tuple, List[float]] = {}
    for r in results:
        if r.measured_ms >= min_ms:
            groups.setdefault(key(r), []).append(r.rel_error)
    out = {}
    for g, errs in sorted(groups.items()):
        e = np.array(errs)
        out[g] = {"n": len(e), "mape": float(np.mean(np.abs(e)) * 100),
                  "within10": float(np.mean(np.abs(e) <= 0.1) * 100), "bias": float(np.mean(e) * 100),
                  "outside": int(np.sum(np.abs(e) > 0.1))}
    return out


def suspect_rows(table: ProfileTable, base: str = "cpu:1", llc_mb: float = 32.0,
                 min_ms: float = 0.0) -> Dict[Tuple[str, str], float]:
    """(key, setup) -> measured speed-up over ``base`` for k-core layer rows below SUSPECT_SPEEDUP.

    Layers whose weights exceed the LLC (``llc_mb``) are not suspects: they stream from DRAM,
    whose bandwidth k threads share (AlexNet's FC6: 1.17x on two cores, and its whole FC stage
    1.13x -- the memory, not the measurement)."""
    one = {r.key: r.median_ms for r in table.layer_rows() if r.ok and str(r.setup) == base}
    out = {}
    for r in table.layer_rows():
        if r.descriptor is not None and r.descriptor.weight_bytes / 1e6 > llc_mb:
            continue
        if r.ok and str(r.setup) != base and r.setup.cores > 1 and r.key in one and one[r.key] >= min_ms:
            sp = one[r.key] / r.median_ms
            if sp < SUSPECT_SPEEDUP:
                out[(r.key, str(r.setup))] = sp
    return out


def suspect_multi_rows(table: ProfileTable, base: str = "cpu:1", llc_mb: float = 32.0) -> Dict[tuple, float]:
    """Stage/model rows on k > 1 cores that beat their ``base`` row by < SUSPECT_SPEEDUP: identity ->
    speed-up. Rows covering a layer beyond the LLC are left out (DRAM-bound, see suspect_rows)."""
    catalog = table.catalog()
    rows = {r.identity(): r for r in table.multi_rows()}
    out = {}
    for ident, r in rows.items():
        if r.setup.cores < 2:
            continue
        one = rows.get(ident[:-1] + (base,))
        big = any(catalog[k].weight_bytes / 1e6 > llc_mb for k in r.layer_keys if k in catalog)
        if one is not None and not big and one.median_ms / r.median_ms < SUSPECT_SPEEDUP:
            out[ident] = one.median_ms / r.median_ms
    return out


def write_retime_list(table: ProfileTable, path: str, min_ms: float = 0.05) -> int:
    """Write the suspect k-core rows (layers >= ``min_ms`` on one core, stages, models) as a
    re-time list for ``tools/retime_sweep.py --list``; returns the number of entries."""
    import csv

    one = {r.key: r.median_ms for r in table.layer_rows() if str(r.setup) == "cpu:1"}
    by_key = {(r.key, str(r.setup)): r for r in table.layer_rows()}
    entries = []
    for (key, setup), sp in sorted(suspect_rows(table, min_ms=min_ms).items()):
        r = by_key[(key, setup)]
        entries.append(("layer", r.model, r.start, r.end, setup, key,
                        f"{setup} {r.median_ms:.4g} ms = {sp:.2f}x its cpu:1 row ({one[key]:.4g} ms)"))
    rows = {r.identity(): r for r in table.multi_rows()}
    for ident, sp in sorted(suspect_multi_rows(table).items(), key=lambda kv: str(kv[0])):
        r = rows[ident]
        entries.append((r.kind, r.model, r.start, r.end, str(r.setup), "",
                        f"{r.setup} {r.median_ms:.4g} ms = {sp:.2f}x its cpu:1 row"))
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["kind", "model", "start", "end", "setup", "key", "reason"])
        w.writerows(entries)
    return len(entries)


def speedups(table: ProfileTable, base: str = "cpu:1", other: str = "cpu:2",
             min_ms: float = 0.05) -> Dict[str, np.ndarray]:
    """Measured base/other time ratio per layer op, and for stage and model rows."""
    times: Dict[tuple, Dict[str, float]] = {}
    labels: Dict[tuple, str] = {}
    for r in table.rows:
        if not r.ok:
            continue
        ident = (r.kind, r.model, r.start, r.end, r.key) if r.kind != "layer" else ("layer", r.key)
        times.setdefault(ident, {})[str(r.setup)] = r.median_ms
        labels[ident] = r.op if r.kind == "layer" else r.kind
    out: Dict[str, List[float]] = {}
    for ident, t in times.items():
        if base in t and other in t and t[base] >= min_ms:
            out.setdefault(labels[ident], []).append(t[base] / t[other])
    return {k: np.array(v) for k, v in sorted(out.items())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("profiles", nargs="+")
    ap.add_argument("--kind", default="mech")
    ap.add_argument("--min-ms", type=float, default=0.05)
    ap.add_argument("--worst", type=int, default=30)
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--retime-list", metavar="LIST.csv",
                    help="write the suspect k-core rows as a re-time list (tools/retime_sweep.py --list)")
    args = ap.parse_args(argv)
    table = read_profile(args.profiles, force=args.force)
    if args.retime_list:
        n = write_retime_list(table, args.retime_list, args.min_ms)
        print(f"{n} suspect rows -> {args.retime_list}")
    print("measured speed-up cpu:1 / cpu:2 (p10 p50 p90), rows >= min-ms on cpu:1")
    for label, s in speedups(table, min_ms=args.min_ms).items():
        p10, p50, p90 = np.percentile(s, [10, 50, 90])
        print(f"  {label:18s} n={len(s):4d}  {p10:5.2f} {p50:5.2f} {p90:5.2f}")
    fitted: dict = {}
    layers, models = leave_one_out(table, [args.kind], fitted=fitted)
    print(f"\n{args.kind}: leave-one-model-out error by setup and kernel family (layers >= {args.min_ms} ms)")
    print(f"  {'setup':6s} {'family':10s} {'n':>4s} {'MAPE%':>7s} {'in10%':>7s} {'bias%':>7s} {'of err%':>8s}")
    for (setup, fam), m in breakdown(layers, table, args.min_ms).items():
        print(f"  {setup:6s} {fam:10s} {m['n']:4d} {m['mape']:7.1f} {m['within10']:7.1f} {m['bias']:7.1f} {m['share']:8.1f}")
    suspect = suspect_rows(table)
    for title, key in (("setup and op", lambda r: (r.setup, r.op)),
                       ("setup and measured size", lambda r: (r.setup, size_bucket(r.measured_ms))),
                       ("outside +-10 %: setup, op, suspect k-core row",
                        lambda r: (r.setup, r.op, "suspect" if (r.key, r.setup) in suspect else ""))):
        print(f"\nby {title}")
        print(f"  {'group':48s} {'n':>4s} {'MAPE%':>7s} {'in10%':>7s} {'bias%':>7s} {'out':>4s}")
        for g, m in by_key(layers, key, args.min_ms).items():
            if title.startswith("outside") and not m["outside"]:
                continue
            print(f"  {' '.join(g):48s} {m['n']:4d} {m['mape']:7.1f} {m['within10']:7.1f} {m['bias']:7.1f} {m['outside']:4d}")
    kept = [r for r in layers if r.measured_ms >= args.min_ms]
    n_out = sum(abs(r.rel_error) > 0.1 for r in kept)
    n_sus = sum(abs(r.rel_error) > 0.1 and (r.key, r.setup) in suspect for r in kept)
    print(f"  {n_out} of {len(kept)} layers outside +-10 %, {n_sus} of them k-core rows that beat their "
          f"one-core row by < {SUSPECT_SPEEDUP}x")
    worst = sorted(kept, key=lambda r: -abs(r.rel_error))
    print(f"\nworst {args.worst} layers (measured -> predicted; the fold's model terms, ms)")
    catalog = table.catalog()
    for r in worst[: args.worst]:
        flag = f" [suspect: {suspect[(r.key, r.setup)]:.2f}x over cpu:1]" if (r.key, r.setup) in suspect else ""
        print(f"  {r.model:12s} {r.setup:6s} {r.measured_ms:8.3f} -> {r.predicted_ms:8.3f} ms "
              f"{r.rel_error * 100:+6.1f} %{flag}  {r.key}")
        p = fitted.get((r.model, args.kind))
        if p is not None and hasattr(p, "explain") and r.key in catalog:
            print(f"      {p.explain(catalog[r.key], r.setup).describe()}")
    print("\nwhole-model calibration per setup (fold of the held-out model)")
    print(f"  {'model':12s} {'setup':6s} {'layers ms':>9s} {'calib ms':>9s} {'measured':>9s} "
          f"{'meas/sum':>8s} {'err%':>6s}  scale, ms/cold MB, ms/layer")
    for m in sorted(models, key=lambda m: (m.setup, m.model)):
        p = fitted.get((m.model, args.kind))
        rows = [x for x in table.multi_rows() if x.model == m.model and x.kind == "model" and str(x.setup) == m.setup]
        if p is None or not rows:
            continue
        descs = [catalog[k] for k in rows[0].layer_keys if k in catalog]
        raw = sum(p.predict_layers(descs, m.setup, calibrated=False))
        coef = p.calibration_.get(m.setup, (1.0, 0.0, 0.0))
        print(f"  {m.model:12s} {m.setup:6s} {raw:9.3f} {m.predicted_ms:9.3f} {m.measured_ms:9.3f} "
              f"{m.measured_ms / raw:8.3f} {m.rel_error * 100:+6.1f}  {coef[0]:.3f}, {coef[1]:.4f}, {coef[2]:+.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
