"""The door of the socket service (docs/protocol.md, "Limits"): where new connections wait
until they send a request with the right token.

One thread and one selector accept connections and read their frames without blocking; a
connection costs no thread until it has authenticated. A frame that `admit` accepts (a request
with the right token) hands the connection to `hand_off`, which serves it from then on in its
own thread. A malformed or unauthorized request gets its error reply, and the connection may
try again until its deadline: one that has not authenticated within `auth_timeout_s` of its
connect is closed, as is one whose frame is not complete `frame_timeout_s` after its first byte.

At most `max_waiting` connections wait. A new one evicts the oldest, so idle connections cannot
keep a real client out; never one accepted in the same pass, whose bytes have not been looked at
yet. Each pass serves the connections that have data before it accepts new ones, so a client
that sends its request as soon as it connects is read before it can be evicted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import selectors
import socket
import time
from collections.abc import Callable
from typing import Any

from .logs import FailureLog, LogThrottle
from .protocol import FrameAssembler, ProtocolError, encode_frame, reply_error

DRAIN_S = 1.0
"""After a fatal error reply, what the peer still sends is read and dropped this long."""
DRAIN_BYTES = 4 << 20

Admit = Callable[[bytes], dict[str, Any]]
"""Payload → the authenticated request; raises `ProtocolError` (the reply's error)."""
HandOff = Callable[[socket.socket, dict[str, Any]], None]
"""Takes over an authenticated connection; raises `ProtocolError` (e.g. `busy`) to refuse it."""


@dataclasses.dataclass(eq=False)
class _Waiting:
    """A connection that has not authenticated yet."""

    sock: socket.socket
    auth_deadline: float
    generation: int
    """The gate's pass in which it was accepted."""
    frame: FrameAssembler = dataclasses.field(default_factory=FrameAssembler)
    frame_deadline: float = math.inf
    drain_deadline: float | None = None
    drained: int = 0

    def deadline(self) -> float:
        if self.drain_deadline is not None:
            return self.drain_deadline
        return min(self.auth_deadline, self.frame_deadline)


class Gate:
    """Accepts connections on `listener` and holds them until they authenticate.

    Args:
        listener: a bound, listening socket (made non-blocking here).
        admit: checks a frame's payload (see `Admit`).
        hand_off: takes an authenticated connection (see `HandOff`).
        max_waiting: connections waiting to authenticate at most.
        auth_timeout_s: a connection must authenticate this soon after its connect.
        frame_timeout_s: a frame must be complete this soon after its first byte.
        throttle: where rejections and closes are logged, summarised.
        failures: where a bug's traceback is logged (once per kind).
    """

    def __init__(
        self,
        listener: socket.socket,
        admit: Admit,
        hand_off: HandOff,
        max_waiting: int,
        auth_timeout_s: float,
        frame_timeout_s: float,
        throttle: LogThrottle,
        failures: FailureLog,
    ) -> None:
        listener.setblocking(False)
        self._listener = listener
        self._admit = admit
        self._hand_off = hand_off
        self.max_waiting = max(1, max_waiting)
        self.auth_timeout_s = auth_timeout_s
        self.frame_timeout_s = frame_timeout_s
        self._throttle = throttle
        self._failures = failures
        self._selector = selectors.DefaultSelector()
        self._waiting: dict[socket.socket, _Waiting] = {}
        """In accept order: the first is the oldest."""
        self._generation = 0

    def run(self, stopping: Callable[[], bool]) -> None:
        """Serve until `stopping()`; then close every waiting connection."""
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        try:
            while not stopping():
                try:
                    self._pass()
                except Exception as err:  # a bug must not close the door for good
                    self._failures.log("the connection gate", err)
                    time.sleep(0.05)
        finally:
            for waiting in list(self._waiting.values()):
                self._close(waiting)
            self._selector.close()

    # one pass -------------------------------------------------------------------------------

    def _pass(self) -> None:
        self._generation += 1
        events = self._selector.select(self._timeout())
        incoming = False
        for key, _ in events:
            if key.data is None:
                incoming = True
            elif key.data.sock in self._waiting:
                self._serve(key.data)
        if incoming:
            self._accept()
        self._expire(time.monotonic())
        self._throttle.tick()

    def _serve(self, waiting: _Waiting) -> None:
        """Read what `waiting` sent; a bug closes that connection, not the gate."""
        try:
            self._readable(waiting)
        except Exception as err:
            self._failures.log("connection handler", err)
            self._close(waiting)

    def _timeout(self) -> float:
        """Until the next deadline, at most 0.25 s (the stop flag is polled that often)."""
        if not self._waiting:
            return 0.25
        soonest = min(w.deadline() for w in self._waiting.values())
        return min(0.25, max(0.0, soonest - time.monotonic()))

    def _accept(self) -> None:
        for _ in range(self.max_waiting):
            full = len(self._waiting) >= self.max_waiting
            oldest = next(iter(self._waiting.values()), None)
            if full and oldest is not None and oldest.generation == self._generation:
                return  # all accepted in this pass, none read yet: the rest wait in the backlog
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:  # e.g. out of file descriptors: do not spin
                self._throttle.note("accept", "accept failed: %s", err, level=logging.WARNING)
                time.sleep(0.05)
                return
            if full and oldest is not None:
                self._evict(oldest)
            self._enter(sock)

    def _enter(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        waiting = _Waiting(sock, time.monotonic() + self.auth_timeout_s, self._generation)
        self._waiting[sock] = waiting
        self._selector.register(sock, selectors.EVENT_READ, waiting)
        self._serve(waiting)  # a client that sent at once is answered before the next

    def _evict(self, oldest: _Waiting) -> None:
        self._throttle.note(
            "evicted",
            "connection closed unauthenticated: %d others waiting, it was the oldest",
            self.max_waiting,
        )
        self._close(oldest)

    def _expire(self, now: float) -> None:
        for waiting in list(self._waiting.values()):
            if waiting.deadline() > now:
                continue
            if waiting.drain_deadline is None and waiting.frame_deadline <= now:
                self._throttle.note(
                    "frame_timeout",
                    "connection dropped: frame not complete within %.1fs",
                    self.frame_timeout_s,
                )
            elif waiting.drain_deadline is None:
                self._throttle.note(
                    "auth_timeout",
                    "connection closed: no request with the right token within %.1fs",
                    self.auth_timeout_s,
                )
            self._close(waiting)

    # one connection -------------------------------------------------------------------------

    def _readable(self, waiting: _Waiting) -> None:
        size = 1 << 16 if waiting.drain_deadline is not None else waiting.frame.want()
        try:
            data = waiting.sock.recv(size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the peer closed, between frames or in one: nothing to answer
            self._close(waiting)
            return
        if waiting.drain_deadline is not None:
            waiting.drained += len(data)
            if waiting.drained > DRAIN_BYTES:
                self._close(waiting)
            return
        if not waiting.frame.started:
            waiting.frame_deadline = time.monotonic() + self.frame_timeout_s
        try:
            payload = waiting.frame.feed(data)
        except ProtocolError as err:
            self._reject(waiting, err)
            return
        if payload is not None:
            waiting.frame_deadline = math.inf
            self._answer(waiting, payload)

    def _answer(self, waiting: _Waiting, payload: bytes) -> None:
        try:
            request = self._admit(payload)
        except ProtocolError as err:
            self._reject(waiting, err)
            return
        except Exception as err:
            self._failures.log("connection handler", err)
            self._reject(waiting, ProtocolError("internal", "the engine failed", fatal=True))
            return
        self._forget(waiting)  # from here the connection is `hand_off`'s
        try:
            self._hand_off(waiting.sock, request)
        except ProtocolError as err:
            self._note(err)
            waiting.sock.setblocking(False)
            self._send(waiting.sock, reply_error(err.request_id, err.code, err.message))
            waiting.sock.close()

    def _reject(self, waiting: _Waiting, err: ProtocolError) -> None:
        """Send the error reply; close when it cannot be sent, drain first when fatal."""
        self._note(err)
        if not self._send(waiting.sock, reply_error(err.request_id, err.code, err.message)):
            self._close(waiting)
        elif err.fatal:
            with contextlib.suppress(OSError):
                waiting.sock.shutdown(socket.SHUT_WR)
            waiting.drain_deadline = time.monotonic() + DRAIN_S

    def _note(self, err: ProtocolError) -> None:
        self._throttle.note(err.code, "request rejected: %s: %s", err.code, err.message)

    @staticmethod
    def _send(sock: socket.socket, message: dict[str, Any]) -> bool:
        """Send a small reply without blocking; False when it did not fit (a client that does
        not read its replies is closed)."""
        frame = encode_frame(message)
        try:
            return sock.send(frame) == len(frame)
        except OSError:
            return False

    def _forget(self, waiting: _Waiting) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(waiting.sock)
        self._waiting.pop(waiting.sock, None)

    def _close(self, waiting: _Waiting) -> None:
        self._forget(waiting)
        with contextlib.suppress(OSError):
            waiting.sock.close()
