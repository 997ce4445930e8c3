"""The daemon's wire format: round trips, and a decoder that refuses every malformed message cleanly."""

from __future__ import annotations

import json
import os
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

    @pytest.mark.parametrize("with_inbox", [False, True])
    def test_oversized_body_error_carries_its_header_and_id_but_no_body_is_read(self, with_inbox):
        a, b = socket.socketpair()
        try:
            big = np.zeros(64, np.float64)  # 512 bytes, over a 256-byte limit
            wire.send_message(a, wire.encode_request(9, "infer", {"x": big}))
            a.sendall(wire.PREFIX.pack(wire.MAGIC, 1, 0) + b"{")  # the next message: still unread after
            inbox = wire.Inbox() if with_inbox else None
            with pytest.raises(wire.ProtocolError) as err:
                wire.read_head(b, 256, inbox)
            assert err.value.code == "too_large" and err.value.request_id == 9
            assert [(t.name, t.dtype, t.shape) for t in err.value.header.tensors] == [("x", "float64", (64,))]
            if inbox is None:  # exactly the prefix and the header were taken from the socket
                b.setblocking(False)
                assert len(b.recv(1 << 16)) == big.nbytes + wire.PREFIX_BYTES + 1
        finally:
            a.close()
            b.close()

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


class TestInbox:
    def test_back_to_back_messages_and_a_big_one_read_through_one_inbox(self):
        """Small messages arrive together (one recv takes several); a big body bypasses the inbox."""
        a, b = socket.socketpair()
        wire.tune_socket(a)
        big = np.arange(300_000, dtype=np.float32)
        data = b"".join(_join(wire.encode_request(i, "status")) for i in range(3))
        data += _join(wire.encode_request(3, "infer", {"x": big}))
        data += _join(wire.encode_reply(4, "status", info={"k": [1, 2]}))
        sender = threading.Thread(target=lambda: (a.sendall(data), a.close()))
        sender.start()
        inbox = wire.Inbox(4096)
        got = [wire.read_message(b, LIMIT * 2, inbox) for _ in range(5)]
        sender.join()
        assert [m.header.id for m in got] == [0, 1, 2, 3, 4]
        np.testing.assert_array_equal(got[3].tensors["x"], big)
        assert got[4].header.info == {"k": [1, 2]}
        assert wire.read_message(b, LIMIT, inbox) is None and inbox.pending == 0
        b.close()

    def test_a_header_larger_than_the_inbox_and_a_truncated_prefix(self):
        a, b = socket.socketpair()
        names = {f"t{i:03d}" + "n" * 200: np.zeros(1, np.uint8) for i in range(40)}  # ~10 KB of header
        a.sendall(_join(wire.encode_request(1, "infer", names)) + b"PIT1\x00")
        a.close()
        inbox = wire.Inbox(1024)
        assert len(wire.read_message(b, LIMIT, inbox).tensors) == 40
        with pytest.raises(wire.ProtocolError) as err:
            wire.read_message(b, LIMIT, inbox)
        assert err.value.code == "truncated"
        b.close()


def test_send_nowait_sends_what_fits_and_returns_the_rest_in_order():
    """A peer that does not read: the sender is never blocked, and what is left goes out later intact."""
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    body = np.arange(200_000, dtype=np.float32)  # far more than the send buffer
    buffers = wire.encode_reply(8, "infer", {"y": body})
    rest = wire.send_nowait(a, buffers)
    assert rest and sum(v.nbytes for v in rest) < sum(memoryview(x).nbytes for x in buffers)
    reader = threading.Thread(target=lambda: out.append(wire.read_message(b, 1 << 22)))
    out = []
    reader.start()
    wire.send_message(a, rest)
    reader.join(30)
    np.testing.assert_array_equal(out[0].tensors["y"], body)
    assert wire.send_nowait(a, wire.encode_reply(9, "status", info={})) == []
    assert wire.read_message(b, 0).header.id == 9
    a.close()
    b.close()


class TestCachedHeaders:
    def test_encoder_gives_the_same_bytes_as_encode(self):
        encoder = wire.Encoder("infer", reply=True)
        for rid, shape in ((0, (1, 10)), (17, (1, 10)), (2**53 - 1, (2, 5)), (3, (2, 5))):
            tensors = {"y": np.arange(10, dtype=np.float32).reshape(shape), "z": np.ones(3, np.int8)}
            assert _join(encoder.encode(rid, tensors)) == _join(wire.encode_reply(rid, "infer", tensors))
        request = wire.Encoder("infer")
        x = {"x": np.arange(6, dtype=">f4").reshape(2, 3).T}  # big-endian, strided: converted alike
        assert _join(request.encode(5, x)) == _join(wire.encode_request(5, "infer", x))
        with pytest.raises(wire.ProtocolError):
            request.encode(2**53, x)

    @pytest.mark.parametrize("head", [
        b'{"id":012,"op":"infer"}',        # a leading zero is not JSON: refused as before
        b'{"id":1e3,"op":"infer"}',
        b'{"id":-1,"op":"infer"}',
        b'{"id":+5,"op":"infer"}',
        b'{"id":99999999999999999,"op":"infer"}',  # over 2^53 - 1
        b'{"id":5,"op":"infer","op":"x"}',   # a different rest: checked in full
    ])
    def test_inbox_cache_never_accepts_what_the_full_decoder_refuses(self, head):
        inbox = wire.Inbox()
        assert inbox.decode_header(b'{"id":1,"op":"infer"}', 0).id == 1  # primes the cache
        try:
            expected = wire.decode_header(head, 0)
        except wire.ProtocolError:
            with pytest.raises(wire.ProtocolError):
                inbox.decode_header(head, 0)
        else:
            assert inbox.decode_header(head, 0) == expected

    def test_inbox_cache_follows_the_id_and_ignores_a_repeated_id_key(self):
        inbox = wire.Inbox()
        body = {"x": np.zeros((1, 4), np.float32)}
        for rid in (1, 2, 30, 0):
            head = _join(wire.encode_request(rid, "infer", body))[16:-16]
            assert inbox.decode_header(head, 16) == wire.decode_header(head, 16)
        tricky = b'{"id":1,"op":"status","id":7}'  # JSON keeps the last "id": never cached
        assert inbox.decode_header(tricky, 0).id == 7
        assert inbox.decode_header(b'{"id":2,"op":"status","id":7}', 0).id == 7
        # "\u0069d" is "id" once decoded: the cache answered 5 where JSON says 1
        escaped = b'{"id":1,"op":"status","\\u0069d":1}'
        assert inbox.decode_header(escaped, 0).id == 1
        assert inbox.decode_header(b'{"id":5,"op":"status","\\u0069d":1}', 0).id == 1


class TestHeadThenBody:
    """The daemon reads a header, decides, then puts the body where it wants it (or skips it)."""

    def test_body_into_a_target_of_ones_choosing_then_the_next_message(self):
        a, b = socket.socketpair()
        first = np.arange(3000, dtype=np.float32).reshape(1, 3000)
        a.sendall(_join(wire.encode_request(1, "infer", {"x": first})) + _join(wire.encode_request(2, "status")))
        inbox = wire.Inbox(1024)  # smaller than the body: part comes from the inbox, the rest from the socket
        header = wire.read_head(b, LIMIT, inbox)
        assert header.id == 1 and header.body_bytes == first.nbytes
        target = np.full_like(first, -1.0)
        wire.read_body_into(b, memoryview(target).cast("B"), inbox)
        np.testing.assert_array_equal(target, first)
        assert wire.read_head(b, LIMIT, inbox).op == "status"
        a.close()
        assert wire.read_head(b, LIMIT, inbox) is None
        b.close()

    def test_discard_skips_exactly_one_body(self):
        a, b = socket.socketpair()
        body = np.ones(5000, np.float32)
        a.sendall(_join(wire.encode_request(3, "infer", {"x": body})) + _join(wire.encode_request(4, "replan")))
        inbox = wire.Inbox()
        header = wire.read_head(b, LIMIT, inbox)
        wire.discard(b, header.body_bytes, memoryview(bytearray(777)), inbox)
        assert wire.read_head(b, LIMIT, inbox).id == 4
        a.close()
        b.close()

    def test_queued_bytes_counts_what_a_recv_would_return_now(self):
        a, b = socket.socketpair()
        assert wire.queued_bytes(b) == 0
        a.sendall(b"x" * 12345)
        assert wire.queued_bytes(b) == 12345
        b.recv(345)
        assert wire.queued_bytes(b) == 12000
        a.close()
        b.close()
        assert wire.queued_bytes(b) == 0  # a closed socket: unknown, 0

    def test_a_truncated_body_after_the_head_names_its_request(self):
        a, b = socket.socketpair()
        a.sendall(_join(wire.encode_request(8, "infer", {"x": np.zeros(1000, np.float32)}))[:-10])
        a.close()
        header = wire.read_head(b, LIMIT)
        with pytest.raises(wire.ProtocolError) as err:
            wire.read_body_into(b, memoryview(bytearray(header.body_bytes)))
        assert err.value.code == "truncated"
        b.close()


class TestFrameAreaMessages:
    """The slot requests and replies, descriptor passing, and the header cache with one header per slot."""

    def test_slot_messages_are_the_bytes_encode_gives(self):
        for rid, slot in ((0, 0), (17, 3), (wire.MAX_ID, wire.MAX_SLOTS - 1)):
            assert _join(wire.encode_slot_request(rid, slot)) == _join(
                wire.encode(wire.Header(id=rid, op="infer", slot=slot)))
            assert _join(wire.encode_slot_reply(rid, slot)) == _join(
                wire.encode(wire.Header(id=rid, op="infer", ok=True, slot=slot)))
        message = wire.decode_message(_join(wire.encode_slot_request(9, 2)), LIMIT)
        assert (message.header.id, message.header.slot, message.tensors) == (9, 2, {})
        with pytest.raises(wire.ProtocolError):
            wire.encode_slot_request(1, wire.MAX_SLOTS)

    @pytest.mark.parametrize("value", [-1, wire.MAX_SLOTS, "1", True, 1.5, None])
    def test_out_of_range_slots_are_malformed(self, value):
        with pytest.raises(wire.ProtocolError) as err:
            wire.decode_message(_message({"id": 1, "op": "infer", "slot": value} if value is not None else
                                         {"id": 1, "op": "attach", "slots": 2}), LIMIT)  # "slots" is no header field
        assert err.value.code == "malformed" and err.value.request_id == 1

    def test_the_inbox_remembers_one_header_per_slot_exactly(self):
        inbox = wire.Inbox()
        for rid in range(40):
            data = _join(wire.encode_slot_request(rid, rid % 4))[wire.PREFIX_BYTES:]
            header = inbox.decode_header(data, 0)
            assert header == wire.decode_header(data, 0)
        assert len(inbox._templates) == 4  # noqa: SLF001

    def test_a_descriptor_travels_with_its_message_and_is_closed_once_sent(self, tmp_path):
        a, b = socket.socketpair()
        path = tmp_path / "f"
        path.write_bytes(b"hello")
        fd = os.open(path, os.O_RDONLY)
        wire.send_message(a, wire.encode_request(1, "status"))  # a message before: read ahead without capture
        message = wire.WithFds(wire.encode_reply(2, "attach", info={"x": 1}), [fd])
        assert wire.send_nowait(a, message) == []
        with pytest.raises(OSError):
            os.fstat(fd)  # the sender's copy is closed: the kernel holds the one in flight
        inbox = wire.Inbox()
        inbox.capture_fds = True
        assert wire.read_message(b, LIMIT, inbox).header.op == "status"
        assert wire.read_message(b, LIMIT, inbox).header.id == 2
        assert len(inbox.fds) == 1 and os.read(inbox.fds[0], 5) == b"hello"
        os.close(inbox.fds.pop())
        a.close()
        b.close()

    def test_an_unsent_descriptor_is_released(self, tmp_path):
        a, b = socket.socketpair()
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        filler = np.zeros(1 << 20, np.uint8)
        assert wire.send_nowait(a, [filler.data])  # the socket is full: it took part of it
        fd = os.open(tmp_path, os.O_RDONLY)
        message = wire.WithFds(wire.encode_reply(3, "attach", info={}), [fd])
        rest = wire.send_nowait(a, message)
        assert rest is message and message.fds == (fd,)  # nothing went: the descriptor stays with the message
        message.release()
        with pytest.raises(OSError):
            os.fstat(fd)
        a.close()
        b.close()


def test_a_paced_read_on_a_connection_closed_under_it_is_an_os_error():
    """The daemon's stop closes connections while their readers wait: that was a ValueError (poll of fd -1)
    logged as a failed task with its traceback, where a closed connection is an OSError the reader ends on."""
    a, b = socket.socketpair()
    try:
        reader = wire.PacedReader(a)
        reader.limit(5.0)
        a.close()
        with pytest.raises(OSError):
            reader.recv_into(bytearray(4), 4)
    finally:
        b.close()
