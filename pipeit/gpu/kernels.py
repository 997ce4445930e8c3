"""OpenCL C kernel templates: Python functions that write kernel source for one shape.

Every template takes the layer's shape constants and a parameter dict (the
tunable knobs: tile sizes, work per item, vector width, work-group size)
and returns complete OpenCL C source. Shapes are baked in as ``#define``
constants, so loops over kernel taps and tiles have compile-time bounds the
compiler can unroll -- which is why a tuned kernel is specific to one layer
descriptor and one device, as in ARM Compute Library's CLTuner or TVM.

Tensors are NHWC as in TFLite. Precision is chosen by :class:`Precision`:
``storage`` is the element type of buffers in device memory (``float`` or
``half``: half storage uses the core ``vload_half``/``vstore_half`` and
needs no extension), ``compute`` the arithmetic type (``half`` needs
``cl_khr_fp16``). Kernels read and write through the ``LD``/``LD4``/``ST``
macros of :func:`header` so one template serves every precision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Sequence, Tuple

import numpy as np

__all__ = [
    "Precision",
    "FP32",
    "FP16_STORAGE",
    "FP16",
    "PRECISIONS",
    "ACTIVATIONS",
    "MAX_INDEX",
    "header",
    "conv_direct",
    "im2col",
    "gemm",
    "gemm_launch",
    "winograd_input",
    "winograd_output",
    "winograd_weights",
    "depthwise",
    "transpose_conv",
    "pool",
    "mean_hw",
    "binary",
    "unary",
    "concat_copy",
    "pad",
    "resize",
    "gather",
    "softmax",
]


@dataclass(frozen=True)
class Precision:
    """Storage and arithmetic types of a kernel (``float`` or ``half`` each)."""

    name: str
    storage: str
    compute: str

    @property
    def needs_fp16(self) -> bool:
        return self.compute == "half"

    @property
    def numpy_storage(self) -> str:
        return "float16" if self.storage == "half" else "float32"


FP32 = Precision("fp32", "float", "float")
FP16_STORAGE = Precision("fp16-storage", "half", "float")
FP16 = Precision("fp16", "half", "half")
PRECISIONS: Dict[str, Precision] = {p.name: p for p in (FP32, FP16_STORAGE, FP16)}

#: the largest element index or work-item id a kernel handles: they compute ids and offsets in ``int``
MAX_INDEX = 2**31 - 1

#: fused/standalone activations a kernel epilogue can apply
ACTIVATIONS = ("NONE", "RELU", "RELU6", "RELU_N1_TO_1", "TANH")


def header(precision: Precision) -> str:
    """Types, load/store macros and activation macros every kernel starts with."""
    if precision.compute == "half":
        lines = [
            "#pragma OPENCL EXTENSION cl_khr_fp16 : enable",
            "typedef half real; typedef half4 real4; typedef half store_t;",
            "#define LD(p,i) ((p)[(i)])",
            "#define LD4(p,i) vload4(0,(p)+(i))",
            "#define ST(p,i,v) ((p)[(i)] = (real)(v))",
            "#define ST4(p,i,v) vstore4((v),0,(p)+(i))",
        ]
    elif precision.storage == "half":
        lines = [
            "typedef float real; typedef float4 real4; typedef half store_t;",
            "#define LD(p,i) vload_half((i),(p))",
            "#define LD4(p,i) vload_half4(0,(p)+(i))",
            "#define ST(p,i,v) vstore_half((v),(i),(p))",
            "#define ST4(p,i,v) vstore_half4((v),0,(p)+(i))",
        ]
    else:
        lines = [
            "typedef float real; typedef float4 real4; typedef float store_t;",
            "#define LD(p,i) ((p)[(i)])",
            "#define LD4(p,i) vload4(0,(p)+(i))",
            "#define ST(p,i,v) ((p)[(i)] = (v))",
            "#define ST4(p,i,v) vstore4((v),0,(p)+(i))",
        ]
    lines += [
        "#define ACT_NONE(x) (x)",
        # comparisons, not fmax/fmin: a NaN passes through as TFLite's fused activations pass it
        "#define CLAMP_KEEP_NAN(x,lo,hi) ((x) < (lo) ? (lo) : ((x) > (hi) ? (hi) : (x)))",
        "#define ACT_RELU(x) ((x) < (real)0 ? (real)0 : (x))",
        "#define ACT_RELU6(x) CLAMP_KEEP_NAN((x),(real)0,(real)6)",
        "#define ACT_RELU_N1_TO_1(x) CLAMP_KEEP_NAN((x),(real)-1,(real)1)",
        "#define ACT_TANH(x) tanh(x)",
    ]
    return "\n".join(lines) + "\n"


def _defines(values: Mapping[str, object]) -> str:
    return "".join(f"#define {k} {int(v) if isinstance(v, bool) else v}\n" for k, v in values.items())


def _act(activation: str) -> str:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation {activation!r} has no kernel epilogue")
    return f"#define ACT ACT_{activation}\n"


# ---- convolution --------------------------------------------------------------------------

def conv_direct(shape: Mapping[str, int], params: Mapping[str, int], activation: str,
                precision: Precision) -> str:
    """Direct convolution: one work item computes ``CO`` adjacent output channels of a pixel.

    ``shape`` keys: N H W CIN OH OW COUT KH KW SH SW DH DW PT PL GROUPS.
    ``params``: CO (output channels per item, divides COUT/GROUPS), VEC (1
    or 4: vector loads along input channels, needs CIN/GROUPS % 4 == 0).
    Weights are TFLite's ``[COUT, KH, KW, CIN/GROUPS]``.
    """
    cin_g = shape["CIN"] // shape["GROUPS"]
    cout_g = shape["COUT"] // shape["GROUPS"]
    co, vec = int(params["CO"]), int(params["VEC"])
    d = dict(shape)
    d.update(CIN_G=cin_g, COUT_G=cout_g, CO=co, COB=shape["COUT"] // co,
             TOTAL=shape["N"] * shape["OH"] * shape["OW"] * (shape["COUT"] // co))
    if vec == 4:
        inner = """
        for (int ci = 0; ci < CIN_G; ci += 4) {
          const real4 x = LD4(in, ib + ci);
          #pragma unroll
          for (int j = 0; j < CO; ++j) acc[j] += dot(x, LD4(w, wb + j * KH * KW * CIN_G + ci));
        }"""
    else:
        inner = """
        for (int ci = 0; ci < CIN_G; ++ci) {
          const real x = LD(in, ib + ci);
          #pragma unroll
          for (int j = 0; j < CO; ++j) acc[j] += x * LD(w, wb + j * KH * KW * CIN_G + ci);
        }"""
    return header(precision) + _defines(d) + _act(activation) + """
__kernel void conv_direct(__global const store_t* in, __global const store_t* w,
                          __global const store_t* bias, __global store_t* out) {
  const int gid = get_global_id(0);
  if (gid >= TOTAL) return;
  const int cb = gid % COB;
  int p = gid / COB;
  const int ox = p % OW; p /= OW;
  const int oy = p % OH;
  const int n = p / OH;
  const int co0 = cb * CO;
  const int g = co0 / COUT_G;
  real acc[CO];
  #pragma unroll
  for (int j = 0; j < CO; ++j) acc[j] = LD(bias, co0 + j);
  for (int ky = 0; ky < KH; ++ky) {
    const int iy = oy * SH - PT + ky * DH;
    if (iy < 0 || iy >= H) continue;
    for (int kx = 0; kx < KW; ++kx) {
      const int ix = ox * SW - PL + kx * DW;
      if (ix < 0 || ix >= W) continue;
      const int ib = ((n * H + iy) * W + ix) * CIN + g * CIN_G;
      const int wb = ((co0 * KH + ky) * KW + kx) * CIN_G;""" + inner + """
    }
  }
  const int ob = ((n * OH + oy) * OW + ox) * COUT + co0;
  #pragma unroll
  for (int j = 0; j < CO; ++j) ST(out, ob + j, ACT(acc[j]));
}
"""


def im2col(shape: Mapping[str, int], precision: Precision) -> str:
    """Unfold input patches into a ``[N*OH*OW, KH*KW*CIN]`` matrix (zeros where padded).

    Column order ``(ky, kx, ci)`` matches TFLite's filter layout, so the
    filter reshaped to ``[COUT, K]`` and transposed is the GEMM's B.
    """
    d = dict(shape)
    d.update(K=shape["KH"] * shape["KW"] * shape["CIN"],
             TOTAL=shape["N"] * shape["OH"] * shape["OW"] * shape["KH"] * shape["KW"] * shape["CIN"])
    return header(precision) + _defines(d) + """
__kernel void im2col(__global const store_t* in, __global store_t* col) {
  const int gid = get_global_id(0);
  if (gid >= TOTAL) return;
  const int ci = gid % CIN;
  int p = gid / CIN;
  const int kx = p % KW; p /= KW;
  const int ky = p % KH; p /= KH;
  const int ox = p % OW; p /= OW;
  const int oy = p % OH;
  const int n = p / OH;
  const int iy = oy * SH - PT + ky * DH;
  const int ix = ox * SW - PL + kx * DW;
  real v = (real)0;
  if (iy >= 0 && iy < H && ix >= 0 && ix < W) v = LD(in, ((n * H + iy) * W + ix) * CIN + ci);
  ST(col, gid, v);
}
"""


def gemm(m: int, n: int, k: int, params: Mapping[str, int], activation: str, precision: Precision,
         bias: bool = True) -> str:
    """Tiled GEMM ``C[b] = act(A[b] @ B[b] + bias)``: A ``[M, K]``, B ``[K, N]``, row-major.

    A work-group computes a ``TM x TN`` tile of C, staging ``TK``-deep slices
    of A and B in local memory; each work item accumulates a ``WM x WN``
    register block whose rows/columns are strided by the group's thread
    grid (neighbouring items touch neighbouring local-memory words).
    ``params``: TM TN TK WM WN. The third NDRange axis is the batch
    (Winograd's 16 transformed products).
    """
    tm, tn, tk = int(params["TM"]), int(params["TN"]), int(params["TK"])
    wm, wn = int(params["WM"]), int(params["WN"])
    if tm % wm or tn % wn:
        raise ValueError("TM must be a multiple of WM and TN of WN")
    if not int(params.get("LOCAL", 1)):
        return _gemm_registers(m, n, k, tm, tn, tk, wm, wn, activation, precision, bias)
    d = dict(M=m, N=n, K=k, TM=tm, TN=tn, TK=tk, WM=wm, WN=wn, RTM=tm // wm, RTN=tn // wn,
             NT=(tm // wm) * (tn // wn), HAS_BIAS=int(bias))
    return header(precision) + _defines(d) + _act(activation) + """
__kernel __attribute__((reqd_work_group_size(RTN, RTM, 1)))
void gemm(__global const store_t* A, __global const store_t* B,
          __global const store_t* bias, __global store_t* C) {
  const int tn = get_local_id(0);
  const int tm = get_local_id(1);
  const int n0 = get_group_id(0) * TN;
  const int m0 = get_group_id(1) * TM;
  const int b = get_global_id(2);
  A += (size_t)b * M * K;
  B += (size_t)b * K * N;
  C += (size_t)b * M * N;
  __local real As[TK][TM];
  __local real Bs[TK][TN];
  real acc[WM][WN];
  #pragma unroll
  for (int i = 0; i < WM; ++i)
    #pragma unroll
    for (int j = 0; j < WN; ++j) acc[i][j] = (real)0;
  const int tid = tm * RTN + tn;
  for (int k0 = 0; k0 < K; k0 += TK) {
    for (int e = tid; e < TM * TK; e += NT) {
      const int mm = e / TK, kk = e % TK;
      const int gm = m0 + mm, gk = k0 + kk;
      As[kk][mm] = (gm < M && gk < K) ? LD(A, gm * K + gk) : (real)0;
    }
    for (int e = tid; e < TK * TN; e += NT) {
      const int kk = e / TN, nn = e % TN;
      const int gk = k0 + kk, gn = n0 + nn;
      Bs[kk][nn] = (gk < K && gn < N) ? LD(B, gk * N + gn) : (real)0;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    #pragma unroll
    for (int kk = 0; kk < TK; ++kk) {
      real a[WM], bv[WN];
      #pragma unroll
      for (int i = 0; i < WM; ++i) a[i] = As[kk][tm + i * RTM];
      #pragma unroll
      for (int j = 0; j < WN; ++j) bv[j] = Bs[kk][tn + j * RTN];
      #pragma unroll
      for (int i = 0; i < WM; ++i)
        #pragma unroll
        for (int j = 0; j < WN; ++j) acc[i][j] += a[i] * bv[j];
    }
    barrier(CLK_LOCAL_MEM_FENCE);
  }
  #pragma unroll
  for (int i = 0; i < WM; ++i) {
    const int gm = m0 + tm + i * RTM;
    #pragma unroll
    for (int j = 0; j < WN; ++j) {
      const int gn = n0 + tn + j * RTN;
      if (gm < M && gn < N) {
        real v = acc[i][j];
#if HAS_BIAS
        v += LD(bias, gn);
#endif
        ST(C, gm * N + gn, ACT(v));
      }
    }
  }
}
"""


def _gemm_registers(m: int, n: int, k: int, tm: int, tn: int, tk: int, wm: int, wn: int,
                    activation: str, precision: Precision, bias: bool) -> str:
    """GEMM without local memory: each item owns a ``WM x WN`` register block of C.

    Suits devices whose "local memory" is ordinary cached RAM (CPU OpenCL,
    some mobile GPUs): no barriers. As in the local-memory kernel, an item's
    columns are strided by the group width, so neighbouring work items read
    neighbouring words of B (what SIMD lanes, or pocl's vectoriser across
    work items, want); its rows are contiguous. The ``K`` loop is unrolled
    by ``TK``.
    """
    d = dict(M=m, N=n, K=k, TM=tm, TN=tn, TK=tk, WM=wm, WN=wn, RTM=tm // wm, RTN=tn // wn,
             HAS_BIAS=int(bias))
    return header(precision) + _defines(d) + _act(activation) + """
__kernel __attribute__((reqd_work_group_size(RTN, RTM, 1)))
void gemm(__global const store_t* A, __global const store_t* B,
          __global const store_t* bias, __global store_t* C) {
  const int tn = get_local_id(0);
  const int n0 = get_group_id(0) * TN + tn;
  const int m0 = get_group_id(1) * TM + get_local_id(1) * WM;
  const int b = get_global_id(2);
  A += (size_t)b * M * K;
  B += (size_t)b * K * N;
  C += (size_t)b * M * N;
  int rows[WM], cols[WN];
  #pragma unroll
  for (int i = 0; i < WM; ++i) rows[i] = min(m0 + i, M - 1);
  #pragma unroll
  for (int j = 0; j < WN; ++j) cols[j] = min(n0 + j * RTN, N - 1);
  real acc[WM][WN];
  #pragma unroll
  for (int i = 0; i < WM; ++i)
    #pragma unroll
    for (int j = 0; j < WN; ++j) acc[i][j] = (real)0;
  #pragma unroll TK
  for (int kk = 0; kk < K; ++kk) {
    real bv[WN];
    #pragma unroll
    for (int j = 0; j < WN; ++j) bv[j] = LD(B, kk * N + cols[j]);
    #pragma unroll
    for (int i = 0; i < WM; ++i) {
      const real a = LD(A, rows[i] * K + kk);
      #pragma unroll
      for (int j = 0; j < WN; ++j) acc[i][j] += a * bv[j];
    }
  }
  #pragma unroll
  for (int i = 0; i < WM; ++i) {
    #pragma unroll
    for (int j = 0; j < WN; ++j) {
      const int gm = m0 + i, gn = n0 + j * RTN;
      if (gm < M && gn < N) {
        real v = acc[i][j];
#if HAS_BIAS
        v += LD(bias, gn);
#endif
        ST(C, gm * N + gn, ACT(v));
      }
    }
  }
}
"""


def gemm_launch(m: int, n: int, params: Mapping[str, int], batch: int = 1
                ) -> Tuple[Tuple[int, int, int], Tuple[int, int, int]]:
    """(global, local) NDRange sizes for :func:`gemm`."""
    tm, tn, wm, wn = (int(params[k]) for k in ("TM", "TN", "WM", "WN"))
    groups_n = -(-n // tn)
    groups_m = -(-m // tm)
    local = (tn // wn, tm // wm, 1)
    return (groups_n * local[0], groups_m * local[1], batch), local


def winograd_input(shape: Mapping[str, int], precision: Precision) -> str:
    """Winograd F(2x2, 3x3) input transform ``V = B^T d B`` into ``[16, tiles, CIN]``."""
    th, tw = -(-shape["OH"] // 2), -(-shape["OW"] // 2)
    d = dict(shape)
    d.update(TH=th, TW=tw, T=shape["N"] * th * tw, TOTAL=shape["N"] * th * tw * shape["CIN"])
    return header(precision) + _defines(d) + """
__kernel void wino_in(__global const store_t* in, __global store_t* v) {
  const int gid = get_global_id(0);
  if (gid >= TOTAL) return;
  const int ci = gid % CIN;
  const int t = gid / CIN;
  const int tx = t % TW;
  const int ty = (t / TW) % TH;
  const int n = t / (TW * TH);
  const int y0 = 2 * ty - PT, x0 = 2 * tx - PL;
  real d[4][4];
  #pragma unroll
  for (int i = 0; i < 4; ++i)
    #pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int y = y0 + i, x = x0 + j;
      d[i][j] = (y >= 0 && y < H && x >= 0 && x < W) ? LD(in, ((n * H + y) * W + x) * CIN + ci) : (real)0;
    }
  real s[4][4];
  #pragma unroll
  for (int j = 0; j < 4; ++j) {
    s[0][j] = d[0][j] - d[2][j];
    s[1][j] = d[1][j] + d[2][j];
    s[2][j] = d[2][j] - d[1][j];
    s[3][j] = d[1][j] - d[3][j];
  }
  #pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int base = (i * 4) * T * CIN + t * CIN + ci;
    ST(v, base,               s[i][0] - s[i][2]);
    ST(v, base + T * CIN,     s[i][1] + s[i][2]);
    ST(v, base + 2 * T * CIN, s[i][2] - s[i][1]);
    ST(v, base + 3 * T * CIN, s[i][1] - s[i][3]);
  }
}
"""


def winograd_output(shape: Mapping[str, int], activation: str, precision: Precision) -> str:
    """Winograd F(2x2, 3x3) output transform ``Y = A^T m A`` plus bias and activation."""
    th, tw = -(-shape["OH"] // 2), -(-shape["OW"] // 2)
    d = dict(shape)
    d.update(TH=th, TW=tw, T=shape["N"] * th * tw, TOTAL=shape["N"] * th * tw * shape["COUT"])
    return header(precision) + _defines(d) + _act(activation) + """
__kernel void wino_out(__global const store_t* m, __global const store_t* bias,
                       __global store_t* out) {
  const int gid = get_global_id(0);
  if (gid >= TOTAL) return;
  const int co = gid % COUT;
  const int t = gid / COUT;
  const int tx = t % TW;
  const int ty = (t / TW) % TH;
  const int n = t / (TW * TH);
  real q[4][4];
  #pragma unroll
  for (int i = 0; i < 16; ++i) q[i / 4][i % 4] = LD(m, i * T * COUT + t * COUT + co);
  real s[2][4];
  #pragma unroll
  for (int j = 0; j < 4; ++j) {
    s[0][j] = q[0][j] + q[1][j] + q[2][j];
    s[1][j] = q[1][j] - q[2][j] - q[3][j];
  }
  const real b = LD(bias, co);
  #pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int y = 2 * ty + i;
    if (y >= OH) continue;
    const real r0 = s[i][0] + s[i][1] + s[i][2] + b;
    const real r1 = s[i][1] - s[i][2] - s[i][3] + b;
    const int x = 2 * tx;
    ST(out, ((n * OH + y) * OW + x) * COUT + co, ACT(r0));
    if (x + 1 < OW) ST(out, ((n * OH + y) * OW + x + 1) * COUT + co, ACT(r1));
  }
}
"""


def winograd_weights(filters):
    """Host-side filter transform ``U = G g G^T``: ``[COUT,3,3,CIN]`` -> ``[16, CIN, COUT]``."""
    import numpy as np

    g = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])
    f = np.asarray(filters, dtype=np.float64)  # [co, ky, kx, ci]
    u = np.einsum("ay,oyxc,bx->abco", g, f, g)  # [4, 4, ci, co]
    return np.ascontiguousarray(u.reshape(16, f.shape[3], f.shape[0]), dtype=np.float32)


# ---- other layers ---------------------------------------------------------------------------

def depthwise(shape: Mapping[str, int], params: Mapping[str, int], activation: str,
              precision: Precision) -> str:
    """Depthwise convolution; ``VEC`` = 4 computes four channels per item (needs DM == 1, C % 4 == 0).

    Filter is TFLite's ``[1, KH, KW, COUT]`` with ``COUT = CIN * DM``.
    """
    vec = int(params["VEC"])
    d = dict(shape)
    d.update(VEC=vec, CB=shape["COUT"] // vec,
             TOTAL=shape["N"] * shape["OH"] * shape["OW"] * (shape["COUT"] // vec))
    if vec == 4:
        body = """
      real4 acc = LD4(bias, c0);
      for (int ky = 0; ky < KH; ++ky) {
        const int iy = oy * SH - PT + ky * DH;
        if (iy < 0 || iy >= H) continue;
        #pragma unroll
        for (int kx = 0; kx < KW; ++kx) {
          const int ix = ox * SW - PL + kx * DW;
          if (ix < 0 || ix >= W) continue;
          acc += LD4(in, ((n * H + iy) * W + ix) * CIN + c0) * LD4(w, (ky * KW + kx) * COUT + c0);
        }
      }
      acc = ACT(acc);
      ST4(out, ((n * OH + oy) * OW + ox) * COUT + c0, acc);"""
    else:
        body = """
      real acc = LD(bias, c0);
      const int ci = c0 / DM;
      for (int ky = 0; ky < KH; ++ky) {
        const int iy = oy * SH - PT + ky * DH;
        if (iy < 0 || iy >= H) continue;
        #pragma unroll
        for (int kx = 0; kx < KW; ++kx) {
          const int ix = ox * SW - PL + kx * DW;
          if (ix < 0 || ix >= W) continue;
          acc += LD(in, ((n * H + iy) * W + ix) * CIN + ci) * LD(w, (ky * KW + kx) * COUT + c0);
        }
      }
      ST(out, ((n * OH + oy) * OW + ox) * COUT + c0, ACT(acc));"""
    return header(precision) + _defines(d) + _act(activation) + """
__kernel void depthwise(__global const store_t* in, __global const store_t* w,
                        __global const store_t* bias, __global store_t* out) {
  const int gid = get_global_id(0);
  if (gid >= TOTAL) return;
  const int c0 = (gid % CB) * VEC;
  int p = gid / CB;
  const int ox = p % OW; p /= OW;
  const int oy = p % OH;
  const int n = p / OH;""" + body + """
}
"""


def transpose_conv(shape: Mapping[str, int], activation: str, precision: Precision) -> str:
    """TRANSPOSE_CONV, one item per output element: the input pixels whose stride lands on it, times
    weights ``[COUT, KH, KW, CIN]``, plus bias, then the activation (accumulated in float)."""
    d = dict(shape)
    d["TOTAL"] = shape["N"] * shape["OH"] * shape["OW"] * shape["COUT"]
    return header(precision) + _defines(d) + _act(activation) + """
__kernel void transpose_conv(__global const store_t* x, __global const store_t* w, __global const store_t* bias,
                             __global store_t* out) {
""" + _nhwc_item("COUT") + """
  const int co = c;
  float acc = 0.0f;
  for (int fy = 0; fy < KH; ++fy) {
    const int ty = oy + PT - fy;
    if (ty < 0 || ty % SH) continue;
    const int iy = ty / SH;
    if (iy >= H) continue;
    for (int fx = 0; fx < KW; ++fx) {
      const int tx = ox + PL - fx;
      if (tx < 0 || tx % SW) continue;
      const int ix = tx / SW;
      if (ix >= W) continue;
      const int xb = ((n * H + iy) * W + ix) * CIN;
      const int wb = ((co * KH + fy) * KW + fx) * CIN;
      for (int ci = 0; ci < CIN; ++ci) acc += (float)LD(x, xb + ci) * (float)LD(w, wb + ci);
    }
  }
  ST(out, gid, ACT((real)(acc + (float)LD(bias, co))));
}
"""


def _nhwc_item(channels: str) -> str:
    """The opening of a kernel with one item per NHWC output element: ``gid`` split into ``n, oy, ox, c``
    (``channels`` names the macro of the output's channel count; ``OH``/``OW`` its height and width)."""
    return f"""  const int gid = get_global_id(0);
  if (gid >= TOTAL) return;
  const int c = gid % {channels};
  int r = gid / {channels};
  const int ox = r % OW; r /= OW;
  const int oy = r % OH;
  const int n = r / OH;
"""


def pool(kind: str, shape: Mapping[str, int], activation: str, precision: Precision) -> str:
    """Max or average pooling; the average counts only taps inside the input (as TFLite)."""
    if kind not in ("max", "avg"):
        raise ValueError(f"pool kind {kind!r}")
    d = dict(shape)
    d.update(TOTAL=shape["N"] * shape["OH"] * shape["OW"] * shape["C"], IS_MAX=int(kind == "max"))
    return header(precision) + _defines(d) + _act(activation) + """
__kernel void pool(__global const store_t* in, __global store_t* out) {
""" + _nhwc_item("C") + """
#if IS_MAX
  real acc = -INFINITY;
#else
  real acc = (real)0;
#endif
  int count = 0;
  for (int ky = 0; ky < KH; ++ky) {
    const int iy = oy * SH - PT + ky;
    if (iy < 0 || iy >= H) continue;
    for (int kx = 0; kx < KW; ++kx) {
      const int ix = ox * SW - PL + kx;
      if (ix < 0 || ix >= W) continue;
      const real v = LD(in, ((n * H + iy) * W + ix) * C + c);
#if IS_MAX
      acc = fmax(acc, v);
#else
      acc += v;
#endif
      ++count;
    }
  }
#if !IS_MAX
  acc = count > 0 ? acc / (real)count : (real)0;
#endif
  ST(out, gid, ACT(acc));
}
"""


def mean_hw(shape: Mapping[str, int], precision: Precision) -> str:
    """MEAN over H and W of an NHWC tensor: one item per (n, c), accumulated in float."""
    d = dict(shape)
    d.update(TOTAL=shape["N"] * shape["C"])
    return header(precision) + _defines(d) + """
__kernel void mean_hw(__global const store_t* in, __global store_t* out) {
  const int gid = get_global_id(0);
  if (gid >= TOTAL) return;
  const int c = gid % C;
  const int n = gid / C;
  float acc = 0.0f;
  for (int i = 0; i < H * W; ++i) acc += (float)LD(in, (n * H * W + i) * C + c);
  ST(out, gid, (real)(acc / (float)(H * W)));
}
"""


_BINARY_EXPR = {
    "ADD": "a + b",
    "MUL": "a * b",
    "SUB": "a - b",
    "MAXIMUM": "fmax(a, b)",
    "MINIMUM": "fmin(a, b)",
    "PRELU": "(a >= (real)0 ? a : a * b)",
}


def _index_code(out_shape: Sequence[int], strides: Mapping[str, Sequence[int]]) -> str:
    """Code that splits the flat output index into 4 coordinates and forms input offsets."""
    o = list(out_shape)
    lines = [
        f"  int r = gid; const int i3 = r % {o[3]}; r /= {o[3]};",
        f"  const int i2 = r % {o[2]}; r /= {o[2]};",
        f"  const int i1 = r % {o[1]}; const int i0 = r / {o[1]};",
    ]
    for name, s in strides.items():
        lines.append(f"  const int off_{name} = i0 * {s[0]} + i1 * {s[1]} + i2 * {s[2]} + i3 * {s[3]};")
    return "\n".join(lines) + "\n"


def binary(op: str, out_shape: Sequence[int], a_strides: Sequence[int], b_strides: Sequence[int],
           activation: str, precision: Precision) -> str:
    """Element-wise binary op with numpy broadcasting (rank <= 4, strides 0 where broadcast)."""
    if op not in _BINARY_EXPR:
        raise ValueError(f"binary op {op!r}")
    total = 1
    for dim in out_shape:
        total *= int(dim)
    return header(precision) + _defines({"TOTAL": total}) + _act(activation) + """
__kernel void binary(__global const store_t* x, __global const store_t* y, __global store_t* out) {
  const int gid = get_global_id(0);
  if (gid >= TOTAL) return;
""" + _index_code(out_shape, {"a": a_strides, "b": b_strides}) + f"""
  const real a = LD(x, off_a);
  const real b = LD(y, off_b);
  ST(out, gid, ACT({_BINARY_EXPR[op]}));
}}
"""


_UNARY_EXPR = {
    "RELU": "ACT_RELU(a)",
    "RELU6": "ACT_RELU6(a)",
    "RELU_N1_TO_1": "ACT_RELU_N1_TO_1(a)",
    "TANH": "tanh(a)",
    "LOGISTIC": "(real)1 / ((real)1 + exp(-a))",
    "HARD_SWISH": "a * fmin(fmax(a + (real)3, (real)0), (real)6) / (real)6",
}

UNARY_OPS = tuple(_UNARY_EXPR)
BINARY_OPS = tuple(_BINARY_EXPR)


def unary(op: str, total: int, precision: Precision) -> str:
    """A standalone activation (RELU, RELU6, LOGISTIC, HARD_SWISH, TANH, ...)."""
    if op not in _UNARY_EXPR:
        raise ValueError(f"unary op {op!r}")
    return header(precision) + _defines({"TOTAL": total}) + f"""
__kernel void unary(__global const store_t* x, __global store_t* out) {{
  const int gid = get_global_id(0);
  if (gid >= TOTAL) return;
  const real a = LD(x, gid);
  ST(out, gid, {_UNARY_EXPR[op]});
}}
"""


def concat_copy(outer: int, inner_in: int, inner_out: int, offset: int, precision: Precision) -> str:
    """Copy one CONCATENATION input into its slot: ``outer`` rows of ``inner_in`` elements."""
    d = dict(OUTER=outer, INNER_IN=inner_in, INNER_OUT=inner_out, OFFSET=offset,
             TOTAL=outer * inner_in)
    return header(precision) + _defines(d) + """
__kernel void concat_copy(__global const store_t* x, __global store_t* out) {
  const int gid = get_global_id(0);
  if (gid >= TOTAL) return;
  const int i = gid % INNER_IN;
  const int o = gid / INNER_IN;
  ST(out, o * INNER_OUT + OFFSET + i, LD(x, gid));
}
"""


def pad(in_shape: Sequence[int], out_shape: Sequence[int], before: Sequence[int],
        precision: Precision) -> str:
    """Zero padding of a rank-4 tensor (lower ranks are padded with leading 1s by the caller)."""
    total = 1
    for dim in out_shape:
        total *= int(dim)
    s = list(in_shape)
    d = {"TOTAL": total}
    for k in range(4):
        d[f"I{k}"] = int(s[k])
        d[f"B{k}"] = int(before[k])
    return header(precision) + _defines(d) + """
__kernel void pad(__global const store_t* x, __global store_t* out) {
  const int gid = get_global_id(0);
  if (gid >= TOTAL) return;
""" + _index_code(out_shape, {}) + """
  const int j0 = i0 - B0, j1 = i1 - B1, j2 = i2 - B2, j3 = i3 - B3;
  real v = (real)0;
  if (j0 >= 0 && j0 < I0 && j1 >= 0 && j1 < I1 && j2 >= 0 && j2 < I2 && j3 >= 0 && j3 < I3)
    v = LD(x, ((j0 * I1 + j1) * I2 + j2) * I3 + j3);
  ST(out, gid, v);
}
"""


def _f32(value: float) -> str:
    """An OpenCL float literal of ``value`` rounded to float32 (as TFLite computes its scales)."""
    return f"{float(np.float32(value))!r}f"


def resize(in_shape: Sequence[int], out_shape: Sequence[int], mode: str, align_corners: bool,
           half_pixel_centers: bool, precision: Precision) -> str:
    """RESIZE_BILINEAR / RESIZE_NEAREST_NEIGHBOR (NHWC), one item per output element.

    The sampling positions follow TFLite's reference kernels: the scale is
    ``in / out`` (``(in - 1) / (out - 1)`` with aligned corners), computed in
    float32; bilinear weights come from the unclamped position, nearest
    rounds (aligned corners) or floors it. Contraction into fma is off so
    that a position lands on the same side of a pixel as on the CPU.
    """
    n, h, w, c = (int(v) for v in in_shape)
    oh, ow = int(out_shape[1]), int(out_shape[2])

    def scale(size_in: int, size_out: int) -> float:
        if align_corners and size_out > 1:
            return np.float32(size_in - 1) / np.float32(size_out - 1)
        return np.float32(size_in) / np.float32(size_out)

    d = dict(TOTAL=n * oh * ow * c, H=h, W=w, C=c, OH=oh, OW=ow, SY=_f32(scale(h, oh)), SX=_f32(scale(w, ow)),
             BILINEAR=int(mode == "bilinear"), ALIGN=int(align_corners), HALF=int(half_pixel_centers))
    return "#pragma OPENCL FP_CONTRACT OFF\n" + header(precision) + _defines(d) + """
__kernel void resize(__global const store_t* x, __global store_t* out) {
""" + _nhwc_item("C") + """
  const int base = n * H;
#if BILINEAR
  const float fy = HALF ? ((float)oy + 0.5f) * SY - 0.5f : (float)oy * SY;
  const float fx = HALF ? ((float)ox + 0.5f) * SX - 0.5f : (float)ox * SX;
  const int y0 = max((int)floor(fy), 0), y1 = min((int)ceil(fy), H - 1);
  const int x0 = max((int)floor(fx), 0), x1 = min((int)ceil(fx), W - 1);
  const float dy = fy - (float)y0, dx = fx - (float)x0;
  const float v = (float)LD(x, ((base + y0) * W + x0) * C + c) * (1.0f - dy) * (1.0f - dx)
                + (float)LD(x, ((base + y1) * W + x0) * C + c) * dy * (1.0f - dx)
                + (float)LD(x, ((base + y0) * W + x1) * C + c) * (1.0f - dy) * dx
                + (float)LD(x, ((base + y1) * W + x1) * C + c) * dy * dx;
  ST(out, gid, (real)v);
#else
  const float off = HALF ? 0.5f : 0.0f;
  int iy = ALIGN ? (int)round(((float)oy + off) * SY) : (int)floor(((float)oy + off) * SY);
  int ix = ALIGN ? (int)round(((float)ox + off) * SX) : (int)floor(((float)ox + off) * SX);
  iy = min(iy, H - 1); ix = min(ix, W - 1);
  if (HALF) { iy = max(iy, 0); ix = max(ix, 0); }
  ST(out, gid, LD(x, ((base + iy) * W + ix) * C + c));
#endif
}
"""


def gather(total: int, precision: Precision) -> str:
    """``out[i] = x[index[i]]``: slices and transposes, their index table made on the host."""
    return header(precision) + _defines({"TOTAL": int(total)}) + """
__kernel void gather(__global const store_t* x, __global const int* index, __global store_t* out) {
  const int gid = get_global_id(0);
  if (gid >= TOTAL) return;
  ST(out, gid, LD(x, index[gid]));
}
"""


def softmax(rows: int, depth: int, beta: float, precision: Precision) -> str:
    """SOFTMAX over the last axis: one item per row, max-subtracted, accumulated in float."""
    d = dict(ROWS=rows, D=depth, BETA=f"{float(beta)!r}f")
    return header(precision) + _defines(d) + """
__kernel void softmax(__global const store_t* x, __global store_t* out) {
  const int row = get_global_id(0);
  if (row >= ROWS) return;
  const int base = row * D;
  float mx = -INFINITY;
  for (int i = 0; i < D; ++i) mx = fmax(mx, (float)LD(x, base + i));
  float sum = 0.0f;
  for (int i = 0; i < D; ++i) sum += exp(((float)LD(x, base + i) - mx) * BETA);
  const float inv = 1.0f / sum;
  for (int i = 0; i < D; ++i) ST(out, base + i, (real)(exp(((float)LD(x, base + i) - mx) * BETA) * inv));
}
"""
