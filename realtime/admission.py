"""Admission: how many clients and remote streams the daemon takes, counted in one place.

Owns the slots. A WebSocket client takes a client slot when its connection is
accepted (beyond ``server.max_clients`` it is refused ``server_busy`` and
closed 1013) and gives it back when the connection ends. A remote stream takes
a stream slot at ``start`` (beyond ``server.max_remote_streams``: ``server_busy``,
the connection goes on) and gives it back only when the stream *retires*
(every window delivered), not at ``stop``, so start/stop cycling cannot hold
more streams than the limit. The server asks for client slots, the daemon for
stream slots; both ask this one object. Thread-safe (a stream can retire on
the scheduler's or the intake's thread).
"""

from __future__ import annotations

import threading
from typing import Any

from realtime.protocol import ProtocolError


class Admission:
    """Client and remote-stream slots: ``admit_client``/``client_left``, ``take_stream``/``stream_retired``."""

    def __init__(self, max_clients: int, max_remote_streams: int) -> None:
        self.max_clients = int(max_clients)
        self.max_remote_streams = int(max_remote_streams)
        self._clients = 0
        self._streams = 0
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, server: Any) -> Admission:
        """The limits of the daemon config's ``server`` section."""
        return cls(server.max_clients, server.max_remote_streams)

    @property
    def clients(self) -> int:
        return self._clients

    @property
    def remote_streams(self) -> int:
        return self._streams

    def client_refusal(self) -> str | None:
        """Take a client slot; or, when every one is taken, the reason it is refused (nothing taken)."""
        with self._lock:
            if self._clients >= self.max_clients:
                return f"too many clients (server.max_clients={self.max_clients})"
            self._clients += 1
            return None

    def client_left(self) -> None:
        with self._lock:
            self._clients = max(0, self._clients - 1)

    def take_stream(self) -> None:
        """Take a remote-stream slot; ProtocolError ``server_busy`` when every one is taken."""
        with self._lock:
            if self._streams >= self.max_remote_streams:
                raise ProtocolError("server_busy", f"too many remote streams (server.max_remote_streams={self.max_remote_streams})")
            self._streams += 1

    def stream_retired(self) -> None:
        """A remote stream retired: its slot is free again."""
        with self._lock:
            self._streams = max(0, self._streams - 1)
