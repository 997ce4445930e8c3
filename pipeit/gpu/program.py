"""One layer on the device: its kernels built for a config, its constants uploaded, its launches.

A :class:`LayerProgram` turns a :class:`~pipeit.gpu.lowering.LayerSpec`, a
config (see :mod:`pipeit.gpu.space`) and a precision into a short list of
kernel launches. Arguments are symbolic (``("in", k)``, ``("out", 0)``,
``("const", name)``, ``("scratch", name)``) and resolved against the
stage's tensor buffers at enqueue time, so one program serves every frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from pipeit.gpu import kernels as K
from pipeit.gpu.device import GpuContext, GpuError
from pipeit.gpu.lowering import LayerSpec
from pipeit.gpu.space import Config

__all__ = ["Launch", "LayerProgram"]

Arg = Tuple[str, Any]


@dataclass(frozen=True)
class Launch:
    """One kernel launch: the kernel object, NDRange sizes, and symbolic arguments."""

    name: str
    kernel: Any
    global_size: Tuple[int, ...]
    local_size: Optional[Tuple[int, ...]]
    args: Tuple[Arg, ...]


def _round_up(total: int, wg: int) -> int:
    return -(-total // wg) * wg


def _launch_1d(total: int, config: Config) -> Tuple[Tuple[int], Optional[Tuple[int]]]:
    wg = int(config.get("WG", 0) or 0)
    if wg:
        return (_round_up(total, wg),), (wg,)
    return (max(total, 1),), None


class LayerProgram:
    """The built kernels, constants and scratch buffers of one layer for one config.

    Raises :class:`GpuError` when a kernel does not build (the tuner records
    that as a failed trial) and ``ValueError`` for a config that does not
    fit the layer.
    """

    def __init__(self, ctx: Optional[GpuContext], spec: LayerSpec, config: Config,
                 precision: K.Precision = K.FP32) -> None:
        if ctx is not None and precision.needs_fp16 and not ctx.info.fp16:
            raise GpuError(f"{ctx.info.name} lacks cl_khr_fp16: half arithmetic is not available")
        self.ctx = ctx  # None: a dry run (launch_geometry) that writes sources but builds nothing
        self.spec = spec
        self.config = dict(config)
        self.precision = precision
        self.storage = np.dtype(precision.numpy_storage)
        self.consts: Dict[str, Any] = {}
        self.scratch: Dict[str, Any] = {}
        self.launches: List[Launch] = []
        builder = getattr(self, f"_build_{spec.kind}", None)
        if builder is None:
            raise GpuError(f"no GPU program for layer kind {spec.kind!r}")
        builder()

    @classmethod
    def launch_geometry(cls, spec: LayerSpec, config: Config, precision: K.Precision = K.FP32
                        ) -> Tuple[Launch, ...]:
        """The launches (name, global and local sizes; no kernel) this config makes for this layer.

        A dry run of the same builders that run a layer, without a device: no
        buffer is made and no source compiled, so checking a config read from
        a file applies exactly the rules (and launch sizes) a real run would.
        Raises ``ValueError`` for a config that does not fit the layer.
        """
        return tuple(cls(None, spec, config, precision).launches)

    # ---- helpers ---------------------------------------------------------------------------
    def _const(self, name: str, value: np.ndarray, dtype: Optional[np.dtype] = None) -> None:
        """A read-only device buffer of ``value``, in the storage type unless ``dtype`` says (an index table)."""
        if self.ctx is None:
            return
        cl = self.ctx.cl
        dtype = self.storage if dtype is None else np.dtype(dtype)
        data = np.ascontiguousarray(value, dtype=dtype)
        if data.size == 0:
            data = np.zeros(1, dtype)
        self.consts[name] = cl.Buffer(self.ctx.context, cl.mem_flags.READ_ONLY | cl.mem_flags.COPY_HOST_PTR,
                                      hostbuf=data)

    def _scratch(self, name: str, elements: int) -> None:
        if int(elements) > K.MAX_INDEX:
            raise ValueError(f"its {name!r} buffer would hold {int(elements)} elements, more than the kernels' "
                             f"32-bit int indices reach ({K.MAX_INDEX})")
        if self.ctx is None:
            return
        cl = self.ctx.cl
        self.scratch[name] = cl.Buffer(self.ctx.context, cl.mem_flags.READ_WRITE,
                                       max(int(elements), 1) * self.storage.itemsize)

    def _add(self, source: str, name: str, global_size, local_size, args: Sequence[Arg]) -> None:
        if any(int(n) > K.MAX_INDEX for n in global_size):
            raise ValueError(f"{name} would launch {tuple(global_size)} work items, more than the kernels' "
                             f"32-bit int ids reach ({K.MAX_INDEX})")
        kernel = None
        if self.ctx is not None:
            kernel = self.ctx.cl.Kernel(self.ctx.program(source), name)
        self.launches.append(Launch(name, kernel, tuple(global_size),
                                    None if local_size is None else tuple(local_size), tuple(args)))

    def _gemm(self, m: int, n: int, k: int, a: Arg, b: Arg, bias: Optional[Arg], c: Arg,
              activation: str, batch: int = 1) -> None:
        params = {key: int(self.config[key]) for key in ("TM", "TN", "TK", "WM", "WN")}
        params["LOCAL"] = int(self.config.get("LOCAL", 1))
        source = K.gemm(m, n, k, params, activation, self.precision, bias=bias is not None)
        glob, loc = K.gemm_launch(m, n, params, batch)
        if bias is None:
            self._scratch("nobias", 1)
            bias = ("scratch", "nobias")
        self._add(source, "gemm", glob, loc, [a, b, bias, c])

    # ---- layer kinds ---------------------------------------------------------------------
    def _build_conv(self) -> None:
        g, cfg, spec = self.spec.geometry, self.config, self.spec
        algo = cfg.get("algo")
        self._const("bias", spec.consts["bias"])
        m = g["N"] * g["OH"] * g["OW"]
        if algo == "direct":
            cout_g, cin_g = g["COUT"] // g["GROUPS"], g["CIN"] // g["GROUPS"]
            if int(cfg["CO"]) < 1 or cout_g % int(cfg["CO"]):
                raise ValueError(f"direct conv CO={cfg['CO']} does not divide the {cout_g} output channels per group")
            if int(cfg["VEC"]) not in (1, 4) or (int(cfg["VEC"]) == 4 and cin_g % 4):
                raise ValueError(f"direct conv VEC={cfg['VEC']} must be 1, or 4 with input channels per group "
                                 f"({cin_g}) a multiple of 4")
            self._const("w", spec.consts["w"])
            total = m * g["COUT"] // int(cfg["CO"])
            glob, loc = _launch_1d(total, cfg)
            self._add(K.conv_direct(g, cfg, spec.activation, self.precision), "conv_direct", glob, loc,
                      [("in", 0), ("const", "w"), ("const", "bias"), ("out", 0)])
        elif algo == "gemm":
            if (g["KH"], g["KW"], g["SH"], g["SW"], g["GROUPS"]) != (1, 1, 1, 1, 1):
                raise ValueError("the gemm algorithm needs a 1x1 stride-1 ungrouped conv")
            w = spec.consts["w"].reshape(g["COUT"], g["CIN"]).T
            self._const("w", w)
            self._gemm(m, g["COUT"], g["CIN"], ("in", 0), ("const", "w"), ("const", "bias"), ("out", 0),
                       spec.activation)
        elif algo == "im2col":
            if g["GROUPS"] != 1:
                raise ValueError("im2col needs an ungrouped conv")
            kk = g["KH"] * g["KW"] * g["CIN"]
            self._const("w", spec.consts["w"].reshape(g["COUT"], kk).T)
            self._scratch("col", m * kk)
            glob, loc = _launch_1d(m * kk, {"WG": 0})
            self._add(K.im2col(g, self.precision), "im2col", glob, loc, [("in", 0), ("scratch", "col")])
            self._gemm(m, g["COUT"], kk, ("scratch", "col"), ("const", "w"), ("const", "bias"), ("out", 0),
                       spec.activation)
        elif algo == "winograd":
            if (g["KH"], g["KW"], g["SH"], g["SW"], g["DH"], g["DW"], g["GROUPS"]) != (3, 3, 1, 1, 1, 1, 1):
                raise ValueError("Winograd F(2x2,3x3) needs a 3x3 stride-1 undilated ungrouped conv")
            tiles = g["N"] * (-(-g["OH"] // 2)) * (-(-g["OW"] // 2))
            self._const("u", K.winograd_weights(spec.consts["w"]))
            self._scratch("v", 16 * tiles * g["CIN"])
            self._scratch("m", 16 * tiles * g["COUT"])
            glob, loc = _launch_1d(tiles * g["CIN"], {"WG": 0})
            self._add(K.winograd_input(g, self.precision), "wino_in", glob, loc,
                      [("in", 0), ("scratch", "v")])
            self._gemm(tiles, g["COUT"], g["CIN"], ("scratch", "v"), ("const", "u"), None,
                       ("scratch", "m"), "NONE", batch=16)
            glob, loc = _launch_1d(tiles * g["COUT"], {"WG": 0})
            self._add(K.winograd_output(g, spec.activation, self.precision), "wino_out", glob, loc,
                      [("scratch", "m"), ("const", "bias"), ("out", 0)])
        else:
            raise ValueError(f"unknown conv algorithm {algo!r}")

    def _build_gemm(self) -> None:
        g = self.spec.geometry
        self._const("b", self.spec.consts["b"])
        self._const("bias", self.spec.consts["bias"])
        self._gemm(g["M"], g["N"], g["K"], ("in", 0), ("const", "b"), ("const", "bias"), ("out", 0),
                   self.spec.activation)

    def _build_depthwise(self) -> None:
        g, cfg = self.spec.geometry, self.config
        vec = int(cfg.get("VEC", 1))
        if vec not in (1, 4):
            raise ValueError(f"depthwise VEC={vec} must be 1 or 4")
        if vec == 4 and (g["DM"] != 1 or g["COUT"] % 4):
            raise ValueError("depthwise VEC=4 needs depth multiplier 1 and channels % 4 == 0")
        self._const("w", self.spec.consts["w"])
        self._const("bias", self.spec.consts["bias"])
        total = g["N"] * g["OH"] * g["OW"] * g["COUT"] // vec
        glob, loc = _launch_1d(total, cfg)
        self._add(K.depthwise(g, {"VEC": vec}, self.spec.activation, self.precision), "depthwise", glob, loc,
                  [("in", 0), ("const", "w"), ("const", "bias"), ("out", 0)])

    def _build_transpose_conv(self) -> None:
        self._const("w", self.spec.consts["w"])
        self._const("bias", self.spec.consts["bias"])
        glob, loc = _launch_1d(self.spec.out_size, self.config)
        self._add(K.transpose_conv(self.spec.geometry, self.spec.activation, self.precision), "transpose_conv",
                  glob, loc, [("in", 0), ("const", "w"), ("const", "bias"), ("out", 0)])

    def _build_pool(self) -> None:
        glob, loc = _launch_1d(self.spec.out_size, self.config)
        source = K.pool(str(self.spec.attrs["pool"]), self.spec.geometry, self.spec.activation,
                        self.precision)
        self._add(source, "pool", glob, loc, [("in", 0), ("out", 0)])

    def _build_mean(self) -> None:
        g = self.spec.geometry
        glob, loc = _launch_1d(g["N"] * g["C"], self.config)
        self._add(K.mean_hw(g, self.precision), "mean_hw", glob, loc, [("in", 0), ("out", 0)])

    def _build_binary(self) -> None:
        a = self.spec.attrs
        if a["const_b"]:
            self._const("b", self.spec.consts["b"])
            second: Arg = ("const", "b")
        else:
            second = ("in", 1)
        source = K.binary(self.spec.op, a["out4"], a["a_strides"], a["b_strides"], self.spec.activation,
                          self.precision)
        glob, loc = _launch_1d(self.spec.out_size, self.config)
        self._add(source, "binary", glob, loc, [("in", 0), second, ("out", 0)])

    def _build_unary(self) -> None:
        glob, loc = _launch_1d(self.spec.out_size, self.config)
        self._add(K.unary(self.spec.op, self.spec.out_size, self.precision), "unary", glob, loc,
                  [("in", 0), ("out", 0)])

    def _build_concat(self) -> None:
        axis = int(self.spec.attrs["axis"])
        out = self.spec.out_shape
        outer = int(np.prod(out[:axis])) if axis else 1
        inner_out = int(np.prod(out[axis:]))
        offset = 0
        for k, shape in enumerate(self.spec.in_shapes):
            inner_in = int(np.prod(shape[axis:]))
            glob, loc = _launch_1d(outer * inner_in, self.config)
            self._add(K.concat_copy(outer, inner_in, inner_out, offset, self.precision), "concat_copy",
                      glob, loc, [("in", k), ("out", 0)])
            offset += inner_in

    def _build_pad(self) -> None:
        a = self.spec.attrs
        glob, loc = _launch_1d(self.spec.out_size, self.config)
        self._add(K.pad(a["in4"], a["out4"], a["before"], self.precision), "pad", glob, loc,
                  [("in", 0), ("out", 0)])

    def _build_resize(self) -> None:
        a = self.spec.attrs
        glob, loc = _launch_1d(self.spec.out_size, self.config)
        source = K.resize(self.spec.in_shapes[0], self.spec.out_shape, str(a["mode"]), bool(a["align_corners"]),
                          bool(a["half_pixel_centers"]), self.precision)
        self._add(source, "resize", glob, loc, [("in", 0), ("out", 0)])

    def _build_gather(self) -> None:
        self._const("index", self.spec.consts["index"], np.int32)
        glob, loc = _launch_1d(self.spec.out_size, self.config)
        self._add(K.gather(self.spec.out_size, self.precision), "gather", glob, loc,
                  [("in", 0), ("const", "index"), ("out", 0)])

    def _build_softmax(self) -> None:
        a = self.spec.attrs
        glob, loc = _launch_1d(int(a["rows"]), self.config)
        self._add(K.softmax(int(a["rows"]), int(a["depth"]), float(a["beta"]), self.precision), "softmax",
                  glob, loc, [("in", 0), ("out", 0)])

    def _build_reshape(self) -> None:
        """Nothing to run: the stage aliases the output tensor to the input buffer."""

    # ---- running ---------------------------------------------------------------------------
    def _resolve(self, arg: Arg, inputs: Sequence[Any], outputs: Sequence[Any]) -> Any:
        kind, key = arg
        if kind == "in":
            return inputs[key]
        if kind == "out":
            return outputs[key]
        if kind == "const":
            return self.consts[key]
        return self.scratch[key]

    def enqueue(self, queue: Any, inputs: Sequence[Any], outputs: Sequence[Any]) -> List[Any]:
        """Enqueue every launch (in order on an in-order queue); return their events."""
        self.bind(inputs, outputs)
        return self.enqueue_bound(queue)

    def bind(self, inputs: Sequence[Any], outputs: Sequence[Any]) -> None:
        """Set every launch's arguments to these buffers; they stay set until the next bind.

        A stage's buffers never change between frames, so it binds once and
        each frame only enqueues: setting arguments was about a sixth of a
        small layer's host cost per launch on pocl.
        """
        for launch in self.launches:
            launch.kernel.set_args(*(self._resolve(a, inputs, outputs) for a in launch.args))

    def enqueue_bound(self, queue: Any) -> List[Any]:
        """Enqueue every launch with the arguments of the last :meth:`bind`; return their events."""
        cl = self.ctx.cl
        return [cl.enqueue_nd_range_kernel(queue, launch.kernel, launch.global_size, launch.local_size)
                for launch in self.launches]
