"""What the benchmark drivers share: the daemon process, its metrics, percentiles, JSON and tables.

- :class:`Daemon`: ``ser-listen`` on loopback, port 0, no local source; its URL once printed, its
  ``/healthz`` and ``/metrics``, the CPU seconds and RSS of its process from ``/proc``; stop.
- :func:`parse_metrics` / :class:`Metrics`: the Prometheus text exposition format (names, labels,
  values) and sums by name and by label.
- :func:`percentile`, :func:`summary_ms`: percentiles that are NaN, not an error, when nothing was measured.
- :func:`machine_info`, :func:`write_json`: every result file records the machine it was measured on.
- :func:`table`: a Markdown or fixed-width text table from a header and rows of cells.

Loopback only: the daemon binds 127.0.0.1 and every URL here points there.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- /proc readings


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of process ``pid`` (its threads included, not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mb(pid: int) -> float:
    """Resident set size of process ``pid`` in MiB (NaN if ``/proc`` does not say)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ---------------------------------------------------------------- Prometheus text format


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_RE = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(,|(?=}))')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}
IDENTITY_LABELS = ("deployment", "replica")  # constant labels a Ray Serve replica puts on every sample


def parse_metrics(text: str) -> list[Sample]:
    """The samples of a Prometheus text exposition: ``# HELP``/``# TYPE`` comments and blank lines skipped.

    Format 0.0.4, or 1.0.0 with classic names (what prometheus_client writes):
    ``name{label="value",...} value [timestamp]``; label values may hold escaped ``\\\\``, ``\\"``
    and ``\\n``, and commas or braces; values may read ``2`` or ``2.0``, ``+Inf`` or ``NaN``. A line
    that does not parse raises ValueError naming it.
    """
    out: list[Sample] = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _NAME_RE.match(line)
        if not m:
            raise ValueError(f"metrics line {n}: no metric name: {raw!r}")
        name, rest = m.group(0), line[m.end():]
        labels: dict[str, str] = {}
        if rest.startswith("{"):
            pos = 1
            while True:
                if rest[pos:].lstrip().startswith("}"):
                    pos += rest[pos:].index("}") + 1
                    break
                lm = _LABEL_RE.match(rest, pos)
                if not lm:
                    raise ValueError(f"metrics line {n}: bad labels: {raw!r}")
                labels[lm.group(1)] = re.sub(r"\\[\\\"n]", lambda e: _UNESCAPE[e.group(0)], lm.group(2))
                pos = lm.end()
            rest = rest[pos:]
        parts = rest.split()
        if not parts or len(parts) > 2:
            raise ValueError(f"metrics line {n}: expected a value and at most a timestamp: {raw!r}")
        try:
            out.append(Sample(name, labels, float(parts[0])))  # float() reads +Inf, -Inf and NaN too
        except ValueError:
            raise ValueError(f"metrics line {n}: bad value {parts[0]!r}: {raw!r}") from None
    return out


@dataclass
class Metrics:
    """One scrape of ``/metrics``: sums by exact metric name, optionally split by one label."""

    samples: list[Sample] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str) -> Metrics:
        return cls(parse_metrics(text))

    def names(self) -> set[str]:
        return {s.name for s in self.samples}

    def sum(self, name: str, **labels: str) -> float:
        """The sum of every sample named exactly ``name`` whose labels include ``labels`` (0 when none)."""
        return float(sum(s.value for s in self.samples
                         if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())))

    def by_label(self, name: str, label: str | None = None) -> dict[str, float]:
        """``name``'s samples by the value of ``label``; ``total`` for samples without it, summed.

        ``label`` defaults to the sample's first label that is not an :data:`IDENTITY_LABELS` one, so
        a scrape of a Ray Serve replica (``deployment``, ``replica`` on every sample) splits by reason
        or code like the plain daemon's, summed over replicas.
        """
        out: dict[str, float] = {}
        for s in self.samples:
            if s.name != name:
                continue
            key = label if label is not None else next((k for k in s.labels if k not in IDENTITY_LABELS), None)
            k = s.labels.get(key, "total") if key is not None else "total"
            out[k] = out.get(k, 0.0) + s.value
        return out


def scrape(port: int, timeout: float = 10.0) -> Metrics:
    """``GET http://127.0.0.1:PORT/metrics``, parsed."""
    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=timeout) as r:
        return Metrics.parse(r.read().decode())


# ---------------------------------------------------------------- the daemon


class Daemon:
    """``ser-listen --device none --port 0`` on loopback, started from the repository root.

    ``p`` is its ``Popen``, ``port`` the port it printed; ``overrides`` are ``KEY=VALUE`` config
    settings. Exits the benchmark (SystemExit, with the daemon's stderr) if it does not start in
    ``start_timeout`` seconds.
    """

    def __init__(self, model: str | None = None, backend: str | None = None, overrides: Sequence[str] = (),
                 start_timeout: float = 120.0) -> None:
        from bench.harness import ListenProcess, script

        cmd = [*script("ser-listen"), "--device", "none", "--port", "0", *overrides]
        if model:
            cmd += ["--model", model]
        if backend:
            cmd += ["--backend", backend]
        self.proc = ListenProcess(cmd, cwd=REPO)
        self.p = self.proc.p
        try:
            self.port: int = self.proc.wait_url(start_timeout)
        except RuntimeError as exc:
            self.stop()
            raise SystemExit(f"ser-listen did not start: {exc}") from None
        self.ws_url = f"ws://{HOST}:{self.port}/ws"

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.p.pid)

    def rss_mb(self) -> float:
        return rss_mb(self.p.pid)

    def metrics(self) -> Metrics:
        return scrape(self.port)

    def healthz(self) -> dict:
        with urllib.request.urlopen(f"http://{HOST}:{self.port}/healthz", timeout=10) as r:
            return json.loads(r.read())

    def hello(self, timeout: float = 10.0) -> dict:
        """The ``hello`` a new WebSocket client gets (model, streams, limits); the connection is then closed."""
        import asyncio

        from websockets.asyncio.client import connect

        async def once() -> dict:
            async with connect(self.ws_url, open_timeout=timeout, close_timeout=1) as ws:
                return json.loads(await asyncio.wait_for(ws.recv(), timeout))

        return asyncio.run(once())

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; the exit code."""
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(timeout)
        return self.p.returncode


# ---------------------------------------------------------------- numbers


def percentile(values: Iterable[float] | np.ndarray, q: float) -> float:
    """The ``q``-th percentile (linear interpolation, as numpy), NaN for no values."""
    a = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=np.float64)
    return float(np.percentile(a, q)) if a.size else float("nan")


def summary_ms(seconds: Iterable[float], prefix: str, qs: Sequence[float] = (50, 99)) -> dict[str, float]:
    """``{prefix_p50_ms: ..., prefix_p99_ms: ..., prefix_max_ms: ...}`` from values in seconds."""
    a = np.asarray(list(seconds), dtype=np.float64) * 1000
    out = {f"{prefix}_p{q:g}_ms": percentile(a, q) for q in qs}
    out[f"{prefix}_max_ms"] = float(a.max()) if a.size else float("nan")
    return out


def pcm16(audio: np.ndarray) -> np.ndarray:
    """Float audio in [-1, 1] as little-endian int16 samples (what ``pcm_s16le`` streams carry)."""
    return (np.clip(audio, -1, 1) * 32767).astype("<i2")


def demo_pcm() -> np.ndarray:
    """The daemon's bundled demo clip (speech), 16 kHz, as s16le samples."""
    from contract.audio import load_audio
    from realtime.sources import demo_clip_path

    return pcm16(load_audio(demo_clip_path()))


# ---------------------------------------------------------------- results


def machine_info(**extra: Any) -> dict[str, Any]:
    """Where a result was measured: platform, processor, CPU count, Python, load average now; plus ``extra``."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "loadavg": list(os.getloadavg()),
        **extra,
    }


def write_json(path: str | Path, doc: dict, *, indent: int | None = 2, default: Any = None,
               machine: bool = True, trailing_newline: bool = False) -> Path:
    """Write ``doc`` as JSON (parents created); with ``machine``, its ``machine`` entry holds
    :func:`machine_info` under whatever the driver put there itself (the driver's keys win)."""
    if machine:
        doc["machine"] = {**machine_info(), **(doc.get("machine") or {})}
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=indent, default=default) + ("\n" if trailing_newline else ""))
    return out


def write_report(path: str | Path, doc: dict, markdown: str, note: str = "", **json_kw: Any) -> Path:
    """A result: ``doc`` as JSON at ``path`` (:func:`write_json`), ``markdown`` beside it as ``.md``, both printed."""
    out = write_json(path, doc, **json_kw)
    out.with_suffix(".md").write_text(markdown)
    print(markdown)
    print(f"wrote {out} and {out.with_suffix('.md')}{note}")
    return out


def table(head: Sequence[str], rows: Iterable[Sequence[Any]], style: str = "markdown") -> str:
    """A table of ``rows`` (cells already formatted, or anything ``str`` accepts) under ``head``.

    ``markdown``: ``| a | b |`` lines with a ``|---|`` rule. ``text``: fixed-width columns, the
    first left-aligned and the others right-aligned, under a dashed rule.
    """
    rows = [[str(c) for c in r] for r in rows]
    head = [str(h) for h in head]
    if style == "markdown":
        return "\n".join(["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|",
                          *("| " + " | ".join(r) + " |" for r in rows)])
    if style != "text":
        raise ValueError(f"table style {style!r}: markdown or text")
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=False)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=False))).rstrip()

    first = line(head)
    return "\n".join([first, "-" * len(first), *(line(r) for r in rows)])


def cpu_isa() -> str:
    """The CPU features a quantized kernel depends on (``engine.backends.ort.cpu_flags``, Linux)."""
    from engine.backends.ort import cpu_flags

    flags = cpu_flags()
    if not flags:
        return "unknown"
    want = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp")
    return " ".join(f for f in want if f in flags) or "none of avx2/avx512/vnni/dotprod"
