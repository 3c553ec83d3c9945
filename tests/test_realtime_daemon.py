"""realtime/daemon.py without sockets: an engine that fails every call backs off and says so in
/healthz, a stopped remote stream holds its slot until its windows are out, and no per-stream
bookkeeping outlives a retired stream.

The server tests (test_realtime_server.py) drive the same daemon through real connections.
"""

from __future__ import annotations

import json
import logging
import time

import pytest

from contract.audio import LABELS, SAMPLE_RATE
from realtime.config import load_daemon_config
from realtime.protocol import ProtocolError
from realtime.stream import Stream
from tests.conftest import tone
from tests.stream_fixtures import settings

SR = SAMPLE_RATE


def failing_onnx(path):
    """A real model that loads but fails at run time on 5 s windows (a Reshape that 80,000 samples cannot fill)."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Reshape", ["waveform", "shape"], ["rows"]),
        helper.make_node("ReduceMean", ["rows", "axes"], ["m"], keepdims=0),
        helper.make_node("Slice", ["m", "s", "e", "axes"], ["cut"]),
        helper.make_node("Reshape", ["cut", "out_shape"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "fails",
        [helper.make_tensor_value_info("waveform", TensorProto.FLOAT, ["batch", "samples"])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 6])],
        initializer=[
            helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 7]),
            helper.make_tensor("axes", TensorProto.INT64, [1], [0]),
            helper.make_tensor("s", TensorProto.INT64, [1], [0]),
            helper.make_tensor("e", TensorProto.INT64, [1], [6]),
            helper.make_tensor("out_shape", TensorProto.INT64, [2], [-1, 6]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    import json as _json

    for k, v in {"labels": _json.dumps(list(LABELS)), "sample_rate": "16000", "window_s": "5.0", "name": "fails"}.items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(path))
    return path


def test_a_failing_engine_backs_off_and_reports_itself(tmp_path, caplog):
    """Finding 6: every engine call failing used to log a traceback per batch, at full speed, with /healthz 'ok'."""
    pytest.importorskip("onnx")
    from engine.registry import load_engine
    from realtime.daemon import Daemon

    eng = load_engine(failing_onnx(tmp_path / "fails.onnx"), backend="onnxruntime", device="cpu")
    cfg = load_daemon_config(["server.port=0"])
    d = Daemon(cfg, eng, announce=lambda line: None)
    d.scheduler.backoff_min_s = 0.2
    d.scheduler.start()
    assert d.health()["status"] == "ok"
    stream = Stream("s", "test", settings(**{"audio.hop_s": 0.05}), SR, 1, d.scheduler.submit, LABELS, droppable=False)
    with caplog.at_level(logging.ERROR, logger="ser-listen"):
        t0 = time.monotonic()
        for _ in range(40):  # 2 s of audio, a window every 50 ms: 21 windows due at once
            stream.push(tone(seconds=0.05))
        deadline = time.monotonic() + 20
        while d.scheduler.engine_state().consecutive_failures < 3:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        elapsed = time.monotonic() - t0
        state = d.scheduler.engine_state()
        health = d.health()
    d.scheduler.stop()
    assert health["status"] == "failing" and health["engine"]["status"] == "failing"
    assert health["engine"]["consecutive_failures"] >= 3 and health["engine"]["backoff_s"] >= 0.4
    assert health["engine"]["last_error"] and "fails.onnx" not in json.dumps(health)  # no file names
    assert state.consecutive_failures <= 1 + elapsed / 0.2  # backed off: not one call per window
    assert sum("Traceback" in (r.exc_text or "") or r.exc_info is not None for r in caplog.records) == 1


def test_a_stopped_stream_holds_its_slot_until_its_windows_are_out(engine):
    """Finding 1: stop freed the remote-stream slot at once, so start/stop cycling bypassed max_remote_streams."""
    import asyncio

    from realtime.daemon import Daemon

    async def main() -> None:
        cfg = load_daemon_config(["server.port=0", "server.max_remote_streams=2"])
        d = Daemon(cfg, engine, announce=lambda line: None)
        d.loop = asyncio.get_running_loop()
        for _ in range(2):  # the worker is not running yet: their windows stay queued
            s = d.open_remote_stream(SR, 1, "pcm_s16le", owner="c1")
            s.push(tone(seconds=1.2))
            d.close_remote_stream(s)
        with pytest.raises(ProtocolError) as exc:
            d.open_remote_stream(SR, 1, "pcm_s16le", owner="c1")
        assert exc.value.code == "server_busy"
        d.scheduler.start()
        try:
            for _ in range(500):  # their windows are delivered, they retire, the slots come back
                if not d.streams:
                    break
                await asyncio.sleep(0.02)
            assert not d.streams
            d.open_remote_stream(SR, 1, "pcm_s16le", owner="c1")
        finally:
            d.scheduler.stop()

    asyncio.run(main())


def test_per_stream_bookkeeping_is_not_kept_after_streams_retire(engine):
    """Finding 10: the daemon kept an entry per stream ever seen (1,050 entries for 20 live streams)."""
    import asyncio

    from realtime.daemon import Daemon

    def held(d) -> int:
        return sum(len(v) for v in vars(d).values() if isinstance(v, (dict, set, list)))

    async def main() -> None:
        d = Daemon(load_daemon_config(["server.port=0"]), engine, announce=lambda line: None)
        d.loop = asyncio.get_running_loop()
        d.scheduler.start()
        try:
            before = held(d)
            for i in range(60):
                s = d.open_remote_stream(SR, 1, "pcm_s16le", owner=f"c{i}")
                s.push(tone(seconds=1.0))
                d.close_remote_stream(s)
                for _ in range(500):
                    if s.retired and s.id not in d.streams:
                        break
                    await asyncio.sleep(0.01)
                assert s.retired
            await asyncio.sleep(0.05)
            assert not d.streams and held(d) <= before
        finally:
            d.scheduler.stop()

    asyncio.run(main())


# The intake's death is the point of the test.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_worker_thread_fails_health(engine):
    """/healthz said ok with the intake thread dead (remote streams fed nothing), and the Ray ingress's
    check_health looked at the scheduler only: both now ask ``dead_threads``."""
    import asyncio

    import numpy as np

    from realtime.daemon import Daemon

    async def main() -> None:
        d = Daemon(load_daemon_config(["server.port=0"]), engine, announce=lambda line: None)
        assert d.dead_threads() == []  # not running yet: nothing is started, nothing is dead
        await d.start_embedded()
        try:
            health = d.health()
            assert health["status"] == "ok" and health["dead_threads"] == [] and d.dead_threads() == []
            s = d.open_remote_stream(SR, 1, "pcm_s16le", owner="c1")

            def die(frames: np.ndarray) -> None:
                raise SystemExit("the intake worker dies")  # `except Exception` in the worker lets it through

            s.push = die  # type: ignore[method-assign]
            await d.feed_remote_stream(s, np.zeros((1600, 1), np.float32))
            for _ in range(3000):
                if not d.intake.is_alive():
                    break
                await asyncio.sleep(0.01)
            health = d.health()
            assert d.dead_threads() == ["intake"] and health["dead_threads"] == ["intake"]
            assert health["status"] == "failing" and health["engine"]["status"] == "ok"
            answer = d.server._health()  # what /healthz answers
            assert int(answer.status) == 503 and json.loads(answer.body)["dead_threads"] == ["intake"]
        finally:
            d.scheduler.stop()
        assert d.dead_threads() == ["scheduler", "intake"]

    asyncio.run(main())
