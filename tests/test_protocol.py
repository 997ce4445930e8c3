"""The daemon's wire format: round trips, and a decoder that refuses every malformed message cleanly."""

from __future__ import annotations

import json
import socket
import struct
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeit.daemon import protocol as wire

LIMIT = 1 << 20


def _join(buffers) -> bytes:
    return b"".join(bytes(b) for b in buffers)


def _message(header: dict, body: bytes = b"") -> bytes:
    head = json.dumps(header).encode()
    return wire.PREFIX.pack(wire.MAGIC, len(head), len(body)) + head + body


class TestRoundTrip:
    @pytest.mark.parametrize("dtype", sorted(wire.DTYPES))
    def test_every_dtype(self, dtype):
        array = (np.arange(24) % 5).astype(dtype).reshape(2, 3, 4)
        data = _join(wire.encode_request(7, "infer", {"x": array}))
        message = wire.decode_message(data, LIMIT)
        assert message.header.id == 7 and message.header.op == "infer"
        assert message.tensors["x"].dtype == array.dtype
        np.testing.assert_array_equal(message.tensors["x"], array)

    def test_big_endian_and_strided_arrays_are_sent_as_little_endian_c_order(self):
        array = np.arange(12, dtype=">f4").reshape(3, 4).T
        message = wire.decode_message(_join(wire.encode_request(1, "infer", {"x": array})), LIMIT)
        np.testing.assert_array_equal(message.tensors["x"], array)
        assert message.tensors["x"].dtype == np.dtype("<f4")

    def test_error_reply_is_one_line(self):
        data = _join(wire.encode_error(3, "bad_request", "first\nsecond"))
        header = wire.decode_message(data, 0).header
        assert header.ok is False and header.error == {"code": "bad_request", "message": "first second"}

    def test_reply_with_info(self):
        header = wire.decode_message(_join(wire.encode_reply(4, "status", info={"fps": 1.5})), 0).header
        assert header.ok and header.info == {"fps": 1.5}

    def test_unsupported_dtype_is_refused_when_encoding(self):
        with pytest.raises(wire.ProtocolError, match="complex"):
            wire.encode_request(1, "infer", {"x": np.zeros(2, np.complex64)})

    def test_unknown_op_is_refused_when_encoding(self):
        with pytest.raises(wire.ProtocolError, match="unknown operation"):
            wire.encode_request(1, "shutdown")


class TestDecoderRefuses:
    def test_bad_magic(self):
        data = b"GET / HTTP/1.1\r\n\r\n"
        with pytest.raises(wire.ProtocolError) as err:
            wire.decode_message(data, LIMIT)
        assert err.value.code == "malformed"

    def test_oversized_header_is_refused_before_reading_it(self):
        with pytest.raises(wire.ProtocolError) as err:
            wire.decode_prefix(wire.PREFIX.pack(wire.MAGIC, wire.MAX_HEADER_BYTES + 1, 0), LIMIT)
        assert err.value.code == "too_large"

    def test_oversized_body_is_refused_before_reading_it(self):
        with pytest.raises(wire.ProtocolError) as err:
            wire.decode_prefix(wire.PREFIX.pack(wire.MAGIC, 10, LIMIT + 1), LIMIT)
        assert err.value.code == "too_large"

    def test_body_must_match_the_tensors(self):
        header = {"id": 1, "op": "infer", "tensors": [{"name": "x", "dtype": "float32", "shape": [2]}]}
        with pytest.raises(wire.ProtocolError, match="announces"):
            wire.decode_message(_message(header, b"\0" * 4), LIMIT)

    def test_truncated(self):
        data = _join(wire.encode_request(1, "infer", {"x": np.zeros(8, np.float32)}))
        with pytest.raises(wire.ProtocolError) as err:
            wire.decode_message(data[:-3], LIMIT)
        assert err.value.code == "truncated"

    @pytest.mark.parametrize("header", [
        [1, 2],
        {"id": -1, "op": "status"},
        {"id": True, "op": "status"},
        {"id": 2**60, "op": "status"},
        {"id": 1, "op": 5},
        {"id": 1, "op": "infer", "extra": 1},
        {"id": 1, "op": "infer", "tensors": {"x": 1}},
        {"id": 1, "op": "infer", "tensors": [{"name": "x", "dtype": "object", "shape": [1]}]},
        {"id": 1, "op": "infer", "tensors": [{"name": "x", "dtype": ["float32"], "shape": [1]}]},
        {"id": 1, "op": "infer", "tensors": [{"name": "x", "dtype": "float32", "shape": [1.5]}]},
        {"id": 1, "op": "infer", "tensors": [{"name": "x", "dtype": "float32", "shape": [-1]}]},
        {"id": 1, "op": "infer", "tensors": [{"name": "", "dtype": "float32", "shape": [0]}]},
        {"id": 1, "op": "infer", "tensors": [{"name": "x", "dtype": "int8", "shape": [0]},
                                              {"name": "x", "dtype": "int8", "shape": [0]}]},
        {"id": 1, "ok": "yes"},
        {"id": 1, "error": "bad"},
    ])
    def test_schema(self, header):
        with pytest.raises(wire.ProtocolError) as err:
            wire.decode_message(_message(header), LIMIT)
        assert err.value.code == "malformed"

    def test_not_json(self):
        data = wire.PREFIX.pack(wire.MAGIC, 4, 0) + b"\xff\xfe{]"
        with pytest.raises(wire.ProtocolError, match="not UTF-8 JSON"):
            wire.decode_message(data, LIMIT)

    def test_deeply_nested_json_does_not_crash(self):
        head = b"[" * 20000 + b"]" * 20000
        with pytest.raises(wire.ProtocolError):
            wire.decode_header(head[: wire.MAX_HEADER_BYTES], 0)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=256))
def test_fuzz_random_bytes_only_raise_protocol_errors(data):
    try:
        wire.decode_message(data, LIMIT)
    except wire.ProtocolError as err:
        assert err.code in wire.ERROR_CODES


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
_tensor = st.fixed_dictionaries({
    "name": st.text(min_size=0, max_size=6),
    "dtype": st.sampled_from(sorted(wire.DTYPES) + ["complex64", "U8"]),
    "shape": st.lists(st.integers(-2, 6), max_size=4),
})
_header = st.fixed_dictionaries(
    {"id": st.integers(-3, 2**54) | st.none() | st.text(max_size=3)},
    optional={"op": st.sampled_from(list(wire.OPS) + ["x"]) | _json, "tensors": st.lists(_tensor, max_size=3) | _json,
              "ok": st.booleans() | _json, "info": _json, "error": _json},
)


@settings(max_examples=400, deadline=None)
@given(_header, st.binary(max_size=600))
def test_fuzz_structured_headers(header, body):
    """Near-valid headers with arbitrary bodies: a clean message or a ProtocolError, nothing else."""
    data = _message(header, body)
    try:
        message = wire.decode_message(data, LIMIT)
    except wire.ProtocolError as err:
        assert err.code in wire.ERROR_CODES
        return
    assert message.header.body_bytes == len(body)
    for spec in message.header.tensors:
        assert message.tensors[spec.name].shape == spec.shape


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=5),
                       st.tuples(st.sampled_from(sorted(wire.DTYPES)), st.lists(st.integers(0, 4), max_size=3)),
                       max_size=4),
       st.integers(0, wire.MAX_ID))
def test_roundtrip_property(specs, rid):
    rng = np.random.default_rng(0)
    tensors = {name: (rng.integers(0, 100, size=shape)).astype(dtype) for name, (dtype, shape) in specs.items()}
    message = wire.decode_message(_join(wire.encode_request(rid, "infer", tensors)), LIMIT)
    assert message.header.id == rid
    assert list(message.tensors) == list(tensors)
    for name, array in tensors.items():
        np.testing.assert_array_equal(message.tensors[name], array)


def test_read_message_over_a_socket_pair_in_pieces():
    """The socket reader handles a message split across many small sends, then a clean close."""
    a, b = socket.socketpair()
    array = np.arange(100_000, dtype=np.float32).reshape(1, 100_000)
    data = _join(wire.encode_request(9, "infer", {"x": array}))

    def dribble():
        for i in range(0, len(data), 7919):
            a.sendall(data[i:i + 7919])
        a.close()

    thread = threading.Thread(target=dribble)
    thread.start()
    message = wire.read_message(b, LIMIT * 4)
    thread.join()
    np.testing.assert_array_equal(message.tensors["x"], array)
    assert wire.read_message(b, LIMIT) is None
    b.close()


def test_read_message_truncated_body_over_a_socket():
    a, b = socket.socketpair()
    data = _join(wire.encode_request(5, "infer", {"x": np.zeros(1000, np.float32)}))
    a.sendall(data[:-10])
    a.close()
    with pytest.raises(wire.ProtocolError) as err:
        wire.read_message(b, LIMIT)
    assert err.value.code == "truncated" and err.value.request_id == 5
    b.close()


def test_prefix_layout_is_as_documented():
    assert wire.PREFIX_BYTES == 16
    assert struct.unpack(">4sIQ", wire.PREFIX.pack(wire.MAGIC, 1, 2)) == (b"PIT1", 1, 2)
