"""Realtime package: audio sources, ring buffers, batching scheduler, post-processing, server, ser-listen.

May import ``engine`` and ``contract``, never ``training`` (tests/test_imports.py) nor torch (the daemon runs on
the base install: numpy, onnxruntime, sounddevice, websockets, click, prometheus_client).
"""
