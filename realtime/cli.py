"""``ser-listen``: the command line of the daemon (flags -> config overrides -> Daemon).

Owns argument parsing and
turning every expected failure (no model, bad device, port in use, bad config)
into one ``ser-listen: error: ...`` line and a non-zero exit, never a
traceback; Ctrl-C at any point after start-up exits 130 without one. The
config schema and its validation live in :mod:`realtime.config`. Everything
beyond click is imported inside ``main`` so that a Ctrl-C while the heavy
modules load is caught too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from typing import Any

import click

log = logging.getLogger("ser-listen")

EPILOG = """\b
Examples:
  ser-listen --device demo                  bundled clip, looped; open the printed URL
  ser-listen --device mic                   the system default input
  ser-listen --device pulse --reconnect     a device by name substring (or index)
  ser-listen --device talk.flac --fast --once --jsonl > predictions.jsonl
  ser-listen --host 0.0.0.0 --token SECRET  listen beyond loopback
  ser-listen --device demo server.max_clients=8 post.smoothing_tau_s=3

Any key of --show-config can be given as key=value after the options, or in a --config FILE.
"""


def fail(message: str, code: int = 1) -> None:
    click.echo(f"ser-listen: error: {message}", err=True)
    sys.exit(code)


def _overrides(options: dict[str, Any], extra: tuple[str, ...]) -> list[str]:
    """Flags become the same key=value overrides a user could type; flags win over free overrides."""
    flags = {
        "hop": "audio.hop_s",
        "min_audio": "audio.min_audio_s",
        "max_batch": "scheduler.max_batch",
        "host": "server.host",
        "port": "server.port",
        "token": "server.token",
        "model": "model.path",
        "backend": "model.backend",
        "device": "source.device",
    }
    out = list(extra)
    for opt, key in flags.items():
        v = options.get(opt)
        if v is not None:
            out.append(f"{key}={v}" if not isinstance(v, str) else f"{key}={_yaml_str(v)}")
    if options.get("max_batch") is not None:  # an explicit --max-batch is meant as given, CPU or not
        out.append(f"scheduler.max_batch_cpu={options['max_batch']}")
    if options.get("insecure"):
        out.append("server.insecure=true")
    return out


def _yaml_str(v: str) -> str:
    """Quote a string so YAML keeps it a string (a token like 'yes' or '0123' stays as typed)."""
    return "'" + v.replace("'", "''") + "'"


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}, epilog=EPILOG)
@click.option("--device", "-d", default=None, help="mic | demo | none | a device name substring or index | an audio file path.")
@click.option("--list-devices", is_flag=True, help="List input devices with their native rates and channel counts, then exit.")
@click.option("--fast", is_flag=True, help="Read a file source as fast as the engine takes it instead of at real-time pace.")
@click.option("--once", is_flag=True, help="Exit when the file source ends, after publishing its last predictions.")
@click.option("--jsonl", is_flag=True, help="Also write every prediction as a JSON line to stdout (logs go to stderr).")
@click.option("--reconnect", is_flag=True, help="Retry a device that fails or disappears, with backoff, instead of exiting.")
@click.option("--hop", type=float, default=None, help="Seconds between scored windows of a stream [audio.hop_s].")
@click.option("--min-audio", type=float, default=None, help="Seconds of audio before a stream is first scored [audio.min_audio_s].")
@click.option("--max-batch", type=int, default=None, help="Windows per engine call at most [scheduler.max_batch].")
@click.option("--host", default=None, help="Address to bind [server.host]; beyond loopback needs --token or --insecure.")
@click.option("--port", type=int, default=None, help="Port for WebSocket and HTTP [server.port]; 0 picks a free one.")
@click.option("--token", default=None, envvar="SER_TOKEN", help="Shared secret clients must send (also $SER_TOKEN).")
@click.option("--insecure", is_flag=True, help="Allow a non-loopback --host without a token.")
@click.option("--model", default=None, help="ONNX model, or a shipped model's name: default, multilingual (Whisper base, for non-English speech), compact.")
@click.option("--backend", default=None, help="Inference backend: auto | tensorrt | onnxruntime | torch [model.backend].")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None, help="A YAML file of settings (as --show-config prints them); key=value overrides and flags win over it.")
@click.option("--show-config", is_flag=True, help="Print every setting, resolved and documented, as YAML, and exit.")
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
@click.argument("overrides", nargs=-1)
def main(**options: Any) -> None:
    """Listen to audio and stream per-window emotion probabilities over WebSocket (protocol v1)."""
    try:
        _main(options)
    except KeyboardInterrupt:  # Ctrl-C while modules load or the model warms up; shutdown has its own handler
        click.echo("ser-listen: interrupted", err=True)
        sys.exit(130)


def _main(options: dict[str, Any]) -> None:
    from contract.audio import SAMPLE_RATE
    from contract.config import ConfigError
    from engine.interface import EngineError
    from engine.registry import load_engine
    from realtime.config import load_daemon_config, render_yaml
    from realtime.sources import SourceError, format_device_table, list_input_devices

    verbose = options.pop("verbose")
    logging.basicConfig(
        level=logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING,
        format="ser-listen: %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    if verbose:
        log.setLevel(logging.DEBUG if verbose > 1 else logging.INFO)
    else:
        log.setLevel(logging.INFO)
    logging.getLogger("websockets").setLevel(logging.WARNING if verbose < 2 else logging.DEBUG)

    try:
        cfg = load_daemon_config(_overrides(options, options["overrides"]), options["config_file"])
    except ConfigError as exc:
        fail(str(exc), 2)
    if options["show_config"]:
        click.echo(render_yaml(cfg), nl=False)
        return
    if options["list_devices"]:
        try:
            click.echo(format_device_table(list_input_devices()))
        except SourceError as exc:
            fail(str(exc))
        return

    from realtime.daemon import Daemon, describe_device_spec

    if options["fast"] and describe_device_spec(str(cfg.source.device)) not in ("file", "demo"):
        log.warning("--fast only applies to file sources; ignored")

    interrupted: list[int] = []

    def on_sigint(signum: int, frame: Any) -> None:
        interrupted.append(signum)
        raise KeyboardInterrupt

    # A Ctrl-C inside an import (onnxruntime's) can surface as an ImportError, hence an EngineError:
    # the flag tells an interrupted load from a broken one.
    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        options_engine: dict[str, Any] = {}
        if cfg.model.threads:
            options_engine["threads"] = int(cfg.model.threads)
        if cfg.model.int8 is not None:
            options_engine["int8"] = bool(cfg.model.int8)
        log.info("loading model %s (backend %s)", cfg.model.path or "(shipped default)", cfg.model.backend)
        engine = load_engine(cfg.model.path, backend=str(cfg.model.backend), device=str(cfg.model.device), **options_engine)
        if engine.sample_rate != SAMPLE_RATE:
            fail(f"model {engine.path} expects {engine.sample_rate} Hz audio; the daemon feeds {SAMPLE_RATE} Hz")
        engine.warmup(tuple(int(b) for b in cfg.model.warmup_batches))
    except EngineError as exc:
        if not interrupted:
            fail(str(exc))
    except KeyboardInterrupt:  # Ctrl-C while the model loads: a clean exit, not a traceback
        interrupted.append(signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupted:
        click.echo("ser-listen: interrupted while loading the model", err=True)
        sys.exit(130)

    from realtime.jsonl import JsonlWriter

    try:
        daemon = Daemon(
            cfg,
            engine,
            device=str(cfg.source.device),
            fast=options["fast"],
            once=options["once"],
            reconnect=options["reconnect"],
            jsonl=JsonlWriter(sys.stdout.fileno(), int(cfg.output.jsonl_queue_lines)) if options["jsonl"] else None,
        )
    except ValueError as exc:  # a config the model cannot serve (a hop off its chunk grid)
        fail(str(exc), 2)
    try:
        code = asyncio.run(daemon.run())
    except SourceError as exc:
        fail(str(exc))
    except KeyboardInterrupt:  # a second Ctrl-C during shutdown
        code = 130
    exit_now(code)


def exit_now(code: int) -> None:
    """Exit once the daemon has shut down, skipping the interpreter's module teardown.

    Shutdown has already flushed windows, closed every client and the
    ``--jsonl`` writer; what is left is CPython freeing hundreds of modules,
    which on a busy CPU took 1-4 s (measured) and broke the promise to exit
    within 2 s of SIGTERM. Logs and stdio are flushed first.
    """
    logging.shutdown()
    for f in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            f.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
