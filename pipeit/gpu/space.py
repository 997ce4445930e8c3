"""The tunable parameters of each layer's kernels: the search space, the untuned and heuristic picks.

A *config* is a flat dict of ints plus ``"algo"`` for convolutions. Keys a
given algorithm does not use are absent, so two configs are equal exactly
when they build the same kernels. Validity (tiles divide, work-group fits
the device, local memory fits) is checked here, so a tuner only proposes
configs that can at least be built.
"""

from __future__ import annotations

import itertools
from typing import Dict, FrozenSet, List

from pipeit.gpu.lowering import LayerSpec

__all__ = [
    "Config",
    "GEMM_CHOICES",
    "WG_CHOICES",
    "conv_algorithms",
    "gemm_space",
    "search_space",
    "default_config",
    "heuristic_config",
    "config_key",
    "config_keys",
    "gemm_local_bytes",
    "MAX_PARAM",
]

Config = Dict[str, object]

GEMM_CHOICES = {
    "TM": (8, 16, 32, 64),
    "TN": (8, 16, 32, 64),
    "TK": (4, 8, 16),
    "WM": (1, 2, 4, 8),
    "WN": (1, 2, 4, 8),
    "LOCAL": (1, 0),  # stage tiles in local memory, or registers only
}
#: 1-D work-group sizes (0: leave it to the OpenCL runtime)
WG_CHOICES = (0, 32, 64, 128, 256)
_DIRECT_CO = (1, 2, 4, 8)
#: largest value a config parameter may take: kernels bake them in as C ``int`` constants
MAX_PARAM = 2**31 - 1


def config_key(config: Config) -> str:
    """Canonical text of a config (sorted keys), for dictionaries and tuning files."""
    return ",".join(f"{k}={config[k]}" for k in sorted(config))


def config_keys(spec: LayerSpec, algo: object = None) -> FrozenSet[str]:
    """The parameters a config of this layer (and convolution ``algo``) has: no more, no fewer.

    Taken from the configs this module makes, so a config read from a file
    is held to the same shape as one the tuner proposes.
    """
    if spec.kind == "conv":
        if algo == "direct":
            return frozenset(default_config(spec))
        return frozenset(("algo",) + tuple(GEMM_CHOICES))
    if spec.kind == "gemm":
        return frozenset(GEMM_CHOICES)
    return frozenset(default_config(spec))


def gemm_local_bytes(tm: int, tn: int, tk: int, itemsize: int = 4) -> int:
    """Local memory a local-memory GEMM work-group stages: a TK x TM tile of A and a TK x TN tile of B."""
    return tk * (tm + tn) * itemsize


def conv_algorithms(spec: LayerSpec) -> List[str]:
    """Which convolution algorithms fit this layer's geometry."""
    g = spec.geometry
    algos = ["direct"]
    if g["GROUPS"] == 1:
        if g["KH"] == 1 and g["KW"] == 1 and g["SH"] == 1 and g["SW"] == 1:
            algos.append("gemm")
        algos.append("im2col")
        if (g["KH"], g["KW"], g["SH"], g["SW"], g["DH"], g["DW"]) == (3, 3, 1, 1, 1, 1):
            algos.append("winograd")
    return algos


def gemm_space(max_work_group: int = 256, local_mem_bytes: int = 32768) -> List[Config]:
    """Every valid tiled-GEMM parameter set for a device's limits."""
    out: List[Config] = []
    for tm, tn, tk, wm, wn, local in itertools.product(*GEMM_CHOICES.values()):
        if tm % wm or tn % wn or wm * wn > 32:
            continue
        threads = (tm // wm) * (tn // wn)
        if threads < 4 or threads > max_work_group:
            continue
        if local and gemm_local_bytes(tm, tn, tk) > local_mem_bytes:
            continue
        out.append({"TM": tm, "TN": tn, "TK": tk, "WM": wm, "WN": wn, "LOCAL": local})
    return out


def _wg(max_work_group: int) -> List[int]:
    return [w for w in WG_CHOICES if w <= max_work_group]


def search_space(spec: LayerSpec, max_work_group: int = 256, local_mem_bytes: int = 32768
                 ) -> List[Config]:
    """All configs of this layer's kernels that are valid on a device with these limits."""
    g = spec.geometry
    if spec.kind == "conv":
        out: List[Config] = []
        cin_g, cout_g = g["CIN"] // g["GROUPS"], g["COUT"] // g["GROUPS"]
        gemms = gemm_space(max_work_group, local_mem_bytes)
        for algo in conv_algorithms(spec):
            if algo == "direct":
                for co, vec, wg in itertools.product(_DIRECT_CO, (1, 4), _wg(max_work_group)):
                    if cout_g % co or (vec == 4 and cin_g % 4):
                        continue
                    out.append({"algo": "direct", "CO": co, "VEC": vec, "WG": wg})
            else:
                out.extend({"algo": algo, **p} for p in gemms)
        return out
    if spec.kind == "gemm":
        return gemm_space(max_work_group, local_mem_bytes)
    if spec.kind == "depthwise":
        vecs = (1, 4) if g["DM"] == 1 and g["COUT"] % 4 == 0 else (1,)
        return [{"VEC": v, "WG": w} for v in vecs for w in _wg(max_work_group)]
    if spec.kind == "reshape":
        return [{}]
    return [{"WG": w} for w in _wg(max_work_group)]


def default_config(spec: LayerSpec) -> Config:
    """The untuned baseline: direct convolution, one output per item, runtime work-groups."""
    if spec.kind == "conv":
        return {"algo": "direct", "CO": 1, "VEC": 1, "WG": 0}
    if spec.kind == "gemm":
        return {"TM": 8, "TN": 8, "TK": 4, "WM": 1, "WN": 1, "LOCAL": 1}
    if spec.kind == "depthwise":
        return {"VEC": 1, "WG": 0}
    if spec.kind == "reshape":
        return {}
    return {"WG": 0}


def heuristic_config(spec: LayerSpec) -> Config:
    """A reasonable pick without tuning (what a stage uses for a layer the tuning file lacks)."""
    g = spec.geometry
    if spec.kind == "conv":
        algos = conv_algorithms(spec)
        tiles = {"TM": 32, "TN": 32, "TK": 8, "WM": 4, "WN": 4, "LOCAL": 1}
        if "gemm" in algos:
            return {"algo": "gemm", **tiles}
        if "im2col" in algos:
            return {"algo": "im2col", **tiles}
        cout_g = g["COUT"] // g["GROUPS"]
        co = max(c for c in _DIRECT_CO if cout_g % c == 0)
        vec = 4 if (g["CIN"] // g["GROUPS"]) % 4 == 0 else 1
        return {"algo": "direct", "CO": co, "VEC": vec, "WG": 0}
    if spec.kind == "gemm":
        if g["M"] <= 4:
            return {"TM": 8, "TN": 64, "TK": 16, "WM": 8, "WN": 2, "LOCAL": 1}
        return {"TM": 32, "TN": 32, "TK": 8, "WM": 4, "WN": 4, "LOCAL": 1}
    if spec.kind == "depthwise":
        vec = 4 if g["DM"] == 1 and g["COUT"] % 4 == 0 else 1
        return {"VEC": vec, "WG": 0}
    return default_config(spec)
