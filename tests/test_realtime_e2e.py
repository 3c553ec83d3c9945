"""End to end: ``ser-listen --device pulse`` recording a PulseAudio virtual microphone through PortAudio,
and the shipped default model on the bundled demo clip.

The fixture starts a private PulseAudio server (its own runtime directory and socket, so it never
touches another on the machine) with a 16 kHz mono null sink whose monitor is the default source,
plays a clip into the sink with ``paplay``, and stops the server it started. It skips, with the
reason, only where PulseAudio cannot start. Tests with the default model skip while
``engine/models/default.onnx`` is absent.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from bench.harness import ListenProcess, script
from contract.audio import LABELS, load_audio
from engine.shipped import default_model_path
from realtime.sources import demo_clip_path
from tests.conftest import write_wav
from tests.test_realtime_cli import REPO, run

pytestmark = pytest.mark.slow
SR = 16_000


def _pactl(env: dict, *args: str, timeout: float = 5) -> subprocess.CompletedProcess:
    return subprocess.run(["pactl", *args], env=env, capture_output=True, text=True, timeout=timeout)


class PulseServer:
    """A private PulseAudio server: its own runtime dir and socket, a 16 kHz mono null sink ``virt``
    whose monitor is the default source. It can be stopped and started again on the same socket,
    which to its clients looks like a microphone unplugged and plugged back in."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = root / "native"
        self.env = dict(
            os.environ,
            XDG_RUNTIME_DIR=str(root),
            PULSE_RUNTIME_PATH=str(root / "runtime"),
            PULSE_STATE_PATH=str(root / "state"),
            HOME=str(root),  # the cookie lands here, shared by server and clients
            PULSE_SERVER=f"unix:{self.socket}",
        )
        self.proc: subprocess.Popen | None = None
        self.log_path = root / "pulseaudio.log"

    def start(self) -> bool:
        base = [
            "pulseaudio",
            "--daemonize=no",
            "--exit-idle-time=-1",
            "-n",
            "--use-pid-file=no",
            "--log-target=stderr",
            f"--load=module-native-protocol-unix socket={self.socket} auth-anonymous=1",
            "--load=module-null-sink sink_name=virt rate=16000 channels=1",
        ]
        # As root PulseAudio warns but runs in user mode with a private runtime dir; --system is the fallback.
        for extra in ([], ["--system", "--disallow-exit"]):
            with open(self.log_path, "a") as log:
                self.proc = subprocess.Popen(base + extra, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.proc.poll() is None:
                if _pactl(self.env, "info").returncode == 0:
                    r = _pactl(self.env, "set-default-source", "virt.monitor")
                    assert r.returncode == 0, r.stderr
                    return True
                time.sleep(0.2)
            self.stop()
        return False

    def stop(self) -> None:
        """Stop the server this object started (and only that one)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


def _need_pulse_tools() -> None:
    for tool in ("pulseaudio", "pactl", "paplay"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (apt-get install pulseaudio pulseaudio-utils)")


@pytest.fixture(scope="module")
def pulse(tmp_path_factory):
    _need_pulse_tools()
    server = PulseServer(tmp_path_factory.mktemp("pulse"))
    if not server.start():
        pytest.skip("PulseAudio cannot start here: " + server.log_path.read_text()[-500:])
    try:
        yield server.env
    finally:
        server.stop()


@pytest.fixture(params=["energy", "default"])
def model_args(request, energy_model) -> list[str]:
    if request.param == "energy":
        return ["--model", str(energy_model)]
    if not default_model_path().is_file():
        pytest.skip(f"the default model {default_model_path()} is not shipped yet")
    return []


def test_virtual_microphone_through_portaudio(pulse, model_args, tmp_path):
    speech = load_audio(demo_clip_path())[: 6 * SR]
    clip = write_wav(tmp_path / "speech.wav", speech)
    p = ListenProcess([*script("ser-listen"), "--device", "pulse", "--jsonl", "--port", "0", "-v", *model_args], env=pulse, cwd=REPO)
    try:
        port = p.wait_url(60)
        deadline = time.monotonic() + 20
        while not any("capturing from" in line for line in p.err):
            assert time.monotonic() < deadline and p.p.poll() is None, "".join(p.err)
            time.sleep(0.1)
        while len(p.out) < 2:  # silence first (the monitor of an idle sink) until two windows are scored
            assert time.monotonic() < deadline and p.p.poll() is None, "".join(p.err)
            time.sleep(0.05)
        play = subprocess.run(["paplay", "-d", "virt", str(clip)], env=pulse, capture_output=True, text=True, timeout=30)
        assert play.returncode == 0, play.stderr
        time.sleep(1.0)
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        p.p.send_signal(signal.SIGTERM)
        assert p.p.wait(10) == 0, "".join(p.err)
    finally:
        p.stop()
    time.sleep(0.2)
    preds = [json.loads(x) for x in p.out if x.strip()]
    assert preds, "no predictions:\n" + "".join(p.err)
    assert all(m["type"] == "prediction" and m["stream"] == "mic" for m in preds)
    assert [m["seq"] for m in preds] == list(range(len(preds))), "windows were dropped"
    assert not preds[0]["voiced"], ("the idle virtual microphone should be silent", [(m["t_end"], m["voiced_fraction"]) for m in preds], "".join(p.err))
    voiced = [m for m in preds if m["voiced"]]
    assert len(voiced) >= 6, [(m["t_end"], m["voiced_fraction"]) for m in preds]
    assert max(m["voiced_fraction"] for m in preds) > 0.5
    assert all(m["top"] in LABELS for m in voiced)
    assert "ser_xruns_total" in metrics
    assert np.median([m["latency_ms"] for m in preds]) < 250


def test_default_model_on_the_demo_clip():
    if not default_model_path().is_file():
        pytest.skip(f"the default model {default_model_path()} is not shipped yet")
    r = run([*script("ser-listen"), "--device", "demo", "--fast", "--once", "--jsonl", "--port", "0"], timeout=300)
    assert r.returncode == 0, r.stderr
    preds = [json.loads(x) for x in r.stdout.splitlines()]
    duration = len(load_audio(demo_clip_path())) / SR
    assert preds[-1]["t_end"] == pytest.approx(duration, abs=1e-3)
    for m in preds:
        assert abs(sum(m["probs"].values()) - 1) < 1e-3 and set(m["probs"]) == set(LABELS)
    assert sum(m["voiced"] for m in preds) >= len(preds) // 2


def _wait_for(cond, what: str, p: ListenProcess, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline and p.p.poll() is None, f"waited for {what}:\n" + "".join(p.err)
        time.sleep(0.05)


@pytest.mark.parametrize("reconnect", [True, False])
def test_a_vanishing_microphone(tmp_path, energy_model, reconnect):
    """The PulseAudio server goes away under a recording daemon: --reconnect resumes when it is back,
    without it the daemon says so and exits non-zero."""
    _need_pulse_tools()
    server = PulseServer(tmp_path)
    if not server.start():
        pytest.skip("PulseAudio cannot start here: " + server.log_path.read_text()[-500:])
    extra = ["--reconnect", "source.reconnect_min_s=0.2", "source.reconnect_max_s=0.5"] if reconnect else []
    p = ListenProcess([*script("ser-listen"), "--device", "pulse", "--jsonl", "--port", "0", "--model", str(energy_model), *extra],
                      env=server.env, cwd=REPO)
    try:
        p.wait_url(60)
        _wait_for(lambda: len(p.out) >= 2, "first predictions", p)
        server.stop()  # the microphone vanishes
        if not reconnect:
            assert p.p.wait(15) == 1
            assert "stopped delivering audio" in "".join(p.err) and "Traceback" not in "".join(p.err)
            return
        _wait_for(lambda: any("reconnecting in" in line for line in p.err), "the reconnect message", p)
        before = len(p.out)
        assert server.start()  # ... and comes back
        _wait_for(lambda: sum("capturing from" in line for line in p.err) >= 2, "capture to resume", p)
        _wait_for(lambda: len(p.out) >= before + 3, "predictions after the reconnect", p)
        p.p.send_signal(signal.SIGTERM)
        assert p.p.wait(10) == 0
    finally:
        p.stop()
        server.stop()
    preds = [json.loads(x) for x in p.out if x.strip()]
    assert [m["seq"] for m in preds] == list(range(len(preds)))


def test_reconnect_covers_a_device_that_opens_but_fails_to_start(tmp_path, monkeypatch):
    """Finding 7: a device that opened but whose start failed ended the source even with --reconnect.

    The device is real (a private PulseAudio server through PortAudio); its first two starts fail as a
    busy or suspended device's do (PortAudio's error, raised by sounddevice's own ``InputStream.start``),
    then it starts for real and audio flows. Audio flowing is asserted first: the code before the fix
    lost its capture thread to the first failed start, so no audio ever came."""
    _need_pulse_tools()
    server = PulseServer(tmp_path)
    if not server.start():
        pytest.skip("PulseAudio cannot start here: " + server.log_path.read_text()[-500:])
    for k, v in server.env.items():
        monkeypatch.setenv(k, v)
    import sounddevice as sd

    from realtime.config import load_daemon_config
    from realtime.sources import DeviceSource, SourceError, _rescan_devices
    from realtime.stream import Stream, StreamSettings

    _rescan_devices()  # PortAudio was initialised before the private server existed

    real_start = sd.InputStream.start
    fails = [2]

    def flaky_start(self):
        if fails[0] > 0:
            fails[0] -= 1
            raise sd.PortAudioError("Error starting stream: Device unavailable [PaErrorCode -9985]", -9985)
        return real_start(self)

    monkeypatch.setattr(sd.InputStream, "start", flaky_start)
    windows = []
    settings = StreamSettings.from_config(load_daemon_config(), 80_000)
    made = []

    def make(rate, channels):
        made.append(Stream("mic", "device", settings, rate, channels, windows.append, LABELS))
        return made[-1]

    try:
        src = DeviceSource("pulse", make, on_xruns=lambda n: None, reconnect=True, reconnect_min_s=0.1, reconnect_max_s=0.2)
        src.start()
        deadline = time.monotonic() + 20
        while not made or made[0].ring.written < 8000:  # audio flows (the idle sink's monitor: silence)
            assert time.monotonic() < deadline, "no audio after two failed starts with --reconnect"
            time.sleep(0.05)
        assert fails[0] == 0 and src.failed is None and src.state == "running"
        src.stop(2.0)
        fails[0] = 1  # and without --reconnect the failure is a clear SourceError
        once = DeviceSource("pulse", make, on_xruns=lambda n: None, reconnect=False)
        once.start()
        assert once.finished.wait(20)
        assert isinstance(once.failed, SourceError) and "opened but failed to start" in str(once.failed)
        assert once.state == "failed"
    finally:
        server.stop()
