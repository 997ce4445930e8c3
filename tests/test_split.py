"""The splitter: chained stage sub-models are bit-identical to the whole model.

Every zoo model (float and int8) is cut before every layer and at random cut
sets (hypothesis); the stage chain runs in the real runtime on seeded random
input and must reproduce the whole model's outputs exactly.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeit.errors import InputError, ModelError, SplitError
from pipeit.graph import load_graph
from pipeit.modelfile import op_name, read_model, serialize_model
from pipeit.runtime import make_interpreter
from pipeit.split import (
    STAGE_FILE,
    StageModel,
    extract_layers,
    manifest,
    parse_cuts,
    run_chain,
    split_model,
    validate_cuts,
    write_split,
)
from pipeit.tflite_builder import ModelBuilder
from tests.model_helpers import dead_branch_builder

ZOO = ("alexnet", "googlenet", "mobilenet_v1", "mobilenet_v2", "resnet50", "squeezenet")


# ---- helpers ---------------------------------------------------------------------------------

def random_feeds(graph, seed: int = 0) -> Dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for t in graph.inputs:
        if t.dtype == "int8":
            feeds[t.name] = rng.integers(-128, 128, size=t.shape, dtype=np.int8)
        else:
            feeds[t.name] = rng.standard_normal(t.shape).astype(t.dtype)
    return feeds


def run_whole(data: bytes, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    interpreter = make_interpreter(data)
    for d in interpreter.get_input_details():
        interpreter.set_tensor(d["index"], feeds[d["name"]])
    interpreter.invoke()
    return {d["name"]: interpreter.get_tensor(d["index"]).copy()
            for d in interpreter.get_output_details()}


def assert_bit_identical(got: Dict[str, np.ndarray], want: Dict[str, np.ndarray]) -> None:
    assert list(got) == list(want)
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        assert np.array_equal(got[name], want[name]), f"{name} differs"


@pytest.fixture(scope="module")
def reference(zoo_models):
    """(bytes, graph, feeds, whole-model outputs) per (zoo name, int8), computed once."""

    @lru_cache(maxsize=None)
    def get(name: str, int8: bool):
        data = Path(zoo_models(name, int8=int8)).read_bytes()
        graph = load_graph(data)
        feeds = random_feeds(graph, seed=1)
        want = run_whole(data, feeds)
        # a degenerate model (constant output) could hide a wrong chain
        assert all(np.ptp(v.astype(np.float64)) > 0 for v in want.values())
        return data, graph, feeds, want

    return get


def two_branch_builder() -> ModelBuilder:
    """input -> conv a -> conv b -> conv c -> add(a, c): ``a`` skips two layers."""
    b = ModelBuilder(seed=3)
    x = b.input("image", (1, 12, 12, 4))
    a = b.conv2d(x, 8, 3, name="a")
    t = b.conv2d(a, 8, 3, name="b")
    c = b.conv2d(t, 8, 1, activation="NONE", gain=0.5, name="c")
    y = b.add(a, c, name="sum")
    b.output(b.softmax(b.fully_connected(b.reshape(y, (1, -1)), 5), name="probs"))
    return b


# ---- bit-identical chains on the zoo -------------------------------------------------------------

class TestZooChains:
    @pytest.mark.parametrize("int8", [False, True], ids=["float", "int8"])
    @pytest.mark.parametrize("name", ZOO)
    def test_cut_before_every_layer(self, reference, name, int8):
        data, graph, feeds, want = reference(name, int8)
        stages = split_model(data, list(range(1, len(graph.layers))))
        assert len(stages) == len(graph.layers)
        assert [s.layers for s in stages] == [(i, i + 1) for i in range(len(graph.layers))]
        assert_bit_identical(run_chain(stages, feeds), want)

    @pytest.mark.parametrize("name", ZOO)
    @settings(max_examples=2, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(data=st.data())
    def test_random_cut_sets(self, reference, name, data):
        int8 = data.draw(st.booleans(), label="int8")
        model, graph, feeds, want = reference(name, int8)
        n = len(graph.layers)
        cuts = sorted(data.draw(st.sets(st.integers(1, n - 1), min_size=1, max_size=min(6, n - 1)),
                                label="cuts"))
        stages = split_model(model, cuts)
        assert [s.layers[0] for s in stages[1:]] == cuts
        assert_bit_identical(run_chain(stages, feeds), want)

    def test_fp16_weights_every_layer(self):
        # DEQUANTIZE of fp16 weights must travel with its conv: XNNPACK refuses runtime weights
        from pipeit import zoo

        data = zoo.build("mobilenet_v2", fp16_weights=True)
        graph = load_graph(data)
        feeds = random_feeds(graph, seed=2)
        stages = split_model(data, list(range(1, len(graph.layers))))
        assert_bit_identical(run_chain(stages, feeds), run_whole(data, feeds))
        for stage, layer in zip(stages, graph.layers):
            sub = read_model(stage.model_bytes)
            ops = [op_name(sub.operatorCodes[op.opcodeIndex]) for op in sub.subgraphs[0].operators]
            assert len(ops) == len(layer.op_indices)
            # every stage input is an activation, never a weight
            assert all(t.dtype == "float32" and len(t.shape) in (2, 4) for t in stage.inputs)


# ---- stage contents ------------------------------------------------------------------------------

class TestStageModels:
    def test_residual_skips_a_stage(self):
        data = two_branch_builder().to_bytes()
        stages = split_model(data, [1, 2, 3])
        # stage 0 computes "a"; stage 1 (conv b) does not read it; stage 3 (add) does
        assert [t.name for t in stages[0].outputs] == ["a"]
        assert [t.name for t in stages[1].inputs] == ["a"]
        assert [t.name for t in stages[2].inputs] == ["b"]
        assert sorted(t.name for t in stages[3].inputs) == ["a", "c"]
        graph = load_graph(data)
        feeds = random_feeds(graph)
        assert_bit_identical(run_chain(stages, feeds), run_whole(data, feeds))

    def test_tensor_names_and_quantisation_are_kept(self, reference):
        data, graph, _, _ = reference("mobilenet_v2", True)
        whole = read_model(data).subgraphs[0]
        by_name = {t.name: t for t in whole.tensors}
        stage = split_model(data, [20, 40])[1]
        sub = read_model(stage.model_bytes).subgraphs[0]
        assert len(sub.tensors) < len(whole.tensors)
        for tensor in sub.tensors:
            original = by_name[tensor.name]
            assert list(tensor.shape) == list(original.shape)
            assert tensor.type == original.type
            assert np.array_equal(tensor.quantization.scale, original.quantization.scale)
            assert np.array_equal(tensor.quantization.zeroPoint, original.quantization.zeroPoint)
        names = [t.name for t in graph.cut(20).tensors]
        assert [t.name for t in stage.inputs] == names

    def test_extract_layers_equals_split_stage(self, reference):
        data, graph, _, _ = reference("squeezenet", False)
        stage = extract_layers(data, 5, 9)
        assert stage.layers == (5, 9)
        assert stage.model_bytes == split_model(data, [5, 9])[1].model_bytes
        single = extract_layers(data, 0, 1)
        interpreter = make_interpreter(single.model_bytes)
        assert [d["name"] for d in interpreter.get_input_details()] == [graph.inputs[0].name]

    def test_sub_models_carry_no_signature_and_only_needed_buffers(self, reference):
        data, _, _, _ = reference("resnet50", False)
        whole = read_model(data)
        stage = split_model(data, [10])[0]
        sub = read_model(stage.model_bytes)
        assert not sub.signatureDefs
        assert len(sub.buffers) < len(whole.buffers)
        assert len(stage.model_bytes) < len(data) / 4

    def test_shared_constant_op_travels_with_both_stages(self):
        # two convs read the same DEQUANTIZE'd fp16 weight; a cut between them
        # must copy the DEQUANTIZE into both stages
        b = ModelBuilder(seed=5)
        x = b.input("input", (1, 10, 10, 6))
        y = b.conv2d(x, 6, 3, name="first")
        z = b.conv2d(y, 6, 3, name="second")
        b.output(z)
        model = b.to_model(fp16_weights=True)
        sub = model.subgraphs[0]
        names = [op_name(model.operatorCodes[op.opcodeIndex]) for op in sub.operators]
        deq = [k for k, name in enumerate(names) if name == "DEQUANTIZE"]
        convs = [k for k, name in enumerate(names) if name == "CONV_2D"]
        assert len(deq) == 2 and len(convs) == 2
        shared_weight = sub.operators[deq[0]].outputs[0]
        sub.operators[convs[1]].inputs[1] = shared_weight
        del sub.operators[deq[1]]
        data = serialize_model(model)

        graph = load_graph(data)
        assert len(graph.layers) == 2
        assert deq[0] in graph.layers[0].op_indices and deq[0] in graph.layers[1].op_indices
        stages = split_model(data, [1])
        for stage in stages:
            stage_model = read_model(stage.model_bytes)
            ops = [op_name(stage_model.operatorCodes[o.opcodeIndex])
                   for o in stage_model.subgraphs[0].operators]
            assert ops == ["DEQUANTIZE", "CONV_2D"]
        assert [t.name for t in stages[1].inputs] == ["first"]
        feeds = random_feeds(graph)
        assert_bit_identical(run_chain(stages, feeds), run_whole(data, feeds))

    def test_multi_input_multi_output_chain(self):
        b = ModelBuilder(seed=7)
        x = b.input("left", (1, 8, 8, 3))
        y = b.input("right", (1, 8, 8, 4))
        a = b.conv2d(x, 4, 3, name="a")
        s = b.add(a, y, name="s")
        b.output(s)
        c = b.conv2d(s, 4, 1, name="c")
        m = b.mean(c, name="m")
        b.output(b.mul(a, y, name="prod"))
        b.output(m)
        data = b.to_bytes()
        graph = load_graph(data)
        feeds = random_feeds(graph, seed=4)
        want = run_whole(data, feeds)
        assert set(want) == {"s", "prod", "m"}
        for cuts in ([1], [2], [1, 3], list(range(1, len(graph.layers)))):
            stages = split_model(data, cuts)
            got = run_chain(stages, feeds)
            assert list(got) == [t.name for t in graph.outputs]
            for name in want:
                assert np.array_equal(got[name], want[name])


# ---- dead operators ------------------------------------------------------------------------------



class TestDeadOps:
    @pytest.mark.parametrize("int8", [False, True], ids=["float", "int8"])
    def test_every_cut_of_a_model_with_a_dead_branch_is_bit_identical(self, int8):
        data = dead_branch_builder().to_bytes(int8=int8)
        graph = load_graph(data)
        assert len(graph.layers) == 5 and graph.pruned_ops == (1,)
        feeds = random_feeds(graph, seed=3)
        want = run_whole(data, feeds)
        for cuts in ([1], [2], [1, 2, 3, 4]):
            stages = split_model(data, cuts)
            assert_bit_identical(run_chain(stages, feeds), want)
            for stage in stages:  # the dead conv travels with no stage
                names = {t.name for t in read_model(stage.model_bytes).subgraphs[0].tensors}
                assert b"dead" not in names
        assert extract_layers(data, 1, 2).outputs[0].name == "c2"


# ---- files -------------------------------------------------------------------------------------------

class TestWriteSplit:
    def test_files_and_manifest(self, tmp_path):
        data = two_branch_builder().to_bytes()
        stages = split_model(data, [2, 4])
        path = write_split(stages, tmp_path / "out")
        doc = json.loads(path.read_text())
        assert doc == manifest(stages)
        assert [s["file"] for s in doc["stages"]] == ["stage_0.tflite", "stage_1.tflite",
                                                       "stage_2.tflite"]
        assert [s["layers"] for s in doc["stages"]] == [[0, 2], [2, 4], [4, len(load_graph(data))]]
        for entry, stage in zip(doc["stages"], stages):
            on_disk = (tmp_path / "out" / entry["file"]).read_bytes()
            assert on_disk == stage.model_bytes
            interpreter = make_interpreter(tmp_path / "out" / entry["file"])
            assert [d["name"] for d in interpreter.get_input_details()] == \
                [t["name"] for t in entry["inputs"]]
            assert [d["name"] for d in interpreter.get_output_details()] == \
                [t["name"] for t in entry["outputs"]]
            for detail, tensor in zip(interpreter.get_input_details(), entry["inputs"]):
                assert list(detail["shape"]) == tensor["shape"]
                assert np.dtype(detail["dtype"]).name == tensor["dtype"]

    def test_stale_stage_files_of_an_earlier_split_are_removed(self, tmp_path):
        data = two_branch_builder().to_bytes()
        out = tmp_path / "out"
        write_split(split_model(data, [1, 2, 4]), out)
        (out / "notes.txt").write_text("mine")
        (out / "stage_x.tflite").write_bytes(b"not a stage name")
        (out / "stage_01.tflite").write_bytes(b"not a stage name either")
        write_split(split_model(data, [3]), out)
        assert sorted(p.name for p in out.iterdir()) == [
            "manifest.json", "notes.txt", "stage_0.tflite", "stage_01.tflite", "stage_1.tflite",
            "stage_x.tflite"]
        assert [s["file"] for s in json.loads((out / "manifest.json").read_text())["stages"]] == \
            ["stage_0.tflite", "stage_1.tflite"]
        assert STAGE_FILE.fullmatch("stage_12.tflite") and not STAGE_FILE.fullmatch("stage_01.tflite")

    def test_a_split_cut_short_leaves_no_manifest_describing_other_files(self, tmp_path):
        """The old manifest stayed while stage files were replaced one by one: a split cut short (Ctrl-C,
        a kill, a full disk) left a manifest saying stage_0 was layers [0, 1) beside a new stage_0."""
        data = two_branch_builder().to_bytes()
        out = tmp_path / "out"
        write_split(split_model(data, [1, 2, 4]), out)
        (out / "stage_1.tflite").unlink()
        (out / "stage_1.tflite").mkdir()  # the second file of the next split cannot be written
        with pytest.raises(SplitError, match="cannot write"):
            write_split(split_model(data, [3]), out)
        assert not (out / "manifest.json").exists()
        (out / "stage_1.tflite").rmdir()
        write_split(split_model(data, [3]), out)  # and the next split is whole again
        assert [s["file"] for s in json.loads((out / "manifest.json").read_text())["stages"]] == \
            ["stage_0.tflite", "stage_1.tflite"]

    def test_unwritable_folder_is_a_split_error(self, tmp_path):
        blocker = tmp_path / "file"
        blocker.write_text("x")
        stages = split_model(two_branch_builder().to_bytes(), [1])
        with pytest.raises(SplitError, match="cannot write"):
            write_split(stages, blocker / "sub")


# ---- validation --------------------------------------------------------------------------------------

class TestCutValidation:
    @pytest.mark.parametrize("cuts, message", [
        ([0], "out of range"),
        ([7], "out of range"),
        ([-1], "out of range"),
        ([3, 3], "strictly increasing"),
        ([4, 2], "strictly increasing"),
        ([1.5], "not an integer"),
        (["2"], "not an integer"),
        ([True], "not an integer"),
    ])
    def test_bad_cuts(self, cuts, message):
        with pytest.raises(SplitError, match=message):
            validate_cuts(cuts, 7)

    def test_good_cuts(self):
        assert validate_cuts([1, 3, np.int64(6)], 7) == (1, 3, 6)
        assert validate_cuts([], 7) == ()

    def test_parse_cuts(self):
        assert parse_cuts("1, 4,9") == (1, 4, 9)
        assert parse_cuts("") == ()
        with pytest.raises(SplitError, match="'x'"):
            parse_cuts("1,x")
        with pytest.raises(SplitError):
            parse_cuts("1.5")

    def test_split_model_checks_cuts_against_the_model(self):
        data = two_branch_builder().to_bytes()
        n = len(load_graph(data))
        with pytest.raises(SplitError, match=f"1..{n - 1}"):
            split_model(data, [n])

    @pytest.mark.parametrize("start, end", [(0, 0), (3, 2), (-1, 2), (0, 99)])
    def test_bad_layer_ranges(self, start, end):
        with pytest.raises(SplitError):
            extract_layers(two_branch_builder().to_bytes(), start, end)

    def test_run_chain_refuses_wrong_inputs(self):
        data = two_branch_builder().to_bytes()
        stages = split_model(data, [2])
        with pytest.raises(InputError, match="image"):
            run_chain(stages, {})
        with pytest.raises(InputError, match="shape"):
            run_chain(stages, {"image": np.zeros((1, 3, 3, 4), np.float32)})
        with pytest.raises(InputError, match="dtype"):
            run_chain(stages, {"image": np.zeros((1, 12, 12, 4), np.float64)})

    @staticmethod
    def renamed(edit) -> Tuple[bytes, Dict[bytes, int]]:
        """two_branch_builder's model with ``edit(tensors, index)`` applied (``index``: name -> tensor)."""
        model = read_model(two_branch_builder().to_bytes())
        tensors = model.subgraphs[0].tensors
        index = {t.name: i for i, t in enumerate(tensors)}
        edit(tensors, index)
        return serialize_model(model), index

    @staticmethod
    def assert_cut_runs(data: bytes, cuts, names) -> None:
        """The cut is made, hands over ``names``, and the chain is bit-identical to the whole model."""
        stages = split_model(data, cuts)
        assert [t.name for t in stages[1].inputs] == names
        feeds = random_feeds(load_graph(data))
        assert_bit_identical(run_chain(stages, feeds), run_whole(data, feeds))

    def test_a_shared_name_is_replaced_at_the_cut(self):
        """Two activations named "a" (converters write such models): the cut before layer 2 was refused,
        and a plan the DSE made there failed only in `pipeit run`."""
        data, index = self.renamed(lambda tensors, index: setattr(tensors[index[b"b"]], "name", b"a"))
        self.assert_cut_runs(data, [2], [f"pipeit:tensor{index[b'a']}", f"pipeit:tensor{index[b'b']}"])
        self.assert_cut_runs(data, [4], ["sum"])  # names that are unique stay as they are
        assert extract_layers(data, 1, 2).inputs[0].name == f"pipeit:tensor{index[b'a']}"  # profiling a layer

    def test_a_missing_or_undecodable_name_is_replaced_at_the_cut(self):
        for name in (b"", b"b\xe4"):
            data, index = self.renamed(lambda tensors, index: setattr(tensors[index[b"b"]], "name", name))
            self.assert_cut_runs(data, [2], ["a", f"pipeit:tensor{index[b'b']}"])

    def test_names_are_compared_as_the_runtime_reports_them(self):
        data, _ = self.renamed(lambda tensors, index: setattr(tensors[index[b"b"]], "name", b"b\x00tail"))
        self.assert_cut_runs(data, [2], ["a", "b"])  # the runtime reads "b": unique
        data, index = self.renamed(lambda tensors, index: setattr(tensors[index[b"b"]], "name", b"a\x00tail"))
        self.assert_cut_runs(data, [2], [f"pipeit:tensor{index[b'a']}", f"pipeit:tensor{index[b'b']}"])

    def test_a_new_name_steers_clear_of_the_names_in_the_model(self):
        def edit(tensors, index):
            tensors[index[b"b"]].name = b"a"
            tensors[index[b"sum"]].name = f"pipeit:tensor{index[b'a']}".encode()
        data, index = self.renamed(edit)
        self.assert_cut_runs(data, [2], [f"pipeit:tensor{index[b'a']}_", f"pipeit:tensor{index[b'b']}"])

    def test_model_inputs_and_outputs_keep_their_names_and_must_have_their_own(self, tmp_path):
        """A model input named like its output ran through `inspect` and `plan`, then `run` refused it."""
        model = read_model(two_branch_builder().to_bytes())
        sg = model.subgraphs[0]
        sg.tensors[sg.inputs[0]].name = sg.tensors[sg.outputs[0]].name
        path = tmp_path / "clash.tflite"
        path.write_bytes(serialize_model(model))
        clash = f"^{path}: model input 0 \\(tensor 0\\) is named 'probs' like model input/output tensor"
        with pytest.raises(ModelError, match=clash):
            load_graph(path)
        sg.tensors[sg.inputs[0]].name = b""
        path.write_bytes(serialize_model(model))
        with pytest.raises(ModelError, match=f"^{path}: model input 0 .* has no name"):
            load_graph(path)

    def test_a_one_layer_model_cannot_be_split(self):
        b = ModelBuilder(seed=6)
        b.output(b.conv2d(b.input("x", (1, 8, 8, 3)), 4, 3))
        data = b.to_bytes()
        with pytest.raises(SplitError, match="^model bytes: the model has one layer and cannot be split"):
            split_model(data, [1])
        (stage,) = split_model(data, [])
        assert stage.layers == (0, 1)

    def test_stage_model_is_frozen(self):
        stage = split_model(two_branch_builder().to_bytes(), [1])[0]
        assert isinstance(stage, StageModel)
        with pytest.raises(Exception):
            stage.index = 3  # type: ignore[misc]
