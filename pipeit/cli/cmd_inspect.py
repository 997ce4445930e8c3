"""``pipeit inspect MODEL``: the layers, their descriptors, and the cut points between them."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from pipeit.cli.output import emit_json, format_table

if TYPE_CHECKING:  # the graph module brings networkx and the schema: imported when a command runs
    from pipeit.graph import LayerGraph

__all__ = ["register", "run"]


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="list a model's layers, descriptors and cut points",
        description="Read a .tflite model and list its layers (constant-only ops folded into "
        "their consumer, dead ops left out), each layer's output shape, MACs and weight bytes, "
        "and the tensors crossing every cut point. The model is also built once in the runtime: "
        "one it cannot load is refused.",
    )
    parser.add_argument("model", metavar="MODEL", help="a .tflite file")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.set_defaults(run=run)


def _shape(shape) -> str:
    return "x".join(str(d) for d in shape) if shape else "-"


def _text(value: str) -> str:
    """A name as it can be printed on one table line: escaped (``repr``) if it holds a
    newline, tab or other unprintable character -- a raw one would break the layout."""
    return value if value.isprintable() else repr(value)


def render(graph: LayerGraph) -> str:
    """The human-readable report: layer table, totals, I/O tensors."""
    rows = []
    for layer in graph.layers:
        d = layer.descriptor
        rows.append([
            layer.index,
            _text(d.op),
            _shape(d.output_shape),
            d.macs,
            d.weight_bytes,
            graph.cuts[layer.index - 1].bytes if layer.index > 0 else "-",
        ])
    table = format_table(["layer", "op", "output", "MACs", "weight B", "cut B before"], rows)
    ins = ", ".join(f"{_text(t.name)} {_shape(t.shape)} {t.dtype}" for t in graph.inputs)
    outs = ", ".join(f"{_text(t.name)} {_shape(t.shape)} {t.dtype}" for t in graph.outputs)
    lines = [
        table,
        "",
        f"layers: {len(graph.layers)}   total MACs: {graph.total_macs:,}   "
        f"weight bytes: {graph.total_weight_bytes:,}"
        + (f" (held by a worker: {graph.total_held_weight_bytes:,})"
           if graph.total_held_weight_bytes != graph.total_weight_bytes else ""),
        f"inputs: {ins}",
        f"outputs: {outs}",
    ]
    if graph.pruned_ops:
        lines.append(f"dead ops left out (their outputs reach no model output): operator(s) "
                     f"{', '.join(str(k) for k in graph.pruned_ops)}")
    lines.append(f"sha256: {graph.sha256}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from pipeit.graph import load_graph
    from pipeit.runtime import check_loads

    graph = load_graph(args.model)
    check_loads(args.model)  # op versions, options and shapes only the runtime can judge
    if args.json:
        emit_json(graph.to_json())
    else:
        print(render(graph))
    return 0
