"""The runtime adapter: one place builds interpreters, from paths or bytes, with either backend."""

import numpy as np
import pytest

from pipeit.errors import ModelError, PipeitError
from pipeit.runtime import backend_name, make_interpreter, runtime_info


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
