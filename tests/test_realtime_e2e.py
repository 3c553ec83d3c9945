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

import numpy as np
import pytest

from engine.base import default_model_path
from realtime.sources import demo_clip_path
from tests.conftest import write_wav
from tests.test_realtime_cli import Proc, run, script
from training.audio import LABELS, load_audio

pytestmark = pytest.mark.slow
SR = 16_000


def _pactl(env: dict, *args: str, timeout: float = 5) -> subprocess.CompletedProcess:
    return subprocess.run(["pactl", *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def pulse(tmp_path_factory):
    for tool in ("pulseaudio", "pactl", "paplay"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (apt-get install pulseaudio pulseaudio-utils)")
    root = tmp_path_factory.mktemp("pulse")
    socket_path = root / "native"
    env = dict(
        os.environ,
        XDG_RUNTIME_DIR=str(root),
        PULSE_RUNTIME_PATH=str(root / "runtime"),
        PULSE_STATE_PATH=str(root / "state"),
        HOME=str(root),  # the cookie lands here, shared by server and clients
        PULSE_SERVER=f"unix:{socket_path}",
    )
    log = open(root / "pulseaudio.log", "w")  # noqa: SIM115 - held open for the server it logs
    base = [
        "pulseaudio",
        "--daemonize=no",
        "--exit-idle-time=-1",
        "-n",
        "--use-pid-file=no",
        "--log-target=stderr",
        f"--load=module-native-protocol-unix socket={socket_path} auth-anonymous=1",
        "--load=module-null-sink sink_name=virt rate=16000 channels=1",
    ]
    # As root PulseAudio warns but runs in user mode with a private runtime dir; --system is the fallback.
    proc = None
    for extra in ([], ["--system", "--disallow-exit", "--disallow-module-loading=no"]):
        proc = subprocess.Popen(base + extra, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None:
            if _pactl(env, "info").returncode == 0:
                break
            time.sleep(0.2)
        if proc.poll() is None and _pactl(env, "info").returncode == 0:
            break
        proc.terminate()
        proc.wait(5)
        proc = None
    if proc is None:
        log.close()
        pytest.skip("PulseAudio cannot start here: " + (root / "pulseaudio.log").read_text()[-500:])
    try:
        r = _pactl(env, "set-default-source", "virt.monitor")
        assert r.returncode == 0, r.stderr
        yield env
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


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
    p = Proc([*script("ser-listen"), "--device", "pulse", "--jsonl", "--port", "0", "-v", *model_args], env=pulse)
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
