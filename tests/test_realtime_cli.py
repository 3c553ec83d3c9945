"""``ser-listen`` as a subprocess: the scriptable offline run, clean errors, signals, the example client.

Every run is bounded by a timeout; every port is picked by the daemon itself (``--port 0``) and read
from the URL it prints.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from bench.harness import ListenProcess, script
from contract.audio import LABELS, load_audio
from realtime.sources import demo_clip_path
from tests.conftest import write_wav

REPO = Path(__file__).resolve().parents[1]
SR = 16_000


def run(args: list[str], timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=REPO, **kw)


@pytest.fixture
def procs():
    made: list[ListenProcess] = []
    yield lambda args, env=None: made.append(ListenProcess(args, env, cwd=REPO)) or made[-1]
    for p in made:
        p.stop()


@pytest.mark.slow
def test_offline_run_writes_jsonl_and_exits(energy_model, tmp_path):
    audio = load_audio(demo_clip_path())[: int(7.3 * SR)]
    clip = write_wav(tmp_path / "clip.wav", audio, sr=SR)
    r = run([*script("ser-listen"), "--device", str(clip), "--fast", "--once", "--jsonl", "--model", str(energy_model), "--port", "0"])
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert all(m["type"] == "prediction" and m["stream"] == "file" for m in lines)
    ends = [m["t_end"] for m in lines]
    assert ends == pytest.approx([1.0 + 0.5 * k for k in range(13)] + [7.3], abs=1e-6)  # last flush with the end
    assert [m["seq"] for m in lines] == list(range(14))
    assert set(lines[0]["probs"]) == set(LABELS)
    assert "dashboard at http://127.0.0.1:" in r.stderr  # the URL goes to stderr, stdout stays JSON


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["--model", "/nonexistent/model.onnx"], 1, "model file not found"),
        (["--device", "no-such-device-xyz"], 1, "no-such-device-xyz"),
        (["--device", "/nonexistent/clip.wav"], 1, "audio file not found"),
        (["--host", "0.0.0.0"], 2, "--token"),
        (["no.such.key=1"], 2, "unknown config key"),
        (["--hop", "0"], 2, "audio.hop_s"),
    ],
)
def test_clean_errors(energy_model, args, code, words):
    base = [*script("ser-listen"), "--port", "0"]
    if "--model" not in args:
        base += ["--model", str(energy_model)]
    r = run(base + args, timeout=60)
    assert r.returncode == code, (r.returncode, r.stderr)
    assert words in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.count("ser-listen: error:") == 1


@pytest.mark.slow
def test_port_in_use_is_a_clean_error(energy_model):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = run([*script("ser-listen"), "--model", str(energy_model), "--port", str(port)])
    assert r.returncode == 1 and "cannot listen" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_list_devices_prints_the_table_of_this_machines_inputs():
    from realtime.sources import format_device_table, list_input_devices

    r = run([*script("ser-listen"), "--list-devices"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.rstrip("\n") == format_device_table(list_input_devices())


def test_device_table_lists_every_input_and_marks_the_default():
    from realtime.sources import DeviceInfo, format_device_table

    devices = [DeviceInfo(0, "Built-in Mic", "ALSA", 2, 48000, False), DeviceInfo(7, "USB headset", "ALSA", 1, 16000, True)]
    lines = format_device_table(devices).splitlines()
    assert lines[0].split() == ["index", "name", "host", "API", "channels", "rate", "(Hz)"]
    assert lines[1].split() == ["0", "Built-in", "Mic", "ALSA", "2", "48000"]
    assert lines[2].split() == ["*", "7", "USB", "headset", "ALSA", "1", "16000"]
    assert format_device_table([]).startswith("no input devices found")


@pytest.mark.slow
def test_listen_process_reports_a_daemon_that_dies_before_its_url(tmp_path, procs):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model")
    p = procs([*script("ser-listen"), "--model", str(broken), "--port", "0"])
    with pytest.raises(RuntimeError, match=r"exited with [1-9]\d* before printing a URL(.|\n)*broken\.onnx"):
        p.wait_url(30)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_closes_clients_with_1001_and_exits_0_quickly(energy_model, procs, sig):
    p = procs([*script("ser-listen"), "--device", "demo", "--model", str(energy_model), "--port", "0"])
    port = p.wait_url()
    with connect(f"ws://127.0.0.1:{port}/ws", open_timeout=10) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "hello"
        ws.send(json.dumps({"type": "subscribe", "streams": "*"}))
        deadline = time.monotonic() + 10
        while json.loads(ws.recv(timeout=10))["type"] != "prediction":
            assert time.monotonic() < deadline
        t0 = time.monotonic()
        p.p.send_signal(sig)
        with pytest.raises(ConnectionClosed) as exc:
            for _ in range(1000):
                ws.recv(timeout=5)
        assert exc.value.rcvd is not None and exc.value.rcvd.code == 1001
    assert p.p.wait(5) == 0
    assert time.monotonic() - t0 < 2.0, "shutdown took too long"


@pytest.mark.slow
def test_example_client_streams_a_file_and_prints_predictions(energy_model, procs, tmp_path):
    p = procs([*script("ser-listen"), "--model", str(energy_model), "--port", "0"])
    port = p.wait_url()
    rng = np.random.default_rng(0)
    audio = load_audio(demo_clip_path())[: 3 * SR] + 0.001 * rng.standard_normal(3 * SR).astype(np.float32)
    clip = write_wav(tmp_path / "c.wav", np.stack([audio, audio], axis=1), sr=SR)
    r = run([*script("ser-client"), f"ws://127.0.0.1:{port}/ws", "--device", str(clip), "--json", "--fast"], timeout=60)
    assert r.returncode == 0, r.stderr
    preds = [json.loads(x) for x in r.stdout.splitlines()]
    assert [m["t_end"] for m in preds] == pytest.approx([1.0, 1.5, 2.0, 2.5, 3.0], abs=1e-6)
    r = run([*script("ser-client"), f"ws://127.0.0.1:{port}/ws", "--device", str(clip), "--fast"], timeout=60)
    assert r.returncode == 0 and "remote-2" in r.stdout and "voice" in r.stdout, r.stdout + r.stderr


@pytest.mark.slow
def test_token_from_environment(energy_model, procs):
    env = dict(os.environ, SER_TOKEN="envsecret")
    p = procs([*script("ser-listen"), "--model", str(energy_model), "--port", "0"], env=env)
    port = p.wait_url()
    with connect(f"ws://127.0.0.1:{port}/ws?token=envsecret", open_timeout=10) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "hello"
    with connect(f"ws://127.0.0.1:{port}/ws", open_timeout=10) as ws:
        assert json.loads(ws.recv(timeout=10))["code"] == "unauthorized"


@pytest.mark.slow
def test_reconnect_keeps_the_daemon_up_while_the_device_is_missing(energy_model, procs):
    p = procs([*script("ser-listen"), "--device", "no-such-device-xyz", "--reconnect", "--model", str(energy_model),
               "--port", "0", "source.reconnect_min_s=0.2"])
    port = p.wait_url()
    deadline = time.monotonic() + 10
    while sum("reconnecting in" in line or "not available yet" in line for line in p.err) < 2:
        assert time.monotonic() < deadline and p.p.poll() is None, "".join(p.err)
        time.sleep(0.1)
    # /healthz tells the truth (finding 6): the source is down, so 503, and the reason without the device's name
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10)
    assert exc.value.code == 503
    body = json.loads(exc.value.read())
    assert body["status"] == "degraded" and body["source"] == {"kind": "device", "state": "reconnecting"}
    assert body["engine"]["status"] == "ok" and "no-such-device" not in json.dumps(body)
    p.p.send_signal(signal.SIGTERM)
    assert p.p.wait(5) == 0


@pytest.mark.slow
def test_readme_client_example_runs_as_written(energy_model, procs, tmp_path):
    """The README's short client, verbatim but for the file name and port: predictions, then it ends."""
    text = (REPO / "README.md").read_text()
    code = re.search(r"```python\n(import json, time, soundfile.*?)```", text, re.S).group(1)
    assert code == re.search(r"```python\n(import json, time, soundfile.*?)```", (REPO / "realtime" / "README.md").read_text(), re.S).group(1)
    p = procs([*script("ser-listen"), "--model", str(energy_model), "--port", "0"])
    port = p.wait_url()
    audio = load_audio(demo_clip_path())[: 3 * SR]
    write_wav(tmp_path / "talk.wav", audio, sr=SR)
    code = code.replace("127.0.0.1:8765", f"127.0.0.1:{port}")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == str(list(LABELS))
    ends = [float(line.split()[0]) for line in lines[1:]]
    assert ends == pytest.approx([1.0, 1.5, 2.0, 2.5, 3.0], abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize(("model", "int8"), [("energy_model", None), ("chunked_model", None), ("default", False), ("default", True)])
def test_daemon_probabilities_equal_offline_scoring_of_the_same_windows(model, int8, request, tmp_path):
    """Streaming (chunks encoded once per stream, cached, batched) gives what engine.infer gives per window.

    The reference is independent of the streaming plumbing: whole windows cut from the file, framed and
    scored in one call; the daemon's side is the ring buffer, chunk keys, chunk store and batches. With
    the shipped default model (the real Whisper encoder and head) too, float32 and its int8 copy: the
    copy quantizes each frame on its own, so batches cut differently move it by float rounding only
    (with one scale per call it moved with the batch).
    """
    from engine.registry import load_engine
    from tests.stream_fixtures import expected_window

    path = "default" if model == "default" else request.getfixturevalue(model)
    audio = load_audio(demo_clip_path())[: int(6.2 * SR)]
    clip = write_wav(tmp_path / "clip.wav", audio, sr=SR)
    precision = [] if int8 is None else [f"model.int8={str(int8).lower()}"]
    r = run([*script("ser-listen"), "--device", str(clip), "--fast", "--once", "--jsonl", "--model", str(path), "--port", "0",
             *precision])
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert [m["t_end"] for m in lines] == pytest.approx([1.0 + 0.5 * k for k in range(11)] + [6.2], abs=1e-6)
    eng = load_engine(path, backend="onnxruntime", device="cpu", **({} if int8 is None else {"int8": int8}))
    assert eng.precision == ("int8" if int8 else "fp32")
    ends = [round(m["t_end"] * SR) for m in lines]
    want = eng.infer(np.stack([expected_window(audio, e, eng.chunked) for e in ends]))
    got = np.array([[m["probs"][label] for label in LABELS] for m in lines])
    np.testing.assert_allclose(got, want, atol=5e-3 if int8 else 1e-5)


@pytest.mark.slow
def test_once_exits_when_the_file_ends_exactly_on_the_hop_grid(energy_model, tmp_path):
    """Finding 4: a file of exactly 2.0 s has no final flush window; --once used to wait forever."""
    audio = load_audio(demo_clip_path())[: 2 * SR]
    clip = write_wav(tmp_path / "grid.wav", audio, sr=SR)
    # At real-time pace the last window is scored before the reader sees the end of the file: the case that hung.
    r = run([*script("ser-listen"), "--device", str(clip), "--once", "--jsonl", "--model", str(energy_model), "--port", "0"],
            timeout=30)
    assert r.returncode == 0, r.stderr
    ends = [json.loads(x)["t_end"] for x in r.stdout.splitlines()]
    assert ends == pytest.approx([1.0, 1.5, 2.0], abs=1e-6)


@pytest.mark.slow
def test_a_hop_off_the_models_chunk_grid_is_a_clean_error(chunked_model):
    r = run([*script("ser-listen"), "--model", str(chunked_model), "--port", "0", "--hop", "0.3"])
    assert r.returncode == 2, r.stderr
    assert "not a multiple of the model's chunk hop (0.5 s)" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_jsonl_to_a_stdout_nobody_reads_keeps_the_daemon_responsive(energy_model, tmp_path):
    """Finding 3: with a stalled stdout pipe, /healthz stopped answering and SIGTERM was ignored."""
    import urllib.request

    audio = load_audio(demo_clip_path())[: 6 * SR]
    clip = write_wav(tmp_path / "loop.wav", audio, sr=SR)
    err_path = tmp_path / "stderr.txt"
    with open(err_path, "w") as err:
        p = subprocess.Popen(  # stdout is a pipe this test never reads; --fast loops the file as fast as the engine goes
            [*script("ser-listen"), "--device", str(clip), "--fast", "--jsonl", "--model", str(energy_model), "--port", "0"],
            stdout=subprocess.PIPE, stderr=err, cwd=REPO, start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 30
        port = None
        while port is None:
            assert time.monotonic() < deadline and p.poll() is None, err_path.read_text()
            m = re.search(r"dashboard at http://[^\s/]+:(\d+)/", err_path.read_text())
            port = int(m.group(1)) if m else None
            time.sleep(0.1)
        import fcntl
        import termios

        deadline = time.monotonic() + 60
        while True:  # the pipe fills (64 kB on Linux) ...
            assert time.monotonic() < deadline and p.poll() is None, err_path.read_text()
            queued = np.zeros(1, np.int32)
            fcntl.ioctl(p.stdout.fileno(), termios.FIONREAD, queued)
            if queued[0] >= 60_000:
                break
            time.sleep(0.2)
        time.sleep(1.0)  # ... and the daemon keeps producing lines nobody can take
        for _ in range(3):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
                assert json.loads(r.read())["status"] == "ok"
        p.send_signal(signal.SIGTERM)
        assert p.wait(10) == 0, err_path.read_text()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
        p.stdout.close()
    assert "Traceback" not in err_path.read_text()


@pytest.mark.slow
def test_ctrl_c_while_the_model_loads_prints_no_traceback(procs):
    """Finding 10: Ctrl-C during model load printed a traceback. A big warm-up batch keeps it loading."""
    from engine.shipped import default_model_path

    if not default_model_path().is_file():
        pytest.skip("no shipped model")
    p = procs([*script("ser-listen"), "--port", "0", "model.warmup_batches=[64,64,64,64]", "model.threads=1"])
    deadline = time.monotonic() + 60
    while not any("loading model" in line for line in p.err):
        assert time.monotonic() < deadline and p.p.poll() is None, "".join(p.err)
        time.sleep(0.05)
    time.sleep(0.3)
    p.p.send_signal(signal.SIGINT)
    code = p.p.wait(30)
    time.sleep(0.2)
    err = "".join(p.err)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert code == 130 and "interrupted while loading the model" in err, (code, err)


@pytest.mark.slow
def test_sigterm_under_load_flushes_in_flight_windows_and_exits_within_2_s(energy_model, procs):
    """30 clients each send a 3 s burst and stop; at SIGTERM their windows are queued or being scored:
    every client still gets all its predictions before the 1001 close, and the daemon exits within 2 s."""
    import asyncio

    from websockets.asyncio.client import connect as aconnect

    n_clients = 30
    p = procs([*script("ser-listen"), "--device", "demo", "--model", str(energy_model), "--port", "0", "-v",
               "server.max_starts_per_s=100", "server.max_clients=64"])
    port = p.wait_url()
    pcm = (load_audio(demo_clip_path())[: 3 * SR] * 32767).astype("<i2")

    async def client(i: int, stopped: asyncio.Event, all_stopped: asyncio.Event, out: dict) -> None:
        async with aconnect(f"ws://127.0.0.1:{port}/ws", open_timeout=20, max_size=None) as ws:
            assert json.loads(await asyncio.wait_for(ws.recv(), 20))["type"] == "hello"
            await ws.send(json.dumps({"type": "start", "sample_rate": SR, "encoding": "pcm_s16le"}))
            for k in range(0, len(pcm), SR // 10):
                await ws.send(pcm[k : k + SR // 10].tobytes())
            await ws.send(json.dumps({"type": "stop"}))
            seqs: list[int] = []
            mine = None
            try:
                async with asyncio.timeout(30):
                    async for raw in ws:
                        msg = json.loads(raw)
                        if msg["type"] == "started":
                            mine = msg["stream"]
                        elif msg["type"] == "stopped":
                            out.setdefault("stopped", 0)
                            out["stopped"] += 1
                            if out["stopped"] == n_clients:
                                all_stopped.set()
                        elif msg["type"] == "prediction" and msg["stream"] == mine:
                            seqs.append(msg["seq"])
                            if not all_stopped.is_set():
                                out["before"] = out.get("before", 0) + 1
            except ConnectionClosed:
                pass
            out[i] = (seqs, ws.close_code)

    async def main() -> tuple[dict, float, float]:
        out: dict = {}
        all_stopped = asyncio.Event()
        tasks = [asyncio.create_task(client(i, asyncio.Event(), all_stopped, out)) for i in range(n_clients)]
        await asyncio.wait_for(all_stopped.wait(), 60)  # every burst is in the daemon; its windows are due
        t0 = time.monotonic()
        p.p.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(p.p.wait, 10)
        exit_s = time.monotonic() - t0
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
        return out, exit_s, code

    out, exit_s, code = asyncio.run(main())
    print(f"predictions before SIGTERM: {out.get('before', 0)} of {5 * n_clients}; exit in {exit_s:.2f} s")
    assert code == 0, "".join(p.err)
    assert exit_s < 2.0, f"exit took {exit_s:.2f} s: " + "".join(p.err)[-1500:]
    for i in range(n_clients):
        seqs, close_code = out[i]
        assert seqs == [0, 1, 2, 3, 4], (i, seqs, "".join(p.err)[-2000:])  # windows ending 1.0, 1.5, ... 3.0 s
        assert close_code in (1000, 1001), (i, close_code)


CPU_HOG = "import time\nend = time.monotonic() + 60\nwhile time.monotonic() < end:\n    pass\n"  # ends by itself


@pytest.mark.slow
@pytest.mark.parametrize("busy", [False, True], ids=["idle", "both-cores-busy"])
def test_once_with_a_slow_reader_loses_no_line(energy_model, tmp_path, busy):
    """Offline (--fast --once) waits for a slow --jsonl reader instead of dropping its lines, also while other
    processes keep every core busy (issue 17: seq 10-13 went missing 4 times out of 4 on a busy machine)."""
    audio = load_audio(demo_clip_path())[: 8 * SR]
    clip = write_wav(tmp_path / "eight.wav", audio, sr=SR)
    hogs = [subprocess.Popen([sys.executable, "-c", CPU_HOG]) for _ in range(os.cpu_count() or 2)] if busy else []
    try:
        lines = _slow_reader_lines(energy_model, clip)
    finally:
        for h in hogs:
            h.kill()
            h.wait(10)
    assert [m["seq"] for m in lines] == list(range(15))  # 1.0, 1.5, ..., 8.0 s: none dropped


def _slow_reader_lines(energy_model, clip) -> list[dict]:
    p = subprocess.Popen(
        [*script("ser-listen"), "--device", str(clip), "--fast", "--once", "--jsonl", "--model", str(energy_model),
         "--port", "0", "output.jsonl_queue_lines=4"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )
    lines = []
    try:
        for line in p.stdout:  # slowly: the daemon produces far faster than this
            lines.append(json.loads(line))
            time.sleep(0.05)
        assert p.wait(60) == 0, p.stderr.read()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
    return lines
