"""realtime.admission: client and remote-stream slots, counted in one object that the server and the daemon share."""

from __future__ import annotations

import pytest

from realtime.admission import Admission
from realtime.config import load_daemon_config
from realtime.protocol import ProtocolError


def test_client_slots_are_taken_and_given_back():
    a = Admission(max_clients=2, max_remote_streams=0)
    assert a.client_refusal() is None and a.client_refusal() is None and a.clients == 2
    assert a.client_refusal() == "too many clients (server.max_clients=2)" and a.clients == 2
    a.client_left()
    assert a.clients == 1 and a.client_refusal() is None


def test_stream_slots_are_given_back_only_when_a_stream_retires():
    a = Admission.from_config(load_daemon_config(["server.max_remote_streams=1"]).server)
    a.take_stream()
    with pytest.raises(ProtocolError) as exc:
        a.take_stream()
    assert exc.value.code == "server_busy" and "server.max_remote_streams=1" in str(exc.value)
    a.stream_retired()
    a.take_stream()
    assert a.remote_streams == 1


def test_the_server_and_the_daemon_count_in_the_same_object(engine):
    from realtime.daemon import Daemon

    d = Daemon(load_daemon_config(["server.port=0", "server.max_clients=3", "server.max_remote_streams=2"]), engine,
               announce=lambda line: None)
    assert d.server.admission is d.admission
    assert (d.admission.max_clients, d.admission.max_remote_streams) == (3, 2)
    assert d.server._limits()["max_clients"] == 3
