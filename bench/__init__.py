"""Benchmarks of ser: thin drivers over one shared library, each run from the repository root as a module.

    python -m bench.engine            # per-window and per-hop cost of every backend and model variant
    python -m bench.daemon            # N real-time streams against ser-listen on loopback
    python -m bench.hostile           # well-behaved streams beside a crowd of hostile clients
    python -m bench.accuracy          # CV, robustness, calibration, LOCO, live-like streams (feature cache)
    python -m bench.ablation          # one row per change to the head's recipe (feature cache)
    python -m bench.encode_features   # fills the feature cache the two above read
    python -m bench.accuracy_compact  # the compact model's CV through ser-train / ser-eval
    python -m bench.int8              # INT8 Q/DQ departure from float32
    python -m bench.int8_encoder      # int8 copies of the encoder's linear layers: speed, departure, batch dependence
    python -m bench.int8_accuracy     # what the served int8 copy costs in cross-validated UA (feature cache)
    python -m bench.probe_layers      # linear probe per Whisper layer set (feature cache)
    python -m bench.tables            # the Markdown tables of bench/results/*.json

``bench.lib`` holds what the drivers share (the daemon process, the Prometheus
scraper, percentiles, the JSON writer with machine info, table printing);
``bench.streams`` the well-behaved real-time stream client and the latency
definition; ``bench.crowd`` the hostile clients; ``bench.tables`` every
Markdown table, rendered from the JSON the drivers write to ``bench/results/``
(and spliced into the README with ``--readme``); ``bench.harness`` a real
``ser-listen`` subprocess and the headless Chromium flags, for the drivers, the
tests and ``docs/screenshot.py`` (here, not in ``realtime``, so the wheel does
not ship it). These are benchmarks, not tests.
"""
