"""The shared-memory frame transport, on a real `pipeit serve` daemon with a tiny real model: attach (a memfd
passed over the socket), slot requests, errors, disconnects, leaks, reload and SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import numpy as np
import pytest

from pipeit.client import Client, DaemonError
from pipeit.daemon import protocol as wire
from pipeit.daemon.shm import AreaLayout, FrameArea, shm_supported
from tests.daemon_helpers import (build_model, daemon_files, daemon_for_module, leftovers, reference, serving,
                                  write_times)

PLATFORM = "emulate:big=0@1.0,little=1@1.0"  # two clusters, no throttling: no cgroups needed here
pytestmark = pytest.mark.skipif(not shm_supported(), reason="needs memfd_create with sealing (Linux)")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return daemon_files(tmp_path_factory.mktemp("shm"), PLATFORM)


@pytest.fixture(scope="module")
def daemon(files):
    yield from daemon_for_module(files, PLATFORM, "--per-client", "3", "--no-replan")


def _frames(n, seed, size=32):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((1, size, size, 16)).astype(np.float32) for _ in range(n)]


def _memfd_maps(pid):
    with open(f"/proc/{pid}/maps") as f:
        return sum(1 for line in f if "memfd:pipeit-frames" in line)


def _worker_maps(pid):
    """Frame-area mappings in the daemon's workers (its child processes)."""
    import psutil

    total = 0
    for child in psutil.Process(pid).children(recursive=True):
        try:
            total += _memfd_maps(child.pid)
        except (FileNotFoundError, ProcessLookupError):
            pass  # it ended meanwhile
    return total


def _fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def _settle(read, want, timeout=15.0):
    """``read()`` once it equals ``want`` (the daemon drops a closed client's area when its reader sees EOF)."""
    deadline = time.monotonic() + timeout
    value = read()
    while value != want and time.monotonic() < deadline:
        time.sleep(0.05)
        value = read()
    return value


def test_layout_is_checked_before_anything_is_mapped():
    layout = AreaLayout.plan(3, [("x", "float32", (1, 5, 5, 3))], [("y", "int8", (1, 7))])
    assert layout.slot_bytes % 4096 == 0 and layout.outputs[0].offset % 64 == 0
    assert AreaLayout.from_json(layout.to_json()) == layout
    doc = layout.to_json()
    for bad in ({**doc, "size": doc["size"] + 1},
                {**doc, "outputs": [{**doc["outputs"][0], "offset": 0}]},  # overlaps the input
                {**doc, "outputs": [{**doc["outputs"][0], "offset": doc["slot_bytes"]}]},  # past the slot
                {**doc, "slots": 0}, {**doc, "inputs": []}):
        with pytest.raises(wire.ProtocolError):
            AreaLayout.from_json(bad)
    area, fd = FrameArea.create(layout)
    try:
        with pytest.raises(OSError):  # sealed: a client cannot shrink the daemon's mapping under it
            os.ftruncate(fd, 0)
        other = FrameArea.map(fd, layout)
        area.inputs[2]["x"][...] = 7.0
        assert float(other.inputs[2]["x"].max()) == 7.0  # one segment, two mappings
        other.close()
    finally:
        os.close(fd)
        area.close()


def test_shm_round_trip_equals_the_whole_model(daemon, files):
    _, model, _ = files
    frames = _frames(5, seed=1)
    refs = [reference(model, f) for f in frames]
    out = {"fc": np.empty((1, 10), np.float32)}
    with Client(daemon.socket_path, transport="shm") as c:
        for frame, ref in zip(frames, refs):
            got = c.infer({"image": frame}, out=out)
            assert c.transport_in_use == "shm"
            assert got["fc"] is out["fc"]
            np.testing.assert_array_equal(out["fc"], ref)
        outs = list(c.infer_many(({"image": frames[i % 5]} for i in range(30)), window=3))
        for i, o in enumerate(outs):
            np.testing.assert_array_equal(o["fc"], refs[i % 5])
        doc = c.status()
    assert doc["frame_areas"]["created"] >= 1 and doc["requests"]["failed"] == 0


def test_more_in_flight_than_slots_goes_inline_for_the_rest(daemon, files):
    _, model, _ = files
    frames = _frames(4, seed=2)
    with Client(daemon.socket_path, transport="shm", slots=2) as c:
        layout = c.attach()
        assert layout is not None and layout.slots == 2
        ids = [c.send("infer", {"image": f}) for f in frames[:3]]  # the third has no free slot: inline
        for rid, f in zip(ids, frames):
            np.testing.assert_array_equal(c.receive(rid).tensors["fc"], reference(model, f))
    with Client(daemon.socket_path, transport="shm", slots=50) as c:  # granted at most the per-client limit
        assert c.attach().slots == 3


def test_inline_and_shm_clients_at_once(daemon, files):
    _, model, _ = files
    frames = _frames(4, seed=3)
    refs = [reference(model, f) for f in frames]
    errors, used = [], []

    def client(k, transport):
        try:
            with Client(daemon.socket_path, transport=transport) as c:
                order = [(k + i) % 4 for i in range(40)]
                outs = list(c.infer_many(({"image": frames[j]} for j in order), window=3))
                used.append(c.transport_in_use)
                errors.extend(f"client {k}: frame {j}" for j, o in zip(order, outs) if not np.array_equal(o["fc"],
                                                                                                          refs[j]))
        except Exception as err:  # noqa: BLE001 -- collected for the assertion below
            errors.append(f"client {k}: {err!r}")

    threads = [threading.Thread(target=client, args=(k, ("inline", "shm", "auto")[k % 3])) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert sorted(used) == ["inline", "inline", "shm", "shm", "shm", "shm"]


def _raw_reply(c, buffers):
    wire.send_message(c._conn(), buffers)  # noqa: SLF001 -- a hand-made request on the client's connection
    header = wire.read_head(c._conn(), 1 << 20, c._inbox)  # noqa: SLF001
    return header


def test_bad_slot_requests_get_error_replies_and_the_connection_serves_on(daemon, files):
    _, model, _ = files
    frame = _frames(1, seed=4)[0]
    with Client(daemon.socket_path, transport="shm") as c:
        # no area yet: told to attach
        reply = _raw_reply(c, wire.encode_slot_request(900, 0))
        assert reply.ok is False and reply.error["code"] == "reattach" and reply.id == 900
        for info in (None, {"slots": 0}, {"slots": "3"}):  # attach needs a sane slot count
            reply = _raw_reply(c, wire.encode(wire.Header(id=899, op="attach", info=info)))
            assert reply.ok is False and reply.error["code"] == "bad_request" and "slots" in reply.error["message"]
        c.attach()
        reply = _raw_reply(c, wire.encode_slot_request(901, 3))  # slots 0..2
        assert reply.ok is False and reply.error["code"] == "bad_request" and "outside 0..2" in \
            reply.error["message"]
        reply = _raw_reply(c, wire.encode(wire.Header(id=902, op="infer", slot=0, tensors=(
            wire.TensorSpec("image", "float32", (1, 32, 32, 16)),)), {"image": frame}))
        assert reply.ok is False and "carries no tensors" in reply.error["message"]
        np.testing.assert_array_equal(c.infer({"image": frame})["fc"], reference(model, frame))
    # a slot beyond the wire's bound is a malformed header: error reply, then the connection is closed
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(daemon.socket_path))
    s.settimeout(10)
    head = b'{"id":5,"op":"infer","slot":-1}'
    s.sendall(wire.PREFIX.pack(wire.MAGIC, len(head), 0) + head)
    message = wire.read_message(s, 1 << 20)
    assert message.header.ok is False and message.header.error["code"] == "malformed"
    assert wire.read_message(s, 1 << 20) is None
    s.close()


def test_a_client_that_leaves_with_frames_in_flight_breaks_no_one(daemon, files):
    _, model, _ = files
    frames = _frames(2, seed=5)
    refs = [reference(model, f) for f in frames]
    with Client(daemon.socket_path) as admin:
        # the baseline once earlier tests' clients are gone (their areas are dropped when the daemon's
        # reader sees EOF: a count read at once caught one of them still open, and the end never matched)
        opened = _settle(lambda: admin.status()["frame_areas"]["open"], 0)
    for _ in range(5):
        leaver = Client(daemon.socket_path, transport="shm")
        for _ in range(3):
            leaver.send("infer", {"image": frames[0]})
        leaver.close()  # gone with three frames in flight: their replies have no one to go to
        with Client(daemon.socket_path, transport="shm") as c:
            for f, ref in zip(frames, refs):
                np.testing.assert_array_equal(c.infer({"image": f})["fc"], ref)
    with Client(daemon.socket_path) as admin:
        assert _settle(lambda: admin.status()["frame_areas"]["open"], opened) == opened
        assert admin.status()["requests"]["failed"] == 0


def test_no_descriptor_or_mapping_leaks_after_many_attach_and_detach(daemon, files):
    _, model, _ = files
    frame = _frames(1, seed=6)[0]
    ref = reference(model, frame)
    pid = daemon.proc.pid
    with Client(daemon.socket_path, transport="inline") as admin:
        admin.status()
        fds0 = _settle(lambda: _fds(pid), _fds(pid))
        # no client holds an area now, so the daemon maps none: the dispatcher once kept the last frame's
        # outputs (views of its area) in a loop variable, and with them the area of a connection long closed
        maps0 = _settle(lambda: _memfd_maps(pid), 0)
        assert maps0 == 0
        with Client(daemon.socket_path, transport="shm") as c:
            for _ in range(40):
                c.attach()
                np.testing.assert_array_equal(c.infer({"image": frame})["fc"], ref)
                # the stage-0 worker that served it reads the frame in the area itself (no copy into ring 0)
                assert _settle(lambda: _worker_maps(pid), 1) == 1
                c.detach()
            assert _memfd_maps(pid) == maps0
            assert _settle(lambda: _worker_maps(pid), 0) == 0  # detached: the workers unmapped it too
            c.attach()
            assert _memfd_maps(pid) == maps0 + 1  # one area: one mapping
        for _ in range(20):  # attach and disconnect without detaching
            with Client(daemon.socket_path, transport="shm") as c:
                np.testing.assert_array_equal(c.infer({"image": frame})["fc"], ref)
        assert _settle(lambda: _memfd_maps(pid), maps0) == maps0
        assert _settle(lambda: _fds(pid), fds0) == fds0
        assert _settle(lambda: _worker_maps(pid), 0) == 0
        doc = admin.status()["frame_areas"]
    assert doc["created"] == doc["closed"] + doc["open"]


def test_reload_with_other_inputs_makes_areas_stale_and_clients_reattach(files, tmp_path):
    _, _, _ = files
    model = build_model(tmp_path / "m.tflite")
    times = write_times(model, PLATFORM, tmp_path / "times.json")
    d = serving(model, times, PLATFORM, tmp_path, "--no-replan", socket_name="r.sock")
    with d:
        old, new = _frames(1, seed=7)[0], _frames(1, seed=8, size=24)[0]
        with Client(d.socket_path, transport="shm") as c:
            np.testing.assert_array_equal(c.infer({"image": old})["fc"], reference(model, old))
            build_model(model, size=24)  # same layers, a smaller input: the area's input part no longer fits
            write_times(model, PLATFORM, times)  # its own times (those of another model are refused)
            d.proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 60
            while not [e for e in c.status()["events"] if e["kind"] in ("reload", "failed")] \
                    and time.monotonic() < deadline:
                time.sleep(0.1)
            assert [e["kind"] for e in c.status()["events"]] == ["reload"], d.log()
            reply = _raw_reply(c, wire.encode_slot_request(77, 0))  # the old area's slot
            assert reply.ok is False and reply.error["code"] == "reattach"
            created = c.status()["frame_areas"]["created"]
            # the old frame fits the old area: answered "reattach", the client attaches again on its own and
            # resends; the new area does not fit it, so it goes inline and is refused as anyone's would be
            # (a body larger than the model takes: too_large, and that connection is closed)
            with pytest.raises(DaemonError, match="too_large"):
                c.infer({"image": old})
            assert c.transport_in_use == "inline"  # that connection is gone, and its area with it
        with Client(d.socket_path, transport="shm") as c:
            np.testing.assert_array_equal(c.infer({"image": new})["fc"], reference(model, new))
            assert c.transport_in_use == "shm"
            assert c.status()["frame_areas"]["created"] == created + 2  # the re-attach, and this client's
    assert d.proc.returncode == 0


def test_sigterm_with_attached_clients_leaves_nothing(files, tmp_path):
    _, model, times = files
    d = serving(model, times, PLATFORM, tmp_path, "--per-client", "4", socket_name="t.sock")
    shm_before = set(os.listdir("/dev/shm"))
    frame = _frames(1, seed=9)[0]
    ref = reference(model, frame)
    with d:  # stopped on the way out whatever happens
        with Client(d.socket_path, transport="shm") as c:
            ids = [c.send("infer", {"image": frame}) for _ in range(4)]
            assert c.transport_in_use == "shm"
            c.status()  # answered after the four are read and admitted (one reader per connection, in order)
            d.proc.send_signal(signal.SIGTERM)
            for rid in ids:  # every frame accepted before the signal is answered, through the area
                np.testing.assert_array_equal(c.receive(rid).tensors["fc"], ref)
        assert d.stop() == 0, d.log()
    assert leftovers(d.proc.pid) == []
    # a memfd area has no name anywhere; and no segment of this daemon is left in /dev/shm (other engineers'
    # tests on this host make their own pipeit_* segments meanwhile: only this daemon's pid counts)
    assert not [n for n in set(os.listdir("/dev/shm")) - shm_before if f"_{d.proc.pid}_" in n]


def test_cli_infer_either_way(daemon, files, tmp_path):
    import json
    import subprocess
    import sys

    from tests.daemon_helpers import ROOT

    _, model, _ = files
    frame = _frames(1, seed=10)[0]
    np.save(tmp_path / "x.npy", frame)
    for transport in ("shm", "inline"):
        done = subprocess.run([sys.executable, "-m", "pipeit", "infer", "--socket", str(daemon.socket_path),
                               "--input", str(tmp_path / "x.npy"), "-o", str(tmp_path / f"{transport}.npz"),
                               "--transport", transport, "--json"], cwd=ROOT, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["transport"] == transport
        with np.load(tmp_path / f"{transport}.npz") as out:
            np.testing.assert_array_equal(out["fc"], reference(model, frame))


def test_a_producer_writes_straight_into_a_reserved_slot(daemon, files):
    _, model, _ = files
    frames = _frames(3, seed=11)
    with Client(daemon.socket_path) as c:
        ids = []
        for frame in frames:
            slot, views = c.reserve()
            views["image"][...] = frame  # e.g. a camera's decoder writing into the area
            ids.append(c.submit(slot))
        with pytest.raises(DaemonError, match="receive a reply first"):
            c.reserve()  # all 3 slots in flight
        for rid, frame in zip(ids, frames):
            np.testing.assert_array_equal(c.receive(rid).tensors["fc"], reference(model, frame))
        with pytest.raises(DaemonError, match="not reserved"):
            c.submit(0)
    with Client(daemon.socket_path, transport="inline") as c, pytest.raises(DaemonError, match="no frame area"):
        c.reserve()


def test_replies_to_slots_of_a_dropped_area_are_errors_not_empty_outputs(daemon, files):
    """If the client's area goes while frames are in flight (a ``reattach`` answer to one of them), the others'
    replies cannot be read from it: they are ``reattach`` errors (which infer() answers by resending)."""
    _, model, _ = files
    frame = _frames(1, seed=12)[0]
    with Client(daemon.socket_path, transport="shm") as c:
        ids = [c.send("infer", {"image": frame}) for _ in range(2)]
        c._drop_area()  # noqa: SLF001 -- what a "reattach" answer to another request does
        for rid in ids:
            with pytest.raises(DaemonError) as err:
                c.receive(rid)
            assert err.value.code == "reattach"
        np.testing.assert_array_equal(c.infer({"image": frame})["fc"], reference(model, frame))
        assert c.transport_in_use == "shm"


def test_threads_sharing_one_client_each_get_their_own_outputs(daemon, files):
    """Two threads raced on the first attach and on each other's replies: outputs came back wrong, silently."""
    _, model, _ = files
    frames = _frames(4, seed=21)
    want = [reference(model, f) for f in frames]
    wrong: list = []

    def stream(client, offset):
        for i in range(24):
            k = (i + offset) % len(frames)
            got = client.infer(frames[k])["fc"]
            if not np.array_equal(got, want[k]):
                wrong.append(k)

    for transport in ("auto", "inline"):
        with Client(daemon.socket_path, transport=transport) as c:
            threads = [threading.Thread(target=stream, args=(c, t)) for t in range(3)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            assert not any(t.is_alive() for t in threads)
    assert wrong == []


def test_client_misuse_is_refused_before_anything_is_sent(daemon, files):
    _, model, _ = files
    frame = _frames(1, seed=22)[0]
    with Client(daemon.socket_path, transport="inline") as c:
        with pytest.raises(TypeError, match="out must be a dict"):
            c.infer(frame, out=np.zeros((1, 10), np.float32))  # was sent, then its reply left half-read
        np.testing.assert_array_equal(c.infer(frame)["fc"], reference(model, frame))  # still in step
    with Client(daemon.socket_path) as c:
        with pytest.raises(DaemonError, match="slots must be an integer"):
            c.attach(0)
        slot, _views = c.reserve()
        with pytest.raises(DaemonError, match="slots reserved"):
            c.detach()  # the reserved slot would have been dropped without a word
        c.submit(slot)
    c = Client(daemon.socket_path)
    c.close()
    with pytest.raises(DaemonError, match="closed"):
        c.attach()  # an "auto" client took its own closed socket for a refusal and went inline


def test_infer_many_resends_frames_a_reload_made_stale(files, tmp_path):
    """A reload to a model with other outputs makes the client's frame area stale: `infer` attached again and
    resent, `infer_many` raised reattach and lost the frames in its window."""
    model = build_model(tmp_path / "m.tflite")
    times = write_times(model, PLATFORM, tmp_path / "times.json")
    frames = _frames(4, seed=31)
    d = serving(model, times, PLATFORM, tmp_path, "--no-replan", socket_name="many.sock")
    with d:
        before = [reference(model, f) for f in frames]
        with Client(d.socket_path, transport="shm") as c, Client(d.socket_path, transport="inline") as watcher:
            stream = c.infer_many((frames[i % 4] for i in range(16)), window=3)
            np.testing.assert_array_equal(next(stream)["fc"], before[0])
            build_model(model, classes=12)  # the same input, another output: the area no longer fits
            write_times(model, PLATFORM, times)
            d.proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 60
            while not [e for e in watcher.status()["events"] if e["kind"] in ("reload", "failed")] \
                    and time.monotonic() < deadline:
                time.sleep(0.1)
            after = [reference(model, f) for f in frames]
            outputs = list(stream)
        assert len(outputs) == 15
        for i, out in enumerate(outputs, start=1):  # each frame answered once, by one model or the other
            want = before[i % 4] if out["fc"].shape == before[0].shape else after[i % 4]
            np.testing.assert_array_equal(out["fc"], want)
        assert outputs[-1]["fc"].shape == (1, 12)
    assert d.proc.returncode == 0


def test_a_timed_out_frame_gives_its_slot_back_when_its_late_reply_comes(daemon, files):
    """A ReplyTimeout kept the request's slot and its reply for good: after three, every frame went inline
    while transport_in_use still said shm, and detach/attach were refused forever."""
    from pipeit.client import ReplyTimeout

    _, model, _ = files
    frames = _frames(2, seed=41)
    with Client(daemon.socket_path, transport="shm", slots=3, timeout=1.0) as c:
        assert c.infer(frames[0])["fc"].shape == (1, 10)
        for _ in range(3):
            daemon.proc.send_signal(signal.SIGSTOP)
            try:
                with pytest.raises(ReplyTimeout):
                    c.infer(frames[1])
            finally:
                daemon.proc.send_signal(signal.SIGCONT)
        c.timeout = 60.0
        for i in range(6):  # the late replies are read (and dropped) on the way to these
            np.testing.assert_array_equal(c.infer(frames[i % 2])["fc"], reference(model, frames[i % 2]))
        slots = [c.reserve()[0] for _ in range(3)]  # every slot free again: none held by a late reply
        assert sorted(slots) == [0, 1, 2]
        for slot in slots:
            c.receive(c.submit(slot))
        c.detach()  # nothing in flight



def _read_with_fds(s):
    """The next message on raw socket ``s`` and the descriptors that came with it (closed here: counted only)."""
    inbox = wire.Inbox()
    inbox.capture_fds = True
    message = wire.read_message(s, 1 << 20, inbox)
    for fd in inbox.fds:
        os.close(fd)
    return message.header, len(inbox.fds)


def test_attach_after_attach_unread_piles_up_no_areas(daemon):
    """A client that sends ``attach`` after ``attach`` and never reads: each unread reply would hold a new
    area's descriptor in its socket, the area's memory alive after the daemon drops it. The daemon answers
    an attach only once the earlier replies are read (else ``busy``): at most one area is ever unread."""
    with Client(daemon.socket_path, transport="inline") as admin:
        before = admin.status()
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(daemon.socket_path))
        s.settimeout(15)
        try:
            for rid in (1, 2):
                wire.send_message(s, wire.encode(wire.Header(id=rid, op="attach", info={"slots": 1})))
            # the second attach waits for the first reply to be read, then gives up (counted as rejected)
            rejected = _settle(lambda: admin.status()["requests"]["rejected"], before["requests"]["rejected"] + 1)
            assert rejected == before["requests"]["rejected"] + 1
            assert admin.status()["frame_areas"]["created"] == before["frame_areas"]["created"] + 1
            header, fds = _read_with_fds(s)
            assert (header.id, header.ok, fds) == (1, True, 1)
            header, fds = _read_with_fds(s)
            assert (header.id, header.error["code"], fds) == (2, "busy", 0) and "unread" in header.error["message"]
            # a client that reads its replies attaches again at once
            wire.send_message(s, wire.encode(wire.Header(id=3, op="attach", info={"slots": 1})))
            header, fds = _read_with_fds(s)
            assert (header.id, header.ok, fds) == (3, True, 1)
        finally:
            s.close()
        assert _settle(lambda: admin.status()["frame_areas"]["open"], 0) == 0
