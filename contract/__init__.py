"""The torch-free contract every package shares: what the model hears and how it is named and configured.

Owns the audio constants and pure audio functions (``contract.audio``), the
chunk geometry (``contract.geometry``), the exported model's tensor names and
metadata keys (``contract.model_io``), file checksums (``contract.checksums``)
and config composition (``contract.config``).

May import numpy, soundfile, soxr, yaml, omegaconf and ``conf`` (the YAML
files). Imports none of ``training``, ``engine`` or ``realtime``: they import
it, and a test walks every import to keep it so.
"""
