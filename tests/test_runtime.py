"""The runtime adapter: one place builds interpreters, from paths or bytes, with either backend."""

import numpy as np
import pytest

from pipeit.errors import ModelError, PipeitError
from pipeit.modelfile import op_name, read_model, serialize_model
from pipeit.runtime import backend_name, check_loads, make_interpreter, runtime_info
from pipeit.tflite_builder import ModelBuilder


class TestBackendName:
    def test_default_is_litert(self, monkeypatch):
        monkeypatch.delenv("PIPEIT_RUNTIME", raising=False)
        assert backend_name() == "ai-edge-litert"

    def test_environment_selects(self, monkeypatch):
        monkeypatch.setenv("PIPEIT_RUNTIME", "tflite-runtime")
        assert backend_name() == "tflite-runtime"

    def test_unknown_refused(self):
        with pytest.raises(PipeitError, match="unknown runtime"):
            backend_name("onnx")


def test_runtime_info_has_version():
    info = runtime_info()
    assert info.backend == "ai-edge-litert"
    assert info.version[0].isdigit()


class TestMakeInterpreter:
    def test_path_and_bytes_agree(self, zoo_models):
        path = zoo_models("mobilenet_v1")
        by_path = make_interpreter(path, num_threads=2)
        by_bytes = make_interpreter(path.read_bytes(), num_threads=1)
        detail = by_path.get_input_details()[0]
        frame = np.random.default_rng(0).standard_normal(detail["shape"]).astype(np.float32)
        outs = []
        for interp in (by_path, by_bytes):
            interp.set_tensor(interp.get_input_details()[0]["index"], frame)
            interp.invoke()
            outs.append(interp.get_tensor(interp.get_output_details()[0]["index"]))
        np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-6)

    def test_missing_file(self, tmp_path):
        with pytest.raises(ModelError, match="no such model file"):
            make_interpreter(tmp_path / "absent.tflite")

    def test_garbage_bytes(self):
        with pytest.raises(ModelError, match="cannot load"):
            make_interpreter(b"\x00" * 64)

    def test_bad_thread_count(self, zoo_models):
        with pytest.raises(PipeitError, match="num_threads"):
            make_interpreter(zoo_models("mobilenet_v1"), num_threads=0)

    def test_missing_backend_is_one_clear_error(self, zoo_models):
        try:
            import tflite_runtime  # noqa: F401
        except ImportError:
            with pytest.raises(PipeitError, match="not installed"):
                make_interpreter(zoo_models("mobilenet_v1"), backend="tflite-runtime")
        else:
            interp = make_interpreter(zoo_models("mobilenet_v1"), backend="tflite-runtime")
            assert interp.get_input_details()


# ---- models only the runtime refuses ----------------------------------------------------------

def _edited(builder: ModelBuilder, edit) -> bytes:
    model = read_model(builder.to_bytes())
    edit(model)
    return serialize_model(model)


def _convs(model):
    return [op for op in model.subgraphs[0].operators
            if op_name(model.operatorCodes[op.opcodeIndex]) == "CONV_2D"]


def _conv_net() -> ModelBuilder:
    b = ModelBuilder(seed=4)
    x = b.input("input", (1, 8, 8, 3))
    b.output(b.fully_connected(b.mean(b.conv2d(b.conv2d(x, 4, 3), 4, 3)), 3))
    return b


def conv_version_99() -> bytes:
    def edit(model):
        code = model.operatorCodes[_convs(model)[1].opcodeIndex]
        code.version = 99  # both convs share the opcode: every CONV_2D now asks for version 99

    return _edited(_conv_net(), edit)


def conv_stride_0() -> bytes:
    def edit(model):
        options = _convs(model)[0].builtinOptions
        options.strideH = options.strideW = 0

    return _edited(_conv_net(), edit)


def empty_input_into_reshape() -> bytes:
    b = ModelBuilder(seed=5)
    x = b.input("input", (1, 4, 4, 2))
    b.output(b.fully_connected(b.reshape(x, (1, 32)), 3))

    def edit(model):
        sg = model.subgraphs[0]
        sg.tensors[sg.inputs[0]].shape = [1, 4, 0, 2]  # 0 elements, reshaped to 32

    return _edited(b, edit)


class TestCheckLoads:
    def test_a_good_model_passes(self, tmp_path):
        path = tmp_path / "good.tflite"
        path.write_bytes(_conv_net().to_bytes())
        assert check_loads(path) is None
        assert check_loads(path.read_bytes()) is None

    @pytest.mark.parametrize("make, cause", [
        (conv_version_99, "version '99'"),
        (conv_stride_0, "stride_height > 0"),
        (empty_input_into_reshape, "RESHAPE"),
    ], ids=["op-version", "stride-0", "empty-reshape"])
    def test_refusal_is_one_line_naming_the_file_and_the_runtime_cause(self, tmp_path, make, cause):
        path = tmp_path / "refused.tflite"
        path.write_bytes(make())
        with pytest.raises(ModelError) as info:
            check_loads(path)
        message = str(info.value)
        assert message.startswith(f"{path}: the runtime cannot load this model: ")
        assert cause in message and "\n" not in message
        with pytest.raises(ModelError, match="^named.tflite: the runtime cannot load"):
            check_loads(path.read_bytes(), where="named.tflite")

    def test_check_is_quiet_on_stderr(self, tmp_path, capfd):
        path = tmp_path / "refused.tflite"
        path.write_bytes(conv_version_99())
        with pytest.raises(ModelError):
            check_loads(path)
        assert capfd.readouterr().err == ""


class TestWhere:
    def test_bytes_are_named_by_where(self):
        with pytest.raises(ModelError, match="^x.tflite: the runtime cannot load"):
            make_interpreter(b"\x00" * 64, where="x.tflite")
        with pytest.raises(ModelError, match="^model bytes: the runtime cannot load"):
            make_interpreter(b"\x00" * 64)
        with pytest.raises(ModelError, match="^the runtime cannot load"):
            make_interpreter(b"\x00" * 64, where="")


def test_a_model_refused_under_an_address_space_limit_says_the_limit(tmp_path):
    """Under ``ulimit -v`` XNNPACK's failed allocation reads "Node number 31 (TfLiteXNNPackDelegate) failed
    to prepare": the model's fault, by its words. The limit is named beside it."""
    import subprocess
    import sys

    model = tmp_path / "big.tflite"
    b = ModelBuilder(seed=0)
    b.output(b.conv2d(b.input("x", (1, 1024, 1024, 64)), 64, kernel=1))  # 256 MiB in, 256 MiB out
    model.write_bytes(b.to_bytes())
    code = ("import resource\n"
            "from pipeit.errors import ModelError\n"
            "from pipeit.runtime import make_interpreter\n"
            "size = [int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmSize:')][0] << 10\n"
            "resource.setrlimit(resource.RLIMIT_AS, (size + (200 << 20), resource.RLIM_INFINITY))\n"
            "try:\n"
            f"    make_interpreter({str(model)!r})\n"
            "except ModelError as err:\n"
            "    print(err)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "the runtime cannot load this model" in done.stdout and "ulimit -v" in done.stdout, (done.stdout,
                                                                                                 done.stderr)
