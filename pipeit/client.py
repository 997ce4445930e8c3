"""Talk to a running ``pipeit serve`` daemon over its Unix socket.

>>> with Client("/run/pipeit/pipeit.sock") as client:       # doctest: +SKIP
...     outputs = client.infer(frame)                         # dict name -> array
...     print(client.status()["fps"])

One client is one connection; requests on it are answered in the order the
daemon finishes them, matched by id. :meth:`Client.infer_many` keeps several
frames in flight for throughput. A client is not meant to be shared between
threads without a lock of the caller's.
"""

from __future__ import annotations

import collections
import itertools
import socket
from pathlib import Path
from typing import Any, Deque, Dict, Iterable, Iterator, Mapping, Optional, Union

import numpy as np

from pipeit.daemon import protocol as wire
from pipeit.errors import PipeitError

__all__ = ["Client", "DaemonError", "DEFAULT_MAX_REPLY_BYTES"]

#: the largest reply body a client accepts (outputs of any sensible CNN are far below)
DEFAULT_MAX_REPLY_BYTES = 1 << 30


class DaemonError(PipeitError):
    """The daemon cannot be reached, or answered a request with an error (``code`` says which)."""

    def __init__(self, message: str, code: str = "unavailable"):
        super().__init__(message)
        self.code = code


class Client:
    """A connection to the daemon at ``socket_path``; ``timeout`` (s) bounds each wait for a reply."""

    def __init__(self, socket_path: Union[str, Path], timeout: Optional[float] = 120.0,
                 max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES):
        self.socket_path = str(socket_path)
        self.max_reply_bytes = int(max_reply_bytes)
        self._ids = itertools.count(1)
        self._early: Dict[int, wire.Message] = {}
        self._inbox = wire.Inbox()
        self._infer = wire.Encoder("infer")  # the header is built once per input layout
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        wire.tune_socket(sock)  # a whole frame fits the send buffer: one copy, no ping-pong with the reader
        sock.settimeout(timeout)
        try:
            sock.connect(self.socket_path)
        except FileNotFoundError:
            sock.close()
            raise DaemonError(f"no daemon socket at {self.socket_path} (is `pipeit serve` running?)") from None
        except OSError as err:
            sock.close()
            raise DaemonError(f"cannot connect to {self.socket_path}: {err.strerror or err}") from err
        self._sock: Optional[socket.socket] = sock

    # ---- plumbing ----------------------------------------------------------------------
    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _conn(self) -> socket.socket:
        if self._sock is None:
            raise DaemonError("the client is closed")
        return self._sock

    def send(self, op: str, tensors: Optional[Mapping[str, np.ndarray]] = None) -> int:
        """Send one request; returns its id (pair with :meth:`receive`)."""
        request_id = next(self._ids)
        try:
            buffers = self._infer.encode(request_id, tensors) if op == "infer" and tensors else \
                wire.encode_request(request_id, op, tensors)
            wire.send_message(self._conn(), buffers)
        except OSError as err:
            self.close()
            raise DaemonError(f"lost the connection to {self.socket_path}: {err.strerror or err}") from err
        return request_id

    def receive(self, request_id: int, out: Optional[Mapping[str, np.ndarray]] = None) -> wire.Message:
        """The reply to ``request_id`` (replies to other ids read meanwhile are kept).

        ``out``: arrays to receive the output tensors into (name -> array of
        the output's shape and dtype, C-contiguous), e.g. kept from the last
        call: the reply's bytes go from the socket straight into them, and
        the message's tensors are these arrays. A tensor that does not fit
        its array (or has none) is received into a fresh array.
        """
        while request_id not in self._early:
            try:
                header = wire.read_head(self._conn(), self.max_reply_bytes, self._inbox)
                if header is None:
                    self.close()
                    raise DaemonError(f"the daemon at {self.socket_path} closed the connection")
                message = wire.Message(header, self._body(header, out if header.id == request_id else None))
            except socket.timeout:
                raise DaemonError(f"no reply from {self.socket_path} in time", "unavailable") from None
            except (OSError, wire.ProtocolError) as err:
                self.close()
                raise DaemonError(f"lost the connection to {self.socket_path}: {err}") from err
            rid = header.id
            if rid is None:  # a reply to no request: the daemon is refusing this connection
                self.close()
                _raise(message)
            self._early[rid] = message
        message = self._early.pop(request_id)
        if not message.header.ok:
            _raise(message)
        return message

    def _body(self, header: wire.Header, out: Optional[Mapping[str, np.ndarray]]) -> Dict[str, np.ndarray]:
        tensors: Dict[str, np.ndarray] = {}
        for spec in header.tensors:
            array = out.get(spec.name) if out else None
            if not (isinstance(array, np.ndarray) and array.shape == spec.shape
                    and array.dtype == wire.DTYPES[spec.dtype] and array.flags.c_contiguous and array.flags.writeable):
                array = np.empty(spec.shape, dtype=wire.DTYPES[spec.dtype])
            if array.nbytes:
                wire.read_body_into(self._conn(), memoryview(array).cast("B"), self._inbox)
            tensors[spec.name] = array
        return tensors

    # ---- operations --------------------------------------------------------------------
    def infer(self, inputs: Union[np.ndarray, Mapping[str, np.ndarray]],
              out: Optional[Mapping[str, np.ndarray]] = None) -> Dict[str, np.ndarray]:
        """Run one frame; ``inputs`` is a dict name -> array (or one array, named by the daemon's model).

        The input arrays are sent as they are (no copy in Python: ``sendmsg``
        takes them whole). ``out`` (see :meth:`receive`) receives the outputs
        in place, for a caller that keeps its output buffers between frames.
        """
        return self.receive(self.send("infer", self._named(inputs)), out).tensors

    def infer_many(self, frames: Iterable[Union[np.ndarray, Mapping[str, np.ndarray]]],
                   window: int = 4) -> Iterator[Dict[str, np.ndarray]]:
        """Outputs of each frame in order, keeping up to ``window`` frames in flight."""
        if window < 1:
            raise DaemonError("window must be >= 1", "bad_request")
        pending: Deque[int] = collections.deque()
        for frame in frames:
            pending.append(self.send("infer", self._named(frame)))
            if len(pending) >= window:
                yield self.receive(pending.popleft()).tensors
        while pending:
            yield self.receive(pending.popleft()).tensors

    def status(self) -> Dict[str, Any]:
        """The daemon's status document (fps, latency, stages, plan, clusters, re-plans)."""
        return dict(self.receive(self.send("status")).header.info or {})

    def replan(self) -> Dict[str, Any]:
        """Ask for a re-plan now; returns the event (``kind`` says whether the pipeline switched)."""
        return dict(self.receive(self.send("replan")).header.info or {})

    def _named(self, inputs: Union[np.ndarray, Mapping[str, np.ndarray]]) -> Mapping[str, np.ndarray]:
        if isinstance(inputs, Mapping):
            return inputs
        if not hasattr(self, "_input_name"):
            plan_inputs = self.status().get("inputs") or []
            if len(plan_inputs) != 1:
                raise DaemonError(f"the model has {len(plan_inputs)} inputs; pass a dict name -> array",
                                  "bad_request")
            self._input_name = plan_inputs[0]["name"]
        return {self._input_name: np.asarray(inputs)}


def _raise(message: wire.Message) -> None:
    error = message.header.error or {}
    code = error.get("code", "internal")
    raise DaemonError(f"daemon refused the request ({code}): {error.get('message', 'no message')}", code)
