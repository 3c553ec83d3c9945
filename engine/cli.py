"""Console entry point ``ser-predict``: classify audio files offline with any backend.

Parses options with click and turns every expected failure (missing or
corrupt model, unreadable audio, no usable backend) into one ``error:`` line
and a non-zero exit, never a traceback. (``ser-build-engine``, which exports
checkpoints, lives in ``training.build_engine``: producing models is training's job.)
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from engine.interface import EngineError
from engine.registry import backend_names, load_engine


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--model", help="ONNX model, TensorRT .plan or .ckpt, or a shipped model's name: default, multilingual, compact.")
@click.option("--backend", type=click.Choice(backend_names()), default="auto", show_default=True, help="Inference backend; auto picks TensorRT, then onnxruntime (CUDA, else CPU); checkpoints run on torch.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True, help="Where to run.")
@click.option("--json", "as_json", is_flag=True, help='One JSON object per line: {"path", "top", "probs", "windows"}.')
@click.option("--batch", type=click.IntRange(1, 4096), default=16, show_default=True, help="Windows per inference call (windows of several files share a batch).")
@click.option("--int8/--no-int8", default=None, help="onnxruntime on CPU: serve (or not) the model's int8 copy, NAME.int8.onnx. Default: when it exists and the CPU has VNNI or dotprod.")
@click.option("-v", "--verbose", is_flag=True, help="Log which backend was picked.")
def predict_main(files: tuple[Path, ...], model: str | None, backend: str, device: str, as_json: bool, batch: int,
                 int8: bool | None, verbose: bool) -> None:
    """Classify whole audio FILES offline into anger, disgust, fear, happy, neutral, sad.

    Clips shorter than 5 s are zero-padded around the centre as in training;
    longer ones are cut into half-overlapping 5 s windows whose probabilities
    are averaged. A file that cannot be read prints an error line on stderr
    (with --json also {"path": ..., "error": ...} on stdout, so output lines
    stay one per input file) and the others go on; the exit code is 1 if any
    file failed.
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")
    from engine.predict import classify_files

    try:
        engine = load_engine(model, backend=backend, device=device, **({} if int8 is None else {"int8": int8}))
    except EngineError as exc:
        _fail(str(exc), code=2)
    failed = 0
    try:
        for result in classify_files(engine, files, batch=batch):
            if result.error is not None:
                failed += 1
                click.echo(f"error: {result.error}", err=True)
            if as_json:
                click.echo(json.dumps(result.to_json()))
            elif result.error is None:
                ranked = sorted(result.probs.items(), key=lambda kv: -kv[1])
                detail = "  ".join(f"{k} {v:.2f}" for k, v in ranked)
                click.echo(f"{result.path}: {result.top} ({result.probs[result.top]:.2f})  [{detail}]  windows={result.windows}")
    except (EngineError, ValueError) as exc:
        _fail(f"{engine.path}: inference failed: {exc}", code=2)
    sys.exit(1 if failed else 0)
