"""Realtime package: audio sources, ring buffers, batching scheduler, post-processing, server, ser-listen.

May import ``engine`` and ``contract.audio``; never torch (the daemon runs on
the base install: numpy, onnxruntime, sounddevice, websockets, click).
"""
