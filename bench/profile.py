"""Where the daemon's time goes under load: py-spy samples of ``ser-listen`` during ``bench.daemon``'s load.

Runs the load of ``bench.daemon`` (N remote streams, 100 ms frames at real-time
pace, starts spread over a hop, the generator in its own process) against a
``ser-listen`` while ``py-spy record`` samples every Python thread of the daemon
(``--threads``; idle samples left out, so a sample is a thread running or in
native code such as onnxruntime). Each sample is put in one stage by its thread
and stack (first match of :data:`STAGES`):

- **encode** / **classify**: the inference thread inside ``encode_chunks`` /
  ``classify`` (onnxruntime's own pool threads are native: they show in the
  process CPU, not here);
- **DSP**: downmix, resampling (soxr), voice activity (webrtcvad), ring and
  window cutting, on whichever thread does it (``on loop`` says whether that is
  the event loop, which must also deliver every prediction);
- **post-processing**: the voice gate and the smoother;
- **publishing**: serialising predictions and handing them to clients' outboxes
  and sockets;
- **sockets and protocol**: python-websockets framing and the session's
  message handling;
- **scheduler**: the inference thread outside the engine (planning batches);
- **event loop: select()**: the loop waiting for its sockets (py-spy counts the
  system call as running);
- **event loop, other**: the rest of the loop thread (asyncio's own machinery).

For each stage: share of samples, milliseconds per window scored (samples x
the sampling interval / windows), and whether it ran on the event loop. Prints
a table, writes JSON. Needs ``py-spy`` (``pip install py-spy``; it reads the
daemon's memory with ptrace: run as root or allow ``ptrace_scope``).

    python -m bench.profile                    # N = 48, 15 s
    python -m bench.profile --streams 96 --seconds 15
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.daemon import hop_from_hello, measure
from bench.lib import RESULTS, Daemon, write_json
from bench.tables import profile_markdown
from contract.audio import SAMPLE_RATE

RATE_HZ = 200  # py-spy samples per second per thread
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (  # (stage, stack fragments): first match wins
    ("encode", ("encode_chunks",)),
    ("classify", ("classify",)),
    ("DSP", ("soxr", "webrtcvad", "VoiceActivity", "Stream.push", "Intake", "intake.py", "downmix", "RingBuffer",
             "ringbuffer.py")),
    ("post-processing", ("PostProcessor", "Smoother", "postprocess.py", "prediction.py", "_prediction_text")),
    ("publishing", ("publish", "dumps", "JsonlWriter", "_sender", "_deliver", "broadcast")),
    ("sockets and protocol", ("websockets/", "protocol.py", "Session.receive", "_on_message", "serve_connection")),
    ("event loop: select()", ("EpollSelector.select",)),  # waiting for sockets, in the kernel (not idle to py-spy)
)
LOOP_THREAD = "MainThread"
INFERENCE_THREAD = "ser-inference"


def classify_stack(thread: str, stack: str) -> str:
    """The stage of one sample: the first of :data:`STAGES` whose fragment is in the stack, else by thread."""
    for stage, fragments in STAGES:
        if any(f in stack for f in fragments):
            return stage
    if INFERENCE_THREAD in thread:
        return "scheduler"
    if LOOP_THREAD in thread:
        return "event loop, other"
    return "other threads"


def parse_raw(text: str) -> list[tuple[str, str, int]]:
    """py-spy's raw (collapsed) output: ``thread (tid): name;frame;frame... count`` -> (thread, stack, count)."""
    out = []
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        head, _, frames = stack.partition(";")
        out.append((head, frames, int(count)))
    return out


def breakdown(samples: list[tuple[str, str, int]], windows: int, rate_hz: float) -> dict:
    by_stage: Counter[str] = Counter()
    on_loop: Counter[str] = Counter()
    by_thread: Counter[str] = Counter()
    for head, frames, n in samples:
        name = head.split(":", 1)[1].strip() if ":" in head else head
        stage = classify_stack(head, f"{head};{frames}")
        by_stage[stage] += n
        by_thread[name] += n
        if LOOP_THREAD in head:
            on_loop[stage] += n
    total = sum(by_stage.values()) or 1
    ms = 1000.0 / rate_hz
    return {
        "samples": total,
        "windows_scored": windows,
        "stages": {k: {"share": v / total, "ms_per_window": v * ms / max(1, windows), "on_loop_share": on_loop[k] / v}
                   for k, v in by_stage.most_common()},
        "threads": {k: v * ms / 1000.0 for k, v in by_thread.most_common()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--streams", type=int, default=48)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--model", default=None)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="daemon config override")
    ap.add_argument("--out", default=str(RESULTS / "profile.json"))
    args = ap.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        raise SystemExit("py-spy is not installed: pip install py-spy")
    n = args.streams
    d = Daemon(args.model, None, [f"server.max_clients={n + 8}", f"server.max_remote_streams={n + 8}", *args.set])
    raw = Path(tempfile.mkstemp(suffix=".txt", prefix="ser-profile-")[1])
    try:
        hop_s = hop_from_hello(d)
        # py-spy covers the generator's start (connections: little work) and the whole streaming span.
        duration = int(args.seconds + 30 + 0.2 * n)
        spy_p = subprocess.Popen([spy, "record", "--pid", str(d.p.pid), "--rate", str(RATE_HZ), "--duration",
                                  str(duration), "--format", "raw", "--threads", "--nonblocking", "-o", str(raw)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)
        m0 = d.metrics()
        row = measure(d, n, args.seconds, SAMPLE_RATE // 10, hop_s)
        windows = int(d.metrics().sum("ser_windows_scored_total") - m0.sum("ser_windows_scored_total"))
        d.stop()  # py-spy ends with the process
        try:
            _, err = spy_p.communicate(timeout=duration + 30)
        except subprocess.TimeoutExpired:
            spy_p.kill()
            _, err = spy_p.communicate()
        if not raw.exists() or raw.stat().st_size == 0:
            raise SystemExit(f"py-spy wrote nothing: {err.strip()}")
        doc = {"streams": n, "seconds": args.seconds, "rate_hz": RATE_HZ, "load": row,
               "profile": breakdown(parse_raw(raw.read_text()), windows, RATE_HZ),
               "machine_loadavg": os.getloadavg()}
    finally:
        d.stop()
        raw.unlink(missing_ok=True)
    print(profile_markdown(doc))
    out = write_json(args.out, doc)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
